"""
The write-ahead billing journal: each billable request's intent, recorded durably before it leaves, and
its outcome, recorded as soon as it is known.

A try that dies between the two (a kill, an ``execution_timeout``, a parser bug) leaves an intent without
an outcome; the retry reads it and never sends the request blindly again: on the native task API it
proves which listed task is its own (:meth:`~airflow_provider_imggen.hooks.native_tasks.NativeTasksHook.
recover_submission`), elsewhere it fails with an outcome-unknown error (docs/money.md).

:class:`BillingJournal` keeps the attempts in memory (a hook used on its own); the operator's
:class:`TaskStateJournal` writes each change to Airflow's task state store, which survives the try and is
shared by every retry of the same task instance. The store's content can be edited by anyone with API
access: it is read as untrusted input, and an unreadable journal fails closed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from airflow_provider_imggen.exceptions import BillingJournalUnreadableError

# Where the operator keeps its journal in the task state store. Renaming it makes running retries forget
# what their earlier tries may have paid for.
JOURNAL_KEY = "imggen_billing"

# What became of an attempt:
#   not_processed: the service provably did nothing (never connected, 429, an explicit refusal);
#   unknown: sent, and nothing proves what happened (billable);
#   task: a native task was created (its id is recorded);
#   answered: the service answered with images (billed; delivered when ``delivered`` is set);
#   undelivered: answered and billed, but the images could not be delivered (e.g. a failed write).
Outcome = Literal["not_processed", "unknown", "task", "answered", "undelivered"]
OUTCOMES: tuple[str, ...] = ("not_processed", "unknown", "task", "answered", "undelivered")
ENDPOINTS = ("gateway", "async", "sync")

_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_SPEND_KEY = re.compile(r"[0-9a-f]{32}")
# Model names (``org/model`` on some gateways) and the service's ids: any printable text of sane length.
# Control characters are refused: they would forge log lines when an error quotes them.
IDENTIFIER = re.compile(r"[^\x00-\x1f\x7f-\x9f]{1,256}")
# Far more than any task makes: throttled attempts reuse one slot (record_intent), each Airflow try adds
# at most a few. A journal longer than this was not written by this provider.
MAX_ATTEMPTS = 256


def billable_fingerprint(endpoint: str, body: Mapping[str, Any]) -> str:
    """The sha256 of what is sent: equal for a request and any re-send of it, different otherwise."""
    canonical = json.dumps({"endpoint": endpoint, "body": body}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Attempt:
    """
    One billable request: its intent and, once known, its outcome.

    :param number: 1 for the first attempt of the task instance, then counting up across tries
    :param fingerprint: :func:`billable_fingerprint` of what was sent
    :param endpoint: ``gateway``, ``async`` (native task API) or ``sync`` (synchronous endpoint)
    :param model: the model (what may be billed)
    :param images: the image count asked for (what may be billed)
    :param intent_at: when the intent was recorded, just before sending (ISO 8601, UTC)
    :param outcome: see :data:`Outcome`; None while unknown to the journal (the try died, or is running)
    :param generation_task_id: the native task the attempt created or adopted
    :param request_id: the service's request id of the answer
    :param delivered: the XCom the attempt delivered (URLs sealed), returned again by a retry
    :param reason: why the outcome is what it is, for the retry's error message
    """

    number: int
    fingerprint: str
    endpoint: str
    model: str
    images: int
    intent_at: str
    outcome: str | None = None
    generation_task_id: str | None = None
    request_id: str | None = None
    delivered: dict[str, Any] | None = None
    reason: str | None = None
    # The key of what the send reserved in its budgets and of its payment record (budgets/): 32 hex digits.
    spend_key: str | None = None

    @property
    def sent_at(self) -> datetime:
        return datetime.fromisoformat(self.intent_at)

    @property
    def settled(self) -> bool:
        """Whether the journal knows the attempt's outcome for certain (not unknown, not missing)."""
        return self.outcome not in (None, "unknown")

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}

    @classmethod
    def from_json(cls, value: object) -> Attempt:
        """An attempt read back from the store, checked field by field (the store can be edited)."""
        if not isinstance(value, Mapping):
            raise BillingJournalUnreadableError("an attempt is not an object")
        unknown = set(value) - {field.name for field in dataclasses.fields(cls)}
        if unknown:
            raise BillingJournalUnreadableError(f"an attempt has unknown fields ({len(unknown)})")
        number, images = value.get("number"), value.get("images")
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= MAX_ATTEMPTS:
            raise BillingJournalUnreadableError("an attempt's number is not a small positive integer")
        if not isinstance(images, int) or isinstance(images, bool) or not 0 <= images <= 1000:
            raise BillingJournalUnreadableError("an attempt's image count is not an integer 0-1000")
        if not isinstance(value.get("fingerprint"), str) or not _FINGERPRINT.fullmatch(value["fingerprint"]):
            raise BillingJournalUnreadableError("an attempt's fingerprint is not a sha256")
        if value.get("endpoint") not in ENDPOINTS:
            raise BillingJournalUnreadableError("an attempt's endpoint is not one of the API's")
        if value.get("outcome") is not None and value.get("outcome") not in OUTCOMES:
            raise BillingJournalUnreadableError("an attempt's outcome is not one the journal writes")
        for name in ("model", "generation_task_id", "request_id"):
            field_value = value.get(name)
            if field_value is not None and not (
                isinstance(field_value, str) and IDENTIFIER.fullmatch(field_value)
            ):
                raise BillingJournalUnreadableError(f"an attempt's {name} is not an identifier")
        if not isinstance(value.get("model"), str):
            raise BillingJournalUnreadableError("an attempt has no model")
        try:
            sent_at = datetime.fromisoformat(value["intent_at"])
        except (KeyError, TypeError, ValueError):
            raise BillingJournalUnreadableError("an attempt's intent time is not ISO 8601") from None
        if sent_at.tzinfo is None:
            raise BillingJournalUnreadableError("an attempt's intent time has no time zone")
        delivered, reason = value.get("delivered"), value.get("reason")
        if delivered is not None and not isinstance(delivered, dict):
            raise BillingJournalUnreadableError("an attempt's delivery is not an object")
        if reason is not None and not (isinstance(reason, str) and len(reason) <= 2000):
            raise BillingJournalUnreadableError("an attempt's reason is not a short text")
        spend_key = value.get("spend_key")
        if spend_key is not None and not (isinstance(spend_key, str) and _SPEND_KEY.fullmatch(spend_key)):
            raise BillingJournalUnreadableError("an attempt's spend key is not 32 hex digits")
        return cls(**value)


