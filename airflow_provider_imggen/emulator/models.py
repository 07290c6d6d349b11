"""
The emulator's own table of model limits and its request validation.

Written from the API documentation (api-notes §2 and §6), independently of the provider's table in
``airflow_provider_imggen.models``: ``tests/test_model_tables.py`` diffs the two, so a wrong limit on either
side shows up as drift instead of being agreed on silently. Stdlib only.

``MODEL_LIMITS[name]`` keys:

- ``max_n``: most images one request may ask for
- ``default_size``: size used by the gateway (``/v1/images/generations``) when the request names none
- ``native_default_size``: size used by the native API when the submission names none
- ``sizes``: the only ``(width, height)`` pairs allowed, or ``None`` for a range given by
- ``min_side``, ``max_side``, ``min_pixels``, ``max_pixels``, ``max_aspect_ratio`` (``None``: no bound)
- ``max_prompt_chars``, ``max_negative_prompt_chars``
- ``submissions_per_second``, ``concurrent_tasks``: the account's quota per model (``None``: not limited);
  ``burst``: requests allowed back to back (default: the per-second rate, at least 1), for a quota counted
  per minute
- ``endpoints``: which DashScope endpoints serve it: ``"task"`` (``text2image/image-synthesis``, asynchronous)
  and/or ``"multimodal"`` (``multimodal-generation/generation``, synchronous)

Unknown model names pass with :data:`GENERIC_LIMITS`: gateways add models constantly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
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
# As the documentation writes sizes: ASCII digits joined by "x" (gateways) or "*" (the native API); nothing
# else, so a client that sends other digits, separators or spaces is caught here rather than agreed with.
_SIZE_PATTERN = re.compile(r"^([0-9]+)[x*]([0-9]+)$")

# qwen-image: the current list (§6: 1664*928 is the native default) and the older one (the gateway's seed
# document defaults to 1328x1328); the service and the gateways accept both.
_QWEN_IMAGE_CURRENT = (
    (1664, 928),
    (1472, 1104),
    (1328, 1328),
    (1104, 1472),
    (928, 1664),
)
_QWEN_IMAGE_SIZES = (*_QWEN_IMAGE_CURRENT, (1472, 1140), (1140, 1472))
_QWEN_IMAGE: dict[str, Any] = {
    "max_n": 1,
    "default_size": "1328x1328",
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
    # Qwen-Image API reference: both the asynchronous task and the synchronous call serve it.
    "endpoints": ("task", "multimodal"),
}
# wan2.2-t2i-*: each side 512-1440, at most 1440x1440 pixels, n 1-4 (native default 4).
_WAN22: dict[str, Any] = {
    "max_n": 4,
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
}
# qwen-image-max (§6): synchronous only, at most 2 requests a minute; qwen-image's current five sizes, n=1.
_QWEN_IMAGE_MAX: dict[str, Any] = {
    **_QWEN_IMAGE,
    "sizes": _QWEN_IMAGE_CURRENT,
    "submissions_per_second": 2 / 60,
    "burst": 2,
    "concurrent_tasks": None,
    "endpoints": ("multimodal",),
}
# The qwen-image 2.0 family (§6): synchronous only, n 1-6, any W*H from 512*512 to 2048*2048 pixels.
_QWEN_IMAGE_2: dict[str, Any] = {
    **_QWEN_IMAGE,
    "max_n": 6,
    "sizes": None,
    "min_side": 1,
    "max_side": None,
    "min_pixels": 512 * 512,
    "max_pixels": 2048 * 2048,
    "endpoints": ("multimodal",),
}
# wan2.5-t2i-preview (§6): prompts up to 2000 characters, aspect ratio from 1:4 to 4:1; the pixel bounds
# (768*768 to 1440*1440) and the 1280*1280 default as the Wan V2 reference gives them.
_WAN25: dict[str, Any] = {
    **_WAN22,
    "default_size": "1280x1280",
    "native_default_size": "1280x1280",
    "min_side": 1,
    "max_side": None,
    "min_pixels": 768 * 768,
    "max_aspect_ratio": 4.0,
    "max_prompt_chars": 2000,
}

MODEL_LIMITS: dict[str, dict[str, Any]] = {
    "qwen-image": dict(_QWEN_IMAGE),
    # §6: qwen-image-plus has qwen-image's limits.
    "qwen-image-plus": dict(_QWEN_IMAGE),
    "qwen-image-max": dict(_QWEN_IMAGE_MAX),
    "qwen-image-2.0": dict(_QWEN_IMAGE_2),
    "qwen-image-2.0-pro": dict(_QWEN_IMAGE_2),
    "wan2.5-t2i-preview": dict(_WAN25),
    "wan2.2-t2i-flash": dict(_WAN22),
    "wan2.2-t2i-plus": dict(_WAN22),
    # §6: the wanx2.1 and wanx2.0 models are served by wan2.2's endpoint, with its limits.
    "wanx2.1-t2i-turbo": dict(_WAN22),
    "wanx2.1-t2i-plus": dict(_WAN22),
    "wanx2.0-t2i-turbo": dict(_WAN22),
}

# The models the gateway's seed document names: what its GET /v1/models lists (it still serves any name).
GATEWAY_MODELS = ("qwen-image", "wan2.2-t2i-flash", "wan2.2-t2i-plus")

GENERIC_LIMITS: dict[str, Any] = {
    "max_n": 10,
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
    # Models the table does not know: served where asked (the real service knows better than we do).
    "endpoints": ("task", "multimodal"),
}


def limits_of(model: str) -> dict[str, Any]:
    """The limits of ``model`` (generic ones for a model the table does not know)."""
    return MODEL_LIMITS.get(model, GENERIC_LIMITS)


class InvalidRequestError(ValueError):
    """
    One request parameter is invalid; the message names the parameter, the value and what is allowed.

    :param parameter: the request field at fault
    :param value: the value received
    :param allowed: what the model accepts
    """

    def __init__(self, parameter: str, value: object, allowed: str) -> None:
        self.parameter = parameter
        self.value = value
        self.allowed = allowed
        shown = repr(value)
        if len(shown) > 120:
            shown = f"{shown[:100]}... ({len(value) if hasattr(value, '__len__') else '?'} characters)"
        super().__init__(f"Invalid {parameter}={shown}: {allowed}")


@dataclass(frozen=True)
class ValidRequest:
    """A validated generation request, every field in its wire type."""

    model: str
    prompt: str
    n: int
    width: int
    height: int
    response_format: str = "url"
    negative_prompt: str | None = None
    prompt_upsampling: bool | None = None
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    watermark: bool = False

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


def parse_size(size: object) -> tuple[int, int]:
    """``"1328x1328"`` or ``"1328*1328"`` as ``(width, height)``."""
    match = _SIZE_PATTERN.match(size) if isinstance(size, str) else None
    if not match:
        raise InvalidRequestError(
            "size", size, "expected 'WIDTHxHEIGHT' or 'WIDTH*HEIGHT' with whole numbers, e.g. '1328x1328'"
        )
    return int(match.group(1)), int(match.group(2))


def _whole_number(parameter: str, value: object, allowed: str, *, digit_string: bool = False) -> int:
    """A JSON integer; with ``digit_string`` also a string of ASCII digits (the seed document's ``seed``)."""
    if isinstance(value, bool):
        raise InvalidRequestError(parameter, value, allowed)
    if isinstance(value, int):
        return value
    if digit_string and isinstance(value, str) and re.fullmatch(r"[0-9]+", value):
        return int(value)
    raise InvalidRequestError(parameter, value, allowed)


def _boolean(parameter: str, value: object) -> bool:
    # The API documents a JSON boolean; strings such as "true" are the client's job to convert.
    if isinstance(value, bool):
        return value
    raise InvalidRequestError(parameter, value, "expected a JSON boolean (true or false)")


def _text(parameter: str, value: object, limit: int | None, model: str, *, required: bool) -> str:
    if not isinstance(value, str):
        raise InvalidRequestError(parameter, value, "expected a string")
    if required and not value.strip():
        raise InvalidRequestError(parameter, value, "must not be empty")
    if limit is not None and len(value) > limit:
        raise InvalidRequestError(
            parameter, value, f"{model} accepts at most {limit} characters, got {len(value)}"
        )
    return value


def describe_sizes(model: str, limits: dict[str, Any]) -> str:
    if limits["sizes"] is not None:
        listed = ", ".join(f"{w}x{h}" for w, h in limits["sizes"])
        return f"{model} accepts exactly one of {listed}"
    parts = []
    if limits["max_side"] is not None:
        parts.append(f"each side {limits['min_side']}-{limits['max_side']}")
    if limits["min_pixels"] is not None:
        parts.append(f"at least {limits['min_pixels']} pixels")
    if limits["max_pixels"] is not None:
        parts.append(f"at most {limits['max_pixels']} pixels")
    if limits["max_aspect_ratio"] is not None:
        parts.append(f"a long side at most {limits['max_aspect_ratio']:g} times the short one")
    return f"{model} accepts WxH with " + ", ".join(parts) if parts else "width and height must be positive"


def _check_size(model: str, limits: dict[str, Any], size: object, width: int, height: int) -> None:
    if limits["sizes"] is not None:
        if (width, height) not in limits["sizes"]:
            raise InvalidRequestError("size", size, describe_sizes(model, limits))
        return
    low = limits["min_side"] or 1
    high = limits["max_side"]
    pixels = width * height
    ratio = limits["max_aspect_ratio"]
    if width < low or height < low:
        raise InvalidRequestError(
            "size", size, describe_sizes(model, limits) if high else "width and height must be positive"
        )
    too_big = high is not None and (width > high or height > high)
    outside = (limits["max_pixels"] is not None and pixels > limits["max_pixels"]) or (
        limits["min_pixels"] is not None and pixels < limits["min_pixels"]
    )
    if too_big or outside or (ratio is not None and max(width, height) > ratio * min(width, height)):
        raise InvalidRequestError("size", size, describe_sizes(model, limits))


def serves(model: str, endpoint: str) -> bool:
    """Whether ``endpoint`` (``task`` or ``multimodal``) serves ``model``."""
    return endpoint in limits_of(model)["endpoints"]


def model_name(model: object) -> str:
    """The model named by a request, or :class:`InvalidRequestError`."""
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequestError(
            "model", model, f"expected a model name, e.g. one of {', '.join(MODEL_LIMITS)}"
        )
    return model.strip()


def validate_request(
    *,
    prompt: object,
    model: object,
    n: object = 1,
    size: object = None,
    response_format: object = "url",
    negative_prompt: object = None,
    prompt_upsampling: object = None,
    seed: object = None,
    native: bool = False,
    extra: dict[str, Any] | None = None,
    watermark: object = None,
) -> ValidRequest:
    """
    Validate one generation request against :data:`MODEL_LIMITS` as the service does.

    ``n`` is a JSON integer, ``prompt_upsampling`` a JSON boolean; ``seed`` an integer or a string of ASCII
    digits (the seed document types it as a string); sizes are ``WxH`` or ``W*H`` in ASCII
    digits. ``native`` picks the native API's default size.

    :raises InvalidRequestError: naming the parameter, the value and what is allowed
    """
    name = model_name(model)
    limits = limits_of(name)
    checked_prompt = _text("prompt", prompt, limits["max_prompt_chars"], name, required=True)
    checked_negative = None
    if negative_prompt is not None:
        checked_negative = _text(
            "negative_prompt", negative_prompt, limits["max_negative_prompt_chars"], name, required=False
        )
    max_n = limits["max_n"]
    n_allowed = f"{name} accepts n=1 only" if max_n == 1 else f"{name} accepts a whole number 1-{max_n}"
    checked_n = _whole_number("n", n, n_allowed)
    if not 1 <= checked_n <= max_n:
        raise InvalidRequestError("n", n, n_allowed)
    default_size = limits["native_default_size" if native else "default_size"]
    width, height = parse_size(size if size is not None else default_size)
    _check_size(name, limits, size, width, height)
    if response_format not in RESPONSE_FORMATS:
        raise InvalidRequestError("response_format", response_format, "expected 'url' or 'b64_json'")
    upsampling = None if prompt_upsampling is None else _boolean("prompt_upsampling", prompt_upsampling)
    checked_seed = None
    if seed is not None:
        seed_allowed = f"expected a whole number 0-{MAX_SEED} (an int or a string of digits)"
        checked_seed = _whole_number("seed", seed, seed_allowed, digit_string=True)
        if not 0 <= checked_seed <= MAX_SEED:
            raise InvalidRequestError("seed", seed, seed_allowed)
    # The API's default is no watermark (§6).
    marked = False if watermark is None else _boolean("watermark", watermark)
    return ValidRequest(
        model=name,
        prompt=checked_prompt,
        n=checked_n,
        width=width,
        height=height,
        response_format=str(response_format),
        negative_prompt=checked_negative,
        prompt_upsampling=upsampling,
        seed=checked_seed,
        extra=dict(extra or {}),
        watermark=marked,
    )
