"""
Where every billable request leaves: :meth:`BillableSendHook._send_billable`, with the money rules of
:mod:`~airflow_provider_imggen.retry_policy` and the write-ahead
:mod:`~airflow_provider_imggen.billing_journal` (intent before the send, outcome after, every failure in
between "outcome unknown").

:class:`~airflow_provider_imggen.hooks.image_generation.ImageGenerationHook` builds on it: it decides what is
sent (:meth:`BillableSendHook.billable_send`) and how each answer is read.
"""

from __future__ import annotations

import dataclasses
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
from airflow_provider_imggen.exceptions import (
    ImageGenerationAPIError,
    ImageGenerationInputError,
    ImageGenerationOutcomeUnknownError,
    ImageGenerationSubmissionUnknownError,
    ImageGenerationThrottledError,
    ImageGenerationValidationError,
    billed_note,
)
from airflow_provider_imggen.hooks.native_tasks import NativeTasksHook
from airflow_provider_imggen.hooks.spending import SpendAccount
from airflow_provider_imggen.model_table import task_surface_of
from airflow_provider_imggen.results import SubmittedTask
from airflow_provider_imggen.retry_policy import BillableRequest, provably_not_processed
from airflow_provider_imggen.wire import gateway, image_generation, multimodal, native

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_imggen.budgets.guard import BudgetGuard
    from airflow_provider_imggen.request import GenerationRequest

_Answer = TypeVar("_Answer")


def _identifier(value: str | None) -> str | None:
    """A request id the journal can keep (the service's text is not trusted to be one)."""
    return value if value is not None and IDENTIFIER.fullmatch(value) else None


@dataclasses.dataclass(frozen=True)
class BillableSend:
    """
    What a billable request sends: the endpoint (``gateway``, ``async``, ``sync``), its path below the
    connection's base URL and the JSON body its wire module built; ``recorded`` is that body as records
    keep it (input images by sha256, :meth:`GenerationRequest.for_record`): the fingerprint, the task
    record and the recovery read it, so a retry whose presigned input URLs are new signatures is the same
    request.
    """

    endpoint: str
    path: str
    # What is sent may carry presigned input URLs and data URIs: never in a repr (tracebacks show locals).
    body: dict[str, Any] = dataclasses.field(repr=False)
    recorded: dict[str, Any] = dataclasses.field(repr=False)

    @cached_property
    def fingerprint(self) -> str:
        return billable_fingerprint(self.endpoint, self.recorded)


class _AttemptSteps:
    """The journal's records between the sends of one billable request (see ``_request_json``)."""

    def __init__(self, hook: BillableSendHook, journal: BillingJournal, spend: SpendAccount) -> None:
        assert spend.attempt is not None, "the intent is recorded before the first send"
        self.hook, self.journal, self.spend, self.attempt = hook, journal, spend, spend.attempt

    def nothing_happened(self) -> None:
        self.attempt = self.hook._record(self.journal, self.attempt, "not_processed", reason="throttled")
        self.spend.throttled()

    @property
    def waiting(self) -> bool:
        """Between a throttled send and the next one: nothing of this request is in flight."""
        return self.attempt.outcome == "not_processed"

    def maybe_billed(self, code: str | None) -> None:
        """
        A failure that may have been billed (a 5xx), about to be sent again (``retry_unknown_outcome``):
        this send's outcome is unknown for good, and counted so, before the next one has a key of its own.
        """
        self.attempt = self.hook._record(self.journal, self.attempt, "unknown", reason="resent after a 5xx")
        self.spend.failed(code, processed=True)

    def before_resend(self) -> None:
        # Durable before the re-send leaves, like the first intent (it takes the throttled one's slot), and
        # reserved again under a key of its own.
        self.attempt = self.spend.intent()


