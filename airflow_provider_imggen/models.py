"""
The one table of known models and the request validation built on it.

The hook, the operators and the emulator all validate through :func:`validate_generation_request`,
so a value the provider accepts is exactly a value the emulator accepts. Stdlib only: operators call
it at DAG-parse time.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from airflow_provider_imggen.exceptions import ImageGenerationValidationError

MAX_SEED = 2_147_483_647
RESPONSE_FORMATS = ("url", "b64_json")
DEFAULT_SIZE = "1328x1328"
_SIZE_PATTERN = re.compile(r"^\s*(\d+)\s*[x*X×]\s*(\d+)\s*$")
# Top-level request fields with a parameter of their own; extra_body may not override them silently.
NAMED_FIELDS = frozenset(
    {"model", "prompt", "n", "size", "response_format", "negative_prompt", "prompt_upsampling", "seed"}
)
# The native API's names for the same things (extra_body joins the native body's ``parameters``):
# ``prompt_extend`` is ``prompt_upsampling``; input/parameters/model would rewrite the body's structure.
NATIVE_NAMED_FIELDS = NAMED_FIELDS | {"prompt_extend", "input", "parameters"}
# What a template renders for a missing value (a dag_run.conf key that is not there): never a real prompt.
RENDERED_MISSING_VALUES = frozenset({"None"})
_ASCII_INT_PATTERN = re.compile(r"\s*[+-]?[0-9]+\s*", re.ASCII)
_ASCII_NUMBER_PATTERN = re.compile(r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*", re.ASCII)
# DashScope's native task API (api-notes §3): suggested polling is every 3 s for 30 s, then back off.
DEFAULT_POLL_INTERVAL = 3.0
DEFAULT_MAX_POLL_INTERVAL = 30.0
FAST_POLL_SECONDS = 30.0

ResponseFormat = Literal["url", "b64_json"]

# DashScope's native asynchronous task flow (api-notes §3): UNKNOWN is "no such task, or expired".
TASK_STATUSES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN")
TASK_TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"})


@dataclass(frozen=True)
class ModelSpec:
    """
    What one model accepts.

    :param name: model name as the API spells it
    :param max_n: most images one request may ask for
    :param default_size: size used when the request names none
    :param fixed_sizes: the only (width, height) pairs allowed, or ``None`` for a range
    :param min_side: smallest width or height when sizes are a range
    :param max_side: largest width or height when sizes are a range
    :param max_pixels: largest width x height when sizes are a range
    :param max_prompt_chars: longest prompt
    :param max_negative_prompt_chars: longest negative prompt
    """

    name: str
    max_n: int
    default_size: str
    fixed_sizes: tuple[tuple[int, int], ...] | None = None
    min_side: int = 1
    max_side: int = 1 << 16
    max_pixels: int = 1 << 32
    max_prompt_chars: int = 800
    max_negative_prompt_chars: int = 500

    def describe_sizes(self) -> str:
        if self.fixed_sizes is not None:
            listed = ", ".join(f"{w}x{h}" for w, h in self.fixed_sizes)
            return f"{self.name} accepts exactly one of {listed}"
        return (
            f"{self.name} accepts WxH with each side {self.min_side}-{self.max_side} "
            f"and at most {self.max_pixels} pixels ({self.max_side}x{self.max_side})"
        )


# qwen-image: DashScope published two lists of five sizes; gateways still forward both.
_QWEN_SIZES = (
    (1328, 1328),
    (1664, 928),
    (928, 1664),
    (1472, 1140),
    (1140, 1472),
    (1472, 1104),
    (1104, 1472),
)
_WAN_LIMITS = {
    "max_n": 4,
    "default_size": "1024x1024",
    "min_side": 512,
    "max_side": 1440,
    "max_pixels": 1440 * 1440,
}

KNOWN_MODELS: dict[str, ModelSpec] = {
    "qwen-image": ModelSpec(name="qwen-image", max_n=1, default_size="1328x1328", fixed_sizes=_QWEN_SIZES),
    # Model Studio documents qwen-image-plus with qwen-image's limits (same sizes, n=1, async API).
    "qwen-image-plus": ModelSpec(
        name="qwen-image-plus", max_n=1, default_size="1328x1328", fixed_sizes=_QWEN_SIZES
    ),
    "wan2.2-t2i-flash": ModelSpec(name="wan2.2-t2i-flash", **_WAN_LIMITS),  # type: ignore[arg-type]
    "wan2.2-t2i-plus": ModelSpec(name="wan2.2-t2i-plus", **_WAN_LIMITS),  # type: ignore[arg-type]
}
# Unknown models (gateways add them constantly) get only the generic checks.
GENERIC_MAX_N = 10


@dataclass(frozen=True)
class GenerationRequest:
    """A validated, normalised request: every field has its wire type."""

    model: str
    prompt: str
    n: int
    size: str
    response_format: ResponseFormat
    negative_prompt: str | None = None
    prompt_upsampling: bool | None = None
    seed: int | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)

    @property
    def width(self) -> int:
        return int(self.size.split("x")[0])

    @property
    def height(self) -> int:
        return int(self.size.split("x")[1])

    def to_openai_body(self) -> dict[str, Any]:
        """The JSON body of ``POST /v1/images/generations``."""
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": self.prompt,
            "n": self.n,
            "size": self.size,
            "response_format": self.response_format,
        }
        if self.negative_prompt is not None:
            body["negative_prompt"] = self.negative_prompt
        if self.prompt_upsampling is not None:
            body["prompt_upsampling"] = self.prompt_upsampling
        if self.seed is not None:
            # The seed document types seed as a string.
            body["seed"] = str(self.seed)
        body.update(self.extra_body)
        return body

    def to_dashscope_body(self) -> dict[str, Any]:
        """
        The JSON body of DashScope's ``POST /api/v1/services/aigc/text2image/image-synthesis``.

        ``n`` is always sent: the native default for wan2.2-t2i-* is 4 (and bills 4 images).
        ``prompt_upsampling`` is sent as ``prompt_extend``; ``extra_body`` fields join ``parameters``
        (``{"watermark": false}``).
        """
        text_input: dict[str, Any] = {"prompt": self.prompt}
        if self.negative_prompt is not None:
            text_input["negative_prompt"] = self.negative_prompt
        parameters: dict[str, Any] = {"size": f"{self.width}*{self.height}", "n": self.n}
        if self.seed is not None:
            parameters["seed"] = self.seed
        if self.prompt_upsampling is not None:
            parameters["prompt_extend"] = self.prompt_upsampling
        parameters.update(self.extra_body)
        return {"model": self.model, "input": text_input, "parameters": parameters}


def parse_size(size: object) -> tuple[int, int]:
    """Parse ``"1328x1328"`` or ``"1328*1328"`` into ``(width, height)``."""
    match = _SIZE_PATTERN.match(size) if isinstance(size, str) else None
    if not match:
        raise ImageGenerationValidationError(
            "size", size, "expected 'WIDTHxHEIGHT' or 'WIDTH*HEIGHT' with whole numbers, e.g. '1328x1328'"
        )
    return int(match.group(1)), int(match.group(2))


def coerce_int(parameter: str, value: object, allowed: str) -> int:
    """
    Accept an int or a string of ASCII digits (rendered templates are strings); refuse bools, floats and
    other scripts' digits (``int("٢")`` is 2 in Python, but no API reads it so).
    """
    if isinstance(value, bool):
        raise ImageGenerationValidationError(parameter, value, allowed)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str) and _ASCII_INT_PATTERN.fullmatch(value):
        return int(value)
    raise ImageGenerationValidationError(parameter, value, allowed)


def coerce_seconds(
    parameter: str, value: object, *, allow_zero: bool = False, allow_none: bool = False
) -> float | None:
    """
    A finite number of seconds (> 0, or >= 0 with ``allow_zero``) from a number or an ASCII numeric
    string; refuses bools, NaN and infinity (which pass a plain ``> 0`` check and then never end).
    """
    allowed = f"expected a finite number of seconds {'>= 0' if allow_zero else '> 0'}" + (
        ", or None" if allow_none else ""
    )
    if value is None and allow_none:
        return None
    number: float | None = None
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if numeric or (isinstance(value, str) and _ASCII_NUMBER_PATTERN.fullmatch(value)):
        number = float(value)  # type: ignore[arg-type]
    if number is None or not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise ImageGenerationValidationError(parameter, value, allowed)
    return number


def check_poll_settings(
    poll_interval: object,
    max_poll_interval: object,
    timeout: object = None,
    *,
    poll_interval_name: str = "poll_interval",
    timeout_name: str = "timeout",
    allow_zero_timeout: bool = True,
) -> None:
    """
    Refuse polling settings that would spin, never poll or never end (NaN, infinity, <= 0), naming the
    parameter. The one rule for the hook's ``wait_for_task``, the operator, the sensor and the trigger.

    :param poll_interval_name: how the caller calls ``poll_interval`` (the sensor: ``poke_interval``)
    :param timeout_name: how the caller calls ``timeout`` (the operator: ``wait_timeout``)
    :param allow_zero_timeout: whether a timeout of 0 (one status read, no wait) is accepted
    """
    for name, value in ((poll_interval_name, poll_interval), ("max_poll_interval", max_poll_interval)):
        if not isinstance(value, int | float):
            raise ImageGenerationValidationError(name, value, "expected a finite number of seconds > 0")
        coerce_seconds(name, value)
    assert isinstance(poll_interval, int | float) and isinstance(max_poll_interval, int | float)
    if max_poll_interval < poll_interval:
        raise ImageGenerationValidationError(
            "max_poll_interval",
            max_poll_interval,
            f"expected seconds >= {poll_interval_name} ({poll_interval})",
        )
    if timeout is not None:
        if not isinstance(timeout, int | float):
            raise ImageGenerationValidationError(
                timeout_name, timeout, f"expected seconds {'>= 0' if allow_zero_timeout else '> 0'}, or None"
            )
        coerce_seconds(timeout_name, timeout, allow_zero=allow_zero_timeout)


def check_flag(parameter: str, value: object) -> bool:
    """A boolean argument (``deferrable``, ``wait_for_completion``): anything else is refused."""
    if not isinstance(value, bool):
        raise ImageGenerationValidationError(parameter, value, "expected True or False")
    return value


def next_poll_interval(
    previous: float | None, elapsed: float, poll_interval: float, max_poll_interval: float
) -> float:
    """
    Seconds to wait before the next status query of a native task (shared by the hook and the trigger).

    As DashScope suggests: every ``poll_interval`` for the first 30 s, then doubling up to
    ``max_poll_interval`` (3 s, ..., 3 s, 6, 12, 24, 30, 30... with the defaults).

    :param previous: the previous wait (None before the first)
    :param elapsed: seconds since the task was first polled
    """
    first = min(poll_interval, max_poll_interval)
    if previous is None or elapsed < FAST_POLL_SECONDS:
        return first
    return min(max_poll_interval, max(previous, first) * 2)


def check_extra_body(extra_body: object, api_style: str | None = None) -> dict[str, Any]:
    """
    A copy of ``extra_body`` once it is a dict of JSON values (no NaN or infinity, which JSON cannot
    carry) that overrides no named parameter: the top-level names always, and for ``api_style=
    "dashscope"`` also the native names (``prompt_extend``, ``input``, ``parameters``).
    """
    if extra_body is None:
        return {}
    if not isinstance(extra_body, dict) or not all(isinstance(key, str) for key in extra_body):
        raise ImageGenerationValidationError(
            "extra_body", extra_body, "expected a dict of extra top-level JSON fields"
        )
    protected = NATIVE_NAMED_FIELDS if api_style == "dashscope" else NAMED_FIELDS
    clashing = sorted(protected.intersection(extra_body))
    if clashing:
        native = api_style == "dashscope" and not NAMED_FIELDS.issuperset(clashing)
        raise ImageGenerationValidationError(
            "extra_body",
            extra_body,
            f"{', '.join(clashing)} must be passed as the parameter(s) of that name, not in extra_body"
            + (
                " (prompt_extend is prompt_upsampling; input and parameters are built by the hook)"
                if native
                else ""
            ),
        )
    try:
        json.dumps(extra_body, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ImageGenerationValidationError(
            "extra_body",
            extra_body,
            f"expected JSON values only (strings, finite numbers, booleans, null, lists, dicts): {error}",
        ) from None
    return dict(extra_body)


def check_request_for_style(request: GenerationRequest, api_style: str) -> None:
    """What a request validated without knowing the API must also satisfy for ``api_style``."""
    if api_style == "dashscope":
        if request.response_format != "url":
            raise ImageGenerationValidationError(
                "response_format",
                request.response_format,
                "DashScope's native task API returns result URLs only: use 'url'",
            )
        check_extra_body(request.extra_body, api_style)


def coerce_bool(parameter: str, value: object) -> bool:
    """Accept a bool or the strings a rendered template gives ("true", "False", "0"...)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
    raise ImageGenerationValidationError(parameter, value, "expected a boolean (true or false)")


