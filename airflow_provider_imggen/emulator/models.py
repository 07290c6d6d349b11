"""
The emulator's own table of model limits (validation: :mod:`~airflow_provider_imggen.emulator.validation`).

Written from the API documentation (api-notes §2, §6 and §7; §7 wins), independently of the provider's
table in ``airflow_provider_imggen.model_table``: a test diffs the two, so a wrong limit on either side
shows up as drift instead of being agreed on silently. Stdlib only.

``MODEL_LIMITS[name]`` keys:

- ``max_n``: most images one request may ask for; ``native_default_n``: n when a DashScope request names none
- ``default_size``: size used by the gateway (``/v1/images/generations``) when the request names none
- ``native_default_size``: size used by the native API when the submission names none
- ``sizes``: the only ``(width, height)`` pairs allowed, or ``None`` for a range given by
- ``min_side``, ``max_side``, ``min_pixels``, ``max_pixels``, ``max_aspect_ratio`` (``None``: no bound)
- ``max_prompt_chars``, ``max_negative_prompt_chars``
- ``submissions_per_second``, ``concurrent_tasks``: the account's quota per model (``None``: not limited);
  ``burst``: requests allowed back to back (default: the per-second rate, at least 1), for a quota counted
  per minute. ``concurrent_tasks`` applies to the task API only (§7: no concurrency quota on the
  synchronous endpoint).
- ``endpoints``: which DashScope endpoints serve it (:data:`ENDPOINT_PATHS`): ``"task"``
  (``text2image/image-synthesis``, asynchronous), ``"image2image"`` (``image2image/image-synthesis``,
  asynchronous), ``"image-generation"`` (``image-generation/generation``, asynchronous, messages body),
  ``"multimodal"`` (``multimodal-generation/generation``, synchronous)
- ``task_metric``: synchronous answers carry ``output.task_metric`` (§7: every model but the 2.0 family)

Editing (images in as well as out; read by :mod:`~airflow_provider_imggen.emulator.editing` and
:mod:`~airflow_provider_imggen.emulator.inputs`), 0 / 0 and empty for the text-only models:

- ``min_input_images``, ``max_input_images``: input images a request must / may carry
- ``input_formats`` (Pillow's format names), ``max_input_bytes``, ``min_input_side``, ``max_input_side``
  (each side of each input, pixels), ``refuses_alpha`` (an input with an alpha channel is refused)
- ``size_settable``: False when the request may not name a size (qwen-image-edit)
- ``size_from_input``: the default size with inputs: ``"area"`` (the last input's aspect ratio at
  ``input_size_pixels`` pixels, or at the default named size's), ``"input"`` (the last input's own size,
  scaled into ``min_pixels``-``max_pixels``), or None (the model's default size)
- ``named_sizes`` (``{"1K": pixels, ...}``, the aspect ratio of the last input or square),
  ``default_named_size``, ``text_only_sizes`` (named sizes refused with inputs or sequential output) and
  ``text_only_max_pixels`` (the pixel cap then)
- ``sequential_max_n``: n's maximum (and default) with ``parameters.enable_sequential`` (None: not supported)
- ``bbox_list`` / ``color_palette``: the parameters are read; ``interleave``: ``enable_interleave`` is read
- ``wan_answer``: the Wan 2.6 / 2.7 answer (content items with ``type``, ``output.finished``, ``usage.size``)

Dated snapshots (``qwen-image-2.0-pro-2026-04-22``) have their family's limits. A name the table does not
know is not a model the service has: the DashScope endpoints answer 404 ModelNotFound and the gateway
``model_not_found`` (unless listed in ``FaultConfig.gateway_models``, which are served with
:data:`GENERIC_LIMITS`).
"""

from __future__ import annotations

import re
from typing import Any

