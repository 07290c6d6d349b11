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
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from airflow.sdk.exceptions import AirflowTaskTimeout

from airflow_provider_imggen import crash_points
from airflow_provider_imggen.billing_journal import (
    IDENTIFIER,
    Attempt,
    BillingJournal,
    Outcome,
    billable_fingerprint,
    unsettled_description,
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
from airflow_provider_imggen.retry_policy import (
    BillableRequest,
    provably_not_processed,
)
from airflow_provider_imggen.utils import redact
from airflow_provider_imggen.wire import gateway, multimodal, native
from airflow_provider_imggen.wire.errors import decode_response
from airflow_provider_imggen.wire.gateway import gateway_ignored_fields, parse_generation_result
from airflow_provider_imggen.wire.multimodal import parse_multimodal_result
from airflow_provider_imggen.wire.native import (
    flatten_native_request,
    parse_submitted_task,
    parse_task_state,
)

if TYPE_CHECKING:
    from collections.abc import Callable

from airflow_provider_imggen.hooks.base import PROMPT_LOG_CHARS
from airflow_provider_imggen.hooks.image_generation_async import ImageGenerationAsyncHook
from airflow_provider_imggen.hooks.native_tasks import NativeTasksHook

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


_Answer = TypeVar("_Answer")


def _identifier(value: str | None) -> str | None:
    """A request id the journal can keep (the service's text is not trusted to be one)."""
    return value if value is not None and IDENTIFIER.fullmatch(value) else None


@dataclasses.dataclass(frozen=True)
class BillableSend:
    """
    What a billable request sends: the endpoint (``gateway``, ``async``, ``sync``), its path below the
    connection's base URL and the JSON body its wire module built.
    """

    endpoint: str
    path: str
    body: dict[str, Any]

    @cached_property
    def fingerprint(self) -> str:
        return billable_fingerprint(self.endpoint, self.body)


class _AttemptSteps:
    """The journal's records between the sends of one billable request (see ``_request_json``)."""

    def __init__(
        self,
        hook: ImageGenerationHook,
        journal: BillingJournal,
        attempt: Attempt,
        request: GenerationRequest,
        sending: BillableSend,
    ) -> None:
        self.hook, self.journal, self.attempt = hook, journal, attempt
        self.request, self.sending = request, sending

    def nothing_happened(self) -> None:
        self.attempt = self.hook._record(self.journal, self.attempt, "not_processed", reason="throttled")

    @property
    def waiting(self) -> bool:
        """Between a throttled send and the next one: nothing of this request is in flight."""
        return self.attempt.outcome == "not_processed"

    def before_resend(self) -> None:
        # Durable before the re-send leaves, like the first intent (it takes the throttled one's slot).
        self.attempt = self.journal.record_intent(
            fingerprint=self.sending.fingerprint,
            endpoint=self.sending.endpoint,
            model=self.request.model,
            images=self.request.n,
        )


class ImageGenerationHook(NativeTasksHook):
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
        **arguments: Any,
    ) -> ImageGenerationResult:
        """
        Validate the arguments (:meth:`validate_request`, before anything is sent), then :meth:`generate`.

        :param prompt: what to draw (at most 800 characters for the known models)
        :param timeout: read timeout in seconds for the billable request
        :param journal: where the request's intent and outcome are recorded (see :meth:`generate`)
        :param reuse: see :meth:`generate`
        :param arguments: the request's other parameters, by name: ``model`` (default: the connection's
            ``default_model``), ``n``, ``size``, ``response_format``, ``negative_prompt``,
            ``prompt_upsampling``, ``seed``, ``extra_body``, ``watermark``, ``endpoint``
            (:class:`~airflow_provider_imggen.request.GenerationRequest` documents each)
        """
        request = self.validate_request(prompt, **arguments)
        return self.generate(request, timeout=timeout, journal=journal, reuse=reuse)

    def billable_send(self, request: GenerationRequest) -> BillableSend:
        """
        What generating ``request`` sends on this connection (endpoint, path, body): its fingerprint is the
        key of its attempts in a billing journal.
        """
        endpoint = self.endpoint_for(request)
        if endpoint == "sync":
            return BillableSend("sync", multimodal.PATH, multimodal.request_body(request))
        if endpoint == "async":
            return BillableSend("async", native.SUBMIT_PATH, native.submission_body(request))
        return BillableSend(
            "gateway", gateway.PATH, gateway.request_body(request, self.settings.gateway_dialect)
        )

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
            reused = self._reuse_submitted(request, sending.body, earlier.generation_task_id, reuse=reuse)
            if reused is not None:
                return reused
        elif earlier is not None and not earlier.settled:
            return self.recover_submission(request, sending.body, earlier, journal)

        def read_answer(body: dict[str, Any], request_id: str | None) -> SubmittedTask:
            return parse_submitted_task(body, request_id, sending.body)

        try:
            submitted = self._send_billable(
                request, sending, read_answer, read_timeout=timeout, journal=journal, reuse=reuse
            )
        except (ImageGenerationSubmissionUnknownError, ImageGenerationMalformedResponseError) as unknown:
            # Sent, and maybe created: the task list may show the task (the journal has it as unknown).
            lost = journal.last_for(sending.fingerprint)
            assert lost is not None, "_send_billable recorded the intent"
            return self.recover_submission(request, sending.body, lost, journal, unknown=unknown)
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

    # -- transport ----------------------------------------------------------------------------------

    def _send_billable(
        self,
        request: GenerationRequest,
        sending: BillableSend,
        read_answer: Callable[[dict[str, Any], str | None], _Answer],
        *,
        read_timeout: float | None,
        journal: BillingJournal,
        reuse: bool = True,
    ) -> _Answer:
        """
        The one place a billable request leaves, whatever the endpoint.

        Its intent is recorded in ``journal`` before it leaves; it is sent once, and again only when the
        service provably did nothing with it (never connected, 429, an explicit not-processed answer,
        :mod:`~airflow_provider_imggen.retry_policy`). From then until its outcome is recorded, every
        failure (a parser bug, ``RecursionError``, ``execution_timeout``) is outcome unknown: on the
        gateway and the synchronous endpoint an :class:`ImageGenerationOutcomeUnknownError`, which Airflow
        does not retry; on the task API a :class:`ImageGenerationSubmissionUnknownError`, which
        :meth:`submit` recovers from the task list (a kill or a timeout leaves the journal to the retry).

        An earlier attempt of the same request in ``journal`` whose outcome is not provably "nothing
        happened" stops the send (unless the connection's ``retry_unknown_outcome`` opts in): the task
        API's caller recovers it first (:meth:`submit`).

        :param request: the validated request (its model and image count are what may be billed)
        :param sending: the endpoint, path and JSON body from the endpoint's wire module
        :param read_answer: reads the answer's JSON body and request id (inside the boundary)
        :param read_timeout: read timeout in seconds (default: the hook's)
        :param journal: where the intent and the outcome go
        :param reuse: False: an earlier attempt that was answered (paid) does not stop this one
        """
        self._refuse_unsettled(request, sending, journal, reuse=reuse)
        attempt = journal.record_intent(
            fingerprint=sending.fingerprint, endpoint=sending.endpoint, model=request.model, images=request.n
        )
        try:
            crash_points.reach("after_intent")
        except BaseException as error:
            # Stopped in this process before anything left: provably not processed.
            journal.record_outcome(attempt, "not_processed", reason=f"stopped by {type(error).__name__}")
            raise
        self.log.debug("POST %s: model=%s n=%d size=%s", sending.path, request.model, request.n, request.size)
        task_api = sending.endpoint == "async"
        steps = _AttemptSteps(self, journal, attempt, request, sending)
        try:
            body, request_id = self._request_json(
                "POST",
                f"{self.settings.base_url}{sending.path}",
                json=sending.body,
                headers=native.ASYNC_HEADER if task_api else None,
                read_timeout=read_timeout,
                billable=BillableRequest(
                    model=request.model, images=request.n, submitted_at=attempt.sent_at, native=task_api
                ),
                journal_steps=steps,
            )
            attempt = steps.attempt
            crash_points.reach("after_answer")
            answer = read_answer(body, request_id)
        except ImageGenerationAPIError as error:
            # Nothing happened only when the service said so (retry_policy sorts the failures): anything
            # else after the send, a 5xx whatever its headers included, may have been billed.
            outcome: Outcome = "not_processed" if provably_not_processed(error) else "unknown"
            self._record(journal, steps.attempt, outcome, request_id=_identifier(error.request_id))
            raise
        except Exception as error:
            if steps.waiting:
                raise  # interrupted while waiting out a throttled send: nothing in flight, nothing billed
            # A bug, here or in a parser, after the request may have been billed: never an Airflow retry.
            self._record(journal, steps.attempt, "unknown", reason=f"interrupted by {type(error).__name__}")
            raise self._unknown_after_send(request, sending, steps.attempt, error) from error
        except BaseException as error:
            if steps.waiting:
                raise  # interrupted while waiting out a throttled send: nothing in flight, nothing billed
            # execution_timeout, SIGTERM: the process is going down; the journal tells the retry.
            self._record(journal, steps.attempt, "unknown", reason=f"interrupted by {type(error).__name__}")
            if isinstance(error, AirflowTaskTimeout) and not task_api:
                raise self._unknown_after_send(request, sending, steps.attempt, error) from error
            raise
        # Best effort from here: the answer is paid for and in hand, and is delivered even when the journal
        # cannot be written (a retry then reads an unknown outcome and fails closed).
        if isinstance(answer, SubmittedTask):
            self._record(
                journal,
                attempt,
                "task",
                generation_task_id=answer.generation_task_id,
                request_id=_identifier(answer.request_id),
            )
        else:
            try:
                journal.record_answer(steps.attempt, answer)
            except Exception as recording:
                self.log.error("The answer could not be recorded in the billing journal: %s", recording)
        crash_points.reach("after_record")
        return answer

    def _refuse_unsettled(
        self, request: GenerationRequest, sending: BillableSend, journal: BillingJournal, *, reuse: bool
    ) -> None:
        """Refuse to send a request an earlier attempt may have paid for (see :meth:`_send_billable`)."""
        earlier = journal.last_for(sending.fingerprint)
        if earlier is None or earlier.outcome in ("not_processed", "task"):
            return
        what = unsettled_description(earlier)
        if earlier.outcome in ("answered", "undelivered"):
            if not reuse:
                # Paid for: the caller asks for new images on purpose (the operator's reuse=False).
                self.log.info("%s; reuse=False: generating (and paying for) new images", what)
                return
            raise ImageGenerationOutcomeUnknownError(
                f"{what}. Billed for up to {earlier.images} image(s) of {earlier.model}: not sent again "
                "(reuse=False generates, and pays for, new images)",
                model=earlier.model,
                images_at_risk=earlier.images,
                submitted_at=earlier.sent_at,
                request_id=earlier.request_id,
            )
        if self.settings.retry_unknown_outcome:
            self.log.warning(
                "%s; the connection extra retry_unknown_outcome is set: sending it again, which may bill "
                "twice",
                what,
            )
            return
        raise ImageGenerationOutcomeUnknownError(
            f"{what}. {billed_note(earlier.model, earlier.images)} (set the connection extra "
            "retry_unknown_outcome to accept paying twice)",
            model=earlier.model,
            images_at_risk=earlier.images,
            submitted_at=earlier.sent_at,
            request_id=earlier.request_id,
            generation_task_id=earlier.generation_task_id,
        )

    def _record(self, journal: BillingJournal, attempt: Attempt, outcome: Outcome, **fields: Any) -> Attempt:
        """Record an outcome, best effort: an intent without an outcome says "unknown" all the same."""
        try:
            return journal.record_outcome(attempt, outcome, **fields)
        except Exception as recording:
            self.log.error("Could not record the outcome in the billing journal: %s", recording)
            return attempt

    def _unknown_after_send(
        self, request: GenerationRequest, sending: BillableSend, attempt: Attempt, error: BaseException
    ) -> ImageGenerationOutcomeUnknownError:
        """What an unexpected failure after the send becomes (its message never echoes the answer)."""
        unknown = (
            ImageGenerationSubmissionUnknownError
            if sending.endpoint == "async"
            else ImageGenerationOutcomeUnknownError
        )
        return unknown(
            f"The {sending.endpoint} request sent at {attempt.intent_at} was interrupted after it may have "
            f"been billed ({type(error).__name__}). {billed_note(request.model, request.n)}",
            model=request.model,
            images_at_risk=request.n,
            submitted_at=attempt.sent_at,
        )

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