class BillingJournal:
    """
    The attempts of one task instance (or of one hook, used on its own), in order.

    :meth:`record_intent` is called just before a billable request leaves, :meth:`record_outcome` as soon as
    its fate is known; subclasses make both durable (:meth:`_persist`) before returning.
    """

    def __init__(self, attempts: tuple[Attempt, ...] = ()) -> None:
        self._attempts = list(attempts)
        # A hook may be shared by threads: numbering and persisting happen under one lock.
        self._lock = threading.Lock()
        # Set by a caller that knows which native tasks belong to other generations (the ledger's task
        # records): a recovery never adopts them, even when their prompt is this request's.
        self.foreign_task: Callable[[str], bool] | None = None
        # Set by a caller that can turn an answer into what it delivers (the operator's XCom of URL
        # results): recorded with the outcome, so a retry after a crash delivers it without paying again.
        self.deliverable: Callable[[Any], dict[str, Any] | None] | None = None

    @property
    def attempts(self) -> tuple[Attempt, ...]:
        return tuple(self._attempts)

    def last_for(self, fingerprint: str) -> Attempt | None:
        """The latest attempt of this request, if any."""
        for attempt in reversed(self._attempts):
            if attempt.fingerprint == fingerprint:
                return attempt
        return None

    def is_foreign(self, generation_task_id: str) -> bool:
        """Whether another generation is known to own this native task (never adopted by a recovery)."""
        if self.foreign_task is None:
            return False
        try:
            return self.foreign_task(generation_task_id)
        except Exception:
            return False  # unknown: the identity checks still decide, and fail closed on a tie

    def task_ids(self) -> frozenset[str]:
        """The native tasks the attempts created or adopted: never adopted again by a recovery."""
        return frozenset(a.generation_task_id for a in self._attempts if a.generation_task_id is not None)

    def record_intent(
        self,
        *,
        fingerprint: str,
        endpoint: str,
        model: str,
        images: int,
        spend_key: str | None = None,
        at: datetime | None = None,
    ) -> Attempt:
        """
        Record, durably, that a billable request is about to leave; the new attempt.

        An attempt the service provably did nothing with (``not_processed``: a throttled send) as the last
        one gives up its slot: a quota wait sending the same request a hundred times keeps one attempt.

        :raises BillingJournalUnreadableError: the attempt could not be read back (checked before sending)
        """
        with self._lock:
            last = self._attempts[-1] if self._attempts else None
            number = last.number if last is not None and last.outcome == "not_processed" else None
            attempt = Attempt(
                number=number or len(self._attempts) + 1,
                fingerprint=fingerprint,
                endpoint=endpoint,
                model=model,
                images=images,
                intent_at=(at or datetime.now(tz=UTC)).isoformat(),
                spend_key=spend_key,
            )
            if attempt.number > MAX_ATTEMPTS:
                raise BillingJournalUnreadableError(
                    f"this task instance already sent {MAX_ATTEMPTS} billable requests that may have been "
                    "billed; nothing more is sent"
                )
            # What is written is what a retry can read: checked here, before anything is sent.
            Attempt.from_json(attempt.to_json())
            if number is None:
                self._attempts.append(attempt)
            else:
                self._attempts[number - 1] = attempt
            self._persist()
            return attempt

    def record_outcome(self, attempt: Attempt, outcome: Outcome, **fields: Any) -> Attempt:
        """Record, durably, what became of ``attempt`` (and what it delivered, if anything)."""
        with self._lock:
            updated = dataclasses.replace(attempt, outcome=outcome, **fields)
            # Attempts are numbered from 1 in order (read_attempts checks it).
            self._attempts[attempt.number - 1] = updated
            self._persist()
            return updated

    def record_answer(self, attempt: Attempt, result: Any) -> Attempt:
        """Record that ``attempt`` was answered with images (and, if it can be, what it delivers)."""
        delivered = self.deliverable(result) if self.deliverable is not None else None
        request_id = getattr(result, "request_id", None)
        if not (isinstance(request_id, str) and IDENTIFIER.fullmatch(request_id)):
            request_id = None
        return self.record_outcome(attempt, "answered", request_id=request_id, delivered=delivered)

    def _persist(self) -> None:
        """Nothing to do in memory; the task state store's journal writes here."""