MAX_SEED = 2_147_483_647
RESPONSE_FORMATS = ("url", "b64_json")
# Top-level gateway fields with a meaning of their own; anything else is passed through (extra fields).
NAMED_FIELDS = frozenset(
    {
        "model",
        "prompt",
        "n",
        "size",
        "response_format",
        "negative_prompt",
        "prompt_upsampling",
        "seed",
        "watermark",
    }
)
_SNAPSHOT = re.compile(r"^(?P<family>.+)-\d{4}-\d{2}-\d{2}$")
ENDPOINT_PATHS = {
    "task": "/api/v1/services/aigc/text2image/image-synthesis",
    "image2image": "/api/v1/services/aigc/image2image/image-synthesis",
    "image-generation": "/api/v1/services/aigc/image-generation/generation",
    "multimodal": "/api/v1/services/aigc/multimodal-generation/generation",
}
# 10 MB per input image (10 * 1024 * 1024 bytes) for every editing model. wan2.7-image: the official
# reference says 10 MB, third-party gateways 20 MB; the emulator takes the official 10 MB.
MAX_INPUT_BYTES = 10 * 1024 * 1024
# The text-only models: no input image.
_NO_INPUTS: dict[str, Any] = {
    "min_input_images": 0,
    "max_input_images": 0,
    "input_formats": (),
    "max_input_bytes": None,
    "min_input_side": None,
    "max_input_side": None,
    "refuses_alpha": False,
    "size_settable": True,
    "size_from_input": None,
    "input_size_pixels": None,
    "named_sizes": None,
    "default_named_size": None,
    "text_only_sizes": (),
    "text_only_max_pixels": None,
    "sequential_max_n": None,
    "bbox_list": False,
    "color_palette": False,
    "interleave": False,
    "wan_answer": False,
}
# The Qwen image editing page: JPG/JPEG/PNG/BMP/TIFF/WEBP/GIF, each side 384-3072, at most 10 MB.
_QWEN_INPUTS: dict[str, Any] = {
    "input_formats": ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF"),
    "max_input_bytes": MAX_INPUT_BYTES,
    "min_input_side": 384,
    "max_input_side": 3072,
}
# The Wan 2.6 / 2.7 pages: JPEG/JPG/PNG (no alpha channel)/BMP/WEBP, each side 240-8000, at most 10 MB.
_WAN_INPUTS: dict[str, Any] = {
    "input_formats": ("JPEG", "PNG", "BMP", "WEBP"),
    "max_input_bytes": MAX_INPUT_BYTES,
    "min_input_side": 240,
    "max_input_side": 8000,
    "refuses_alpha": True,
}