class BillableSendHook(NativeTasksHook):
    """The blocking hook's billable sends (see the module)."""

    # The budgets and payments of the task instance sending (the operator sets it: spend_guard()).
    budget_guard: BudgetGuard | None = None

    def spend_guard(self) -> BudgetGuard | None:
        """
        The guard of this hook's sends: the operator's, or, for a hook used in a task of its own, one
        built from the connection's budgets and ledger for the running task instance.

        :raises ImageGenerationValidationError: the connection has a budget and no ledger, or no task
            instance is running (its scopes count a DAG run's, a DAG's, an account's sends from tasks)
        """
        if self.budget_guard is not None or not (self.settings.ledger or self.settings.budgets):
            return self.budget_guard
        from airflow_provider_imggen.budgets.guard import BudgetGuard

        try:
            from airflow.sdk import get_current_context

            ti = get_current_context()["ti"]
        except Exception:
            if self.settings.budgets:
                raise ImageGenerationValidationError(
                    "budget",
                    ", ".join(budget.describe() for budget in self.settings.budgets),
                    "a connection with a budget sends from Airflow tasks only: nothing was sent",
                ) from None
            return None
        self.budget_guard = BudgetGuard.open(
            operator_budget=None, settings=self.settings, ti=ti, log=self.log
        )
        return self.budget_guard

    def billable_send(self, request: GenerationRequest) -> BillableSend:
        """
        What generating ``request`` sends on this connection (endpoint, path, body): its fingerprint is the
        key of its attempts in a billing journal.
        """
        endpoint = self.endpoint_for(request)
        unread = [image.record()["uri"] for image in request.images if image.sha256 is None]
        if unread:
            raise ImageGenerationValidationError(
                "images",
                unread,
                "not read yet: resolve_input_images() reads and checks input images before a request "
                "carrying them is sent (ImageGenerationOperator does; nothing was sent)",
            )
        recorded = request.for_record()
        if endpoint == "sync":
            return BillableSend(
                "sync", multimodal.PATH, multimodal.request_body(request), multimodal.request_body(recorded)
            )
        if endpoint == "async" and task_surface_of(request.model) == "image-generation":
            return BillableSend(
                "async",
                image_generation.PATH,
                image_generation.submission_body(request),
                image_generation.submission_body(recorded),
            )
        if endpoint == "async":
            return BillableSend(
                "async",
                native.submit_path(request),
                native.submission_body(request),
                native.submission_body(recorded),
            )
        dialect = self.settings.gateway_dialect
        return BillableSend(
            "gateway",
            gateway.PATH,
            gateway.request_body(request, dialect),
            gateway.request_body(recorded, dialect),
        )

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
        unsendable = [image.record()["uri"] for image in request.images if image.wire is None]
        if unsendable:
            # Known by their sha256 (a retry's record) but not read by this try: nothing to send them as.
            raise ImageGenerationInputError(
                f"Input images {', '.join(unsendable)} were not read by this try, so the request cannot be "
                "sent. Nothing was sent"
            )
        spend = SpendAccount(self, request, sending, journal)
        attempt = spend.intent()  # may refuse (a budget): recorded as not processed, nothing sent
        try:
            crash_points.reach("after_intent")
        except BaseException as error:
            # Stopped in this process before anything left: provably not processed.
            journal.record_outcome(attempt, "not_processed", reason=f"stopped by {type(error).__name__}")
            spend.release()
            raise
        spend.about_to_send()
        self.log.debug("POST %s: model=%s n=%d size=%s", sending.path, request.model, request.n, request.size)
        task_api = sending.endpoint == "async"
        steps = _AttemptSteps(self, journal, spend)
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
            # Not processed: the reservation goes back. Anything else keeps it, counted as spent.
            spend.failed(
                error.code,
                processed=outcome != "not_processed",
                throttled=isinstance(error, ImageGenerationThrottledError),
            )
            raise
        except Exception as error:
            if steps.waiting:
                spend.release()
                raise  # interrupted while waiting out a throttled send: nothing in flight, nothing billed
            spend.failed("unknown_outcome", processed=True)
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
            spend.submitted()
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
            spend.answered(answer)
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
