"""
What the blocking and the asyncio hooks share: the connection, validation and routing of a request, the
retry policy and the decoding of answers. No HTTP client here: each hook brings its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

from airflow.sdk import BaseHook

from airflow_provider_imggen import DEFAULT_CONN_ID
from airflow_provider_imggen.connection_settings import (
    DEFAULT_CONNECT_TIMEOUT,
    WORKSPACE_HEADER,
    ConnectionSettings,
    parse_connection,
)
from airflow_provider_imggen.exceptions import (
    ImageGenerationRejectedError,
    ImageGenerationValidationError,
)
from airflow_provider_imggen.http_client import user_agent
from airflow_provider_imggen.model_table import check_endpoint, unknown_model_note
from airflow_provider_imggen.request import (
    GenerationRequest,
    ensure_validated_for,
    validate_generation_request,
)
from airflow_provider_imggen.results import (
    ImageGenerationResult,
    TaskState,
)
from airflow_provider_imggen.retry_policy import (
    Failure,
    RetryPolicy,
    TransientAPIError,
)
from airflow_provider_imggen.utils import mask_url, redact, secret_forms
from airflow_provider_imggen.wire import native
from airflow_provider_imggen.wire.errors import decode_response
from airflow_provider_imggen.wire.native import (
    parse_task_state,
)

if TYPE_CHECKING:
    from airflow.sdk import Connection
    from pydantic import JsonValue
    from tenacity import RetryCallState

# The prompt as logged: enough to recognise it, bounded.
PROMPT_LOG_CHARS = 200


class ImageGenerationHookBase(BaseHook):
    """
    What the blocking and the asyncio hooks share: connection settings, validation, retry policy, parsing.

    The constructor's parameters are documented on :class:`ImageGenerationHook`.
    """

    conn_name_attr = "imggen_conn_id"
    default_conn_name = DEFAULT_CONN_ID
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

        # Every form an answer may echo the key in (Bearer, URL-encoded, base64), not only the key itself.
        mask_secret(cast("list[JsonValue]", secret_forms(settings.api_key)))
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
        task_id = quote(generation_task_id.strip(), safe="")
        return f"{self.settings.base_url}{native.TASKS_PATH}/{task_id}{suffix}"

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
        self, prompt: object, *, model: object = None, **arguments: object
    ) -> GenerationRequest:
        """
        Validate a request against the model table and the connection's API style, filling the model from
        the connection's default: the :class:`GenerationRequest` that :meth:`ImageGenerationHook.generate`
        and :meth:`ImageGenerationHook.submit` take. A model the table does not know passes the generic
        checks only, with a warning naming the closest known model.

        :param arguments: the request's other parameters, by name (those of :class:`GenerationRequest`)
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
            api_style=self.settings.api_style,
            dialect=self.settings.gateway_dialect,
            **arguments,  # type: ignore[arg-type]  # the request's parameters, each checked there
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
            ensure_validated_for(request, self.settings.api_style, self.settings.gateway_dialect)
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
        elif self.settings.scheme_assumed and "ssl" in detail.lower():
            detail += (
                f". Connection {self.imggen_conn_id!r} names no scheme in Host, so https was assumed: if "
                "the API is served over plain http, write http:// in Host"
            )
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