def _check_text(parameter: str, value: object, limit: int | None, model: str, *, required: bool) -> str:
    if not isinstance(value, str):
        raise ImageGenerationValidationError(parameter, value, "expected a string")
    if required and not value.strip():
        raise ImageGenerationValidationError(parameter, value, "must not be empty")
    if required and value.strip() in RENDERED_MISSING_VALUES:
        raise ImageGenerationValidationError(
            parameter,
            value,
            "looks like a template that rendered a missing value (a dag_run.conf key or param that was "
            "not set): pass the text to draw",
        )
    if limit is not None and len(value) > limit:
        raise ImageGenerationValidationError(
            parameter, value, f"{model} accepts at most {limit} characters, got {len(value)}"
        )
    return value


def validate_generation_request(
    *,
    prompt: object,
    model: object,
    n: object = 1,
    size: object = None,
    response_format: object = "url",
    negative_prompt: object = None,
    prompt_upsampling: object = None,
    seed: object = None,
    extra_body: object = None,
    api_style: object = None,
) -> GenerationRequest:
    """
    Validate one image generation request against the model table and normalise it.

    Strings are accepted wherever a rendered template would produce one (``n="2"``, ``seed="42"``,
    ``prompt_upsampling="false"``); sizes may use ``x`` or ``*``.

    :param api_style: ``openai`` or ``dashscope`` when known: the native API also protects its own
        names in ``extra_body`` and returns URLs only (the hook checks again before sending)

    :raises ImageGenerationValidationError: naming the parameter, the value and what is allowed
    """
    if not isinstance(model, str) or not model.strip():
        raise ImageGenerationValidationError(
            "model", model, f"expected a model name, e.g. one of {', '.join(KNOWN_MODELS)}"
        )
    model = model.strip()
    spec = KNOWN_MODELS.get(model)

    checked_prompt = _check_text(
        "prompt", prompt, spec.max_prompt_chars if spec else None, model, required=True
    )
    checked_negative = None
    if negative_prompt is not None:
        checked_negative = _check_text(
            "negative_prompt",
            negative_prompt,
            spec.max_negative_prompt_chars if spec else None,
            model,
            required=False,
        )

    max_n = spec.max_n if spec else GENERIC_MAX_N
    n_allowed = f"{model} accepts n=1 only" if max_n == 1 else f"{model} accepts a whole number 1-{max_n}"
    checked_n = coerce_int("n", n, n_allowed)
    if not 1 <= checked_n <= max_n:
        raise ImageGenerationValidationError("n", n, n_allowed)

    width, height = parse_size(size if size is not None else (spec.default_size if spec else DEFAULT_SIZE))
    if spec is not None and spec.fixed_sizes is not None:
        if (width, height) not in spec.fixed_sizes:
            raise ImageGenerationValidationError("size", size, spec.describe_sizes())
    elif spec is not None:
        if not (spec.min_side <= width <= spec.max_side and spec.min_side <= height <= spec.max_side) or (
            width * height > spec.max_pixels
        ):
            raise ImageGenerationValidationError("size", size, spec.describe_sizes())
    elif width < 1 or height < 1:
        raise ImageGenerationValidationError("size", size, "width and height must be positive")

    if response_format not in RESPONSE_FORMATS:
        raise ImageGenerationValidationError(
            "response_format", response_format, "expected 'url' or 'b64_json'"
        )

    checked_upsampling = (
        None if prompt_upsampling is None else coerce_bool("prompt_upsampling", prompt_upsampling)
    )

    checked_seed = None
    if seed is not None:
        seed_allowed = f"expected a whole number 0-{MAX_SEED} (an int or a string of digits)"
        checked_seed = coerce_int("seed", seed, seed_allowed)
        if not 0 <= checked_seed <= MAX_SEED:
            raise ImageGenerationValidationError("seed", seed, seed_allowed)

    checked_extra = check_extra_body(extra_body, api_style if isinstance(api_style, str) else None)

    request = GenerationRequest(
        model=model,
        prompt=checked_prompt,
        n=checked_n,
        size=f"{width}x{height}",
        response_format=response_format,  # type: ignore[arg-type]
        negative_prompt=checked_negative,
        prompt_upsampling=checked_upsampling,
        seed=checked_seed,
        extra_body=checked_extra,
    )
    if isinstance(api_style, str):
        check_request_for_style(request, api_style)
    return request
