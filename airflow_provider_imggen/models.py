"""
The one table of known models and the request validation built on it.

The hook, the operators and the emulator all validate through :func:`validate_generation_request`,
so a value the provider accepts is exactly a value the emulator accepts. Stdlib only: operators call
it at DAG-parse time.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from airflow_provider_imggen.exceptions import ImageGenerationValidationError

MAX_SEED = 2_147_483_647
RESPONSE_FORMATS = ("url", "b64_json")
_SIZE_PATTERN = re.compile(r"^\s*(\d+)\s*[x*X×]\s*(\d+)\s*$")
# Top-level request fields with a parameter of their own; extra_body may not override them silently.
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
# The native API's names for the same things (extra_body joins the native body's ``parameters``):
# ``prompt_extend`` is ``prompt_upsampling``; input/parameters/model would rewrite the body's structure.
NATIVE_NAMED_FIELDS = NAMED_FIELDS | {"prompt_extend", "input", "parameters"}
# The gateway's nested dialect sends these under ``parameters`` / ``input``: extra_body may not replace them.
NESTED_NAMED_FIELDS = NAMED_FIELDS | {"input", "parameters"}
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
# SUSPENDED (api-notes §6; the DashScope SDK lists it among the task statuses) is read as "not finished":
# the task still exists and may still run and bill, so it is polled like PENDING/RUNNING until it ends or
# the caller's wait_timeout runs out; failing on it would throw away a task that may be paid for.
TASK_STATUSES = ("PENDING", "RUNNING", "SUSPENDED", "SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN")
TASK_TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"})
TASK_ACTIVE_STATUSES = frozenset({"PENDING", "RUNNING", "SUSPENDED"})

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
    :param min_pixels: smallest width x height when sizes are a range
    :param max_aspect_ratio: largest long side / short side when sizes are a range (None: any)
    :param endpoints: the native endpoints serving it (``async``, ``sync``), the one used by default first
    :param quota: what the account may send to the default endpoint: requests per ``window_seconds`` and
        concurrent tasks
    :param sync_quota: the synchronous endpoint's quota when the model is served by both (None: ``quota``)
    :param docs: the documentation page its limits come from, by title
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
    min_pixels: int = 1
    max_aspect_ratio: float | None = None
    endpoints: tuple[str, ...] = ("async",)
    quota: Quota | None = None
    sync_quota: Quota | None = None
    docs: str = ""

    def describe_sizes(self) -> str:
        if self.fixed_sizes is not None:
            listed = ", ".join(f"{w}x{h}" for w, h in self.fixed_sizes)
            return f"{self.name} accepts exactly one of {listed}"
        if self.min_pixels > 1:
            text = (
                f"{self.name} accepts WxH with {self.min_pixels} to {self.max_pixels} pixels in all "
                f"({_square(self.min_pixels)} to {_square(self.max_pixels)})"
            )
        else:
            text = (
                f"{self.name} accepts WxH with each side {self.min_side}-{self.max_side} "
                f"and at most {self.max_pixels} pixels ({self.max_side}x{self.max_side})"
            )
        if self.max_aspect_ratio is not None:
            text += f", aspect ratio between 1:{self.max_aspect_ratio:g} and {self.max_aspect_ratio:g}:1"
        return text

    def size_allowed(self, width: int, height: int) -> bool:
        if self.fixed_sizes is not None:
            return (width, height) in self.fixed_sizes
        if not (self.min_side <= width <= self.max_side and self.min_side <= height <= self.max_side):
            return False
        if not self.min_pixels <= width * height <= self.max_pixels:
            return False
        ratio = max(width, height) / min(width, height)
        return self.max_aspect_ratio is None or ratio <= self.max_aspect_ratio


@dataclass(frozen=True)
class Quota:
    """
    An account's limit for one model (Beijing and Singapore; api-notes §6, "Rate limits").

    :param requests: requests (task submissions, or synchronous generations) per ``window_seconds``
    :param window_seconds: the window ``requests`` counts over
    :param concurrent: tasks (or synchronous generations) in flight at once; None when not documented
    """

    requests: int
    window_seconds: float
    concurrent: int | None

    def describe(self) -> str:
        per = (
            "s"
            if self.window_seconds == 1
            else ("min" if self.window_seconds == 60 else f"{self.window_seconds:g} s")
        )
        text = f"{self.requests}/{per}"
        return text + (f", {self.concurrent} concurrent" if self.concurrent is not None else "")


def _square(pixels: int) -> str:
    side = math.isqrt(pixels)
    return f"{side}x{side}" if side * side == pixels else str(pixels)


# qwen-image's size list (the Qwen-Image API reference, api-notes §7): exactly these five, 1664*928 the
# service's default. The older 1472*1140 / 1140*1472 of the gateway's seed document are refused by the
# service, so they are refused here before anything is billed.
_QWEN_SIZES = ((1664, 928), (1472, 1104), (1328, 1328), (1104, 1472), (928, 1664))
# Quotas count per Alibaba Cloud account (every key and workspace together), per model (api-notes §7).
_TASK_QUOTA = Quota(requests=2, window_seconds=1, concurrent=2)
# qwen-image / -plus on the synchronous endpoint: no concurrency quota.
_QWEN_SYNC_QUOTA = Quota(requests=2, window_seconds=1, concurrent=None)
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


KNOWN_MODELS: dict[str, ModelSpec] = {
    # Both endpoints serve qwen-image and qwen-image-plus; the task API stays the default (as before).
    "qwen-image": ModelSpec(
        name="qwen-image",
        max_n=1,
        default_size="1664x928",
        fixed_sizes=_QWEN_SIZES,
        endpoints=("async", "sync"),
        quota=_TASK_QUOTA,
        sync_quota=_QWEN_SYNC_QUOTA,
        docs=DOC_QWEN_IMAGE,
    ),
    # qwen-image-plus has qwen-image's limits (issue 15, api-notes §6).
    "qwen-image-plus": ModelSpec(
        name="qwen-image-plus",
        max_n=1,
        default_size="1664x928",
        fixed_sizes=_QWEN_SIZES,
        endpoints=("async", "sync"),
        quota=_TASK_QUOTA,
        sync_quota=_QWEN_SYNC_QUOTA,
        docs=DOC_QWEN_IMAGE,
    ),
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
    matches = difflib.get_close_matches(model, list(KNOWN_MODELS), n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_model_note(model: str) -> str | None:
    """
    For a model the table does not know, what the user should hear (None for a known model): only the
    generic checks apply, and the closest known name, in case of a typo.
    """
    if model in KNOWN_MODELS:
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


GatewayDialect = Literal["openai", "nested"]
GATEWAY_DIALECTS: tuple[str, ...] = ("openai", "nested")


@dataclass(frozen=True)
class GenerationRequest:
    """
    A validated, normalised request: every field has its wire type.

    :param size: ``WxH`` as the user set it; None leaves the size to the service (its model default), so
        the provider never overrides the service's defaults with its own
    :param watermark: ask the service to mark the images (its default: no mark)
    :param endpoint: the native endpoint asked for (``async``, ``sync``), None for the model's default
    """

    model: str
    prompt: str
    n: int
    size: str | None
    response_format: ResponseFormat
    negative_prompt: str | None = None
    prompt_upsampling: bool | None = None
    seed: int | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)
    watermark: bool | None = None
    endpoint: str | None = None

    @property
    def native_size(self) -> str | None:
        """The size as DashScope spells it (``W*H``), None when the service's default applies."""
        return self.size.replace("x", "*") if self.size is not None else None

    def to_openai_body(self, dialect: str = "openai") -> dict[str, Any]:
        """
        The JSON body of ``POST /v1/images/generations``.

        ``dialect`` ``openai``: every field at the top level (the seed document). ``nested``: also the whole
        of DashScope's ``parameters`` (n, size, seed, prompt_extend, watermark) and ``input`` (prompt,
        negative_prompt), for the relays that forward seed, negative prompt and prompt extension only
        there. Whole, because the most used relay (new-api, api-notes §7) *replaces* its own parameters
        and input with these objects: a partial ``parameters`` lost ``n`` and ``size`` (a Wan model then
        billed its default 4 images) and an ``input`` with only the negative prompt lost the prompt.
        """
        body: dict[str, Any] = {"model": self.model, "prompt": self.prompt, "n": self.n}
        if self.size is not None:
            body["size"] = self.size
        body["response_format"] = self.response_format
        if dialect == "nested":
            text_input: dict[str, Any] = {"prompt": self.prompt}
            if self.negative_prompt is not None:
                text_input["negative_prompt"] = self.negative_prompt
            body["input"] = text_input
            body["parameters"] = self._native_parameters(with_extra_body=False)
            body.update(self.extra_body)
            return body
        if self.negative_prompt is not None:
            body["negative_prompt"] = self.negative_prompt
        if self.prompt_upsampling is not None:
            body["prompt_upsampling"] = self.prompt_upsampling
        if self.seed is not None:
            # The seed document types seed as a string.
            body["seed"] = str(self.seed)
        if self.watermark is not None:
            body["watermark"] = self.watermark
        body.update(self.extra_body)
        return body

    def _native_parameters(self, *, with_extra_body: bool = True) -> dict[str, Any]:
        # n is always sent: the Wan V2 default is 4 (4 images billed). size only when set (the service's
        # default otherwise).
        parameters: dict[str, Any] = {"n": self.n}
        if self.size is not None:
            parameters["size"] = self.native_size
        if self.seed is not None:
            parameters["seed"] = self.seed
        if self.prompt_upsampling is not None:
            parameters["prompt_extend"] = self.prompt_upsampling
        if self.watermark is not None:
            parameters["watermark"] = self.watermark
        if with_extra_body:
            parameters.update(self.extra_body)
        return parameters

    def to_dashscope_body(self) -> dict[str, Any]:
        """
        The JSON body of DashScope's ``POST /api/v1/services/aigc/text2image/image-synthesis``.

        ``n`` is always sent: the native default for wan2.2-t2i-* is 4 (and bills 4 images).
        ``prompt_upsampling`` is sent as ``prompt_extend``; ``extra_body`` fields join ``parameters``.
        """
        text_input: dict[str, Any] = {"prompt": self.prompt}
        if self.negative_prompt is not None:
            text_input["negative_prompt"] = self.negative_prompt
        return {"model": self.model, "input": text_input, "parameters": self._native_parameters()}

    def to_multimodal_body(self) -> dict[str, Any]:
        """
        The JSON body of DashScope's synchronous ``POST /api/v1/services/aigc/multimodal-generation/
        generation``: the prompt as one user message, ``negative_prompt`` among the ``parameters``.
        """
        parameters = self._native_parameters()
        if self.negative_prompt is not None:
            parameters["negative_prompt"] = self.negative_prompt
        return {
            "model": self.model,
            "input": {"messages": [{"role": "user", "content": [{"text": self.prompt}]}]},
            "parameters": parameters,
        }


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