# qwen-image (§7): exactly these five sizes, 1664*928 the default; the older 1472*1140 / 1140*1472 are
# refused by the service.
_QWEN_IMAGE_SIZES = (
    (1664, 928),
    (1472, 1104),
    (1328, 1328),
    (1104, 1472),
    (928, 1664),
)
_QWEN_IMAGE: dict[str, Any] = {
    **_NO_INPUTS,
    "max_n": 1,
    "native_default_n": 1,
    "default_size": "1664x928",
    "native_default_size": "1664x928",
    "sizes": _QWEN_IMAGE_SIZES,
    "min_side": None,
    "max_side": None,
    "min_pixels": None,
    "max_pixels": None,
    "max_aspect_ratio": None,
    "max_prompt_chars": 800,
    "max_negative_prompt_chars": 500,
    "submissions_per_second": 2.0,
    "concurrent_tasks": 2,
    # §7: only qwen-image and qwen-image-plus serve both the task API and the synchronous endpoint.
    "endpoints": ("task", "multimodal"),
    "task_metric": True,
}
# Wan V2 (wan2.2-t2i-*, wanx2.1, wanx2.0): each side 512-1440, at most 1440x1440 pixels, n 1-4 (default 4,
# all 4 billed), 2/s and 2 concurrent per account.
_WAN22: dict[str, Any] = {
    **_NO_INPUTS,
    "max_n": 4,
    "native_default_n": 4,
    "default_size": "1024x1024",
    "native_default_size": "1024x1024",
    "sizes": None,
    "min_side": 512,
    "max_side": 1440,
    "min_pixels": None,
    "max_pixels": 1440 * 1440,
    "max_aspect_ratio": None,
    # The Wan V2 page's two figures for the prompt (800, 500): the service truncates past the limit rather
    # than refusing, and the gateway document says 800 for the same models, so the emulator refuses past 800.
    "max_prompt_chars": 800,
    "max_negative_prompt_chars": 500,
    "submissions_per_second": 2.0,
    "concurrent_tasks": 2,
    "endpoints": ("task",),
    "task_metric": True,
}
# qwen-image-max (§7): synchronous only, 2 requests a minute; qwen-image's five sizes, n=1.
_QWEN_IMAGE_MAX: dict[str, Any] = {
    **_QWEN_IMAGE,
    "submissions_per_second": 2 / 60,
    "burst": 2,
    "concurrent_tasks": None,
    "endpoints": ("multimodal",),
}
# The qwen-image 2.0 family (§7): synchronous only, n 1-6, any W*H from 512*512 to 2048*2048 pixels, default
# 2048*2048 (one copy of the reference says 1024*1024), 2/s; no task_metric in its answers.
_QWEN_IMAGE_2: dict[str, Any] = {
    **_QWEN_IMAGE,
    "max_n": 6,
    "default_size": "2048x2048",
    "native_default_size": "2048x2048",
    "sizes": None,
    "min_side": 1,
    "max_side": None,
    "min_pixels": 512 * 512,
    "max_pixels": 2048 * 2048,
    "concurrent_tasks": None,
    "endpoints": ("multimodal",),
    "task_metric": False,
}
# qwen-image-2.0-pro (§7): 2 per minute.
_QWEN_IMAGE_2_PRO: dict[str, Any] = {**_QWEN_IMAGE_2, "submissions_per_second": 2 / 60, "burst": 2}
# The 2.1 / 3.0 families, z-image-turbo (§7: synchronous only). Their limits beyond that are not in the
# notes: the 2.0 family's are used (unverified).
_NEWER_SYNC: dict[str, Any] = {**_QWEN_IMAGE_2, "task_metric": True}
# wan2.5-t2i-preview (§7): default 1280*1280, n 1-4 (default 4), prompt <= 2000 characters, aspect ratio 1:4
# to 4:1, 5/s and 5 concurrent. Minimum total pixels: 768*768 in one reference, 1280*1280 in another
# (unknown which is right): the emulator takes 768*768. Most pixels 1440*1440 as for Wan V2 (unverified).
_WAN25: dict[str, Any] = {
    **_WAN22,
    "default_size": "1280x1280",
    "native_default_size": "1280x1280",
    "min_side": 1,
    "max_side": None,
    "min_pixels": 768 * 768,
    "max_aspect_ratio": 4.0,
    "max_prompt_chars": 2000,
    "submissions_per_second": 5.0,
    "concurrent_tasks": 5,
}
# The qwen-image 2.0 family edits with 0-3 input images (0: text to image); the default size is then the last
# input's, its pixels kept within 512*512-2048*2048. qwen-image-2.1-pro: up to 10 (the newer page).
_QWEN_2_EDITS: dict[str, Any] = {**_QWEN_INPUTS, "max_input_images": 3, "size_from_input": "input"}
# qwen-image-edit (synchronous only): 1-3 input images, n=1, no size (the output follows the last input at
# about 1024*1024 pixels), 2/s. -plus: n 1-6, size W*H with each side 512-2048 (default: as -edit). -max: as
# -plus, 2 per minute (like qwen-image-max). Sides of a derived size: multiples of 16 (unverified).
_QWEN_IMAGE_EDIT: dict[str, Any] = {
    **_QWEN_IMAGE,
    **_QWEN_INPUTS,
    "min_input_images": 1,
    "max_input_images": 3,
    "default_size": "1024x1024",
    "native_default_size": "1024x1024",
    "sizes": None,
    "min_side": 512,
    "max_side": 2048,
    "max_pixels": 2048 * 2048,
    "size_settable": False,
    "size_from_input": "area",
    "input_size_pixels": 1024 * 1024,
    "concurrent_tasks": None,
    "endpoints": ("multimodal",),
}
_QWEN_IMAGE_EDIT_PLUS: dict[str, Any] = {**_QWEN_IMAGE_EDIT, "max_n": 6, "size_settable": True}
_QWEN_IMAGE_EDIT_MAX: dict[str, Any] = {**_QWEN_IMAGE_EDIT_PLUS, "submissions_per_second": 2 / 60, "burst": 2}
# wan2.5-i2i-preview (task API only, image2image/image-synthesis): 1-3 inputs, each side 384-5000; n 1-4
# (default 4); size W*H with 768*768-1280*1280 pixels, 1:4-4:1, default about 1280*1280 at the last
# input's aspect ratio (the aspect part unverified); 5/s and 5 concurrent (§7). Prompt: wan2.5-t2i's 2000
# (unverified).
_WAN25_I2I: dict[str, Any] = {
    **_WAN25,
    **_WAN_INPUTS,
    "min_input_images": 1,
    "max_input_images": 3,
    "min_input_side": 384,
    "max_input_side": 5000,
    "max_pixels": 1280 * 1280,
    "size_from_input": "area",
    "input_size_pixels": 1280 * 1280,
    "endpoints": ("image2image",),
}
# wan2.6-t2i (messages body; synchronous, or asynchronous on image-generation/generation): n 1-4 (default 4
# on the task endpoint), 1280*1280-1440*1440 pixels, 1:4-4:1, default 1280*1280, prompt <= 2100. §6: 5
# concurrent, 1/s in Beijing (5/s in Singapore): the emulator plays Beijing.
_WAN26_T2I: dict[str, Any] = {
    **_WAN25,
    "default_size": "1280x1280",
    "native_default_size": "1280x1280",
    "min_pixels": 1280 * 1280,
    "max_pixels": 1440 * 1440,
    "max_prompt_chars": 2100,
    "submissions_per_second": 1.0,
    "endpoints": ("multimodal", "image-generation"),
    "wan_answer": True,
}
# wan2.6-image: 1-4 inputs (0-1 with enable_interleave); n 1-4; size 1K (default), 2K or W*H with
# 768*768-2048*2048 pixels; a named size takes the last input's aspect ratio. Unverified: the prompt limit
# (2000), the 1:4-4:1 bound, the quota (wan2.6-t2i's).
_WAN26_IMAGE: dict[str, Any] = {
    **_WAN26_T2I,
    **_WAN_INPUTS,
    "min_input_images": 1,
    "max_input_images": 4,
    "default_size": "1024x1024",
    "native_default_size": "1024x1024",
    "min_pixels": 768 * 768,
    "max_pixels": 2048 * 2048,
    "max_prompt_chars": 2000,
    "size_from_input": "area",
    "named_sizes": {"1K": 1024 * 1024, "2K": 2048 * 2048},
    "default_named_size": "1K",
    "interleave": True,
}
# wan2.7-image / -pro (synchronous; asynchronous on image-generation/generation): 0-9 inputs; n 1-4, or 1-12
# (default 12, third-party pages) with enable_sequential; size 1K, 2K (default), 4K (-pro without inputs or
# sequential output only) or W*H with 768*768-2048*2048 pixels (4096*4096 for 4K's case), 1:8-8:1; bbox_list,
# color_palette. Unverified: W*H's bounds, the prompt limit (5000, third-party), the quota (2/s).
_WAN27: dict[str, Any] = {
    **_WAN26_IMAGE,
    "min_input_images": 0,
    "max_input_images": 9,
    "default_size": "2048x2048",
    "native_default_size": "2048x2048",
    "max_aspect_ratio": 8.0,
    "max_prompt_chars": 5000,
    "named_sizes": {"1K": 1024 * 1024, "2K": 2048 * 2048},
    "default_named_size": "2K",
    "native_default_n": 1,
    "sequential_max_n": 12,
    "bbox_list": True,
    "color_palette": True,
    "interleave": False,
    "submissions_per_second": 2.0,
    "concurrent_tasks": None,
}
_WAN27_PRO: dict[str, Any] = {
    **_WAN27,
    "named_sizes": {"1K": 1024 * 1024, "2K": 2048 * 2048, "4K": 4096 * 4096},
    "text_only_sizes": ("4K",),
    "text_only_max_pixels": 4096 * 4096,
}

