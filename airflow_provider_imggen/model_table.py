"""
The one table of known models: what each accepts, which endpoint serves it, its quota per account.

Written from the Model Studio documentation (api-notes §6 and §7, §7 winning); the emulator keeps its own
table, written independently, and tests diff the two. Stdlib only: operators read it at DAG-parse time.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from airflow_provider_imggen.model_spec import INPUT_FORMATS, ModelSpec, Quota

__all__ = [
    "ENDPOINTS",
    "GENERIC_MAX_N",
    "INPUT_FORMATS",
    "KNOWN_MODELS",
    "ModelSpec",
    "Quota",
    "check_endpoint",
    "closest_known_model",
    "default_size_of",
    "endpoints_of",
    "spec_of",
    "task_surface_of",
    "unknown_model_note",
]

# DashScope's native endpoints (``api_style`` dashscope): the asynchronous task API
# (``text2image/image-synthesis``, then ``GET /tasks/{id}``) and the synchronous multimodal generation
# (``multimodal-generation/generation``, images in the answer). OpenAI-compatible gateways have one
# endpoint and pick the upstream one themselves.
Endpoint = Literal["async", "sync"]


ENDPOINTS: tuple[str, ...] = ("async", "sync")


# A dated snapshot of a known model (qwen-image-max-2025-12-30) is served by its base model's endpoints.
_SNAPSHOT_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")

# Documentation pages, cited by title (the Model Studio pages the issue and api-notes §6 were checked
# against; not reachable from the build machine, so their facts come from the issue where stated so).
DOC_QWEN_IMAGE = "Model Studio: Qwen-Image API reference (text-to-image)"


DOC_QWEN_IMAGE_2 = "Model Studio: Qwen image generation and editing API reference"


DOC_WAN_V2 = "Model Studio: Wan text-to-image V2 API reference"


DOC_RATE_LIMITS = "Model Studio: Rate limits"


DOC_QWEN_IMAGE_EDIT = "Model Studio: Qwen-Image-Edit API reference"


DOC_WAN25_EDIT = "Model Studio: Wan2.5 image editing API reference"


DOC_WAN26 = "Model Studio: Wan2.6 image generation and editing"


DOC_WAN_EDITING = "Model Studio: Wan image editing (wan2.7-image; the QwenCloud developer guide)"

# qwen-image's size list (the Qwen-Image API reference, api-notes §7): exactly these five, 1664*928 the
# service's default. The older 1472*1140 / 1140*1472 of the gateway's seed document are refused by the
# service, so they are refused here before anything is billed.
_QWEN_SIZES = ((1664, 928), (1472, 1104), (1328, 1328), (1104, 1472), (928, 1664))


# Quotas count per Alibaba Cloud account (every key and workspace together), per model (api-notes §7).
# ``quota`` is the default endpoint's: qwen-image / -plus have no concurrency quota on the synchronous
# endpoint (docs/models.md says so; nothing in the provider paces by it).
_TASK_QUOTA = Quota(requests=2, window_seconds=1, concurrent=2)
_TWO_PER_MINUTE = Quota(requests=2, window_seconds=60, concurrent=None)


# Wan text-to-image V2 (wan2.2-t2i-*, wanx2.1-t2i-*, wanx2.0-t2i-turbo): W*H, each side 512-1440, at most
# 1440*1440 pixels, n 1-4 (the native default is 4), one endpoint (the asynchronous task API).
# Prompt limit: the V2 page gives 800 characters in its parameter table and 500 in an older note (the
# negative prompt's limit). 800 is used: the service truncates an over-long prompt silently rather than
# refusing it (api-notes §6), so 500 would refuse prompts the service serves whole, and 800 is also the
# gateway seed document's limit for the same models.
_WAN_V2: dict[str, Any] = {
    "max_n": 4,
    "default_size": "1024x1024",
    "min_side": 512,
    "max_side": 1440,
    "max_pixels": 1440 * 1440,
    "max_prompt_chars": 800,
    "endpoints": ("async",),
    "quota": _TASK_QUOTA,
    "docs": DOC_WAN_V2,
}


def _wan_v2(name: str) -> ModelSpec:
    return ModelSpec(name=name, **_WAN_V2)


def _qwen_image(name: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        max_n=1,
        default_size="1664x928",
        fixed_sizes=_QWEN_SIZES,
        endpoints=("async", "sync"),
        quota=_TASK_QUOTA,
        docs=DOC_QWEN_IMAGE,
    )


# The qwen-image 2.0 family edits too: up to 3 reference images in the user message (api-notes §7), each
# side 384-3072 and 10 MB as for qwen-image-edit (the editing page's input rules).
_QWEN_2_EDITING: dict[str, Any] = {"max_input_images": 3, "min_input_side": 384, "max_input_side": 3072}


# wan2.6-t2i in Beijing (api-notes §6): 1 request a second, 5 at once (Singapore allows 5/s).
_WAN26_QUOTA = Quota(requests=1, window_seconds=1, concurrent=5)


# A synchronous model whose quota no source gives: 2/s assumed (the 2.0 family's), no concurrency quota.
_SYNC_QUOTA_UNKNOWN = Quota(requests=2, window_seconds=1, concurrent=None)


def _newer_sync(name: str, *, max_input_images: int = 0) -> ModelSpec:
    return ModelSpec(
        name=name,
        max_n=6,
        default_size="2048x2048",
        min_pixels=512 * 512,
        max_pixels=2048 * 2048,
        endpoints=("sync",),
        quota=_SYNC_QUOTA_UNKNOWN,
        docs=DOC_QWEN_IMAGE_2,
        max_input_images=max_input_images,
        min_input_side=384,
        max_input_side=3072,
    )


def _qwen_edit(name: str, *, max_n: int, quota: Quota = _SYNC_QUOTA_UNKNOWN, **fields: Any) -> ModelSpec:
    return ModelSpec(
        name=name,
        max_n=max_n,
        default_size="1024x1024",
        min_side=512,
        max_side=2048,
        max_pixels=2048 * 2048,
        endpoints=("sync",),
        quota=quota,
        docs=DOC_QWEN_IMAGE_EDIT,
        min_input_images=1,
        max_input_images=3,
        min_input_side=384,
        max_input_side=3072,
        **fields,
    )


def _wan27(name: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        max_n=4,
        default_size="2048x2048",
        min_pixels=768 * 768,
        max_pixels=2048 * 2048,
        max_aspect_ratio=8.0,
        max_prompt_chars=5000,
        endpoints=("sync", "async"),
        task_surface="image-generation",
        quota=_SYNC_QUOTA_UNKNOWN,
        docs=DOC_WAN_EDITING,
        max_input_images=9,
        min_input_side=240,
        max_input_side=8000,
        input_alpha=False,
    )


KNOWN_MODELS: dict[str, ModelSpec] = {
    # Both endpoints serve qwen-image and qwen-image-plus (which has qwen-image's limits: issue 15,
    # api-notes §6); the task API stays the default (as before).
    "qwen-image": _qwen_image("qwen-image"),
    "qwen-image-plus": _qwen_image("qwen-image-plus"),
    # Synchronous endpoint only, 2 requests per minute (api-notes §7). Sizes: qwen-image's list; the
    # concurrent limit is not documented.
    "qwen-image-max": ModelSpec(
        name="qwen-image-max",
        max_n=1,
        default_size="1664x928",
        fixed_sizes=_QWEN_SIZES,
        endpoints=("sync",),
        quota=_TWO_PER_MINUTE,
        docs=DOC_QWEN_IMAGE,
    ),
    # The qwen-image 2.0 family: synchronous only, n 1-6, any size with 512*512 to 2048*2048 pixels in
    # all, default 2048*2048 (one copy of the page says 1024*1024); qwen-image-2.0 2/s, -pro 2 per
    # minute, no concurrency quota stated (api-notes §7).
    "qwen-image-2.0": ModelSpec(
        name="qwen-image-2.0",
        max_n=6,
        default_size="2048x2048",
        min_pixels=512 * 512,
        max_pixels=2048 * 2048,
        endpoints=("sync",),
        quota=Quota(requests=2, window_seconds=1, concurrent=None),
        docs=DOC_QWEN_IMAGE_2,
        **_QWEN_2_EDITING,
    ),
    "qwen-image-2.0-pro": ModelSpec(
        name="qwen-image-2.0-pro",
        max_n=6,
        default_size="2048x2048",
        min_pixels=512 * 512,
        max_pixels=2048 * 2048,
        endpoints=("sync",),
        quota=_TWO_PER_MINUTE,
        docs=DOC_QWEN_IMAGE_2,
        **_QWEN_2_EDITING,
    ),
    # wan2.5-t2i-preview: prompts up to 2000 characters, aspect ratios 1:4 to 4:1, default 1280*1280,
    # 5 submissions/s and 5 concurrent (api-notes §7). Its least total pixels are 768*768 in one reference
    # and 1280*1280 in another: the lower bound is kept, the service refuses what it does not take.
    "wan2.5-t2i-preview": ModelSpec(
        name="wan2.5-t2i-preview",
        max_n=4,
        default_size="1280x1280",
        min_pixels=768 * 768,
        max_pixels=1440 * 1440,
        max_aspect_ratio=4.0,
        max_prompt_chars=2000,
        endpoints=("async",),
        quota=Quota(requests=5, window_seconds=1, concurrent=5),
        docs=DOC_WAN_V2,
    ),
    # -- 2026: the newer text-to-image names (api-notes §7: synchronous only). No source gives their limits
    # beyond that: the 2.0 family's are used and marked unverified; qwen-image-2.1-pro takes up to 10
    # reference images (the newer "Qwen image generation and editing" page).
    "qwen-image-2.1-pro": _newer_sync("qwen-image-2.1-pro", max_input_images=10),
    "qwen-image-3.0": _newer_sync("qwen-image-3.0"),
    "qwen-image-3.0-pro": _newer_sync("qwen-image-3.0-pro"),
    "z-image-turbo": _newer_sync("z-image-turbo"),
    # -- editing: images in as well as out (api-notes §7; the Qwen-Image-Edit, Wan2.5 editing and Wan2.6
    # references). The qwen-image-edit family: synchronous only, one user message with 1-3 images and one
    # text; each input side 384-3072, at most 10 MB. qwen-image-edit makes one image of its input's size
    # (size may not be set); -plus and -max 1-6 images, each side 512-2048, about 1024*1024 by default
    # with the last input's aspect. -max counts 2 per minute, like qwen-image-max.
    "qwen-image-edit": _qwen_edit("qwen-image-edit", max_n=1, size_settable=False),
    "qwen-image-edit-plus": _qwen_edit("qwen-image-edit-plus", max_n=6),
    "qwen-image-edit-max": _qwen_edit("qwen-image-edit-max", max_n=6, quota=_TWO_PER_MINUTE),
    # wan2.5-i2i-preview: the task API's image2image surface only, 1-3 inputs (sides 384-5000, 10 MB, no
    # alpha), n 1-4 (default 4), 768*768 to 1280*1280 pixels, aspect 1:4 to 4:1, 5/s and 5 concurrent.
    "wan2.5-i2i-preview": ModelSpec(
        name="wan2.5-i2i-preview",
        max_n=4,
        default_size="1280x1280",
        min_pixels=768 * 768,
        max_pixels=1280 * 1280,
        max_aspect_ratio=4.0,
        max_prompt_chars=2000,
        endpoints=("async",),
        quota=Quota(requests=5, window_seconds=1, concurrent=5),
        docs=DOC_WAN25_EDIT,
        min_input_images=1,
        max_input_images=3,
        min_input_side=384,
        max_input_side=5000,
        input_alpha=False,
        task_surface="image2image",
    ),
    # wan2.6-image: editing on the synchronous endpoint, 1-4 inputs (sides 240-8000, 10 MB), n 1-4, W*H
    # with 768*768 to 2048*2048 pixels (or 1K, its default, / 2K, left to extra_body). Its interleaved
    # text-and-image mode (enable_interleave, 0-1 input) streams: not supported here. Quota: wan2.6-t2i's
    # (unverified for this model).
    "wan2.6-image": ModelSpec(
        name="wan2.6-image",
        max_n=4,
        default_size="1024x1024",
        min_pixels=768 * 768,
        max_pixels=2048 * 2048,
        max_aspect_ratio=4.0,
        max_prompt_chars=2000,
        endpoints=("sync", "async"),
        task_surface="image-generation",
        quota=_WAN26_QUOTA,
        docs=DOC_WAN26,
        min_input_images=1,
        max_input_images=4,
        min_input_side=240,
        max_input_side=8000,
        input_alpha=False,
    ),
    # wan2.6-t2i: text to image, 1280*1280 to 1440*1440 pixels, prompt up to 2100 characters; 1/s in
    # Beijing (5/s in Singapore) and 5 concurrent (api-notes §6).
    "wan2.6-t2i": ModelSpec(
        name="wan2.6-t2i",
        max_n=4,
        default_size="1280x1280",
        min_pixels=1280 * 1280,
        max_pixels=1440 * 1440,
        max_aspect_ratio=4.0,
        max_prompt_chars=2100,
        endpoints=("sync", "async"),
        task_surface="image-generation",
        quota=_WAN26_QUOTA,
        docs=DOC_WAN26,
    ),
    # wan2.7-image / -pro: 0-9 inputs (0: text to image; sides 240-8000; 10 MB per one official source,
    # 20 MB per third-party gateways: the lower is kept), n 1-4 (1-12 with enable_sequential, passed in
    # extra_body with bbox_list, thinking_mode and color_palette), 1K / 2K / 4K sizes (extra_body); W*H
    # with 768*768 to 2048*2048 pixels, aspect up to 8:1, prompts up to 5000 characters (third-party
    # gateways' figures, unverified).
    "wan2.7-image": _wan27("wan2.7-image"),
    "wan2.7-image-pro": _wan27("wan2.7-image-pro"),
    "wan2.2-t2i-flash": _wan_v2("wan2.2-t2i-flash"),
    "wan2.2-t2i-plus": _wan_v2("wan2.2-t2i-plus"),
    # wanx2.1-t2i-turbo/-plus and wanx2.0-t2i-turbo share wan2.2's endpoint and limits (issue 15).
    "wanx2.1-t2i-turbo": _wan_v2("wanx2.1-t2i-turbo"),
    "wanx2.1-t2i-plus": _wan_v2("wanx2.1-t2i-plus"),
    "wanx2.0-t2i-turbo": _wan_v2("wanx2.0-t2i-turbo"),
    # The Singapore names of Wan 2.1 (api-notes §7).
    "wan2.1-t2i-turbo": _wan_v2("wan2.1-t2i-turbo"),
    "wan2.1-t2i-plus": _wan_v2("wan2.1-t2i-plus"),
}


# Unknown models (gateways add them constantly) get only the generic checks.
GENERIC_MAX_N = 10


def closest_known_model(model: str) -> str | None:
    """The known model whose name is closest to ``model`` (difflib), or None when none is close."""
    base = _SNAPSHOT_SUFFIX.sub("", model)
    if base in KNOWN_MODELS:
        return base
    import difflib  # only for a model the table does not know

    matches = difflib.get_close_matches(model, list(KNOWN_MODELS), n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_model_note(model: str) -> str | None:
    """
    For a model the table does not know, what the user should hear (None for a known model): only the
    generic checks apply, and the closest known name, in case of a typo.
    """
    if spec_of(model) is not None:  # a known model, or a dated snapshot of one (its family's limits apply)
        return None
    closest = closest_known_model(model)
    hint = (
        f"; the closest known model is {closest!r}"
        + (" (a dated snapshot of it?)" if _SNAPSHOT_SUFFIX.search(model) else " (a typo?)")
        if closest
        else "; no known model is close"
    )
    return (
        f"Model {model!r} is not in the provider's model table: only the generic checks apply (n 1-"
        f"{GENERIC_MAX_N}, any size, no prompt limit), the service decides the rest{hint}"
    )


def spec_of(model: str) -> ModelSpec | None:
    """The table's entry for ``model``, or its base model's for a dated snapshot; None when unknown."""
    return KNOWN_MODELS.get(model) or KNOWN_MODELS.get(_SNAPSHOT_SUFFIX.sub("", model))


def task_surface_of(model: str) -> str:
    """The task API's surface for ``model`` (``text2image`` for a model the table does not know)."""
    spec = spec_of(model)
    return spec.task_surface if spec is not None else "text2image"


