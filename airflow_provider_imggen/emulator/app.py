"""
FastAPI application emulating the image generation gateway and its object store.

Wire behaviour follows the gateway contract (seed document and API notes): the OpenAI-compatible
``POST /v1/images/generations``, DashScope's native asynchronous task API (``POST
/api/v1/services/aigc/text2image/image-synthesis`` with ``X-DashScope-Async: enable``, ``GET
/api/v1/tasks/{task_id}``, ``POST /api/v1/tasks/{task_id}/cancel``), signed result URLs served by an OSS-like
``GET /results/...`` (XML errors, ``Expires`` checks), and injectable faults (429/500/503, dropped
connections, truncated downloads, HTTP 200 with an error body, FAILED tasks, per-image failures, expired
tasks) drawn from one seeded RNG or scripted, so that a sequential test run repeats exactly.

Validation goes through :func:`airflow_provider_imggen.models.validate_generation_request`, the same table the
provider uses, so the emulator can never accept what the provider refuses (or the reverse).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import hashlib
import hmac
import json
import logging
import math
import random
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlencode
from xml.sax.saxutils import escape as xml_escape

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import Message, Receive, Scope, Send

from airflow_provider_imggen.emulator.images import render_png
from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from airflow_provider_imggen.models import (
    KNOWN_MODELS,
    MAX_SEED,
    NAMED_FIELDS,
    GenerationRequest,
    validate_generation_request,
)

log = logging.getLogger(__name__)

ErrorStyle = Literal["openai", "dashscope"]
FaultName = Literal["429", "500", "503", "drop", "truncate", "200_error", "moderation"]
# What FaultConfig.fail_next may script; "none" scripts a normal answer.
SCRIPTABLE_FAULTS = ("429", "500", "503", "drop", "200_error", "moderation", "none")

# Keys under which the outermost ASGI layer stores per-request values in the scope (see _EmulatorFastAPI).
_RAW_SEND = "imggen.raw_send"
_REQUEST_ID = "imggen.request_id"
# Result URLs of evicted images answer 404 NoSuchKey, like objects past their lifecycle in a real bucket.
_MAX_REMEMBERED_IMAGES = 10_000
# Evicted native tasks read as UNKNOWN, like task ids past their 24 h lifetime.
_MAX_REMEMBERED_TASKS = 10_000
_SEED_MODULUS = MAX_SEED + 1
_DISCONNECT_WAIT_SECONDS = 5.0


@dataclass
class FaultConfig:
    """
    Faults the emulator injects. Rates are probabilities in [0, 1].

    API faults are picked by one draw per API call (generation or model list, after auth) against the
    cumulative rates in the order 429, 500, 503, drop, 200_error; ``rate_truncate`` applies to image
    downloads (its own RNG, so downloads interleaving with API calls do not shift the API fault sequence).
    ``fail_next`` scripts the next API calls exactly (``["429", "429"]``: two 429s, then the rates apply
    again); a scripted call does not consume a draw. ``"moderation"`` (400 DataInspectionFailed) can only
    be scripted: it stands for the content check no client can do beforehand. API calls are the
    generation, model-list, task submission, task status and task cancel requests.

    Native tasks (DashScope's asynchronous API) read PENDING for ``task_pending_ms`` after submission, then
    RUNNING for ``task_duration_ms``, then SUCCEEDED (or FAILED); each task keeps the timings in force when
    it was submitted. Tasks older than ``task_ttl_ms`` (read at query time) are UNKNOWN. The next submitted
    tasks can be scripted: ``fail_next_tasks`` (``["DataInspectionFailed", "none"]``: the next task ends
    FAILED with that code, the one after normally) and ``fail_next_task_images`` (``[[1], [0, 2]]``: in the
    next task image 1 fails, in the one after images 0 and 2; the task still SUCCEEDS with the others).
    """

    latency_ms: float = 0  # added to every generation request
    download_latency_ms: float = 0
    rate_429: float = 0
    rate_500: float = 0
    rate_503: float = 0
    rate_drop: float = 0  # connection dropped, no HTTP response at all
    rate_truncate: float = 0  # download sends the full Content-Length, then about half the body, then closes
    rate_200_error: float = 0  # gateway quirk: HTTP 200 whose JSON body is an error
    retry_after_seconds: float = 1.0  # sent with 429s as Retry-After (ceil, seconds) and retry-after-ms
    error_style: ErrorStyle = "openai"
    seed: int = 0
    fail_next: tuple[str, ...] = ()
    task_pending_ms: float = 0
    task_duration_ms: float = 0
    task_ttl_ms: float = 86_400_000  # DashScope task ids live 24 h
    fail_next_tasks: tuple[str, ...] = ()
    fail_next_task_images: tuple[tuple[int, ...], ...] = ()

    def validated(self) -> FaultConfig:
        """Return a copy with numeric fields coerced, raising ValueError on nonsense values."""
        values: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name == "error_style":
                if value not in ("openai", "dashscope"):
                    raise ValueError(f"error_style must be 'openai' or 'dashscope', got {value!r}")
            elif item.name == "fail_next":
                if isinstance(value, str) or not isinstance(value, list | tuple):
                    raise ValueError(f"fail_next must be a list of fault names, got {value!r}")
                value = tuple("none" if name is None else str(name) for name in value)
                unknown = [name for name in value if name not in SCRIPTABLE_FAULTS]
                if unknown:
                    raise ValueError(
                        f"fail_next: unknown fault(s) {unknown}; known: {list(SCRIPTABLE_FAULTS)}"
                    )
            elif item.name == "fail_next_tasks":
                value = _validated_codes(value)
            elif item.name == "fail_next_task_images":
                value = _validated_index_lists(value)
            elif item.name == "seed":
                if isinstance(value, bool) or not isinstance(value, int | str):
                    raise ValueError(f"seed must be an integer, got {value!r}")
                value = int(value)
            else:
                if isinstance(value, bool) or not isinstance(value, int | float | str):
                    raise ValueError(f"{item.name} must be a number, got {value!r}")
                value = float(value)
                if not math.isfinite(value) or value < 0:
                    raise ValueError(f"{item.name} must be a finite number >= 0, got {value!r}")
                if item.name.startswith("rate_") and value > 1:
                    raise ValueError(f"{item.name} is a probability and must be <= 1, got {value!r}")
            values[item.name] = value
        return FaultConfig(**values)


def _validated_codes(value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ValueError(f"fail_next_tasks must be a list of error codes (or 'none'), got {value!r}")
    codes = tuple("none" if code is None else code for code in value)
    if not all(isinstance(code, str) and code.strip() for code in codes):
        raise ValueError(f"fail_next_tasks: each entry must be an error code (or 'none'), got {value!r}")
    return codes


def _validated_index_lists(value: object) -> tuple[tuple[int, ...], ...]:
    allowed = "fail_next_task_images must be a list of lists of image indexes (whole numbers >= 0)"
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ValueError(f"{allowed}, got {value!r}")
    lists = []
    for indexes in value:
        if isinstance(indexes, str) or not isinstance(indexes, list | tuple):
            raise ValueError(f"{allowed}, got {value!r}")
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indexes):
            raise ValueError(f"{allowed}, got {value!r}")
        lists.append(tuple(indexes))
    return tuple(lists)


@dataclass
class EmulatorConfig:
    """Static configuration of one emulator instance; ``faults`` are the defaults ``reset()`` returns to."""

    api_key: str = field(default="sk-test", repr=False)
    url_ttl_seconds: float = 86400
    # Random per instance: URLs signed by one emulator do not verify on another (as with real stores).
    signing_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    access_key_id: str = "LTAI5tEmulatorKeyId00"
    faults: FaultConfig = field(default_factory=FaultConfig)


@dataclass(frozen=True)
class _ImageParams:
    model: str
    prompt: str
    negative_prompt: str | None
    seed: int
    width: int
    height: int


# Messages of the task failures the emulator can inject (DashScope's wording where known).
_TASK_FAILURE_MESSAGES = {
    "InvalidParameter": "The request parameters are invalid for this model.",
    "DataInspectionFailed": "Output data may contain inappropriate content.",
    "InternalError.Algo": "An internal algorithm error occurred while generating the image.",
}
# A failed image of a task that otherwise SUCCEEDED (an output content check, typically).
_IMAGE_FAILURE = {"code": "DataInspectionFailed", "message": "Output data may contain inappropriate content."}


@dataclass
class _Task:
    """One native task. Its status is a function of the wall clock (see :meth:`status_at`)."""

    task_id: str
    images: tuple[_ImageParams, ...]
    orig_prompt: str
    actual_prompt: str
    submitted_at: float
    pending_s: float
    duration_s: float
    failure_code: str | None
    failed_images: frozenset[int]
    log_entry: dict[str, Any]
    canceled_at: float | None = None
    expired: bool = False

    @property
    def scheduled_at(self) -> float:
        return self.submitted_at + self.pending_s

    @property
    def ended_at(self) -> float:
        return self.scheduled_at + self.duration_s

    @property
    def succeeded_count(self) -> int:
        return 0 if self.failure_code else len(self.images) - len(self.failed_images)

    def status_at(self, now: float, ttl_s: float) -> str:
        if self.expired or now - self.submitted_at > ttl_s:
            return "UNKNOWN"
        if self.canceled_at is not None:
            return "CANCELED"
        if now < self.scheduled_at:
            return "PENDING"
        if now < self.ended_at:
            return "RUNNING"
        return "FAILED" if self.failure_code else "SUCCEEDED"


class EmulatorState:
    """
    All mutable state of one emulator: faults and their RNGs, the request log, the image registry.

    Shared by the HTTP admin routes and :class:`~airflow_provider_imggen.emulator.server.EmulatorServer`
    (which calls it from the test thread while the server thread serves), hence one lock around everything.
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._log: list[dict[str, Any]] = []
        self._images: collections.OrderedDict[str, _ImageParams] = collections.OrderedDict()
        self._tasks: collections.OrderedDict[str, _Task] = collections.OrderedDict()
        self._faults = config.faults.validated()
        self._generation_rng = random.Random(self._faults.seed)
        self._download_rng = random.Random(self._faults.seed + 1)

    # Faults -------------------------------------------------------------------------------------------
    @property
    def faults(self) -> FaultConfig:
        with self._lock:
            return self._faults

    def set_faults(self, **fields: Any) -> FaultConfig:
        """Merge ``fields`` into the current faults and restart both RNGs from the (new) seed."""
        known = {item.name for item in dataclasses.fields(FaultConfig)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(
                f"unknown fault field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        with self._lock:
            merged = dataclasses.replace(self._faults, **fields).validated()
            self._faults = merged
            self._generation_rng = random.Random(merged.seed)
            self._download_rng = random.Random(merged.seed + 1)
            return merged

    def draw_api_fault(self) -> FaultName | None:
        """The fault for one API call: the next scripted one, else one RNG draw (in arrival order)."""
        with self._lock:
            faults = self._faults
            if faults.fail_next:
                scripted, *rest = faults.fail_next
                self._faults = dataclasses.replace(faults, fail_next=tuple(rest))
                return None if scripted == "none" else scripted  # type: ignore[return-value]
            u = self._generation_rng.random()
        threshold = 0.0
        for name, rate in (
            ("429", faults.rate_429),
            ("500", faults.rate_500),
            ("503", faults.rate_503),
            ("drop", faults.rate_drop),
            ("200_error", faults.rate_200_error),
        ):
            threshold += rate
            if u < threshold:
                return name  # type: ignore[return-value]
        return None

    def draw_task_outcome(self) -> tuple[str | None, frozenset[int]]:
        """The scripted outcome of the next submitted task: (failure code or None, failing image indexes)."""
        with self._lock:
            faults = self._faults
            code: str | None = None
            failed: frozenset[int] = frozenset()
            if faults.fail_next_tasks:
                scripted, *rest = faults.fail_next_tasks
                code = None if scripted == "none" else scripted
                faults = dataclasses.replace(faults, fail_next_tasks=tuple(rest))
            if faults.fail_next_task_images:
                indexes, *remaining = faults.fail_next_task_images
                failed = frozenset(indexes)
                faults = dataclasses.replace(faults, fail_next_task_images=tuple(remaining))
            self._faults = faults
            return code, failed

    def draw_truncate(self) -> bool:
        with self._lock:
            return self._download_rng.random() < self._faults.rate_truncate

    # Request log --------------------------------------------------------------------------------------
    def record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._log.append(entry)
        log.debug(
            "%s %s -> %s fault=%s billed=%s request_id=%s",
            entry["method"],
            entry["path"],
            entry["status"],
            entry["fault"],
            entry["billed_images"],
            entry["request_id"],
        )

    def requests_log(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(entry) for entry in self._log]

    def billed_images(self) -> int:
        with self._lock:
            return sum(entry["billed_images"] for entry in self._log)

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def reset(self) -> None:
        """Faults back to the configured defaults (RNGs reseeded); log and tasks cleared; issued URLs stay."""
        self.set_faults(**dataclasses.asdict(self.config.faults))
        self.clear_log()
        with self._lock:
            self._tasks.clear()

    # Images -------------------------------------------------------------------------------------------
    def remember_image(self, image_id: str, params: _ImageParams) -> None:
        with self._lock:
            self._images[image_id] = params
            self._images.move_to_end(image_id)
            while len(self._images) > _MAX_REMEMBERED_IMAGES:
                self._images.popitem(last=False)

    def lookup_image(self, image_id: str) -> _ImageParams | None:
        with self._lock:
            return self._images.get(image_id)

    # Native tasks ---------------------------------------------------------------------------------------
    def add_task(self, task: _Task) -> None:
        with self._lock:
            self._tasks[task.task_id] = task
            while len(self._tasks) > _MAX_REMEMBERED_TASKS:
                self._tasks.popitem(last=False)

    def lookup_task(self, task_id: str) -> tuple[_Task | None, str]:
        """The task (a snapshot) and its status now; ``(None, "UNKNOWN")`` for an unknown id."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return None, "UNKNOWN"
            return dataclasses.replace(task), task.status_at(time.time(), self._faults.task_ttl_ms / 1000)

    def cancel_task(self, task_id: str) -> str:
        """Cancel a PENDING task (its images are then not billed); returns the status it had."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return "UNKNOWN"
            now = time.time()
            status = task.status_at(now, self._faults.task_ttl_ms / 1000)
            if status == "PENDING":
                task.canceled_at = now
                task.log_entry["billed_images"] = 0
            return status

    def expire_task(self, task_id: str) -> bool:
        """Make a task read as UNKNOWN from now on, as if its 24 h had passed; False if there is none."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is not None:
                task.expired = True
            return task is not None

    def tasks(self) -> list[dict[str, Any]]:
        """Every remembered task, oldest first: id, status now, model, n, outcome (for tests and humans)."""
        with self._lock:
            now, ttl_s = time.time(), self._faults.task_ttl_ms / 1000
            return [
                {
                    "task_id": task.task_id,
                    "task_status": task.status_at(now, ttl_s),
                    "model": task.images[0].model,
                    "n": len(task.images),
                    "failure_code": task.failure_code,
                    "failed_images": sorted(task.failed_images),
                    "submitted_at": task.submitted_at,
                }
                for task in self._tasks.values()
            ]

    # URL signing (OSS V1 style query-string signature) -------------------------------------------------
    def sign(self, path: str, expires: int) -> str:
        string_to_sign = f"GET\n\n\n{expires}\n{path}"
        digest = hmac.new(self.config.signing_secret, string_to_sign.encode("utf-8"), hashlib.sha1).digest()
        return base64.b64encode(digest).decode("ascii")


# Helpers --------------------------------------------------------------------------------------------------
def _digest(*parts: object) -> bytes:
    hasher = hashlib.sha256()
    for part in parts:
        encoded = repr(part).encode("utf-8", "surrogatepass")
        hasher.update(len(encoded).to_bytes(8, "big") + encoded)
    return hasher.digest()


def _default_seed(model: str, prompt: str, negative_prompt: str | None, size: str) -> int:
    """The seed used when a request names none: derived from the request so every run repeats."""
    return int.from_bytes(_digest("seed", model, prompt, negative_prompt, size)[:8], "big") % _SEED_MODULUS


def _image_id(params: _ImageParams) -> str:
    return _digest(
        "image", params.model, params.prompt, params.negative_prompt, params.seed, params.width, params.height
    ).hex()[:32]


def _image_params(validated: GenerationRequest) -> list[_ImageParams]:
    """One image per index; image ``i`` uses ``seed + i`` (a seed derived from the request when none)."""
    seed = validated.seed
    if seed is None:
        seed = _default_seed(validated.model, validated.prompt, validated.negative_prompt, validated.size)
    return [
        _ImageParams(
            model=validated.model,
            prompt=validated.prompt,
            negative_prompt=validated.negative_prompt,
            seed=(seed + index) % _SEED_MODULUS,
            width=validated.width,
            height=validated.height,
        )
        for index in range(validated.n)
    ]


def _upsampled_prompt(validated: GenerationRequest) -> str | None:
    """The prompt as the API rewrites it; prompt_upsampling (prompt_extend) defaults to true."""
    return f"{validated.prompt}, highly detailed" if validated.prompt_upsampling in (None, True) else None


def _dashscope_time(epoch: float) -> str:
    """DashScope's timestamp format, ``2025-01-08 16:03:59.840`` (the emulator uses UTC)."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


async def _json_object(request: Request) -> dict[str, Any] | str:
    """The request's body as a JSON object, or the message saying why it is not one."""
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"The request body is not valid JSON: {exc}"
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    return body


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _request_id(request: Request) -> str:
    return str(request.scope.get(_REQUEST_ID) or uuid.uuid4())


def _presented_key(request: Request) -> str | None:
    """The API key as the client sent it (None when there is no Authorization header at all)."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, rest = header.partition(" ")
    return rest.strip() if scheme.lower() == "bearer" else header


def _is_authorized(request: Request, api_key: str) -> bool:
    presented = _presented_key(request)
    return presented is not None and hmac.compare_digest(presented.encode(), api_key.encode())


def _error_response(
    state: EmulatorState,
    request_id: str,
    *,
    status: int,
    code: str,
    message: str,
    error_type: str,
    param: str | None = None,
    dashscope_code: str | None = None,
    headers: dict[str, str] | None = None,
    style: ErrorStyle | None = None,
) -> JSONResponse:
    """
    Error body in ``style`` (default: the configured one): OpenAI ``{"error": {...}}`` or DashScope
    ``{code, message, request_id}``. The native task routes always answer in DashScope's shape.
    """
    if (style or state.faults.error_style) == "dashscope":
        body: dict[str, Any] = {"code": dashscope_code or code, "message": message, "request_id": request_id}
    else:
        body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _unauthorized(
    state: EmulatorState, request: Request, request_id: str, style: ErrorStyle | None = None
) -> JSONResponse:
    presented = _presented_key(request)
    if presented is None:
        message = (
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    else:
        # Echoed verbatim on purpose, like real gateways: the provider must redact keys from error messages.
        message = f"Incorrect API key provided: {presented}"
    return _error_response(
        state,
        request_id,
        status=401,
        code="invalid_api_key",
        dashscope_code="InvalidApiKey",
        message=message,
        error_type="invalid_request_error",
        style=style,
    )


def _oss_error(code: str, message: str, request_id: str, status: int) -> Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{xml_escape(code)}</Code><Message>{xml_escape(message)}</Message>"
        f"<RequestId>{xml_escape(request_id)}</RequestId><HostId>emulator</HostId></Error>"
    )
    return Response(
        body, status_code=status, media_type="application/xml", headers={"x-oss-request-id": request_id}
    )


async def _wait_for_disconnect(receive: Receive) -> None:
    """Wait for the server to notice the connection is gone, so it does not log an unfinished response."""

    async def drain() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(drain(), timeout=_DISCONNECT_WAIT_SECONDS)
    except TimeoutError:
        log.debug("connection did not report a disconnect within %ss", _DISCONNECT_WAIT_SECONDS)


def _transport_of(send: Send) -> asyncio.Transport | None:
    # uvicorn passes send as a bound method of its RequestResponseCycle, which holds the transport.
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    return transport if transport is not None and hasattr(transport, "abort") else None


async def _abort_connection(send: Send, receive: Receive) -> None:
    """
    Drop the connection without any HTTP response (TCP RST): clients see a connection error.

    Outside uvicorn (no transport to reach), fall back to starting a response and raising, which makes the
    server close the connection mid-response.
    """
    transport = _transport_of(send)
    if transport is not None:
        transport.abort()
        await _wait_for_disconnect(receive)
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1")]})
    raise ConnectionAbortedError("emulator fault: connection dropped")


class _DroppedConnection(Response):
    """Response that answers nothing: it aborts the underlying connection."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _abort_connection(scope.get(_RAW_SEND, send), receive)


class _TruncatedResponse(Response):
    """
    Sends the full Content-Length, about half the body, then closes the connection.

    The close is a graceful one (FIN after the buffered half is flushed) rather than an abort: an abort
    discards whatever is still buffered, which would make what the client receives depend on socket buffer
    sizes; this way the client deterministically gets exactly half the bytes and then EOF.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send(
            {"type": "http.response.body", "body": self.body[: len(self.body) // 2], "more_body": True}
        )
        transport = _transport_of(scope.get(_RAW_SEND, send))
        if transport is None:
            raise ConnectionAbortedError("emulator fault: download truncated")
        transport.close()
        await _wait_for_disconnect(receive)


class _EmulatorFastAPI(FastAPI):
    """
    FastAPI whose outermost ASGI layer assigns the request id and keeps uvicorn's raw ``send``.

    Starlette's middleware wraps ``send`` in closures, so a route can only reach the transport (to drop a
    connection) through the raw callable stored here. Every response, including framework 404s, gets the
    ``x-request-id`` header.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request_id = str(uuid.uuid4())
        scope[_REQUEST_ID] = request_id
        scope[_RAW_SEND] = send
        header = (b"x-request-id", request_id.encode("ascii"))

        async def send_with_request_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        await super().__call__(scope, receive, send_with_request_id)


def create_app(config: EmulatorConfig | None = None) -> FastAPI:
    """Build the emulator application; its mutable state is ``app.state.emulator`` (an EmulatorState)."""
    config = config or EmulatorConfig()
    state = EmulatorState(config)
    app = _EmulatorFastAPI(title="imggen emulator", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.emulator = state

    def record(
        request: Request,
        request_id: str,
        status: int,
        *,
        kind: str,
        billed: int = 0,
        model: str | None = None,
        n: int | None = None,
        fault: FaultName | None = None,
        task_id: str | None = None,
    ) -> dict[str, Any]:
        """
        Log one request. ``kind``: generate, submit (one entry per task submission; ``task_id`` set when
        it created a task), task (status query), cancel, download or models.
        """
        entry = {
            "time": time.time(),
            "kind": kind,
            "method": request.method,
            "path": request.url.path,
            "status": status,
            "request_id": request_id,
            "billed_images": billed,
            "model": model,
            "n": n,
            "fault": fault,
            "task_id": task_id,
        }
        state.record(entry)
        return entry

    def _invalid(
        request_id: str, message: str, param: str | None, style: ErrorStyle | None = None
    ) -> JSONResponse:
        return _error_response(
            state,
            request_id,
            status=400,
            code="InvalidParameter",
            message=message,
            error_type="invalid_request_error",
            param=param,
            style=style,
        )

    def _fault_response(
        fault: FaultName, request_id: str, faults: FaultConfig, style: ErrorStyle | None = None
    ) -> Response:
        if fault == "drop":
            return _DroppedConnection()
        if fault == "429":
            return _error_response(
                state,
                request_id,
                status=429,
                code="Throttling.RateQuota",
                message="Rate limit exceeded: requests rate limit exceeded, please try again later.",
                error_type="rate_limit_error",
                style=style,
                headers={
                    "Retry-After": str(math.ceil(faults.retry_after_seconds)),
                    "retry-after-ms": str(round(faults.retry_after_seconds * 1000)),
                },
            )
        if fault == "moderation":
            return _error_response(
                state,
                request_id,
                status=400,
                code="DataInspectionFailed",
                message="Input data may contain inappropriate content.",
                error_type="invalid_request_error",
                style=style,
            )
        if fault == "500":
            return _error_response(
                state,
                request_id,
                status=500,
                code="InternalError",
                message="An internal error has occurred, please try again later or contact service support.",
                error_type="server_error",
                style=style,
            )
        if fault == "503":
            return _error_response(
                state,
                request_id,
                status=503,
                code="ModelUnavailable",
                message="The model is temporarily unavailable, please try again later.",
                error_type="server_error",
                style=style,
            )
        # 200_error: the gateway relays a failed upstream task with HTTP 200.
        return _error_response(
            state,
            request_id,
            status=200,
            code="InternalError.Algo",
            message="upstream task failed: InternalError.Algo",
            error_type="upstream_error",
            style=style,
        )

    def _signed_url(request: Request, params: _ImageParams, issued_at: float | None = None) -> str:
        """A signed URL of the image, valid ``url_ttl_seconds`` from ``issued_at`` (default: now)."""
        image_id = _image_id(params)
        state.remember_image(image_id, params)
        now = time.time() if issued_at is None else issued_at
        path = f"/results/{datetime.fromtimestamp(now, UTC):%Y%m%d}/{image_id}.png"
        # Whole seconds, rounded up, so a positive TTL never yields an already-expired URL.
        expires = math.ceil(now + config.url_ttl_seconds)
        query = urlencode(
            {
                "Expires": expires,
                "OSSAccessKeyId": config.access_key_id,
                "Signature": state.sign(path, expires),
            }
        )
        # The Host header the client used, so the URL works from wherever the client is.
        host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
        return f"{request.url.scheme}://{host}{path}?{query}"

    def _refuse(request: Request, request_id: str, *, kind: str, style: ErrorStyle | None) -> Response | None:
        """The 401 or the injected fault this API call gets (logged), or None to serve it."""
        if not _is_authorized(request, config.api_key):
            record(request, request_id, 401, kind=kind)
            return _unauthorized(state, request, request_id, style)
        fault = state.draw_api_fault()
        if fault is None:
            return None
        response = _fault_response(fault, request_id, state.faults, style)
        record(request, request_id, 0 if fault == "drop" else response.status_code, kind=kind, fault=fault)
        return response

    @app.post("/v1/images/generations")
    async def generate_images(request: Request) -> Response:
        request_id = _request_id(request)
        faults = state.faults
        if faults.latency_ms > 0:
            await asyncio.sleep(faults.latency_ms / 1000)
        refused = _refuse(request, request_id, kind="generate", style=None)
        if refused is not None:
            return refused

        body = await _json_object(request)
        if isinstance(body, str):
            record(request, request_id, 400, kind="generate")
            return _invalid(request_id, body, None)

        model = body.get("model")
        try:
            validated = validate_generation_request(
                prompt=body.get("prompt"),
                model=model,
                # JSON null means "not given" for the optional fields, as with the OpenAI client.
                n=1 if body.get("n") is None else body["n"],
                size=body.get("size"),
                response_format="url" if body.get("response_format") is None else body["response_format"],
                negative_prompt=body.get("negative_prompt"),
                prompt_upsampling=body.get("prompt_upsampling"),
                seed=body.get("seed"),
                extra_body={key: value for key, value in body.items() if key not in NAMED_FIELDS},
            )
        except ImageGenerationValidationError as exc:
            record(request, request_id, 400, kind="generate", model=model if isinstance(model, str) else None)
            return _invalid(request_id, str(exc), exc.parameter)

        revised_prompt = _upsampled_prompt(validated)
        data: list[dict[str, str]] = []
        for params in _image_params(validated):
            item: dict[str, str]
            if validated.response_format == "b64_json":
                # Rendering and encoding take tens of ms per image: keep them off the event loop.
                png = await run_in_threadpool(
                    render_png,
                    params.model,
                    params.prompt,
                    params.negative_prompt,
                    params.seed,
                    params.width,
                    params.height,
                )
                item = {"b64_json": await run_in_threadpool(_b64encode, png)}
            else:
                item = {"url": _signed_url(request, params)}
            if revised_prompt is not None:
                item["revised_prompt"] = revised_prompt
            data.append(item)

        billed = validated.n
        record(request, request_id, 200, kind="generate", billed=billed, model=validated.model, n=billed)
        return JSONResponse(
            {
                "created": int(time.time()),
                "data": data,
                "usage": {
                    "total_tokens": 0,
                    "input_tokens": 0,
                    "output_tokens": 0,
                    "input_tokens_details": {"text_tokens": 0, "image_tokens": 0},
                },
            }
        )

    @app.get("/results/{date}/{image_id}.png")
    async def download_image(request: Request, date: str, image_id: str) -> Response:
        request_id = _request_id(request)
        params = request.query_params
        expires_text, signature = params.get("Expires"), params.get("Signature")
        path = request.url.path

        def deny(code: str, message: str, status: int = 403, model: str | None = None) -> Response:
            record(request, request_id, status, kind="download", model=model)
            return _oss_error(code, message, request_id, status)

        key_id = params.get("OSSAccessKeyId")
        if key_id is not None and key_id != config.access_key_id:
            return deny(
                "InvalidAccessKeyId", "The OSS Access Key Id you provided does not exist in our records."
            )
        if (
            key_id is None
            or expires_text is None
            or signature is None
            or not expires_text.isdigit()
            or not hmac.compare_digest(state.sign(path, int(expires_text)).encode(), signature.encode())
        ):
            return deny(
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        if time.time() > int(expires_text):
            return deny("AccessDenied", "Request has expired.")
        image = state.lookup_image(image_id)
        if image is None:
            return deny("NoSuchKey", "The specified key does not exist.", status=404)

        faults = state.faults
        if faults.download_latency_ms > 0:
            await asyncio.sleep(faults.download_latency_ms / 1000)
        png = await run_in_threadpool(
            render_png,
            image.model,
            image.prompt,
            image.negative_prompt,
            image.seed,
            image.width,
            image.height,
        )
        truncate = state.draw_truncate()
        record(
            request,
            request_id,
            200,
            kind="download",
            model=image.model,
            fault="truncate" if truncate else None,
        )
        response_class = _TruncatedResponse if truncate else Response
        return response_class(
            png,
            media_type="image/png",
            headers={"x-oss-request-id": request_id, "ETag": f'"{hashlib.md5(png).hexdigest().upper()}"'},
        )

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        request_id = _request_id(request)
        # Faults apply here too (a failing gateway fails the connection test), but not the latency,
        # which stands for image generation time.
        refused = _refuse(request, request_id, kind="models", style=None)
        if refused is not None:
            return refused
        record(request, request_id, 200, kind="models")
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": name, "object": "model", "created": 0, "owned_by": "emulator"}
                    for name in KNOWN_MODELS
                ],
            }
        )

    # DashScope's native asynchronous task API ------------------------------------------------------------
    # Always in DashScope's error shape. The generation time is the task's PENDING + RUNNING time
    # (task_pending_ms, task_duration_ms); latency_ms, which stands for a synchronous generation, does not
    # apply.
    @app.post("/api/v1/services/aigc/text2image/image-synthesis")
    async def submit_task(request: Request) -> Response:
        request_id = _request_id(request)
        refused = _refuse(request, request_id, kind="submit", style="dashscope")
        if refused is not None:
            return refused
        if request.headers.get("x-dashscope-async", "").strip().lower() != "enable":
            record(request, request_id, 400, kind="submit")
            return _error_response(
                state,
                request_id,
                status=400,
                code="AccessDenied",
                message="current user api does not support synchronous calls",
                error_type="invalid_request_error",
                style="dashscope",
            )
        body = await _json_object(request)
        if isinstance(body, str):
            record(request, request_id, 400, kind="submit")
            return _invalid(request_id, body, None, "dashscope")
        model = body.get("model")
        text_input, parameters = body.get("input"), body.get("parameters")
        parameters = {} if parameters is None else parameters
        if not isinstance(text_input, dict) or not isinstance(parameters, dict):
            record(request, request_id, 400, kind="submit")
            return _invalid(
                request_id,
                "input must be an object with a prompt, and parameters an object when given.",
                None,
                "dashscope",
            )
        spec = KNOWN_MODELS.get(model) if isinstance(model, str) else None
        try:
            validated = validate_generation_request(
                prompt=text_input.get("prompt"),
                model=model,
                # The native default n is 4 (wan2.2-t2i-*), capped by what the model allows.
                n=parameters.get("n", min(spec.max_n, 4) if spec else 1),
                size=parameters.get("size"),
                negative_prompt=text_input.get("negative_prompt"),
                prompt_upsampling=parameters.get("prompt_extend"),
                seed=parameters.get("seed"),
            )
        except ImageGenerationValidationError as exc:
            record(request, request_id, 400, kind="submit", model=model if isinstance(model, str) else None)
            return _invalid(request_id, str(exc), exc.parameter, "dashscope")

        failure_code, failed_images = state.draw_task_outcome()
        failed_images = frozenset(index for index in failed_images if index < validated.n)
        faults = state.faults
        task = _Task(
            task_id=str(uuid.uuid4()),
            images=tuple(_image_params(validated)),
            orig_prompt=validated.prompt,
            actual_prompt=_upsampled_prompt(validated) or validated.prompt,
            submitted_at=time.time(),
            pending_s=faults.task_pending_ms / 1000,
            duration_s=faults.task_duration_ms / 1000,
            failure_code=failure_code,
            failed_images=failed_images,
            log_entry={},
        )
        # Billed at submission for what the task will deliver: failed images and FAILED tasks cost
        # nothing, and a cancel (of a PENDING task) un-bills.
        task.log_entry = record(
            request,
            request_id,
            200,
            kind="submit",
            billed=task.succeeded_count,
            model=validated.model,
            n=validated.n,
            task_id=task.task_id,
        )
        state.add_task(task)
        return JSONResponse(
            {"output": {"task_status": "PENDING", "task_id": task.task_id}, "request_id": request_id}
        )

    @app.get("/api/v1/tasks/{task_id}")
    async def get_task(request: Request, task_id: str) -> Response:
        request_id = _request_id(request)
        refused = _refuse(request, request_id, kind="task", style="dashscope")
        if refused is not None:
            return refused
        task, status = state.lookup_task(task_id)
        record(request, request_id, 200, kind="task", task_id=task_id)
        output: dict[str, Any] = {"task_id": task_id, "task_status": status}
        body: dict[str, Any] = {"request_id": request_id, "output": output}
        if task is None or status == "UNKNOWN":
            return JSONResponse(body)
        output["submit_time"] = _dashscope_time(task.submitted_at)
        if status != "PENDING" and task.canceled_at is None:
            output["scheduled_time"] = _dashscope_time(task.scheduled_at)
        total = len(task.images)
        metrics = {"TOTAL": total, "SUCCEEDED": 0, "FAILED": 0}
        if status == "CANCELED" and task.canceled_at is not None:
            output["end_time"] = _dashscope_time(task.canceled_at)
        elif status == "FAILED":
            output["end_time"] = _dashscope_time(task.ended_at)
            output["code"] = task.failure_code
            output["message"] = _TASK_FAILURE_MESSAGES.get(
                task.failure_code or "", f"The task failed: {task.failure_code}"
            )
            metrics["FAILED"] = total
        elif status == "SUCCEEDED":
            output["end_time"] = _dashscope_time(task.ended_at)
            results: list[dict[str, str]] = []
            for index, params in enumerate(task.images):
                if index in task.failed_images:
                    results.append(dict(_IMAGE_FAILURE))
                else:
                    results.append(
                        {
                            "orig_prompt": task.orig_prompt,
                            "actual_prompt": task.actual_prompt,
                            "url": _signed_url(request, params, issued_at=task.ended_at),
                        }
                    )
            output["results"] = results
            metrics.update(SUCCEEDED=task.succeeded_count, FAILED=total - task.succeeded_count)
            body["usage"] = {"image_count": task.succeeded_count}
        output["task_metrics"] = metrics
        return JSONResponse(body)

    @app.post("/api/v1/tasks/{task_id}/cancel")
    async def cancel_task(request: Request, task_id: str) -> Response:
        request_id = _request_id(request)
        refused = _refuse(request, request_id, kind="cancel", style="dashscope")
        if refused is not None:
            return refused
        previous = state.cancel_task(task_id)
        if previous != "PENDING":
            record(request, request_id, 400, kind="cancel", task_id=task_id)
            return _error_response(
                state,
                request_id,
                status=400,
                code="UnsupportedOperation",
                message=f"Failed to cancel the task: only PENDING tasks can be canceled, it is {previous}.",
                error_type="invalid_request_error",
                style="dashscope",
            )
        record(request, request_id, 200, kind="cancel", task_id=task_id)
        return JSONResponse({"request_id": request_id})

    # Admin routes: unauthenticated, for tests and humans on loopback; not logged.
    @app.get("/_emulator/requests")
    async def admin_requests() -> dict[str, Any]:
        return {"requests": state.requests_log(), "billed_images": state.billed_images()}

    @app.delete("/_emulator/requests")
    async def admin_clear_requests() -> dict[str, Any]:
        state.clear_log()
        return {"requests": [], "billed_images": 0}

    @app.get("/_emulator/faults")
    async def admin_faults() -> dict[str, Any]:
        return dataclasses.asdict(state.faults)

    @app.put("/_emulator/faults")
    async def admin_set_faults(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object of FaultConfig fields")
            merged = state.set_faults(**body)
        except ValueError as exc:  # JSONDecodeError is a ValueError
            return JSONResponse(
                {"error": {"message": str(exc), "type": "invalid_request_error"}}, status_code=400
            )
        return JSONResponse(dataclasses.asdict(merged))

    @app.get("/_emulator/tasks")
    async def admin_tasks() -> dict[str, Any]:
        return {"tasks": state.tasks()}

    @app.post("/_emulator/tasks/{task_id}/expire")
    async def admin_expire_task(task_id: str) -> Response:
        if not state.expire_task(task_id):
            return JSONResponse(
                {"error": {"message": f"no task {task_id}", "type": "invalid_request_error"}}, status_code=404
            )
        return JSONResponse({"task_id": task_id, "task_status": "UNKNOWN"})

    @app.post("/_emulator/reset")
    async def admin_reset() -> dict[str, Any]:
        state.reset()
        return {"faults": dataclasses.asdict(state.faults), "requests": []}

    return app