MODEL_LIMITS: dict[str, dict[str, Any]] = {
    "qwen-image": dict(_QWEN_IMAGE),
    # §6: qwen-image-plus has qwen-image's limits.
    "qwen-image-plus": dict(_QWEN_IMAGE),
    "qwen-image-max": dict(_QWEN_IMAGE_MAX),
    "qwen-image-2.0": {**_QWEN_IMAGE_2, **_QWEN_2_EDITS},
    "qwen-image-2.0-pro": {**_QWEN_IMAGE_2_PRO, **_QWEN_2_EDITS},
    "qwen-image-2.1-pro": {**_NEWER_SYNC, **_QWEN_2_EDITS, "max_input_images": 10},
    # Text to image only: an image item is refused (400 InvalidParameter).
    "qwen-image-3.0": dict(_NEWER_SYNC),
    "qwen-image-3.0-pro": dict(_NEWER_SYNC),
    "z-image-turbo": dict(_NEWER_SYNC),
    "qwen-image-edit": dict(_QWEN_IMAGE_EDIT),
    "qwen-image-edit-plus": dict(_QWEN_IMAGE_EDIT_PLUS),
    "qwen-image-edit-max": dict(_QWEN_IMAGE_EDIT_MAX),
    "wan2.7-image": dict(_WAN27),
    "wan2.7-image-pro": dict(_WAN27_PRO),
    "wan2.6-image": dict(_WAN26_IMAGE),
    "wan2.6-t2i": dict(_WAN26_T2I),
    "wan2.5-i2i-preview": dict(_WAN25_I2I),
    "wan2.5-t2i-preview": dict(_WAN25),
    "wan2.2-t2i-flash": dict(_WAN22),
    "wan2.2-t2i-plus": dict(_WAN22),
    # §6: the wanx2.1 and wanx2.0 models are served by wan2.2's endpoint, with its limits; §7: in Singapore
    # the Wan 2.1 names are wan2.1-t2i-turbo / wan2.1-t2i-plus (the emulator serves every region's names).
    "wanx2.1-t2i-turbo": dict(_WAN22),
    "wanx2.1-t2i-plus": dict(_WAN22),
    "wan2.1-t2i-turbo": dict(_WAN22),
    "wan2.1-t2i-plus": dict(_WAN22),
    "wanx2.0-t2i-turbo": dict(_WAN22),
}

