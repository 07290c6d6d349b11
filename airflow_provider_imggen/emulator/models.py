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
- ``endpoints``: which DashScope endpoints serve it: ``"task"`` (``text2image/image-synthesis``, asynchronous)
  and/or ``"multimodal"`` (``multimodal-generation/generation``, synchronous)
- ``task_metric``: synchronous answers carry ``output.task_metric`` (§7: every model but the 2.0 family)

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
# The 2.1 / 3.0 families, z-image-turbo, wan2.7-image (§7: synchronous only). Their limits beyond that are not
# in the notes: the 2.0 family's are used (unverified).
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

MODEL_LIMITS: dict[str, dict[str, Any]] = {
    "qwen-image": dict(_QWEN_IMAGE),
    # §6: qwen-image-plus has qwen-image's limits.
    "qwen-image-plus": dict(_QWEN_IMAGE),
    "qwen-image-max": dict(_QWEN_IMAGE_MAX),
    "qwen-image-2.0": dict(_QWEN_IMAGE_2),
    "qwen-image-2.0-pro": dict(_QWEN_IMAGE_2_PRO),
    "qwen-image-2.1-pro": dict(_NEWER_SYNC),
    "qwen-image-3.0": dict(_NEWER_SYNC),
    "qwen-image-3.0-pro": dict(_NEWER_SYNC),
    "z-image-turbo": dict(_NEWER_SYNC),
    "wan2.7-image": dict(_NEWER_SYNC),
    "wan2.7-image-pro": dict(_NEWER_SYNC),
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
    """Whether ``endpoint`` (``task`` or ``multimodal``) serves ``model``."""
    return endpoint in limits_of(model)["endpoints"]
