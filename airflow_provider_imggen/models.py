"""
The one table of known models and the request validation built on it.

The hook, the operators and the emulator all validate through :func:`validate_generation_request`,
so a value the provider accepts is exactly a value the emulator accepts. Stdlib only: operators call
it at DAG-parse time.
"""

from __future__ import annotations

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
    """Accept an int or a string of digits (rendered templates are strings); refuse bools and floats."""
    if isinstance(value, bool):
        raise ImageGenerationValidationError(parameter, value, allowed)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    raise ImageGenerationValidationError(parameter, value, allowed)


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
) -> GenerationRequest:
    """
    Validate one image generation request against the model table and normalise it.

    Strings are accepted wherever a rendered template would produce one (``n="2"``, ``seed="42"``,
    ``prompt_upsampling="false"``); sizes may use ``x`` or ``*``.

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

    checked_extra: dict[str, Any] = {}
    if extra_body is not None:
        if not isinstance(extra_body, dict) or not all(isinstance(key, str) for key in extra_body):
            raise ImageGenerationValidationError(
                "extra_body", extra_body, "expected a dict of extra top-level JSON fields"
            )
        clashing = sorted(NAMED_FIELDS.intersection(extra_body))
        if clashing:
            raise ImageGenerationValidationError(
                "extra_body",
                extra_body,
                f"{', '.join(clashing)} must be passed as the parameter(s) of that name, not in extra_body",
            )
        checked_extra = dict(extra_body)

    return GenerationRequest(
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
