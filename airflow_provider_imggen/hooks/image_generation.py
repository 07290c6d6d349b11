"""
Hooks for text-to-image APIs: OpenAI-compatible gateways and DashScope's native task API (qwen-image,
wan2.2-t2i).

:class:`ImageGenerationHook` is the worker's (blocking, ``requests``) hook; :class:`ImageGenerationAsyncHook`
the triggerer's (asyncio, ``httpx``). They share the connection parsing, the retry policy, the response and
task parsing and the error classes: everything but the HTTP client.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from airflow.sdk import BaseHook

from airflow_provider_imggen.exceptions import (
    ImageGenerationAPIError,
    ImageGenerationRejectedError,
    ImageGenerationSubmissionUnknownError,
    ImageGenerationTaskFailedError,
    ImageGenerationTaskTimeoutError,
    ImageGenerationValidationError,
)
from airflow_provider_imggen.models import (
    TASK_STATUSES,
    TASK_TERMINAL_STATUSES,
    GenerationRequest,
    coerce_int,
    validate_generation_request,
)
from airflow_provider_imggen.utils import mask_url, redact, url_expiry

if TYPE_CHECKING:
    from types import TracebackType

    import httpx
    import requests
    from airflow.sdk import Connection
    from tenacity import RetryCallState

__all__ = [
    "TASK_STATUSES",
    "TASK_TERMINAL_STATUSES",
    "ConnectionSettings",
    "FailedImage",
    "GeneratedImage",
    "ImageGenerationAsyncHook",
    "ImageGenerationHook",
    "ImageGenerationResult",
    "SubmittedTask",
    "TaskState",
    "next_poll_interval",
    "parse_connection",
]

ApiStyle = Literal["openai", "dashscope"]
API_STYLES: tuple[str, ...] = ("openai", "dashscope")
DEFAULT_REQUEST_TIMEOUT = 180.0
DEFAULT_MAX_RETRIES = 3
DEFAULT_CONNECT_TIMEOUT = 10.0
# Statuses worth another try: timeouts, throttling and server-side failures.
RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
# Error codes that share a retryable status but that no retry can fix (quota, billing, missing model).
PERMANENT_ERROR_CODES = frozenset(
    {"insufficient_quota", "Arrearage", "BillOverdue", "model_not_found", "Throttling.AllocationQuota"}
)
PROMPT_LOG_CHARS = 200
# DashScope's native task API (api-notes §3): suggested polling is every 3 s for 30 s, then back off.
SUBMIT_PATH = "/api/v1/services/aigc/text2image/image-synthesis"
TASKS_PATH = "/api/v1/tasks"
DEFAULT_POLL_INTERVAL = 3.0
DEFAULT_MAX_POLL_INTERVAL = 30.0
FAST_POLL_SECONDS = 30.0


@dataclass(frozen=True)
class ConnectionSettings:
    """What the hook reads from an ``imggen`` connection."""

    base_url: str
    api_key: str = field(repr=False)
    default_model: str | None
    request_timeout: float
    max_retries: int
    api_style: ApiStyle


@dataclass(frozen=True)
class GeneratedImage:
    """
    One generated image.

    :param index: position in the response (image ``i`` of a seeded request used ``seed + i``)
    :param url: signed result URL, for ``response_format="url"`` (a credential: log
        :attr:`masked_url` instead)
    :param data: decoded image bytes, for ``response_format="b64_json"``
    :param revised_prompt: the prompt the API actually used, when it rewrote it
    :param url_expires_at: when the signed URL stops working, if the URL says
    """

    index: int
    url: str | None = None
    data: bytes | None = None
    revised_prompt: str | None = None
    url_expires_at: datetime | None = None

    @property
    def masked_url(self) -> str | None:
        return mask_url(self.url) if self.url else None

    def __repr__(self) -> str:
        payload = f"url={self.masked_url!r}" if self.url else f"data=<{len(self.data or b'')} bytes>"
        return (
            f"GeneratedImage(index={self.index}, {payload}, revised_prompt={self.revised_prompt!r}, "
            f"url_expires_at={self.url_expires_at!r})"
        )


@dataclass(frozen=True)
class FailedImage:
    """
    One image of a native task that failed while the others succeeded (a per-image content check, say).

    :param index: position in the task's results
    :param code: the API's error code for this image
    :param message: the API's message for this image
    """

    index: int
    code: str | None
    message: str


@dataclass(frozen=True)
class ImageGenerationResult:
    """
    The outcome of one generation request.

    :param created: the API's creation time (unix seconds); for a native task, when its results were read
    :param images: the generated images, in response order
    :param usage: the API's usage block, as sent
    :param request_id: the API's request id (``x-request-id``), for support tickets
    :param model: the model that generated the images
    :param parameters: the effective request parameters (never the key)
    :param failed_images: images of a native task that failed while the others succeeded
    """

    created: int
    images: tuple[GeneratedImage, ...]
    usage: dict[str, Any]
    request_id: str | None
    model: str
    parameters: dict[str, Any]
    failed_images: tuple[FailedImage, ...] = ()

    @property
    def created_at(self) -> datetime:
        return datetime.fromtimestamp(self.created, tz=UTC)


@dataclass(frozen=True)
class SubmittedTask:
    """
    A task the native API accepted (and will bill): keep ``task_id`` to reconnect to it.

    :param task_id: the API's task id (valid for 24 h)
    :param task_status: its status when submitted (``PENDING``)
    :param request_id: the submission's request id
    :param model: the model
    :param parameters: the effective request, flattened: model, prompt, negative_prompt, size, n, seed...
    """

    task_id: str
    task_status: str
    request_id: str | None
    model: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class TaskState:
    """
    What ``GET /api/v1/tasks/{task_id}`` says about a native task.

    :param task_id: the task id
    :param status: one of :data:`TASK_STATUSES`
    :param images: the successful images (``index`` is the position in the task's results)
    :param failed_images: the images that failed in a task that still SUCCEEDED
    :param usage: the usage block (``image_count`` counts successes only)
    :param request_id: the status query's request id
    :param code: the API's error code of a FAILED task
    :param message: the API's message of a FAILED task (key redacted)
    :param task_metrics: ``{TOTAL, SUCCEEDED, FAILED}``
    :param submit_time: the API's submission time, verbatim (its time zone is not stated)
    :param end_time: the API's end time, verbatim
    :param model: the model, when the answer names it (DashScope's does not)
    :param prompt: the prompt as submitted (the results' ``orig_prompt``), when the answer has results
    """

    task_id: str
    status: str
    images: tuple[GeneratedImage, ...] = ()
    failed_images: tuple[FailedImage, ...] = ()
    usage: dict[str, Any] = field(default_factory=dict)
    request_id: str | None = None
    code: str | None = None
    message: str | None = None
    task_metrics: dict[str, Any] = field(default_factory=dict)
    submit_time: str | None = None
    end_time: str | None = None
    model: str | None = None
    prompt: str | None = None

    @property
    def is_terminal(self) -> bool:
        """SUCCEEDED, FAILED, CANCELED or UNKNOWN: polling again will not change it."""
        return self.status in TASK_TERMINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"

    def raise_for_status(self) -> None:
        """
        Raise :class:`ImageGenerationTaskFailedError` for a FAILED, CANCELED or UNKNOWN task, or a
        SUCCEEDED one without a single image; do nothing otherwise (including while it is not terminal).
        """
        if self.status == "SUCCEEDED":
            if self.images:
                return
            first = self.failed_images[0] if self.failed_images else None
            message = f"all {len(self.failed_images)} image(s) failed" + (
                f"; image {first.index}: {first.message}" if first else ""
            )
            code = first.code if first else None
        elif self.status == "FAILED":
            message, code = self.message or "the task failed", self.code
        elif self.status == "CANCELED":
            message, code = self.message or "the task was canceled", self.code
        elif self.status == "UNKNOWN":
            message = "no such task, or it expired (task ids live 24 h)"
            code = self.code
        else:
            return
        raise ImageGenerationTaskFailedError(
            message, task_id=self.task_id, task_status=self.status, code=code, request_id=self.request_id
        )

    def to_result(
        self, *, model: str | None = None, parameters: Mapping[str, Any] | None = None
    ) -> ImageGenerationResult:
        """
        The :class:`ImageGenerationResult` the synchronous path returns, from a SUCCEEDED task.

        :param model: the model (the status query does not name it); defaults to :attr:`model`
        :param parameters: the effective request parameters, e.g. :attr:`SubmittedTask.parameters`
        """
        return ImageGenerationResult(
            created=int(time.time()),
            images=self.images,
            usage=dict(self.usage),
            request_id=self.request_id,
            model=model or self.model or "",
            parameters=dict(parameters or {}),
            failed_images=self.failed_images,
        )


class _RetryableAPIError(ImageGenerationAPIError):
    """A transient API error; the hook retries it and raises it as a plain API error when retries run out."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class _ImageGenerationHookBase(BaseHook):
    """
    What the blocking and the asyncio hooks share: connection settings, validation, retry policy, parsing.

    The constructor's parameters are documented on :class:`ImageGenerationHook`.
    """

    conn_name_attr = "imggen_conn_id"
    default_conn_name = "imggen_default"
    conn_type = "imggen"
    hook_name = "Image Generation"

    def __init__(
        self,
        imggen_conn_id: str = default_conn_name,
        *,
        request_timeout: float | None = None,
        max_retries: int | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        retry_wait_initial: float = 0.5,
        retry_wait_max: float = 8.0,
        max_retry_after: float = 60.0,
        logger_name: str | None = None,
    ) -> None:
        super().__init__(logger_name=logger_name)
        self.imggen_conn_id = imggen_conn_id
        self.request_timeout = request_timeout
        self.max_retries = max_retries
        self.connect_timeout = connect_timeout
        self.retry_wait_initial = retry_wait_initial
        self.retry_wait_max = retry_wait_max
        self.max_retry_after = max_retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}(imggen_conn_id={self.imggen_conn_id!r})"

    # -- connection ---------------------------------------------------------------------------------

    @cached_property
    def connection(self) -> Connection:
        return self.get_connection(self.imggen_conn_id)

    @cached_property
    def settings(self) -> ConnectionSettings:
        """The connection, parsed and checked (:class:`ImageGenerationValidationError` on bad fields)."""
        settings = parse_connection(self.connection)
        from airflow.sdk.log import mask_secret

        mask_secret(settings.api_key)
        return settings

    @property
    def effective_max_retries(self) -> int:
        return self.max_retries if self.max_retries is not None else self.settings.max_retries

    @property
    def effective_request_timeout(self) -> float:
        return self.request_timeout if self.request_timeout is not None else self.settings.request_timeout

    def _headers(self, **extra: str) -> dict[str, str]:
        from airflow_provider_imggen import __version__

        return {
            "Authorization": f"Bearer {self.settings.api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"airflow-provider-imggen/{__version__}",
            **extra,
        }

    def _task_url(self, task_id: object, suffix: str = "") -> str:
        if not isinstance(task_id, str) or not task_id.strip() or "/" in task_id:
            raise ImageGenerationValidationError(
                "task_id", task_id, "expected the task id the API returned when the task was submitted"
            )
        return f"{self.settings.base_url}{TASKS_PATH}/{quote(task_id.strip(), safe='')}{suffix}"

    def _require_dashscope(self, operation: str) -> None:
        if self.settings.api_style != "dashscope":
            raise ImageGenerationValidationError(
                "api_style",
                self.settings.api_style,
                f"{operation} needs DashScope's native task API: set the extra api_style of connection "
                f"{self.imggen_conn_id!r} to 'dashscope'",
            )

    # -- requests -----------------------------------------------------------------------------------

    def validate_request(
        self,
        prompt: object,
        *,
        model: object = None,
        n: object = 1,
        size: object = None,
        response_format: object = "url",
        negative_prompt: object = None,
        prompt_upsampling: object = None,
        seed: object = None,
        extra_body: object = None,
    ) -> GenerationRequest:
        """Validate a request against the model table, filling the model from the connection's default."""
        if model is None:
            model = self.settings.default_model
            if model is None:
                raise ImageGenerationValidationError(
                    "model",
                    None,
                    f"pass model=..., or set default_model on connection {self.imggen_conn_id!r}",
                )
        return validate_generation_request(
            prompt=prompt,
            model=model,
            n=n,
            size=size,
            response_format=response_format,
            negative_prompt=negative_prompt,
            prompt_upsampling=prompt_upsampling,
            seed=seed,
            extra_body=extra_body,
        )

    def _retry_policy(
        self, method: str, url: str, is_transient: Callable[[BaseException], bool]
    ) -> dict[str, Any]:
        """
        Keyword arguments for tenacity's ``Retrying`` and ``AsyncRetrying`` alike.

        Exponential backoff with jitter, honouring the server's Retry-After; ``is_transient`` says which
        exceptions are worth another attempt (transient API errors always are).
        """
        from tenacity import retry_if_exception, stop_after_attempt, wait_exponential, wait_random

        max_attempts = self.effective_max_retries + 1
        # retry_wait_initial * 2**n capped at retry_wait_max, plus up to retry_wait_initial of jitter so that
        # many workers throttled at once do not retry in lockstep.
        backoff = wait_exponential(multiplier=self.retry_wait_initial, max=self.retry_wait_max) + wait_random(
            0, self.retry_wait_initial
        )

        def wait(retry_state: RetryCallState) -> float:
            error = retry_state.outcome.exception() if retry_state.outcome else None
            retry_after = getattr(error, "retry_after", None)
            if retry_after is not None and 0 <= retry_after <= self.max_retry_after:
                return float(retry_after)
            return float(backoff(retry_state))

        def log_retry(retry_state: RetryCallState) -> None:
            error = retry_state.outcome.exception() if retry_state.outcome else None
            self.log.warning(
                "%s %s failed (attempt %d of %d): %s; retrying in %.2fs",
                method,
                mask_url(url),
                retry_state.attempt_number,
                max_attempts,
                redact(str(error), self.settings.api_key),
                retry_state.next_action.sleep if retry_state.next_action else 0.0,
            )

        return {
            "stop": stop_after_attempt(max_attempts),
            "wait": wait,
            "retry": retry_if_exception(
                lambda error: isinstance(error, _RetryableAPIError) or is_transient(error)
            ),
            "before_sleep": log_retry,
            "reraise": True,
        }

    def _gave_up(self, error: BaseException, method: str, url: str) -> ImageGenerationAPIError:
        """The error to raise once retries ran out (or were not allowed) on ``error``."""
        max_attempts = self.effective_max_retries + 1
        if isinstance(error, _RetryableAPIError):
            return ImageGenerationAPIError(
                f"{error.message} (gave up after {max_attempts} attempt(s))",
                status=error.status,
                code=error.code,
                request_id=error.request_id,
                param=error.param,
            )
        # Client exceptions carry the request, and with it the Authorization header: never chain them.
        return ImageGenerationAPIError(
            f"{method} {mask_url(url)} failed after {max_attempts} attempt(s): "
            f"{redact(f'{type(error).__name__}: {error}', self.settings.api_key)}"
        )

    def _decode(
        self, status: int, reason: str | None, headers: Mapping[str, str], text: str
    ) -> tuple[dict[str, Any], str | None]:
        return decode_response(status, reason, headers, text, self.settings.api_key)

    def _parse_task_state(self, body: dict[str, Any], request_id: str | None, task_id: str) -> TaskState:
        return parse_task_state(body, request_id, task_id=task_id, api_key=self.settings.api_key)

    def _cancel_refused(self, error: ImageGenerationRejectedError, task_id: str) -> bool:
        """Whether a refused cancel means "no longer cancelable" (return False) rather than an error."""
        if error.code == "UnsupportedOperation":
            self.log.info("Task %s was not canceled: %s", task_id, error.message)
            return True
        return False


class ImageGenerationHook(_ImageGenerationHookBase):
    """
    Interact with a text-to-image API: an OpenAI-compatible gateway (``POST /v1/images/generations``) or
    DashScope's native asynchronous task API (submit, then poll ``GET /api/v1/tasks/{task_id}``).

    The connection's Host is the API's base URL (``https://gateway.example.com/v1``; https when no scheme
    is given), its Password the API key. Extra fields: ``default_model``, ``request_timeout`` (seconds),
    ``max_retries`` and ``api_style`` (``openai`` or ``dashscope``, which selects the API).

    :param imggen_conn_id: the :ref:`imggen connection <howto/connection:imggen>` to use
    :param request_timeout: read timeout in seconds; overrides the connection's ``request_timeout``
    :param max_retries: retries on throttling, server errors and connection errors; overrides the connection
    :param connect_timeout: TCP/TLS connect timeout in seconds
    :param retry_wait_initial: first backoff in seconds (doubled each retry, with jitter)
    :param retry_wait_max: longest backoff in seconds
    :param max_retry_after: longest server-requested wait (``Retry-After``) honoured, in seconds; a longer
        one falls back to the exponential backoff
    """

    def get_conn(self) -> requests.Session:
        """The hook's pooled HTTP session, authenticated with the connection's key."""
        return self._session

    @cached_property
    def _session(self) -> requests.Session:
        import requests

        session = requests.Session()
        # Proxy and CA-bundle variables are resolved once per host (see _environment_settings) rather than
        # on every request, and ~/.netrc is ignored: requests would let its credentials replace the key.
        session.trust_env = False
        session.headers.update(self._headers())
        return session

    def _environment_settings(self, url: str) -> dict[str, Any]:
        """``proxies`` and ``verify`` for a URL from the environment, as requests would find them."""
        from requests.utils import get_environ_proxies

        host = urlsplit(url)[:2]
        settings = self._environment_cache.get(host)
        if settings is None:
            settings = {"proxies": get_environ_proxies(url), "verify": _ca_bundle() or True}
            self._environment_cache[host] = settings
        return settings

    @cached_property
    def _environment_cache(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {}

    def close(self) -> None:
        """Close the pooled HTTP session (``on_kill`` calls this to abort a request in flight)."""
        session = self.__dict__.pop("_session", None)
        if session is not None:
            session.close()

    # -- OpenAI-compatible gateway -------------------------------------------------------------------

    def generate_images(
        self,
        prompt: str,
        *,
        model: str | None = None,
        n: int = 1,
        size: str | None = None,
        response_format: Literal["url", "b64_json"] = "url",
        negative_prompt: str | None = None,
        prompt_upsampling: bool | None = None,
        seed: int | str | None = None,
        extra_body: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> ImageGenerationResult:
        """
        Generate images from a prompt (one billable request, retried only on transient failures).

        Every argument is validated against the model table before anything is sent. With
        ``api_style="dashscope"`` this submits a native task and polls it in this process
        (:meth:`submit_task`, :meth:`wait_for_task`): for a worker-free wait, defer to
        :class:`~airflow_provider_imggen.triggers.image_generation.ImageGenerationTaskTrigger` instead.

        :param prompt: what to draw (at most 800 characters for the known models)
        :param model: model name; defaults to the connection's ``default_model``
        :param n: number of images (qwen-image: 1; wan2.2-t2i-*: 1-4)
        :param size: ``WxH`` or ``W*H``; defaults to the model's default size
        :param response_format: ``url`` (signed URLs valid ~24 h) or ``b64_json`` (decoded into ``data``;
            the native API returns URLs only)
        :param negative_prompt: what to avoid (at most 500 characters for the known models)
        :param prompt_upsampling: let the API rewrite the prompt (the API's default is true)
        :param seed: 0-2147483647; image ``i`` uses ``seed + i``
        :param extra_body: further JSON fields, for parameters this hook does not name (top level for the
            gateway, under ``parameters`` for the native API)
        :param timeout: read timeout in seconds for this request
        :raises ImageGenerationValidationError: a parameter is invalid (nothing was sent)
        :raises ImageGenerationRejectedError: the API refused the request; retrying will not help
        :raises ImageGenerationTaskFailedError: the native task ended FAILED, CANCELED or UNKNOWN
        :raises ImageGenerationAPIError: the API failed and retries ran out
        """
        request = self.validate_request(
            prompt,
            model=model,
            n=n,
            size=size,
            response_format=response_format,
            negative_prompt=negative_prompt,
            prompt_upsampling=prompt_upsampling,
            seed=seed,
            extra_body=extra_body,
        )
        if self.settings.api_style == "dashscope":
            if request.response_format != "url":
                raise ImageGenerationValidationError(
                    "response_format",
                    request.response_format,
                    "DashScope's native task API returns result URLs only: use 'url'",
                )
            started = time.monotonic()
            submitted = self._submit(request, timeout=timeout)
            state = self.wait_for_task(submitted.task_id)
            return self.result_from_task(
                state, model=submitted.model, parameters=submitted.parameters, started=started
            )
        return self._generate_openai(request, timeout=timeout)

    def _generate_openai(self, request: GenerationRequest, *, timeout: float | None) -> ImageGenerationResult:
        url = f"{self.settings.base_url}/v1/images/generations"
        self.log.debug("POST %s: model=%s n=%d size=%s", url, request.model, request.n, request.size)
        started = time.monotonic()
        body, request_id = self._request_json("POST", url, json=request.to_openai_body(), timeout=timeout)
        result = self._parse_openai_result(body, request, request_id)
        # One line per request: enough to find, reproduce and bill-check it; URLs masked, never the key.
        self.log.info(
            "Generated %d image(s) in %.2fs: model=%s size=%s seed=%s request_id=%s prompt=%r urls=%s",
            len(result.images),
            time.monotonic() - started,
            result.model,
            request.size,
            request.seed,
            result.request_id,
            request.prompt[:PROMPT_LOG_CHARS],
            [image.masked_url for image in result.images]
            if request.response_format == "url"
            else "(b64_json)",
        )
        return result

    def _parse_openai_result(
        self, body: dict[str, Any], request: GenerationRequest, request_id: str | None
    ) -> ImageGenerationResult:
        data = body.get("data")
        if not isinstance(data, list) or not data:
            raise ImageGenerationAPIError(
                "The API answered without images (no 'data' list)", status=200, request_id=request_id
            )
        images = []
        for index, item in enumerate(data):
            url = item.get("url")
            encoded = item.get("b64_json")
            if not url and not encoded:
                raise ImageGenerationAPIError(
                    f"Image {index} in the response has neither 'url' nor 'b64_json'",
                    status=200,
                    request_id=request_id,
                )
            images.append(
                GeneratedImage(
                    index=index,
                    url=url,
                    data=base64.b64decode(encoded) if encoded else None,
                    revised_prompt=item.get("revised_prompt"),
                    url_expires_at=url_expiry(url) if url else None,
                )
            )
        parameters = request.to_openai_body()
        return ImageGenerationResult(
            created=int(body.get("created") or time.time()),
            images=tuple(images),
            usage=body.get("usage") or {},
            request_id=request_id,
            model=request.model,
            parameters=parameters,
        )

    # -- DashScope native task API ---------------------------------------------------------------------

    def submit_task(
        self,
        prompt: str,
        *,
        model: str | None = None,
        n: int = 1,
        size: str | None = None,
        negative_prompt: str | None = None,
        prompt_upsampling: bool | None = None,
        seed: int | str | None = None,
        extra_body: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> SubmittedTask:
        """
        Submit a native generation task (billable) and return at once with its task id.

        Validated exactly like :meth:`generate_images` before anything is sent; needs a connection with
        ``api_style="dashscope"``. ``n`` is always sent (the native default for wan2.2-t2i-* is 4).

        Retries never risk a second task: the submission is retried on throttling (429), timeouts (408) and
        server errors (5xx), which the API answers without creating a task, and on connections that could
        not be opened; a connection lost *after* the request went out may have created (and billed) a task,
        so it is not re-sent: :class:`ImageGenerationSubmissionUnknownError` (no Airflow retry) says so.

        :param prompt: what to draw (at most 800 characters for the known models)
        :param model: model name; defaults to the connection's ``default_model``
        :param n: number of images (qwen-image: 1; wan2.2-t2i-*: 1-4)
        :param size: ``WxH`` or ``W*H``; defaults to the model's default size
        :param negative_prompt: what to avoid
        :param prompt_upsampling: let the API rewrite the prompt (``prompt_extend``; default true)
        :param seed: 0-2147483647; image ``i`` uses ``seed + i``
        :param extra_body: further fields of the request's ``parameters`` (``{"watermark": False}``)
        :param timeout: read timeout in seconds for the submission
        :raises ImageGenerationValidationError: a parameter (or the connection's api_style) is invalid
        :raises ImageGenerationRejectedError: the API refused the request
        :raises ImageGenerationSubmissionUnknownError: the connection broke after the request was sent
        :raises ImageGenerationAPIError: the API failed before creating a task and retries ran out
        """
        request = self.validate_request(
            prompt,
            model=model,
            n=n,
            size=size,
            negative_prompt=negative_prompt,
            prompt_upsampling=prompt_upsampling,
            seed=seed,
            extra_body=extra_body,
        )
        return self._submit(request, timeout=timeout)

    def _submit(self, request: GenerationRequest, *, timeout: float | None) -> SubmittedTask:
        self._require_dashscope("submit_task()")
        url = f"{self.settings.base_url}{SUBMIT_PATH}"
        native = request.to_dashscope_body()
        body, request_id = self._request_json(
            "POST",
            url,
            json=native,
            headers={"X-DashScope-Async": "enable"},
            timeout=timeout,
            billable=True,
        )
        submitted = parse_submitted_task(body, request_id, native)
        self.log.info(
            "Submitted task %s: model=%s n=%d size=%s seed=%s request_id=%s prompt=%r",
            submitted.task_id,
            submitted.model,
            request.n,
            request.size,
            request.seed,
            submitted.request_id,
            request.prompt[:PROMPT_LOG_CHARS],
        )
        return submitted

    def get_task(self, task_id: str) -> TaskState:
        """
        The task's status and, once SUCCEEDED, its images (read-only: retried on every transient failure).

        An unknown or expired task id reads as status ``UNKNOWN``, as the API answers.
        """
        self._require_dashscope("get_task()")
        url = self._task_url(task_id)
        body, request_id = self._request_json("GET", url)
        return self._parse_task_state(body, request_id, task_id)

    def cancel_task(self, task_id: str) -> bool:
        """
        Cancel a task that is still PENDING. True if canceled; False if the API refused because the task
        is no longer pending (running, done, or unknown).
        """
        self._require_dashscope("cancel_task()")
        url = self._task_url(task_id, "/cancel")
        try:
            self._request_json("POST", url)
        except ImageGenerationRejectedError as error:
            if self._cancel_refused(error, task_id):
                return False
            raise
        self.log.info("Canceled task %s", task_id)
        return True

    def wait_for_task(
        self,
        task_id: str,
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
        timeout: float | None = None,
    ) -> TaskState:
        """
        Poll a task in this process until it is terminal (see :func:`next_poll_interval` for the pace).

        :param poll_interval: seconds between polls for the first 30 s
        :param max_poll_interval: the longest wait between polls once backing off
        :param timeout: give up after this many seconds (default: wait as long as the task lives)
        :raises ImageGenerationTaskTimeoutError: the task was still running at ``timeout``
        :return: the terminal state (check it with :meth:`TaskState.raise_for_status`)
        """
        check_poll_settings(poll_interval, max_poll_interval, timeout)
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        delay: float | None = None
        last_status = None
        while True:
            state = self.get_task(task_id)
            if state.status != last_status:
                self.log.info("Task %s is %s", task_id, state.status)
                last_status = state.status
            if state.is_terminal:
                return state
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise ImageGenerationTaskTimeoutError(
                    task_id=task_id, task_status=state.status, waited=timeout
                )
            delay = next_poll_interval(delay, now - started, poll_interval, max_poll_interval)
            time.sleep(delay if deadline is None else min(delay, deadline - now))

    def result_from_task(
        self,
        state: TaskState,
        *,
        model: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        started: float | None = None,
    ) -> ImageGenerationResult:
        """
        The :class:`ImageGenerationResult` of a terminal task, logged like a synchronous generation (URLs
        masked), each failed image logged on its own line.

        :param state: the task's terminal state (from :meth:`get_task` or :meth:`wait_for_task`)
        :param model: the model (the status query does not name it)
        :param parameters: the effective request parameters (:attr:`SubmittedTask.parameters`)
        :param started: ``time.monotonic()`` at submission, to log the elapsed time
        :raises ImageGenerationTaskFailedError: FAILED, CANCELED, UNKNOWN, or no image succeeded
        """
        for failed in state.failed_images:
            self.log.warning(
                "Task %s: image %d failed: %s %s", state.task_id, failed.index, failed.code, failed.message
            )
        state.raise_for_status()
        result = state.to_result(model=model, parameters=parameters)
        self.log.info(
            "Task %s SUCCEEDED with %d image(s)%s%s: model=%s request_id=%s urls=%s",
            state.task_id,
            len(result.images),
            f" ({len(result.failed_images)} failed)" if result.failed_images else "",
            f" in {time.monotonic() - started:.2f}s" if started is not None else "",
            result.model or "(not stated)",
            result.request_id,
            [image.masked_url for image in result.images],
        )
        return result

    # -- transport ----------------------------------------------------------------------------------

    def _request_json(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        billable: bool = False,
        **kwargs: Any,
    ) -> tuple[dict[str, Any], str | None]:
        """
        Send one request and return its JSON body and request id.

        Transient failures (including an error behind HTTP 200) are retried with exponential backoff and
        jitter, honouring the server's Retry-After. A ``billable`` request that creates something (a native
        task) is re-sent after a connection error only if the connection was never opened.
        """
        import requests
        from tenacity import Retrying

        def is_transient(error: BaseException) -> bool:
            if not isinstance(error, requests.ConnectionError | requests.exceptions.ChunkedEncodingError):
                return False
            return not billable or _never_sent(error)

        read_timeout = timeout or self.effective_request_timeout
        try:
            for attempt in Retrying(**self._retry_policy(method, url, is_transient)):
                with attempt:
                    response = self.get_conn().request(
                        method,
                        url,
                        headers=headers,
                        timeout=(self.connect_timeout, read_timeout),
                        **self._environment_settings(url),
                        **kwargs,
                    )
                    return self._decode(
                        response.status_code, response.reason, response.headers, response.text
                    )
        except _RetryableAPIError as error:
            raise self._gave_up(error, method, url) from None
        except requests.RequestException as error:
            if billable and not _never_sent(error):
                raise ImageGenerationSubmissionUnknownError(
                    f"{method} {mask_url(url)}: the connection failed after the request was sent "
                    f"({redact(f'{type(error).__name__}: {error}', self.settings.api_key)}). The API may "
                    "have accepted (and billed) it, so it was not sent again: check the API's task list "
                    "or usage before running it again"
                ) from None
            raise self._gave_up(error, method, url) from None
        raise AssertionError("unreachable: tenacity either returns or raises")

    # -- UI ---------------------------------------------------------------------------------------

    def test_connection(self) -> tuple[bool, str]:
        """
        Check the connection with an authenticated call that bills no image.

        OpenAI-compatible gateways: ``GET /v1/models``. DashScope: a status query for a task id that
        does not exist (answered without billing; a wrong key is refused).
        """
        try:
            settings = self.settings
            if settings.api_style == "openai":
                url = f"{settings.base_url}/v1/models"
            else:
                url = f"{settings.base_url}{TASKS_PATH}/airflow-connection-test"
            body, _ = self._request_json("GET", url, timeout=min(30.0, settings.request_timeout))
        except ImageGenerationAPIError as error:
            return False, error.message
        except Exception as error:
            # Also reached when the connection itself is unusable: redact from what was loaded, if anything.
            loaded = self.__dict__.get("connection")
            return False, redact(f"{type(error).__name__}: {error}", loaded.password if loaded else None)
        if settings.api_style == "openai":
            models = [item.get("id") for item in body.get("data", []) if isinstance(item, dict)]
            message = f"Connected to {settings.base_url}: {len(models)} model(s) available"
        else:
            message = f"Connected to {settings.base_url}"
        if settings.default_model:
            message += f"; default model {settings.default_model}"
        return True, message


class ImageGenerationAsyncHook(_ImageGenerationHookBase):
    """
    The asyncio hook for triggers: status queries and cancels on DashScope's native task API.

    It never submits (a trigger may run more than once; a submission bills), and it never blocks the event
    loop: the connection comes from ``aget_connection``, the HTTP client (httpx) is built in a thread (it
    loads CA certificates from disk), retries sleep with ``asyncio.sleep`` (tenacity's ``AsyncRetrying``).
    Connection parsing, the retry policy, response and task parsing, errors and masking are the same as
    :class:`ImageGenerationHook`'s.

    httpx rather than aiohttp: httpx is a dependency of Airflow's core and Task SDK (aiohttp only comes with
    the http provider), it has connect and read timeouts like ``requests``, and it never reads ``~/.netrc``,
    whose credentials could replace the key (aiohttp's ``trust_env`` does read it).

    Use it as an async context manager to keep one connection pool for many calls::

        async with ImageGenerationAsyncHook("imggen_default") as hook:
            state = await hook.get_task(task_id)

    Called outside one, each call uses a client of its own.
    """

    def __init__(
        self, imggen_conn_id: str = _ImageGenerationHookBase.default_conn_name, **kwargs: Any
    ) -> None:
        super().__init__(imggen_conn_id, **kwargs)
        self._client: httpx.AsyncClient | None = None

    async def aget_settings(self) -> ConnectionSettings:
        """The parsed connection, loaded without blocking the event loop (once; then cached)."""
        if "settings" not in self.__dict__:
            from airflow.sdk.log import amask_secret

            conn = await self.aget_connection(self.imggen_conn_id)
            settings = parse_connection(conn, await conn.aextra_dejson())
            await amask_secret(settings.api_key)
            self.__dict__["connection"] = conn
            self.__dict__["settings"] = settings
        return self.settings

    async def __aenter__(self) -> ImageGenerationAsyncHook:
        if self._client is None:
            self._client = await self._new_client()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool (idempotent)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _new_client(self) -> httpx.AsyncClient:
        import asyncio

        await self.aget_settings()
        return await asyncio.to_thread(self._build_client)

    def _build_client(self) -> httpx.AsyncClient:
        import ssl

        import httpx

        ca_bundle = _ca_bundle()
        return httpx.AsyncClient(
            headers=self._headers(),
            timeout=httpx.Timeout(self.effective_request_timeout, connect=self.connect_timeout),
            # The CA bundle variables requests honours, so both hooks trust the same servers; proxies and
            # NO_PROXY come from the environment (trust_env), ~/.netrc is never read.
            verify=ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True,
            trust_env=True,
        )

    @contextlib.asynccontextmanager
    async def _client_in_use(self) -> AsyncIterator[httpx.AsyncClient]:
        if self._client is not None:
            yield self._client
            return
        async with await self._new_client() as client:
            yield client

    async def get_task(self, task_id: str) -> TaskState:
        """As :meth:`ImageGenerationHook.get_task`: the task's status and, once SUCCEEDED, its images."""
        await self.aget_settings()
        self._require_dashscope("get_task()")
        url = self._task_url(task_id)
        body, request_id = await self._request_json("GET", url)
        return self._parse_task_state(body, request_id, task_id)

    async def cancel_task(self, task_id: str) -> bool:
        """As :meth:`ImageGenerationHook.cancel_task`: True if canceled, False if no longer pending."""
        await self.aget_settings()
        self._require_dashscope("cancel_task()")
        url = self._task_url(task_id, "/cancel")
        try:
            await self._request_json("POST", url)
        except ImageGenerationRejectedError as error:
            if self._cancel_refused(error, task_id):
                return False
            raise
        self.log.info("Canceled task %s", task_id)
        return True

    async def _request_json(self, method: str, url: str) -> tuple[dict[str, Any], str | None]:
        """Send one idempotent request, retried on every transient failure; its JSON body and request id."""
        import httpx
        from tenacity import AsyncRetrying

        def is_transient(error: BaseException) -> bool:
            return isinstance(error, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError)

        try:
            async for attempt in AsyncRetrying(**self._retry_policy(method, url, is_transient)):
                with attempt:
                    async with self._client_in_use() as client:
                        response = await client.request(method, url)
                    return self._decode(
                        response.status_code, response.reason_phrase, response.headers, response.text
                    )
        except _RetryableAPIError as error:
            raise self._gave_up(error, method, url) from None
        except httpx.HTTPError as error:
            raise self._gave_up(error, method, url) from None
        raise AssertionError("unreachable: tenacity either returns or raises")


def parse_connection(conn: Connection, extras: dict[str, Any] | None = None) -> ConnectionSettings:
    """
    Read and check an ``imggen`` connection; errors name the field, the value and what is allowed.

    :param extras: the connection's extras when already decoded (async callers use ``aextra_dejson``)
    """
    if extras is None:
        extras = conn.extra_dejson

    def extra(name: str) -> Any:
        # The UI of older Airflow versions stored form fields as extra__<conn type>__<name>.
        value = extras.get(name, extras.get(f"extra__imggen__{name}"))
        return None if value == "" else value

    api_style: ApiStyle = extra("api_style") or "openai"
    if api_style not in API_STYLES:
        raise ImageGenerationValidationError(
            f"connection {conn.conn_id!r} extra api_style", api_style, "expected 'openai' or 'dashscope'"
        )
    if not conn.password:
        raise ImageGenerationValidationError(
            f"connection {conn.conn_id!r} API key (password)",
            None,
            "set the API key as the connection password",
        )

    request_timeout = extra("request_timeout")
    if request_timeout is None:
        timeout = DEFAULT_REQUEST_TIMEOUT
    else:
        try:
            timeout = float(request_timeout)
        except (TypeError, ValueError):
            timeout = -1.0
        if not timeout > 0:
            raise ImageGenerationValidationError(
                f"connection {conn.conn_id!r} extra request_timeout", request_timeout, "expected seconds > 0"
            )

    max_retries = extra("max_retries")
    retries = DEFAULT_MAX_RETRIES
    if max_retries is not None:
        allowed = "expected a whole number 0-20"
        retries = coerce_int(f"connection {conn.conn_id!r} extra max_retries", max_retries, allowed)
        if not 0 <= retries <= 20:
            raise ImageGenerationValidationError(
                f"connection {conn.conn_id!r} extra max_retries", max_retries, allowed
            )

    default_model = extra("default_model")
    return ConnectionSettings(
        base_url=_base_url(conn, api_style),
        api_key=conn.password,
        default_model=str(default_model).strip() if default_model else None,
        request_timeout=timeout,
        max_retries=retries,
        api_style=api_style,
    )


def _base_url(conn: Connection, api_style: str) -> str:
    """The API root, from Host (scheme optional, https by default), Port and Schema (the path of a URI)."""
    host = (conn.host or "").strip()
    if not host:
        raise ImageGenerationValidationError(
            f"connection {conn.conn_id!r} host",
            conn.host,
            "set Host to the API's base URL, e.g. https://gateway.example.com/v1",
        )
    if "://" not in host:
        host = f"https://{host}"
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https"):
        raise ImageGenerationValidationError(
            f"connection {conn.conn_id!r} host", conn.host, "the scheme must be http or https"
        )
    netloc = parts.netloc
    if conn.port and parts.port is None:
        netloc = f"{netloc}:{conn.port}"
    path = parts.path.rstrip("/")
    if conn.schema:
        path = f"{path}/{conn.schema.strip('/')}"
    # Accept the base URL with or without the API's version suffix; the hook adds it back per endpoint.
    suffix = "/v1" if api_style == "openai" else "/api/v1"
    if path.endswith(suffix):
        path = path[: -len(suffix)]
    return urlunsplit((parts.scheme, netloc, path, "", ""))


def _ca_bundle() -> str | None:
    """The CA bundle requests would use from the environment (REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE)."""
    import os

    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None


def _never_sent(error: BaseException) -> bool:
    """
    Whether a ``requests`` connection error happened before the request could reach the server.

    True for connect timeouts and refused or unresolvable connections (urllib3 reports both as a
    ``ConnectTimeoutError`` behind ``MaxRetryError``); False for a connection lost after sending
    (reset, read timeout, truncated response), after which the server may have acted on the request.
    """
    import requests
    from urllib3.exceptions import ConnectTimeoutError, MaxRetryError

    if isinstance(error, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(error, requests.exceptions.ProxyError | requests.exceptions.SSLError):
        return False
    reason = error.args[0] if error.args else None
    return isinstance(reason, MaxRetryError) and isinstance(reason.reason, ConnectTimeoutError)


def decode_response(
    status: int, reason: str | None, headers: Mapping[str, str], text: str, api_key: str
) -> tuple[dict[str, Any], str | None]:
    """
    A response's JSON object and request id, or the exception it stands for (either hook's client).

    Raises for an error status, and for an error body behind HTTP 200 (a gateway quirk). The API key is
    redacted from every message: some APIs echo the key they were sent.

    :raises ImageGenerationRejectedError: an error no retry can fix
    :raises ImageGenerationAPIError: a transient error (a private subclass the hooks retry) or a
        malformed answer
    """
    request_id = headers.get("x-request-id")
    try:
        body = json.loads(text)
    except ValueError:
        if status >= 400:
            raise _api_error(status, reason, headers, text, None, None, api_key) from None
        raise ImageGenerationAPIError(
            f"The API answered {status} with a body that is not JSON ({headers.get('content-type')!r})",
            status=status,
            request_id=request_id,
        ) from None
    if not isinstance(body, dict):
        if status >= 400:
            raise _api_error(status, reason, headers, text, None, None, api_key)
        raise ImageGenerationAPIError(
            "The API answered with JSON that is not an object", status=status, request_id=request_id
        )
    error = _error_fields(body)
    if error is not None or status >= 400:
        raise _api_error(status, reason, headers, text, body, error, api_key)
    return body, request_id or body.get("request_id")


def _api_error(
    status: int,
    reason: str | None,
    headers: Mapping[str, str],
    text: str,
    body: object,
    error: dict[str, Any] | None,
    api_key: str,
) -> ImageGenerationAPIError:
    """One exception for both error shapes, retryable or not, with the key redacted from the message."""
    if error is None:
        shown = text[:300].strip() if text else ""
        error = {"message": f"HTTP {status} {reason or ''}".strip() + (f": {shown}" if shown else "")}
    code = str(error["code"]) if error.get("code") is not None else None
    request_id = headers.get("x-request-id") or (body.get("request_id") if isinstance(body, dict) else None)
    param = str(error["param"]) if error.get("param") is not None else None
    message = redact(str(error.get("message") or f"HTTP {status}"), api_key)
    if _is_retryable(status, code, headers.get("x-should-retry")):
        return _RetryableAPIError(
            message,
            retry_after=_retry_after_seconds(headers),
            status=status,
            code=code,
            request_id=request_id,
            param=param,
        )
    return ImageGenerationRejectedError(message, status=status, code=code, request_id=request_id, param=param)


def parse_submitted_task(
    body: dict[str, Any], request_id: str | None, native_request: dict[str, Any]
) -> SubmittedTask:
    """The task a native submission created, from the API's answer and the body that was sent."""
    output = body.get("output")
    task_id = output.get("task_id") if isinstance(output, dict) else None
    if not isinstance(task_id, str) or not task_id:
        raise ImageGenerationAPIError(
            "The API accepted the submission but answered without a task id",
            status=200,
            request_id=request_id,
        )
    assert isinstance(output, dict)
    return SubmittedTask(
        task_id=task_id,
        task_status=str(output.get("task_status") or "PENDING"),
        request_id=request_id,
        model=native_request["model"],
        parameters={
            "model": native_request["model"],
            **native_request.get("input", {}),
            **native_request.get("parameters", {}),
        },
    )


def parse_task_state(
    body: dict[str, Any], request_id: str | None, *, task_id: str, api_key: str | None = None
) -> TaskState:
    """
    A :class:`TaskState` from ``GET /api/v1/tasks/{task_id}``'s answer (either hook's client).

    Each result is an image (``url``) or, in a partly failed task, ``{code, message}``. Messages have the
    API key redacted.
    """
    output = body.get("output")
    if not isinstance(output, dict) or not output.get("task_status"):
        raise ImageGenerationAPIError(
            "The API answered a task query without output.task_status", status=200, request_id=request_id
        )
    images: list[GeneratedImage] = []
    failed: list[FailedImage] = []
    results = output.get("results")
    for index, item in enumerate(results if isinstance(results, list) else []):
        item = item if isinstance(item, dict) else {}
        url = item.get("url")
        if isinstance(url, str) and url:
            actual = item.get("actual_prompt")
            images.append(
                GeneratedImage(
                    index=index,
                    url=url,
                    revised_prompt=actual if actual and actual != item.get("orig_prompt") else None,
                    url_expires_at=url_expiry(url),
                )
            )
        else:
            image_code = item.get("code")
            failed.append(
                FailedImage(
                    index=index,
                    code=None if image_code is None else str(image_code),
                    message=redact(str(item.get("message") or "the API returned no URL for it"), api_key),
                )
            )
    message = output.get("message")
    code = output.get("code")
    usage, metrics = body.get("usage"), output.get("task_metrics")
    return TaskState(
        task_id=str(output.get("task_id") or task_id),
        status=str(output["task_status"]),
        images=tuple(images),
        failed_images=tuple(failed),
        usage=usage if isinstance(usage, dict) else {},
        request_id=request_id,
        code=None if code is None else str(code),
        message=None if message is None else redact(str(message), api_key),
        task_metrics=metrics if isinstance(metrics, dict) else {},
        submit_time=output.get("submit_time"),
        end_time=output.get("end_time"),
        model=output.get("model") or body.get("model"),
        prompt=next(
            (
                item["orig_prompt"]
                for item in (results if isinstance(results, list) else [])
                if isinstance(item, dict) and isinstance(item.get("orig_prompt"), str)
            ),
            None,
        ),
    )


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


def check_poll_settings(poll_interval: object, max_poll_interval: object, timeout: object = None) -> None:
    """Refuse polling settings that would spin or never poll, naming the parameter."""
    for name, value in (("poll_interval", poll_interval), ("max_poll_interval", max_poll_interval)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ImageGenerationValidationError(name, value, "expected seconds > 0")
    assert isinstance(poll_interval, int | float) and isinstance(max_poll_interval, int | float)
    if max_poll_interval < poll_interval:
        raise ImageGenerationValidationError(
            "max_poll_interval", max_poll_interval, f"expected seconds >= poll_interval ({poll_interval})"
        )
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0
    ):
        raise ImageGenerationValidationError("timeout", timeout, "expected seconds >= 0, or None")


def _error_fields(body: dict[str, Any] | None) -> dict[str, Any] | None:
    """The error inside a body, in either shape: ``{"error": {...}}`` or DashScope's ``{code, message}``."""
    if not body:
        return None
    error = body.get("error")
    if isinstance(error, dict):
        return error
    if isinstance(error, str):
        return {"message": error}
    if body.get("code") and body.get("message") and "data" not in body and "output" not in body:
        return {"code": body["code"], "message": body["message"]}
    return None


def _is_retryable(status: int, code: str | None, should_retry: str | None) -> bool:
    if should_retry in ("true", "false"):
        return should_retry == "true"
    if code is not None and any(code.endswith(permanent) for permanent in PERMANENT_ERROR_CODES):
        return False
    if status == 200:
        # An upstream task failure relayed as 200 (a gateway quirk): transient only when it says so.
        return code is not None and code.startswith(("InternalError", "Throttling", "RequestTimeOut"))
    return status in RETRYABLE_STATUSES or status >= 500


def _retry_after_seconds(headers: Any) -> float | None:
    """The server's requested wait: ``retry-after-ms``, else ``Retry-After`` in seconds or as an HTTP date."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return float(milliseconds) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(tz=UTC)).total_seconds())
    except (TypeError, ValueError):
        return None