def check_extra_body(
    extra_body: object, api_style: str | None = None, dialect: str | None = None
) -> dict[str, Any]:
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
    if dialect == "nested" and api_style != "dashscope":
        protected = NESTED_NAMED_FIELDS
    clashing = sorted(protected.intersection(extra_body))
    if clashing:
        native = api_style is not None and not NAMED_FIELDS.issuperset(clashing)
        raise ImageGenerationValidationError(
            "extra_body",
            extra_body,
            f"{', '.join(clashing)} must be passed as the parameter(s) of that name, not in extra_body"
            + (
                " (prompt_extend is prompt_upsampling; input and parameters are built by the hook: with the"
                " nested gateway dialect, or api_style dashscope)"
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


def check_request_for_style(request: GenerationRequest, api_style: str, dialect: str | None = None) -> None:
    """What a request validated without knowing the API must also satisfy for ``api_style``."""
    if api_style != "dashscope":
        if request.endpoint is not None:
            raise ImageGenerationValidationError(
                "endpoint",
                request.endpoint,
                "chooses between DashScope's native endpoints (connection api_style 'dashscope'); an "
                "OpenAI-compatible gateway has one endpoint and picks the upstream one itself: leave it "
                "unset",
            )
        if dialect == "nested":
            check_extra_body(request.extra_body, api_style, dialect)
    if api_style == "dashscope":
        check_endpoint(request.model, request.endpoint)
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
    watermark: object = None,
    endpoint: object = None,
    dialect: object = None,
) -> GenerationRequest:
    """
    Validate one image generation request against the model table and normalise it.

    Strings are accepted wherever a rendered template would produce one (``n="2"``, ``seed="42"``,
    ``prompt_upsampling="false"``); sizes may use ``x`` or ``*``.

    :param api_style: ``openai`` or ``dashscope`` when known: the native API also protects its own
        names in ``extra_body``, returns URLs only and has two endpoints (the hook checks again before
        sending)
    :param watermark: ask the service to mark the images
    :param endpoint: the native endpoint (``async`` or ``sync``); None for the model's default
    :param dialect: the gateway's dialect (``openai`` or ``nested``) when known

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

    checked_size = None
    if size is not None:
        width, height = parse_size(size)
        if spec is not None:
            if width < 1 or height < 1 or not spec.size_allowed(width, height):
                raise ImageGenerationValidationError("size", size, spec.describe_sizes())
        elif width < 1 or height < 1:
            raise ImageGenerationValidationError("size", size, "width and height must be positive")
        checked_size = f"{width}x{height}"

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

    if isinstance(extra_body, dict) and "watermark" in extra_body and watermark is None:
        # Before it was a parameter, watermark could only travel in extra_body: still read from there.
        extra_body = dict(extra_body)
        watermark = extra_body.pop("watermark")
    checked_watermark = None if watermark is None else coerce_bool("watermark", watermark)
    if endpoint is not None and endpoint not in ENDPOINTS:
        check_endpoint(model, endpoint)  # raises, naming the endpoints
    checked_extra = check_extra_body(
        extra_body,
        api_style if isinstance(api_style, str) else None,
        dialect if isinstance(dialect, str) else None,
    )

    request = GenerationRequest(
        model=model,
        prompt=checked_prompt,
        n=checked_n,
        size=checked_size,
        response_format=response_format,  # type: ignore[arg-type]
        negative_prompt=checked_negative,
        prompt_upsampling=checked_upsampling,
        seed=checked_seed,
        extra_body=checked_extra,
        watermark=checked_watermark,
        endpoint=endpoint,  # type: ignore[arg-type]
    )
    if isinstance(api_style, str):
        check_request_for_style(request, api_style, dialect if isinstance(dialect, str) else None)
    elif endpoint is not None:
        check_endpoint(model, endpoint)
    return request
