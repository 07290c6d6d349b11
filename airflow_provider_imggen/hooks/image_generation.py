"""
Hooks for text-to-image APIs: OpenAI-compatible gateways and DashScope's native task API (qwen-image,
wan2.2-t2i).

:class:`ImageGenerationHook` is the worker's (blocking, ``requests``) hook: it routes a validated request
(:mod:`~airflow_provider_imggen.request`) to its endpoint once and sends every billable request through
one method, :meth:`ImageGenerationHook._send_billable`, where the money rules live. Each endpoint's body
and answers are its wire module's (:mod:`~airflow_provider_imggen.wire`); the task API's reads and the
recovery of a lost submission are :mod:`~airflow_provider_imggen.hooks.native_tasks`'s; the connection
is :mod:`~airflow_provider_imggen.connection_settings`'s; the billing-safe retry policy is
:mod:`~airflow_provider_imggen.retry_policy`'s. :class:`ImageGenerationAsyncHook` is the triggerer's
(asyncio, ``httpx``). Their public names are re-exported here.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_imggen.billing_journal import (
    BillingJournal,
)
from airflow_provider_imggen.coercion import coerce_seconds
from airflow_provider_imggen.connection_settings import (
    API_STYLES,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_RETRIES,
    DEFAULT_REQUEST_TIMEOUT,
    ApiStyle,
    ConnectionSettings,
    parse_connection,
)
from airflow_provider_imggen.exceptions import (
    ImageGenerationAPIError,
    ImageGenerationMalformedResponseError,
    ImageGenerationOutcomeUnknownError,
    ImageGenerationSubmissionUnknownError,
    ImageGenerationValidationError,
    billed_note,
)
from airflow_provider_imggen.polling import (
    DEFAULT_MAX_POLL_INTERVAL,
    DEFAULT_POLL_INTERVAL,
    TASK_STATUSES,
    TASK_TERMINAL_STATUSES,
    check_poll_settings,
    next_poll_interval,
)
from airflow_provider_imggen.request import (
    GenerationRequest,
    ensure_validated_for,
)
from airflow_provider_imggen.results import (
    FailedImage,
    GeneratedImage,
    ImageGenerationResult,
    ListedTask,
    SubmittedTask,
    TaskState,
)
from airflow_provider_imggen.utils import redact
from airflow_provider_imggen.wire import native
from airflow_provider_imggen.wire.errors import decode_response
from airflow_provider_imggen.wire.gateway import gateway_ignored_fields, parse_generation_result
from airflow_provider_imggen.wire.multimodal import parse_multimodal_result
from airflow_provider_imggen.wire.native import (
    flatten_native_request,
    parse_submitted_task,
    parse_task_state,
)

if TYPE_CHECKING:
    pass

from airflow_provider_imggen.hooks.base import PROMPT_LOG_CHARS
from airflow_provider_imggen.hooks.billable import BillableSendHook
from airflow_provider_imggen.hooks.image_generation_async import ImageGenerationAsyncHook

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


class ImageGenerationHook(BillableSendHook):
    """
    Interact with a text-to-image API: an OpenAI-compatible gateway (``POST /v1/images/generations``) or
    DashScope's native asynchronous task API (submit, then poll ``GET /api/v1/tasks/{task_id}``).

    The connection's Host is the API's base URL (``https://gateway.example.com/v1``; https when no scheme
    is given), its Password the API key. Extra fields: ``default_model``, ``request_timeout`` (seconds),
    ``max_retries``, ``api_style`` (``openai`` or ``dashscope``, which selects the API),
    ``retry_unknown_outcome`` (see :mod:`~airflow_provider_imggen.retry_policy`), ``workspace`` (sent as
    ``X-DashScope-WorkSpace``) and ``gateway_dialect`` (``openai`` or ``nested``: where a gateway reads
    DashScope's own fields). On DashScope, each model goes to the endpoint that serves it (docs/models.md,
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

    # -- generation -----------------------------------------------------------------------------------

    def generate(
        self,
        request: GenerationRequest,
        *,
        timeout: float | None = None,
        journal: BillingJournal | None = None,
        reuse: bool = True,
    ) -> ImageGenerationResult:
        """
        Generate the images of a validated request (:meth:`validate_request`): one billable request.

        OpenAI-compatible gateway: one POST. ``api_style="dashscope"``: for a model of the asynchronous task
        API, :meth:`submit`, then :meth:`wait_for_task` in this process (for a worker-free wait, defer to
        :class:`~airflow_provider_imggen.triggers.image_generation.ImageGenerationTaskTrigger` instead);
        for a model of the synchronous endpoint (qwen-image-max, qwen-image 2.0), one POST to
        ``multimodal-generation/generation``, answered with the images.

        :param request: the validated request
        :param timeout: read timeout in seconds for the billable request (default: the hook's)
        :param journal: where the request's intent and outcome are recorded (the operator's is durable, in
            the task state store); an earlier attempt of the same request without a known outcome is
            never sent again blindly (:mod:`~airflow_provider_imggen.billing_journal`)
        :param reuse: an earlier attempt of the same request that was answered (paid for) or whose task
            succeeded stops this one (False: generate, and pay for, new images)
        :raises ImageGenerationValidationError: the request does not suit the connection (nothing sent)
        :raises ImageGenerationRejectedError: the API refused the request; retrying will not help
        :raises ImageGenerationThrottledError: throttled beyond the in-process budget (nothing billed)
        :raises ImageGenerationOutcomeUnknownError: sent, and the outcome is unknown (may be billed)
        :raises ImageGenerationMalformedResponseError: answered, maybe billed, but unreadable
        :raises ImageGenerationTaskFailedError: the native task ended FAILED, CANCELED or UNKNOWN
        :raises ImageGenerationAPIError: nothing could be sent (connection refused...) and retries ran out
        """
        request = self._check_request(request, timeout)
        journal = journal if journal is not None else BillingJournal()
        if self.endpoint_for(request) == "sync":
            return self._generate_answered(request, read_timeout=timeout, journal=journal, reuse=reuse)
        if self.settings.api_style == "dashscope":
            started = time.monotonic()
            submitted = self.submit(request, timeout=timeout, journal=journal, reuse=reuse)
            state = self.wait_for_task(submitted.generation_task_id)
            return self.result_from_task(
                state, model=submitted.model, parameters=submitted.parameters, started=started
            )
        return self._generate_answered(request, read_timeout=timeout, journal=journal, reuse=reuse)

    def generate_images(
        self,
        prompt: str,
        *,
        timeout: float | None = None,
        journal: BillingJournal | None = None,
        reuse: bool = True,
        aws_conn_id: str | None = "aws_default",
        **arguments: Any,
    ) -> ImageGenerationResult:
        """
        Validate the arguments (:meth:`validate_request`, before anything is sent), then :meth:`generate`.

        :param prompt: what to draw (at most 800 characters for the known models)
        :param timeout: read timeout in seconds for the billable request
        :param journal: where the request's intent and outcome are recorded (see :meth:`generate`)
        :param reuse: see :meth:`generate`
        :param aws_conn_id: the aws connection reading ``s3://`` input images
        :param arguments: the request's other parameters, by name: ``model`` (default: the connection's
            ``default_model``), ``images``, ``n``, ``size``, ``response_format``, ``negative_prompt``,
            ``prompt_upsampling``, ``seed``, ``extra_body``, ``watermark``, ``endpoint``
            (:class:`~airflow_provider_imggen.request.GenerationRequest` documents each)
        """
        request = self.validate_request(prompt, **arguments)
        if request.images:
            from airflow_provider_imggen.inputs.resolve import resolve_input_images

            request = resolve_input_images(
                request, aws_conn_id=aws_conn_id, imggen_conn_id=self.imggen_conn_id, log=self.log
            )
        return self.generate(request, timeout=timeout, journal=journal, reuse=reuse)

    def _check_request(self, request: GenerationRequest, timeout: object) -> GenerationRequest:
        """``request``, checked against this connection's API once (see :func:`ensure_validated_for`)."""
        if not isinstance(request, GenerationRequest):
            raise ImageGenerationValidationError(
                "request", request, "expected a GenerationRequest (hook.validate_request builds one)"
            )
        if timeout is not None:
            coerce_seconds("timeout", timeout)
        return ensure_validated_for(request, self.settings.api_style, self.settings.gateway_dialect)

    def _generate_answered(
        self, request: GenerationRequest, *, read_timeout: float | None, journal: BillingJournal, reuse: bool
    ) -> ImageGenerationResult:
        """
        One POST answered with the images: the OpenAI-compatible gateway, or DashScope's synchronous
        ``multimodal-generation/generation``. Re-sent only when provably not processed (never opened, 429);
        a 5xx, a timeout or a dropped connection after sending is outcome unknown (no task to look up).
        """
        started = time.monotonic()
        sending = self.billable_send(request)
        dialect = self.settings.gateway_dialect

        def read_answer(body: dict[str, Any], request_id: str | None) -> ImageGenerationResult:
            if sending.endpoint == "sync":
                result, notes = parse_multimodal_result(body, request, request_id)
                where = " on the synchronous endpoint"
            else:
                result, notes = parse_generation_result(body, request, request_id)
                where = ""
                ignored = gateway_ignored_fields(body, request, result, dialect)
                if ignored is not None:
                    self.log.warning("Answer to request %s: %s", request_id, ignored)
                    result = dataclasses.replace(result, warnings=(*result.warnings, ignored))
            self._log_answer(request, result, notes, request_id, started=started, where=where)
            return result

        return self._send_billable(
            request, sending, read_answer, read_timeout=read_timeout, journal=journal, reuse=reuse
        )

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

    def submit(
        self,
        request: GenerationRequest,
        *,
        timeout: float | None = None,
        journal: BillingJournal | None = None,
        reuse: bool = True,
    ) -> SubmittedTask:
        """
        Submit a validated request as a native generation task (billable) and return at once.

        Needs a connection with ``api_style="dashscope"``. ``n`` is always sent (the native default for
        wan2.2-t2i-* is 4). The submission is re-sent only when the service provably created nothing
        (connection never opened, 429). When its outcome is unknown (5xx, read timeout, connection lost
        after sending, an unreadable answer), the service's task list is searched for the task it created
        (:meth:`recover_submission`): exactly one task proven ours → reconnected to it (a warning says so);
        otherwise :class:`~airflow_provider_imggen.exceptions.ImageGenerationSubmissionUnknownError`.

        With a ``journal`` holding an earlier attempt of the same request, nothing is sent while that
        attempt's task may still deliver: its task is reconnected to (unless it ended FAILED, CANCELED or
        UNKNOWN), and an attempt whose outcome was never recorded (the try died) is recovered from the task
        list the same way.

        :param request: the validated request
        :param timeout: read timeout in seconds for the submission
        :param journal: where the submission's intent and outcome are recorded (see :meth:`generate`)
        :param reuse: reconnect to an earlier attempt's task that already succeeded (False: submit anew)
        :raises ImageGenerationSubmissionUnknownError: sent, outcome unknown, no single task proven ours
        """
        self._require_dashscope("submit()")
        request = self._check_request(request, timeout)
        if self.endpoint_for(request) != "async":
            raise ImageGenerationValidationError(
                "model",
                request.model,
                "is served by DashScope's synchronous endpoint (multimodal-generation/generation), which "
                "answers with the images and creates no task to submit: use generate(), or "
                "ImageGenerationOperator (nothing was sent)",
            )
        journal = journal if journal is not None else BillingJournal()
        sending = self.billable_send(request)
        earlier = journal.last_for(sending.fingerprint)
        if earlier is not None and earlier.outcome == "task" and earlier.generation_task_id is not None:
            reused = self._reuse_submitted(request, sending.recorded, earlier.generation_task_id, reuse=reuse)
            if reused is not None:
                return reused
        elif earlier is not None and not earlier.settled:
            return self.recover_submission(request, sending.recorded, earlier, journal)

        def read_answer(body: dict[str, Any], request_id: str | None) -> SubmittedTask:
            return parse_submitted_task(body, request_id, sending.recorded)

        try:
            submitted = self._send_billable(
                request, sending, read_answer, read_timeout=timeout, journal=journal, reuse=reuse
            )
        except (ImageGenerationSubmissionUnknownError, ImageGenerationMalformedResponseError) as unknown:
            # Sent, and maybe created: the task list may show the task (the journal has it as unknown).
            lost = journal.last_for(sending.fingerprint)
            assert lost is not None, "_send_billable recorded the intent"
            return self.recover_submission(request, sending.recorded, lost, journal, unknown=unknown)
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

    def _reuse_submitted(
        self, request: GenerationRequest, body_sent: dict[str, Any], generation_task_id: str, *, reuse: bool
    ) -> SubmittedTask | None:
        """
        The task an earlier attempt created, unless it ended without images, or succeeded and ``reuse`` is
        False (then None: submit anew).
        """
        state = self.get_task(generation_task_id)
        if state.status == "SUCCEEDED" and not reuse:
            self.log.info("Task %s already succeeded; reuse=False: submitting again", generation_task_id)
            return None
        if state.status in ("FAILED", "CANCELED") or (state.status == "UNKNOWN" and not reuse):
            # FAILED and CANCELED tasks are not billed; an UNKNOWN (expired) one may have been.
            self.log.warning(
                "Task %s, created by an earlier attempt of this request, is %s: submitting again",
                generation_task_id,
                state.status,
            )
            return None
        if state.status == "UNKNOWN":
            raise ImageGenerationOutcomeUnknownError(
                f"Task {generation_task_id}, created by an earlier attempt of this request, is unknown to "
                "the API (task ids live 24 h): it may have succeeded and been billed, and its results cannot "
                f"be read any more. {billed_note(request.model, request.n)} (reuse=False submits, and pays "
                "for, a new task)",
                model=request.model,
                images_at_risk=request.n,
                generation_task_id=generation_task_id,
            )
        self.log.info(
            "Task %s, created by an earlier attempt of this request, is %s: reconnecting, nothing sent",
            generation_task_id,
            state.status,
        )
        return SubmittedTask(
            generation_task_id=generation_task_id,
            task_status=state.status,
            request_id=state.request_id,
            model=request.model,
            parameters=flatten_native_request(body_sent),
        )

    def submit_task(self, prompt: str, *, timeout: float | None = None, **arguments: Any) -> SubmittedTask:
        """
        Validate the arguments (as :meth:`generate_images` does, before anything is sent), then
        :meth:`submit`. ``extra_body`` fields join the request's ``parameters`` (``{"watermark": False}``).
        """
        request = self.validate_request(prompt, **arguments)
        self._require_dashscope("submit_task()")
        return self.submit(request, timeout=timeout)

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
                url = f"{settings.base_url}{native.TASKS_PATH}/airflow-connection-test"
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