class TaskStateJournal(BillingJournal):
    """
    The journal of one Airflow task instance in its task state store (``context["task_state_store"]``),
    under :data:`JOURNAL_KEY`; shared by every try and map index's retries, gone with the DAG run.

    :param store: the task instance's task state store accessor
    """

    def __init__(self, store: Any) -> None:
        self._store = store
        super().__init__(read_attempts(store.get(JOURNAL_KEY)))

    def _persist(self) -> None:
        self._store.set(JOURNAL_KEY, [attempt.to_json() for attempt in self._attempts])


def unsettled_description(attempt: Attempt) -> str:
    """What an earlier attempt whose outcome is not "nothing happened" may have cost, for an error."""
    sent = f"Attempt {attempt.number} sent this {attempt.endpoint} request at {attempt.intent_at}"
    request = f" (request id {attempt.request_id})" if attempt.request_id else ""
    if attempt.outcome == "answered":
        return f"{sent} and was answered{request}, but its images were not delivered"
    if attempt.outcome == "undelivered":
        return f"{sent} and was answered{request}, but its images could not be delivered: {attempt.reason}"
    why = f": {attempt.reason}" if attempt.reason else ""
    return f"{sent}, and its outcome is unknown{request}{why}"


def read_attempts(stored: object) -> tuple[Attempt, ...]:
    """The attempts in a stored journal (None: none yet); an unreadable one fails closed."""
    if stored is None:
        return ()
    if not isinstance(stored, list) or len(stored) > MAX_ATTEMPTS:
        raise BillingJournalUnreadableError("the journal is not a list of attempts")
    attempts = tuple(Attempt.from_json(item) for item in stored)
    if [attempt.number for attempt in attempts] != list(range(1, len(attempts) + 1)):
        raise BillingJournalUnreadableError("the journal's attempts are not numbered 1, 2, 3...")
    return attempts


def billing_journal(context: Mapping[str, Any], *, durable: bool, log: Any) -> BillingJournal:
    """
    The journal of the running task instance: in its task state store when ``durable`` and the store
    exists (Airflow 3.3+ on a worker), else in memory (this try only).
    """
    store = context.get("task_state_store") if durable else None
    if store is not None:
        return TaskStateJournal(store)
    if context.get("ti") is not None:
        log.warning(
            "The billing journal is kept in memory only (%s): a retry after this try dies mid-request "
            "cannot tell what it paid for",
            "durable=False" if not durable else "no task state store: Airflow before 3.3",
        )
    return BillingJournal()
