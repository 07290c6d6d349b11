"""
Request validation as the service does it, against the model table of
:mod:`~airflow_provider_imggen.emulator.models`. Stdlib only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_imggen.emulator.models import MAX_SEED, MODEL_LIMITS, RESPONSE_FORMATS, limits_of

# As the documentation writes sizes: ASCII digits joined by "x" (gateways) or "*" (the native API); nothing
# else, so a client that sends other digits, separators or spaces is caught here rather than agreed with.
_SIZE_PATTERN = re.compile(r"^([0-9]+)[x*]([0-9]+)$")


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
    n: object = None,
    size: object = None,
    response_format: object = "url",
    negative_prompt: object = None,
    prompt_upsampling: object = None,
    seed: object = None,
    native: bool = False,
    extra: dict[str, Any] | None = None,
    watermark: object = None,
    overrides: dict[str, Any] | None = None,
    input_count: int = 0,
) -> ValidRequest:
    """
    Validate one generation request against :data:`MODEL_LIMITS` as the service does.

    ``n`` is a JSON integer, ``prompt_upsampling`` a JSON boolean; ``seed`` an integer or a string of ASCII
    digits (the seed document types it as a string); sizes are ``WxH`` or ``W*H`` in ASCII
    digits. ``native`` picks the native API's defaults (size, n). ``overrides``: limits of this request that
    differ from the table's (an edit's, see :mod:`~airflow_provider_imggen.emulator.editing`);
    ``input_count``: the input images the request carries (an editing-only model needs some).

    :raises InvalidRequestError: naming the parameter, the value and what is allowed
    """
    name = model_name(model)
    limits = {**limits_of(name), **(overrides or {})}
    if input_count < limits["min_input_images"]:
        allowed = f"{name} edits images: it needs {limits['min_input_images']}-{limits['max_input_images']}"
        raise InvalidRequestError("images", input_count, f"{allowed} input images")
    checked_prompt = _text("prompt", prompt, limits["max_prompt_chars"], name, required=True)
    checked_negative = None
    if negative_prompt is not None:
        checked_negative = _text(
            "negative_prompt", negative_prompt, limits["max_negative_prompt_chars"], name, required=False
        )
    max_n = limits["max_n"]
    n_allowed = f"{name} accepts n=1 only" if max_n == 1 else f"{name} accepts a whole number 1-{max_n}"
    if n is None:
        # Not given: the gateway's default is 1 (the seed document), DashScope's the model's (Wan: 4).
        n = limits["native_default_n"] if native else 1
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
