"""
Hooks for text-to-image APIs: OpenAI-compatible gateways and DashScope's native task API (qwen-image,
wan2.2-t2i).

:class:`ImageGenerationHook` is the worker's (blocking, ``requests``) hook; :class:`ImageGenerationAsyncHook`
the triggerer's (asyncio, ``httpx``). Everything but the HTTP client lives in modules of its own and is
shared: the connection (:mod:`~airflow_provider_imggen.connection_settings`), the billing-safe retry policy
and error table (:mod:`~airflow_provider_imggen.retry_policy`), the answers and their decoding
(:mod:`~airflow_provider_imggen.responses`), the request validation (:mod:`~airflow_provider_imggen.models`).
Their public names are re-exported here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlsplit

from airflow.sdk import BaseHook

from airflow_provider_imggen.connection_settings import (
    API_STYLES,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_RETRIES,
    DEFAULT_REQUEST_TIMEOUT,
    WORKSPACE_HEADER,
    ApiStyle,
    ConnectionSettings,
    parse_connection,
)
from airflow_provider_imggen.exceptions import (
    ImageGenerationAPIError,
    ImageGenerationMalformedResponseError,
    ImageGenerationRejectedError,
    ImageGenerationSubmissionUnknownError,
    ImageGenerationTaskTimeoutError,
    ImageGenerationValidationError,
)
from airflow_provider_imggen.http_client import new_session, requests_verify, ssl_context, user_agent
from airflow_provider_imggen.models import (
    DEFAULT_MAX_POLL_INTERVAL,
    DEFAULT_POLL_INTERVAL,
    TASK_STATUSES,
    TASK_TERMINAL_STATUSES,
    GenerationRequest,
    check_endpoint,
    check_poll_settings,
    check_request_for_style,
    coerce_seconds,
    next_poll_interval,
    unknown_model_note,
    validate_generation_request,
)
from airflow_provider_imggen.responses import (
    FailedImage,
    GeneratedImage,
    ImageGenerationResult,
    ListedTask,
    SubmittedTask,
    TaskState,
    decode_response,
    flatten_native_request,
    gateway_ignored_fields,
    parse_generation_result,
    parse_multimodal_result,
    parse_submitted_task,
    parse_task_list,
    parse_task_state,
)
from airflow_provider_imggen.retry_policy import (
    BillableRequest,
    Failure,
    RetryPolicy,
    TransientAPIError,
    give_up,
    httpx_failure,
    requests_failure,
)
from airflow_provider_imggen.utils import mask_url, redact

if TYPE_CHECKING:
    from types import TracebackType

    import httpx
    import requests
    from airflow.sdk import Connection
    from tenacity import RetryCallState

__all__ = [
    "API_STYLES",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_POLL_INTERVAL",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_REQUEST_TIMEOUT",
    "TASK_STATUSES",
    "TASK_TERMINAL_STATUSES",
    "ApiStyle",
    "ConnectionSettings",
    "FailedImage",
    "GeneratedImage",
    "ImageGenerationAsyncHook",
    "ImageGenerationHook",
    "ImageGenerationResult",
    "ListedTask",
    "SubmittedTask",
    "TaskState",
    "check_poll_settings",
    "decode_response",
    "next_poll_interval",
    "parse_connection",
    "parse_submitted_task",
    "parse_task_state",
]

PROMPT_LOG_CHARS = 200
GENERATIONS_PATH = "/v1/images/generations"
SUBMIT_PATH = "/api/v1/services/aigc/text2image/image-synthesis"
# DashScope's synchronous endpoint: the images come in the answer (qwen-image-max, the qwen-image 2.0 family).
MULTIMODAL_PATH = "/api/v1/services/aigc/multimodal-generation/generation"
TASKS_PATH = "/api/v1/tasks"
# The task list is searched this far around a lost submission (clocks differ; the service is slow).
TASK_LIST_MARGIN = timedelta(seconds=60)
TASK_LIST_PAGE_SIZE = 100
TASK_LIST_MAX_PAGES = 10
# The task list's start_time / end_time (api-notes §7): YYYYMMDDhhmmss, at most 24 hours apart. Their time
# zone is not stated: the provider sends UTC and stretches the end by the Beijing offset, so the window
# holds the submission whether the service reads UTC or UTC+8; entries are then filtered on gmt_create
# (epoch milliseconds, no zone to guess).
TASK_LIST_TIME_FORMAT = "%Y%m%d%H%M%S"
TASK_LIST_ZONE_SLACK = timedelta(hours=8)
TASK_LIST_MAX_SPAN = timedelta(hours=24)
# How long a recovery waits for candidate tasks to finish: only a finished task's status names its prompt.
RECOVERY_TIMEOUT = 300.0


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
        """The read timeout of one request, in seconds."""
        return self.request_timeout if self.request_timeout is not None else self.settings.request_timeout

    def _headers(self, **extra: str) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {self.settings.api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": user_agent(),
        }
        if self.settings.workspace:
            # Every request of the connection, status queries included: tasks belong to a workspace.
            headers[WORKSPACE_HEADER] = self.settings.workspace
        return {**headers, **extra}

    def _task_url(self, generation_task_id: object, suffix: str = "") -> str:
        if (
            not isinstance(generation_task_id, str)
            or not generation_task_id.strip()
            or "/" in generation_task_id
        ):
            raise ImageGenerationValidationError(
                "generation_task_id",
                generation_task_id,
                "expected the task id the API returned when the task was submitted",
            )
        return f"{self.settings.base_url}{TASKS_PATH}/{quote(generation_task_id.strip(), safe='')}{suffix}"

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
        watermark: object = None,
        endpoint: object = None,
    ) -> GenerationRequest:
        """
        Validate a request against the model table and the connection's API style, filling the model from
        the connection's default: the :class:`GenerationRequest` that :meth:`ImageGenerationHook.generate`
        and :meth:`ImageGenerationHook.submit` take. A model the table does not know passes the generic
        checks only, with a warning naming the closest known model.
        """
        if model is None:
            model = self.settings.default_model
            if model is None:
                raise ImageGenerationValidationError(
                    "model",
                    None,
                    f"pass model=..., or set default_model on connection {self.imggen_conn_id!r}",
                )
        request = validate_generation_request(
            prompt=prompt,
            model=model,
            n=n,
            size=size,
            response_format=response_format,
            negative_prompt=negative_prompt,
            prompt_upsampling=prompt_upsampling,
            seed=seed,
            extra_body=extra_body,
            api_style=self.settings.api_style,
            watermark=watermark,
            endpoint=endpoint,
            dialect=self.settings.gateway_dialect,
        )
        note = unknown_model_note(request.model)
        if note is not None:
            self.log.warning("%s", note)
        return request

    def endpoint_for(self, request: GenerationRequest) -> str:
        """
        Where a request goes on this connection: ``gateway`` (OpenAI-compatible), or DashScope's ``async``
        task API or ``sync`` multimodal generation (the request's ``endpoint``, else the model's default).

        :raises ImageGenerationValidationError: the endpoint asked for does not serve the model (nothing sent)
        """
        if self.settings.api_style != "dashscope":
            check_request_for_style(request, self.settings.api_style, self.settings.gateway_dialect)
            return "gateway"
        return check_endpoint(request.model, request.endpoint)

    def _policy(self, *, billable: bool) -> RetryPolicy:
        return RetryPolicy(
            max_retries=self.effective_max_retries,
            wait_initial=self.retry_wait_initial,
            wait_max=self.retry_wait_max,
            max_retry_after=self.max_retry_after,
            billable=billable,
            retry_unknown_outcome=self.settings.retry_unknown_outcome,
        )

    def _log_retry(self, method: str, url: str, policy: RetryPolicy) -> Callable[[RetryCallState], None]:
        """tenacity's ``before_sleep``: one warning per retry (and one more when it may bill twice)."""

        def log_retry(retry_state: RetryCallState) -> None:
            error = retry_state.outcome.exception() if retry_state.outcome else None
            if policy.risks_paying_twice(error):
                self.log.warning(
                    "Sending %s %s again although its outcome is unknown (%s): the connection extra "
                    "retry_unknown_outcome is set, so this may bill twice",
                    method,
                    mask_url(url),
                    error.failure.value if isinstance(error, TransientAPIError) else error,
                )
            self.log.warning(
                "%s %s failed (attempt %d of %d): %s; retrying in %.2fs",
                method,
                mask_url(url),
                retry_state.attempt_number,
                policy.max_attempts,
                redact(str(error), self.settings.api_key),
                retry_state.next_action.sleep if retry_state.next_action else 0.0,
            )

        return log_retry

    def _transport_error(
        self, error: BaseException, failure: Failure, read_timeout: float
    ) -> TransientAPIError:
        # Client exceptions carry the request, and with it the Authorization header: never chain them.
        detail = redact(f"{type(error).__name__}: {error}", self.settings.api_key)
        if failure is Failure.READ_TIMEOUT:
            detail = f"no answer within the read timeout of {read_timeout:g}s ({type(error).__name__})"
        return TransientAPIError(detail, failure=failure)

    def _decode(
        self, status: int, reason: str | None, headers: Mapping[str, str], text: str
    ) -> tuple[dict[str, Any], str | None]:
        return decode_response(status, reason, headers, text, self.settings.api_key)

    def _parse_task_state(
        self, body: dict[str, Any], request_id: str | None, generation_task_id: str
    ) -> TaskState:
        return parse_task_state(
            body, request_id, generation_task_id=generation_task_id, api_key=self.settings.api_key
        )

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

        No I/O: both hooks have it, so a worker resuming the task and a trigger ending it build the same
        result from the same state.

        :param state: the task's terminal state (from :meth:`get_task` or :meth:`wait_for_task`)
        :param model: the model (the status query does not name it)
        :param parameters: the effective request parameters (:attr:`SubmittedTask.parameters`)
        :param started: ``time.monotonic()`` at submission, to log the elapsed time
        :raises ImageGenerationTaskFailedError: FAILED, CANCELED, UNKNOWN, or no image succeeded
        """
        for failed in state.failed_images:
            self.log.warning(
                "Task %s: image %d failed: %s %s",
                state.generation_task_id,
                failed.index,
                failed.code,
                failed.message,
            )
        state.raise_for_status()
        result = state.to_result(model=model, parameters=parameters)
        self.log.info(
            "Task %s SUCCEEDED with %d image(s)%s%s: model=%s request_id=%s urls=%s",
            state.generation_task_id,
            len(result.images),
            f" ({len(result.failed_images)} failed)" if result.failed_images else "",
            f" in {time.monotonic() - started:.2f}s" if started is not None else "",
            result.model or "(not stated)",
            result.request_id,
            [image.masked_url for image in result.images],
        )
        return result

    def _cancel_refused(self, error: ImageGenerationRejectedError, generation_task_id: str) -> bool:
        """Whether a refused cancel means "no longer cancelable" (return False) rather than an error."""
        if error.code == "UnsupportedOperation":
            self.log.info("Task %s was not canceled: %s", generation_task_id, error.message)
            return True
        return False


class ImageGenerationHook(_ImageGenerationHookBase):
    """
    Interact with a text-to-image API: an OpenAI-compatible gateway (``POST /v1/images/generations``) or
    DashScope's native asynchronous task API (submit, then poll ``GET /api/v1/tasks/{task_id}``).

    The connection's Host is the API's base URL (``https://gateway.example.com/v1``; https when no scheme
    is given), its Password the API key. Extra fields: ``default_model``, ``request_timeout`` (seconds),
    ``max_retries``, ``api_style`` (``openai`` or ``dashscope``, which selects the API),
    ``retry_unknown_outcome`` (see :mod:`~airflow_provider_imggen.retry_policy`), ``workspace`` (sent as
    ``X-DashScope-WorkSpace``) and ``gateway_dialect`` (``openai`` or ``nested``: where a gateway reads
    DashScope's own fields). On DashScope, each model goes to the endpoint that serves it (README,
    "Models"): the asynchronous task API or the synchronous multimodal generation.

    Billable requests are never sent twice unless the service provably did nothing with the first: see
    :mod:`~airflow_provider_imggen.retry_policy`.

    :param imggen_conn_id: the :ref:`imggen connection <howto/connection:imggen>` to use
    :param request_timeout: read timeout in seconds; overrides the connection's ``request_timeout``
    :param max_retries: retries of one request; overrides the connection
    :param connect_timeout: TCP/TLS connect timeout in seconds
    :param retry_wait_initial: first backoff in seconds (doubled each retry, with jitter)
    :param retry_wait_max: longest backoff in seconds
    :param max_retry_after: longest server-requested wait (``Retry-After``) honoured in process, in
        seconds; a longer one raises
        :class:`~airflow_provider_imggen.exceptions.ImageGenerationThrottledError` at once, with the wait
    """

    def get_conn(self) -> requests.Session:
        """The hook's pooled HTTP session, authenticated with the connection's key."""
        return self._session

    @cached_property
    def _session(self) -> requests.Session:
        # Proxy and CA-bundle variables are resolved once per host (see _environment_settings) rather than
        # on every request, and ~/.netrc is ignored: requests would let its credentials replace the key.
        return new_session(self._headers())

    def _environment_settings(self, url: str) -> dict[str, Any]:
        """``proxies`` and ``verify`` for a URL from the environment, as requests would find them."""
        from requests.utils import get_environ_proxies

        host = urlsplit(url)[:2]
        settings = self._environment_cache.get(host)
        if settings is None:
            settings = {"proxies": get_environ_proxies(url), "verify": requests_verify()}
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

    # -- generation -----------------------------------------------------------------------------------

    def generate(self, request: GenerationRequest, *, timeout: float | None = None) -> ImageGenerationResult:
        """
        Generate the images of a validated request (:meth:`validate_request`): one billable request.

        OpenAI-compatible gateway: one POST. ``api_style="dashscope"``: for a model of the asynchronous task
        API, :meth:`submit`, then :meth:`wait_for_task` in this process (for a worker-free wait, defer to
        :class:`~airflow_provider_imggen.triggers.image_generation.ImageGenerationTaskTrigger` instead);
        for a model of the synchronous endpoint (qwen-image-max, qwen-image 2.0), one POST to
        ``multimodal-generation/generation``, answered with the images.

        :param request: the validated request
        :param timeout: read timeout in seconds for the billable request (default: the hook's)
        :raises ImageGenerationValidationError: the request does not suit the connection (nothing sent)
        :raises ImageGenerationRejectedError: the API refused the request; retrying will not help
        :raises ImageGenerationThrottledError: throttled beyond the in-process budget (nothing billed)
        :raises ImageGenerationOutcomeUnknownError: sent, and the outcome is unknown (may be billed)
        :raises ImageGenerationMalformedResponseError: answered, maybe billed, but unreadable
        :raises ImageGenerationTaskFailedError: the native task ended FAILED, CANCELED or UNKNOWN
        :raises ImageGenerationAPIError: nothing could be sent (connection refused...) and retries ran out
        """
        self._check_request(request, timeout)
        if self.endpoint_for(request) == "sync":
            return self._generate_multimodal(request, read_timeout=timeout)
        if self.settings.api_style == "dashscope":
            started = time.monotonic()
            submitted = self.submit(request, timeout=timeout)
            state = self.wait_for_task(submitted.generation_task_id)
            return self.result_from_task(
                state, model=submitted.model, parameters=submitted.parameters, started=started
            )
        return self._generate_openai(request, read_timeout=timeout)

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
        watermark: bool | None = None,
        endpoint: str | None = None,
    ) -> ImageGenerationResult:
        """
        Validate the arguments (:meth:`validate_request`, before anything is sent), then :meth:`generate`.

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
        :param timeout: read timeout in seconds for the billable request
        :param watermark: ask the service to mark the images (the service's default: no mark)
        :param endpoint: DashScope's endpoint, ``async`` (task API) or ``sync`` (multimodal generation);
            None for the model's default (see the README's model table)
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
            watermark=watermark,
            endpoint=endpoint,
        )
        return self.generate(request, timeout=timeout)

    def _check_request(self, request: GenerationRequest, timeout: object) -> None:
        """What a request validated elsewhere (the operator, at parse time) must satisfy here."""
        if not isinstance(request, GenerationRequest):
            raise ImageGenerationValidationError(
                "request", request, "expected a GenerationRequest (hook.validate_request builds one)"
            )
        check_request_for_style(request, self.settings.api_style, self.settings.gateway_dialect)
        if timeout is not None:
            coerce_seconds("timeout", timeout)

    def _generate_openai(
        self, request: GenerationRequest, *, read_timeout: float | None
    ) -> ImageGenerationResult:
        url = f"{self.settings.base_url}{GENERATIONS_PATH}"
        self.log.debug("POST %s: model=%s n=%d size=%s", url, request.model, request.n, request.size)
        started = time.monotonic()
        dialect = self.settings.gateway_dialect
        body, request_id = self._request_json(
            "POST",
            url,
            json=request.to_openai_body(dialect),
            read_timeout=read_timeout,
            billable=BillableRequest(
                model=request.model, images=request.n, submitted_at=datetime.now(tz=UTC)
            ),
        )
        result, notes = parse_generation_result(body, request, request_id)
        ignored = gateway_ignored_fields(body, request, result, dialect)
        if ignored is not None:
            self.log.warning("Answer to request %s: %s", request_id, ignored)
            result = dataclasses.replace(result, warnings=(*result.warnings, ignored))
        self._log_answer(request, result, notes, request_id, started=started, where="")
        return result

    def _generate_multimodal(
        self, request: GenerationRequest, *, read_timeout: float | None
    ) -> ImageGenerationResult:
        """
        One POST to DashScope's synchronous ``multimodal-generation/generation``: billable, answered with
        the images. Re-sent only when provably not processed (never opened, 429); a 5xx, a timeout or a
        dropped connection after sending is outcome unknown (no task to look up: never re-sent).
        """
        url = f"{self.settings.base_url}{MULTIMODAL_PATH}"
        started = time.monotonic()
        body, request_id = self._request_json(
            "POST",
            url,
            json=request.to_multimodal_body(),
            read_timeout=read_timeout,
            billable=BillableRequest(
                model=request.model, images=request.n, submitted_at=datetime.now(tz=UTC)
            ),
        )
        result, notes = parse_multimodal_result(body, request, request_id)
        self._log_answer(
            request, result, notes, request_id, started=started, where=" on the synchronous endpoint"
        )
        return result

    def _log_answer(
        self,
        request: GenerationRequest,
        result: ImageGenerationResult,
        notes: Sequence[str],
        request_id: str | None,
        *,
        started: float,
        where: str,
    ) -> None:
        """What a synchronous answer said: its notes, each failed image, then one line for the request."""
        for note in notes:
            self.log.warning("Answer to request %s: %s", request_id, note)
        for failed in result.failed_images:
            self.log.warning(
                "Image %d of request %s failed: %s %s", failed.index, request_id, failed.code, failed.message
            )
        # One line per request: enough to find, reproduce and bill-check it; URLs masked, never the key.
        self.log.info(
            "Generated %d image(s)%s in %.2fs%s: model=%s size=%s seed=%s request_id=%s prompt=%r urls=%s",
            len(result.images),
            f" ({len(result.failed_images)} failed)" if result.failed_images else "",
            time.monotonic() - started,
            where,
            result.model,
            request.size,
            request.seed,
            result.request_id,
            request.prompt[:PROMPT_LOG_CHARS],
            [image.masked_url for image in result.images]
            if request.response_format == "url"
            else "(b64_json)",
        )

    # -- DashScope native task API ---------------------------------------------------------------------

    def submit(self, request: GenerationRequest, *, timeout: float | None = None) -> SubmittedTask:
        """
        Submit a validated request as a native generation task (billable) and return at once.

        Needs a connection with ``api_style="dashscope"``. ``n`` is always sent (the native default for
        wan2.2-t2i-* is 4). The submission is re-sent only when the service provably created nothing
        (connection never opened, 429). When its outcome is unknown (5xx, read timeout, connection lost
        after sending), the service's task list is searched (:meth:`find_submitted_task`): exactly one
        matching task → reconnected to it (a warning says so); otherwise
        :class:`~airflow_provider_imggen.exceptions.ImageGenerationSubmissionUnknownError`.

        :param request: the validated request
        :param timeout: read timeout in seconds for the submission
        :raises ImageGenerationSubmissionUnknownError: sent, outcome unknown, no single task found
        """
        self._require_dashscope("submit()")
        self._check_request(request, timeout)
        if self.endpoint_for(request) != "async":
            raise ImageGenerationValidationError(
                "model",
                request.model,
                "is served by DashScope's synchronous endpoint (multimodal-generation/generation), which "
                "answers with the images and creates no task to submit: use generate(), or "
                "ImageGenerationOperator (nothing was sent)",
            )
        url = f"{self.settings.base_url}{SUBMIT_PATH}"
        native = request.to_dashscope_body()
        sent_at = datetime.now(tz=UTC)
        try:
            body, request_id = self._request_json(
                "POST",
                url,
                json=native,
                headers={"X-DashScope-Async": "enable"},
                read_timeout=timeout,
                billable=BillableRequest(
                    model=request.model, images=request.n, submitted_at=sent_at, native=True
                ),
            )
            submitted = parse_submitted_task(body, request_id, native)
        except ImageGenerationSubmissionUnknownError as unknown:
            return self._reconnect(request, native, unknown, sent_at)
        except ImageGenerationMalformedResponseError as unreadable:
            # Answered, but without a usable task id: a task may exist all the same.
            return self._reconnect(request, native, unreadable, sent_at)
        self.log.info(
            "Submitted task %s: model=%s n=%d size=%s seed=%s request_id=%s prompt=%r",
            submitted.generation_task_id,
            submitted.model,
            request.n,
            request.size,
            request.seed,
            submitted.request_id,
            request.prompt[:PROMPT_LOG_CHARS],
        )
        return submitted

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
        watermark: bool | None = None,
    ) -> SubmittedTask:
        """
        Validate the arguments (as :meth:`generate_images` does, before anything is sent), then
        :meth:`submit`.

        :param extra_body: further fields of the request's ``parameters`` (``{"watermark": False}``)
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
            watermark=watermark,
        )
        self._require_dashscope("submit_task()")
        return self.submit(request, timeout=timeout)

    def _reconnect(
        self,
        request: GenerationRequest,
        native: dict[str, Any],
        unknown: ImageGenerationSubmissionUnknownError | ImageGenerationMalformedResponseError,
        sent_at: datetime,
    ) -> SubmittedTask:
        """After a submission with an unknown outcome: the one task it created, or the error."""
        submitted_at = getattr(unknown, "submitted_at", None) or sent_at
        try:
            found = self._find_submitted(request, submitted_at=submitted_at, request_id=unknown.request_id)
        except ImageGenerationAPIError as error:
            self.log.warning("Could not search the task list for the lost submission: %s", error)
            found, note = None, "the task list could not be read"
        else:
            note = "the task list shows no single task it could be"
        if found is None:
            if isinstance(unknown, ImageGenerationMalformedResponseError):
                raise ImageGenerationMalformedResponseError(
                    f"{unknown.message} ({note})",
                    status=unknown.status,
                    request_id=unknown.request_id,
                    model=unknown.model,
                    images_at_risk=unknown.images_at_risk,
                ) from None
            raise ImageGenerationSubmissionUnknownError(
                f"{unknown.message} ({note})",
                model=unknown.model,
                images_at_risk=unknown.images_at_risk,
                submitted_at=unknown.submitted_at,
                status=unknown.status,
                code=unknown.code,
                request_id=unknown.request_id,
            ) from None
        self.log.warning(
            "The submission's outcome was unknown (%s); the task list shows exactly one %s task created "
            "then: reconnected to task %s (status %s), nothing submitted again",
            type(unknown).__name__,
            request.model,
            found.generation_task_id,
            found.status,
        )
        return SubmittedTask(
            generation_task_id=found.generation_task_id,
            task_status=found.status or "PENDING",
            request_id=found.request_id,
            model=request.model,
            parameters=flatten_native_request(native),
        )

    def find_submitted_task(
        self,
        request: GenerationRequest,
        *,
        submitted_at: datetime,
        until: datetime | None = None,
        request_id: str | None = None,
    ) -> str | None:
        """
        The task a submission of ``request`` created, after its outcome was unknown: lists the service's
        tasks (``GET /api/v1/tasks``) for the model from ``submitted_at`` - 60 s to ``until`` (default now)
        + 60 s and returns the task id when exactly one task matches (or one carries ``request_id``),
        else None. Reads only: bills nothing.

        :param request: the request that was submitted
        :param submitted_at: when it was sent (UTC; naive datetimes are taken as UTC)
        :param until: the end of the search window (default: now)
        :param request_id: the lost submission's request id, when an answer named one
        """
        found = self._find_submitted(request, submitted_at=submitted_at, until=until, request_id=request_id)
        return found.generation_task_id if found is not None else None

    def _find_submitted(
        self,
        request: GenerationRequest,
        *,
        submitted_at: datetime,
        until: datetime | None = None,
        request_id: str | None = None,
    ) -> ListedTask | None:
        """
        The one listed task proven to be ``request``'s, or None. The task list shows the tasks of every key
        of the account (api-notes §7): other pipelines, other keys. A task is ours only when its request id
        is the lost submission's, or, once finished, its status names our prompt and image count; a
        candidate that does not finish within :data:`RECOVERY_TIMEOUT` cannot be proven, and neither can
        two that match: None then, and the caller fails closed.
        """
        self._require_dashscope("find_submitted_task()")
        if submitted_at.tzinfo is None:
            submitted_at = submitted_at.replace(tzinfo=UTC)
        start = submitted_at - TASK_LIST_MARGIN
        end = (until or datetime.now(tz=UTC)) + TASK_LIST_MARGIN
        if end.tzinfo is None:
            end = end.replace(tzinfo=UTC)
        list_end = end + TASK_LIST_ZONE_SLACK
        listed = self.list_tasks(
            start_time=max(start, list_end - TASK_LIST_MAX_SPAN), end_time=list_end, model_name=request.model
        )
        candidates = [
            task
            for task in listed
            if task.model in (None, request.model)
            and task.created_at is not None
            and start <= task.created_at <= end
        ]
        self.log.info(
            "Task list for %s between %s and %s (UTC): %d candidate task(s)",
            request.model,
            start.isoformat(timespec="seconds"),
            end.isoformat(timespec="seconds"),
            len(candidates),
        )
        if request_id:
            by_request = [task for task in candidates if task.request_id == request_id]
            if len(by_request) == 1:
                return by_request[0]
        return self._identify(request, candidates)

    def _identify(self, request: GenerationRequest, candidates: Sequence[ListedTask]) -> ListedTask | None:
        """Of ``candidates``, the one whose finished status names ``request``'s prompt and image count."""
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        ours: list[ListedTask] = []
        for candidate in candidates:
            try:
                state = self.wait_for_task(
                    candidate.generation_task_id, timeout=max(0.0, deadline - time.monotonic())
                )
            except ImageGenerationTaskTimeoutError:
                self.log.warning(
                    "Task %s did not finish within %ss: it cannot be told apart from the lost submission",
                    candidate.generation_task_id,
                    RECOVERY_TIMEOUT,
                )
                return None
            total = state.task_metrics.get("TOTAL")
            if state.prompt == request.prompt and total in (None, request.n):
                ours.append(dataclasses.replace(candidate, status=state.status))
        if len(ours) != 1:
            self.log.warning(
                "%d listed task(s) carry this request's prompt and image count: %s",
                len(ours),
                ", ".join(task.generation_task_id for task in ours) or "none",
            )
            return None
        return ours[0]

    def list_tasks(
        self,
        *,
        start_time: datetime,
        end_time: datetime,
        model_name: str | None = None,
        status: str | None = None,
    ) -> list[ListedTask]:
        """
        The native tasks created between ``start_time`` and ``end_time`` (UTC), optionally of one model
        and status, every page read (``GET /api/v1/tasks``; read-only, retried on transient failures).
        """
        self._require_dashscope("list_tasks()")
        url = f"{self.settings.base_url}{TASKS_PATH}"
        params: dict[str, Any] = {
            "start_time": start_time.astimezone(UTC).strftime(TASK_LIST_TIME_FORMAT),
            "end_time": end_time.astimezone(UTC).strftime(TASK_LIST_TIME_FORMAT),
            "page_size": TASK_LIST_PAGE_SIZE,
        }
        if model_name:
            params["model_name"] = model_name
        if status:
            params["status"] = status
        tasks: list[ListedTask] = []
        for page_no in range(1, TASK_LIST_MAX_PAGES + 1):
            body, _ = self._request_json("GET", url, params={**params, "page_no": page_no})
            page, total = parse_task_list(body)
            tasks.extend(page)
            if not page or len(page) < TASK_LIST_PAGE_SIZE or (total is not None and len(tasks) >= total):
                break
        return tasks

    def get_task(self, generation_task_id: str) -> TaskState:
        """
        The task's status and, once SUCCEEDED, its images (read-only: retried on every transient failure).

        An unknown or expired task id reads as status ``UNKNOWN``, as the API answers.
        """
        self._require_dashscope("get_task()")
        url = self._task_url(generation_task_id)
        body, request_id = self._request_json("GET", url)
        return self._parse_task_state(body, request_id, generation_task_id)

    def cancel_task(self, generation_task_id: str) -> bool:
        """
        Cancel a task that is still PENDING. True if canceled; False if the API refused because the task
        is no longer pending (running, done, or unknown).
        """
        self._require_dashscope("cancel_task()")
        url = self._task_url(generation_task_id, "/cancel")
        try:
            self._request_json("POST", url)
        except ImageGenerationRejectedError as error:
            if self._cancel_refused(error, generation_task_id):
                return False
            raise
        self.log.info("Canceled task %s", generation_task_id)
        return True

    def wait_for_task(
        self,
        generation_task_id: str,
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
            state = self.get_task(generation_task_id)
            if state.status != last_status:
                self.log.info("Task %s is %s", generation_task_id, state.status)
                last_status = state.status
            if state.is_terminal:
                return state
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise ImageGenerationTaskTimeoutError(
                    generation_task_id=generation_task_id, task_status=state.status, waited=timeout
                )
            delay = next_poll_interval(delay, now - started, poll_interval, max_poll_interval)
            time.sleep(delay if deadline is None else min(delay, deadline - now))

    # -- transport ----------------------------------------------------------------------------------

    def _request_json(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        read_timeout: float | None = None,
        billable: BillableRequest | None = None,
        **kwargs: Any,
    ) -> tuple[dict[str, Any], str | None]:
        """
        Send one request and return its JSON body and request id, retried per :class:`RetryPolicy`: a
        ``billable`` request only when the service provably did nothing with it.
        """
        import requests
        from tenacity import Retrying

        policy = self._policy(billable=billable is not None)
        timeout = read_timeout or self.effective_request_timeout
        attempts = 0
        sent_at = datetime.now(tz=UTC)
        try:
            for attempt in Retrying(**policy.tenacity_kwargs(self._log_retry(method, url, policy))):
                with attempt:
                    attempts += 1
                    sent_at = datetime.now(tz=UTC)
                    try:
                        response = self.get_conn().request(
                            method,
                            url,
                            headers=headers,
                            timeout=(self.connect_timeout, timeout),
                            **self._environment_settings(url),
                            **kwargs,
                        )
                    except requests.RequestException as error:
                        raise self._transport_error(error, requests_failure(error), timeout) from None
                    return self._decode(
                        response.status_code, response.reason, response.headers, response.text
                    )
        except TransientAPIError as error:
            raise give_up(
                error,
                attempts=attempts,
                method=method,
                url=url,
                policy=policy,
                billable=dataclasses.replace(billable, submitted_at=sent_at) if billable else None,
            ) from None
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
            body, _ = self._request_json("GET", url, read_timeout=min(30.0, settings.request_timeout))
        except ImageGenerationAPIError as error:
            return False, error.message
        except Exception as error:
            # Also reached when the connection itself is unusable: redact from what was loaded, if anything.
            loaded = self.__dict__.get("connection")
            return False, redact(f"{type(error).__name__}: {error}", loaded.password if loaded else None)
        if settings.api_style == "openai":
            data = body.get("data")
            models = (
                [item.get("id") for item in data if isinstance(item, dict)] if isinstance(data, list) else []
            )
            message = f"Connected to {settings.base_url}: {len(models)} model(s) available"
        else:
            message = f"Connected to {settings.base_url}"
        if settings.default_model:
            message += f"; default model {settings.default_model}"
        return True, message


class ImageGenerationAsyncHook(_ImageGenerationHookBase):
    """
    The asyncio hook for triggers: status queries and cancels on DashScope's native task API.

    It never submits, nor calls the synchronous multimodal generation (a trigger may run more than once; both
    bill: the blocking hook sends them from the worker), and it never blocks the event
    loop: the connection comes from ``aget_connection``, the HTTP client (httpx) is built in a thread (it
    loads CA certificates from disk), retries sleep with ``asyncio.sleep`` (tenacity's ``AsyncRetrying``).
    Connection parsing, the retry policy, response and task parsing, errors and masking are the same as
    :class:`ImageGenerationHook`'s.

    httpx rather than aiohttp: httpx is a dependency of Airflow's core and Task SDK (aiohttp only comes with
    the http provider), it has connect and read timeouts like ``requests``, and it never reads ``~/.netrc``,
    whose credentials could replace the key (aiohttp's ``trust_env`` does read it).

    Use it as an async context manager to keep one connection pool for many calls::

        async with ImageGenerationAsyncHook("imggen_default") as hook:
            state = await hook.get_task(generation_task_id)

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

            from airflow_provider_imggen.connections import aextra_dejson, aget_connection

            # Not self.aget_connection: that misses metadata-DB connections under `airflow dags test`.
            conn = await aget_connection(self.imggen_conn_id)
            settings = parse_connection(conn, await aextra_dejson(conn))
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
        import httpx

        return httpx.AsyncClient(
            headers=self._headers(),
            timeout=httpx.Timeout(self.effective_request_timeout, connect=self.connect_timeout),
            # The CA bundle variables requests honours (a file or a directory), so both hooks and the
            # transfer trust the same servers; proxies and NO_PROXY come from the environment (trust_env),
            # ~/.netrc is never read.
            verify=ssl_context(),
            trust_env=True,
        )

    @contextlib.asynccontextmanager
    async def _client_in_use(self) -> AsyncIterator[httpx.AsyncClient]:
        if self._client is not None:
            yield self._client
            return
        async with await self._new_client() as client:
            yield client

    async def get_task(self, generation_task_id: str) -> TaskState:
        """As :meth:`ImageGenerationHook.get_task`: the task's status and, once SUCCEEDED, its images."""
        await self.aget_settings()
        self._require_dashscope("get_task()")
        url = self._task_url(generation_task_id)
        body, request_id = await self._request_json("GET", url)
        return self._parse_task_state(body, request_id, generation_task_id)

    async def cancel_task(self, generation_task_id: str) -> bool:
        """As :meth:`ImageGenerationHook.cancel_task`: True if canceled, False if no longer pending."""
        await self.aget_settings()
        self._require_dashscope("cancel_task()")
        url = self._task_url(generation_task_id, "/cancel")
        try:
            await self._request_json("POST", url)
        except ImageGenerationRejectedError as error:
            if self._cancel_refused(error, generation_task_id):
                return False
            raise
        self.log.info("Canceled task %s", generation_task_id)
        return True

    async def _request_json(self, method: str, url: str) -> tuple[dict[str, Any], str | None]:
        """Send one idempotent request, retried on every transient failure; its JSON body and request id."""
        import httpx
        from tenacity import AsyncRetrying

        policy = self._policy(billable=False)
        attempts = 0
        try:
            async for attempt in AsyncRetrying(
                **policy.tenacity_kwargs(self._log_retry(method, url, policy))
            ):
                with attempt:
                    attempts += 1
                    try:
                        async with self._client_in_use() as client:
                            response = await client.request(method, url)
                    except httpx.HTTPError as error:
                        raise self._transport_error(
                            error, httpx_failure(error), self.effective_request_timeout
                        ) from None
                    return self._decode(
                        response.status_code, response.reason_phrase, response.headers, response.text
                    )
        except TransientAPIError as error:
            raise give_up(error, attempts=attempts, method=method, url=url, policy=policy) from None
        raise AssertionError("unreachable: tenacity either returns or raises")