def default_size_of(model: str) -> str | None:
    """The service's default size for ``model`` (the table's, or its base model's), None when unknown."""
    spec = KNOWN_MODELS.get(model) or KNOWN_MODELS.get(_SNAPSHOT_SUFFIX.sub("", model))
    return spec.default_size if spec is not None else None


def endpoints_of(model: str) -> tuple[str, ...]:
    """
    The native endpoints serving ``model``: from the table, from its base model for a dated snapshot
    (``qwen-image-max-2025-12-30``). A model the table does not know may be asked on either (the service
    decides); the synchronous endpoint first, because that is where new models live: every family since
    qwen-image-max is synchronous only and answers the task API with 403 AccessDenied (api-notes §7).
    """
    spec = KNOWN_MODELS.get(model) or KNOWN_MODELS.get(_SNAPSHOT_SUFFIX.sub("", model))
    return spec.endpoints if spec is not None else ("sync", "async")


def check_endpoint(model: str, endpoint: object) -> Endpoint:
    """
    The native endpoint a request for ``model`` goes to: ``endpoint`` when given (and serving the model),
    else the model's default.

    :raises ImageGenerationValidationError: an endpoint that does not exist, or does not serve the model
        (before anything billable is sent)
    """
    served = endpoints_of(model)
    if endpoint is None:
        return served[0]  # type: ignore[return-value]
    if endpoint not in ENDPOINTS:
        raise ImageGenerationValidationError(
            "endpoint", endpoint, "expected 'async' (the task API), 'sync' (multimodal generation) or None"
        )
    if endpoint not in served:
        raise ImageGenerationValidationError(
            "endpoint",
            endpoint,
            f"{model} is served only by the {_endpoint_name(served[0])}"
            + (f" ({KNOWN_MODELS[model].docs})" if model in KNOWN_MODELS else "")
            + ": leave endpoint unset, or set it to "
            + " or ".join(repr(name) for name in served),
        )
    return endpoint  # type: ignore[return-value]


def _endpoint_name(endpoint: str) -> str:
    if endpoint == "sync":
        return "synchronous endpoint (POST /api/v1/services/aigc/multimodal-generation/generation)"
    return "asynchronous task API (POST /api/v1/services/aigc/text2image/image-synthesis)"