# The models the gateway's seed document names: what its GET /v1/models lists.
GATEWAY_MODELS = ("qwen-image", "wan2.2-t2i-flash", "wan2.2-t2i-plus")

# Limits of a model name a gateway was told to serve (FaultConfig.gateway_models) but the table does not know.
GENERIC_LIMITS: dict[str, Any] = {
    **_NO_INPUTS,
    "max_n": 10,
    "native_default_n": 1,
    "default_size": "1328x1328",
    "native_default_size": "1328x1328",
    "sizes": None,
    "min_side": 1,
    "max_side": None,
    "min_pixels": None,
    "max_pixels": None,
    "max_aspect_ratio": None,
    "max_prompt_chars": None,
    "max_negative_prompt_chars": None,
    "submissions_per_second": None,
    "concurrent_tasks": None,
    "endpoints": ("task", "multimodal"),
    "task_metric": True,
}


def family_of(model: str) -> str | None:
    """The table's name for ``model`` (a dated snapshot maps to its family), or None for an unknown model."""
    if model in MODEL_LIMITS:
        return model
    match = _SNAPSHOT.match(model)
    if match and match.group("family") in MODEL_LIMITS:
        return match.group("family")
    return None


def is_known(model: str) -> bool:
    return family_of(model) is not None


def limits_of(model: str) -> dict[str, Any]:
    """The limits of ``model`` (generic ones for a model the table does not know)."""
    family = family_of(model)
    return MODEL_LIMITS[family] if family is not None else GENERIC_LIMITS


def serves(model: str, endpoint: str) -> bool:
    """Whether ``endpoint`` (a key of :data:`ENDPOINT_PATHS`) serves ``model``."""
    return endpoint in limits_of(model)["endpoints"]
