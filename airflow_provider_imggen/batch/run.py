"""
One run of a batch's trigger: every request sent at most once per claim, at the account's pace, each task
read until it ends.

The loop holds no state that matters across runs: the ledger's slots (:mod:`~airflow_provider_imggen.
ledger.slots`) do. A run starts by reading every slot, so a second copy of the trigger, a triggerer that
took the trigger over, or a task retry picks up where the others are: it polls the tasks already billed,
sends what was never sent, waits for what another copy is sending, and recovers (from the task list, never
by sending again) what a dead copy may have sent.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_imggen import crash_points
from airflow_provider_imggen.exceptions import (
    ImageGenerationAPIError,
    ImageGenerationThrottledError,
    ImageGenerationValidationError,
)
from airflow_provider_imggen.retry_policy import PERMANENT_ERROR_CODES

if TYPE_CHECKING:
    from airflow_provider_imggen.batch.pacing import Pacer
    from airflow_provider_imggen.hooks.image_generation import ImageGenerationHook
    from airflow_provider_imggen.hooks.image_generation_async import ImageGenerationAsyncHook
    from airflow_provider_imggen.ledger.slots import Held, SendSlots
    from airflow_provider_imggen.results import TaskState

# A slot another copy claimed is read again this often, to see its task id (or that it gave it up).
RECHECK_SECONDS = 1.0
# Codes of a task the service refused for its content: reported, never sent again.
CONTENT_CODES = frozenset({"DataInspectionFailed", "IPInfringementSuspect", "data_inspection_failed"})


@dataclass
class Slot:
    """One request of the batch, and what this run knows of it."""

    index: int
    key: str
    body: dict[str, Any]
    recorded: dict[str, Any]
    held: Held | None = None
    # new | pending | in_flight | elsewhere | recovering | done
    phase: str = "new"
    task_id: str | None = None
    sent_at: float = 0.0
    expected_end: float | None = None
    starts_now: bool = False
    next_poll: float = 0.0
    polls_since_end: int = 0
    state: TaskState | None = None
    problem: dict[str, Any] | None = None
    task_failures: int = 0
    next_check: float = 0.0

    @property
    def model(self) -> str:
        return str(self.recorded["model"])

    @property
    def images(self) -> int:
        return int(self.recorded.get("n") or 1)


@dataclass
class Tally:
    """What this run did, for its log and the event."""

    sent: int = 0
    throttled: int = 0
    recovered: int = 0
    learned: list[str] = field(default_factory=list)


class BatchRun:
    """
    :param hook: the triggerer's hook (status reads, the one-shot submission)
    :param recovery_hook: a blocking hook on the same connection, for the task-list search (in a thread)
    :param slots: the batch's slots in the ledger, as this copy writes them
    :param requests: per request, ``{"key", "body", "recorded"}`` (the slot key, the submission body and
        the request's recorded fields)
    :param pacer: the account's pace
    :param stale_after: seconds after which another copy's claim without an outcome is taken over for
        recovery (longer than any send can last)
    :param max_task_failures: tasks of one request that may fail unbilled before it is reported
    :param deadline: ``time.time()`` by which the run gives up on what is not done (None: never)
    :param log: the trigger's logger
    """

    def __init__(
        self,
        *,
        hook: ImageGenerationAsyncHook,
        recovery_hook: ImageGenerationHook,
        slots: SendSlots,
        requests: list[dict[str, Any]],
        pacer: Pacer,
        stale_after: float,
        max_task_failures: int,
        deadline: float | None,
        log: Any,
    ) -> None:
        self.hook = hook
        self.recovery_hook = recovery_hook
        self.ledger = slots
        self.slots = [
            Slot(index=i, key=r["key"], body=r["body"], recorded=r["recorded"])
            for i, r in enumerate(requests)
        ]
        self.pacer = pacer
        self.stale_after = stale_after
        self.max_task_failures = max_task_failures
        self.deadline = deadline
        self.log = log
        self.tally = Tally()
        self._recoveries: set[asyncio.Task[None]] = set()

    # -- the loop ---------------------------------------------------------------------------------------

    async def run(self) -> list[Slot]:
        """Until every slot is done (delivered or reported): the slots, in request order."""
        try:
            for slot in self.slots:
                await self._load(slot)
            while not all(slot.phase == "done" for slot in self.slots):
                now = time.monotonic()
                if self.deadline is not None and time.time() > self.deadline:
                    self._give_up()
                    break
                await self._submit_what_may_go(now)
                await self._poll_what_is_due(time.monotonic())
                await self._check_elsewhere(time.monotonic())
                if not all(slot.phase == "done" for slot in self.slots):
                    await asyncio.sleep(self._sleep(time.monotonic()))
        finally:
            for task in self._recoveries:
                task.cancel()
        return self.slots

    def _sleep(self, now: float) -> float:
        wake = [now + RECHECK_SECONDS]
        if any(slot.phase == "pending" for slot in self.slots) and self._room():
            wake.append(now + self.pacer.submit_wait(now))
        wake += [slot.next_poll for slot in self.slots if slot.phase == "in_flight"]
        return min(max(min(wake) - now, 0.005), RECHECK_SECONDS)

    def _in_flight(self) -> int:
        # Another copy's claims count: their sends may be at the service.
        return sum(1 for slot in self.slots if slot.phase in ("in_flight", "elsewhere", "recovering"))

    def _room(self) -> bool:
        limit = self.pacer.in_flight_limit()
        return limit is None or self._in_flight() < limit

    # -- reading the ledger -----------------------------------------------------------------------------

    async def _load(self, slot: Slot) -> None:
        """What the ledger says of ``slot``: the phase this run starts it in."""
        from airflow_provider_imggen.ledger.entry import LedgerEntryUnreadableError

        try:
            held = await asyncio.to_thread(self.ledger.read, slot.key)
        except LedgerEntryUnreadableError as error:
            self._report(slot, "unknown", "ledger_unreadable", f"its ledger entry is unreadable ({error})")
            return
        self._adopt(slot, held, time.monotonic())

    def _adopt(self, slot: Slot, held: Held | None, now: float) -> None:
        slot.held = held
        if held is not None:
            slot.task_failures = max(slot.task_failures, len(held.earlier_tasks))
        if held is None or held.state == "released":
            slot.phase = "pending"
        elif held.state == "billed" and held.entry.generation_task_id:
            self._track(slot, held.entry.generation_task_id, now, expected_end=None)
        elif held.state == "claimed":
            slot.phase = "elsewhere"
            slot.next_check = now
        elif held.state in ("unknown", "failed"):
            note = held.entry.request
            self._report(
                slot,
                held.state,
                str(note.get("code") or held.state),
                str(note.get("reason") or f"recorded {held.state} in the ledger"),
                billed=bool(note.get("billed")) if held.state == "failed" else None,
            )
        else:
            self._report(slot, "unknown", "ledger_state", f"its ledger entry is {held.state}")

    def _track(self, slot: Slot, task_id: str, now: float, *, expected_end: float | None) -> None:
        slot.phase, slot.task_id = "in_flight", task_id
        slot.expected_end, slot.polls_since_end = expected_end, 0
        slot.next_poll = self.pacer.next_poll(now, expected_end, 0) if expected_end else now

    # -- sending ----------------------------------------------------------------------------------------

    async def _submit_what_may_go(self, now: float) -> None:
        for slot in self.slots:
            if slot.phase != "pending":
                continue
            if not self._room() or self.pacer.submit_wait(time.monotonic()) > 0:
                return
            if self.pacer.would_probe(self._in_flight()):
                # The probe tells a queueing service from a refusing one only if the quota is really full:
                # read the tasks in flight first (one that just ended would take the probe into its slot).
                for other in [s for s in self.slots if s.phase == "in_flight"]:
                    await self._poll(other)
                if not self._room() or not self.pacer.would_probe(self._in_flight()):
                    continue
            await self._send(slot)

    async def _send(self, slot: Slot) -> None:
        """Claim the slot, send its request once, record what came of it."""
        held = await asyncio.to_thread(
            self.ledger.claim, slot.key, slot.held, index=slot.index, model=slot.model, images=slot.images
        )
        if held is None:  # another copy claimed it first: see what it holds
            self._adopt(slot, await asyncio.to_thread(self.ledger.read, slot.key), time.monotonic())
            if slot.phase == "pending":
                slot.phase, slot.next_check = "elsewhere", time.monotonic()
            return
        slot.held = held
        crash_points.reach("after_intent")
        now = time.monotonic()
        ends_ahead = [s.expected_end for s in self.slots if s.phase == "in_flight" and s.expected_end]
        expected_end, slot.starts_now = self.pacer.expected_end(now, ends_ahead)
        self.pacer.submitting(now, self._in_flight())
        slot.sent_at, slot.phase = now, "sending"
        self.tally.sent += 1
        try:
            submitted = await self.hook.submit_once(slot.body, model=slot.model, images=slot.images)
        except ImageGenerationThrottledError as error:
            rate = "RateQuota" in (error.code or "")
            learned = self.pacer.throttled(time.monotonic(), error.retry_after, rate=rate)
            self._learned(learned)
            self.tally.throttled += 1
            await self._settle(slot, "released", reason="throttled")
            return
        except ImageGenerationAPIError as error:
            await self._send_failed(slot, error)
            return
        except Exception as error:  # a bug after the request may have left: outcome unknown
            self.log.error(
                "Request %d: the submission failed unexpectedly (%s)", slot.index, type(error).__name__
            )
            self._recover(slot, f"interrupted by {type(error).__name__}")
            return
        crash_points.reach("after_answer")
        self._learned(self.pacer.accepted())
        settled = await self._settle(
            slot, "billed", generation_task_id=submitted.generation_task_id, request_id=_identifier(submitted)
        )
        if settled:
            await asyncio.to_thread(
                self.ledger.record_task,
                self._task_ledger_key(submitted.generation_task_id),
                submitted.generation_task_id,
                slot.key,
            )
            crash_points.reach("after_record")
            self._track(slot, submitted.generation_task_id, time.monotonic(), expected_end=expected_end)

    async def _send_failed(self, slot: Slot, error: ImageGenerationAPIError) -> None:
        from airflow_provider_imggen.retry_policy import provably_not_processed

        if getattr(error, "nothing_sent", False):
            # Never connected: nothing left; the slot sends again after a pause.
            self.pacer.throttled(time.monotonic(), 1.0)
            await self._settle(slot, "released", reason="never connected")
            return
        if provably_not_processed(error):
            # Refused (4xx): nothing billed, and sending it again would be refused again.
            self._report(slot, "failed", error.code or f"HTTP {error.status}", _said(error), billed=False)
            await self._settle(slot, "failed", code=error.code, reason=_said(error), billed=False)
            return
        self._recover(slot, _said(error), request_id=error.request_id)

    async def _settle(self, slot: Slot, state: str, **fields: Any) -> bool:
        """Write the slot's outcome over this run's claim; False (and the slot re-read) when it changed."""
        assert slot.held is not None
        note = {k: v for k, v in fields.items() if k not in ("generation_task_id", "request_id")}
        settled = await asyncio.to_thread(
            self.ledger.settle,
            slot.held,
            state,
            generation_task_id=fields.get("generation_task_id"),
            request_id=fields.get("request_id"),
            **note,
        )
        if settled is None:
            self.log.warning("Request %d: its ledger entry changed under this copy's claim", slot.index)
            found = await asyncio.to_thread(self.ledger.read, slot.key)
            answered = fields.get("generation_task_id")
            if found is not None and found.state == "unknown" and answered:
                # Another copy gave the send up as unknown while this one waited for the answer: the
                # answer in hand proves the task.
                upgraded = await asyncio.to_thread(
                    self.ledger.settle, found, "billed", generation_task_id=answered, reason="answered late"
                )
                found = upgraded or await asyncio.to_thread(self.ledger.read, slot.key)
            self._adopt(slot, found, time.monotonic())
            return False
        slot.held = settled
        if state == "released":
            slot.phase = "pending"
        return True

    # -- another copy's claims, and recovering a send whose outcome is unknown ------------------------------

    async def _check_elsewhere(self, now: float) -> None:
        for slot in self.slots:
            if slot.phase != "elsewhere" or slot.next_check > now:
                continue
            slot.next_check = now + RECHECK_SECONDS
            held = await asyncio.to_thread(self.ledger.read, slot.key)
            if held is not None and held.state == "claimed":
                slot.held = held
                age = _age_seconds(held.entry.updated_at)
                if age > self.stale_after:
                    taken = await asyncio.to_thread(self.ledger.take_for_recovery, held)
                    if taken is not None:
                        slot.held = taken
                        self.log.warning(
                            "Request %d: claimed by another copy %.0fs ago with no outcome recorded: "
                            "recovering its send from the task list (never sending it again)",
                            slot.index,
                            age,
                        )
                        self._recover(slot, "the copy that claimed it stopped before recording an outcome")
                continue
            self._adopt(slot, held, now)

    def _recover(self, slot: Slot, why: str, *, request_id: str | None = None) -> None:
        """Search the task list for the one task this slot's send created, in the background."""
        slot.phase = "recovering"
        task = asyncio.create_task(self._recovery(slot, why, request_id))
        self._recoveries.add(task)
        task.add_done_callback(self._recoveries.discard)

    async def _recovery(self, slot: Slot, why: str, request_id: str | None) -> None:
        from airflow_provider_imggen.request import GenerationRequest

        assert slot.held is not None
        request = GenerationRequest(model=slot.model, prompt=str(slot.recorded["prompt"]), n=slot.images)
        submitted_at = datetime.fromisoformat(slot.held.entry.claimed_at.replace("Z", "+00:00"))
        excluding = frozenset([s.task_id for s in self.slots if s.task_id] + list(slot.held.earlier_tasks))

        def foreign(task_id: str) -> bool:
            return self.ledger.owns_elsewhere(self._task_ledger_key(task_id), slot.key)

        try:
            found, candidates = await asyncio.to_thread(
                self.recovery_hook._find_submitted,
                request,
                submitted_at=submitted_at,
                request_id=request_id,
                excluding=excluding,
                foreign=foreign,
            )
        except Exception as error:
            self.log.warning("Request %d: the task list could not be searched (%s)", slot.index, error)
            found, candidates = None, ()
        if found is None:
            reason = (
                f"{why}; the task list shows no single task it could be"
                + (f" ({len(candidates)} candidate(s))" if candidates else "")
                + ": it may have been billed, and it is not sent again"
            )
            self._report(slot, "unknown", "outcome_unknown", reason)
            await self._settle(slot, "unknown", reason=reason)
            return
        self.tally.recovered += 1
        self.log.warning(
            "Request %d: the task list proves task %s its own: reconnected, nothing sent again",
            slot.index,
            found.generation_task_id,
        )
        if await self._settle(slot, "billed", generation_task_id=found.generation_task_id):
            self._track(slot, found.generation_task_id, time.monotonic(), expected_end=None)

    # -- reading tasks ----------------------------------------------------------------------------------

    async def _poll_what_is_due(self, now: float) -> None:
        due = sorted(
            (slot for slot in self.slots if slot.phase == "in_flight" and slot.next_poll <= now),
            key=lambda slot: slot.next_poll,
        )
        for slot in due:
            if self.pacer.query_wait(time.monotonic()) > 0:
                return
            self.pacer.querying(time.monotonic())
            await self._poll(slot)

    async def _poll(self, slot: Slot) -> None:
        assert slot.task_id is not None
        try:
            state = await self.hook.get_task(slot.task_id)
        except ImageGenerationValidationError as error:
            self._report(slot, "unknown", "unreadable", f"task {slot.task_id} cannot be read: {error}")
            return
        except ImageGenerationAPIError as error:
            self.log.warning("Request %d: reading task %s failed: %s", slot.index, slot.task_id, error)
            slot.next_poll = time.monotonic() + self.pacer.poll_interval
            return
        now = time.monotonic()
        if not state.is_terminal:
            expected = self.pacer.expected_duration()
            if slot.expected_end is None and expected is not None and slot.starts_now and slot.sent_at:
                # Sent before any duration was known: its end can be predicted now.
                slot.expected_end = slot.sent_at + expected
            if slot.expected_end is not None and now >= slot.expected_end:
                slot.polls_since_end += 1
            slot.next_poll = self.pacer.next_poll(now, slot.expected_end, slot.polls_since_end)
            return
        # The service's own times say how long it ran (seen from here, the end is as late as the poll).
        ran = state.run_seconds
        if ran is not None:
            self.pacer.observe(ran)
        elif slot.starts_now and slot.sent_at:
            self.pacer.observe(now - slot.sent_at)
        await self._ended(slot, state)

    async def _ended(self, slot: Slot, state: TaskState) -> None:
        if state.succeeded and state.images:
            slot.state, slot.phase = state, "done"
            return
        billed = bool(state.usage.get("image_count")) if isinstance(state.usage, dict) else False
        code = state.code or state.status
        if state.status == "UNKNOWN":
            self._report(
                slot,
                "unknown",
                "UNKNOWN",
                f"task {slot.task_id} expired or is unknown: it may have been billed",
            )
            return
        retry = (
            state.status in ("FAILED", "SUCCEEDED")
            and not billed
            and code not in CONTENT_CODES
            and code not in PERMANENT_ERROR_CODES
            and slot.task_failures + 1 < self.max_task_failures
        )
        if retry:
            slot.task_failures += 1
            self.log.warning(
                "Request %d: task %s ended %s (%s) without billing: sending it again",
                slot.index,
                slot.task_id,
                state.status,
                code,
            )
            if await self._settle(slot, "released", reason=f"task {state.status} unbilled"):
                slot.task_id = None
            return
        reason = f"task {slot.task_id} ended {state.status} ({code})" + (": billed" if billed else "")
        self._report(slot, "failed", code, reason, billed=billed)

    # -- ends -------------------------------------------------------------------------------------------

    def _report(self, slot: Slot, status: str, code: str, reason: str, *, billed: bool | None = None) -> None:
        slot.phase = "done"
        slot.problem = {
            "index": slot.index,
            "status": status,
            "code": code,
            "reason": reason,
            "billed": billed,
            "generation_task_id": slot.task_id,
        }
        self.log.warning("Request %d: %s (%s): %s", slot.index, status, code, reason)

    def _give_up(self) -> None:
        for slot in self.slots:
            if slot.phase == "pending":
                self._report(
                    slot, "failed", "timeout", "the batch's timeout passed before it was sent", billed=False
                )
            elif slot.phase != "done":
                self._report(
                    slot, "unknown", "timeout", f"the batch's timeout passed while it was {slot.phase}"
                )

    def _learned(self, mode: str | None) -> None:
        if mode is not None:
            self.tally.learned.append(mode)
            self.log.info(
                "The service %s a task beyond the concurrency quota: %s",
                "queues" if mode == "queue" else "refuses",
                "one task per slot now waits in its queue" if mode == "queue" else "keeping to the quota",
            )

    def _task_ledger_key(self, task_id: str) -> str:
        from airflow_provider_imggen.ledger.claims import task_key

        return task_key(self.recovery_hook.settings, task_id)


def _identifier(submitted: Any) -> str | None:
    from airflow_provider_imggen.billing_journal import IDENTIFIER

    value = submitted.request_id
    return value if isinstance(value, str) and IDENTIFIER.fullmatch(value) else None


def _said(error: ImageGenerationAPIError) -> str:
    """What the provider says of a failure, without the service's words (its message could hold anything)."""
    return (
        f"{type(error).__name__}"
        + (f" HTTP {error.status}" if error.status else "")
        + (f" {error.code}" if error.code else "")
    )


def _age_seconds(timestamp: str) -> float:
    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return (datetime.now(tz=UTC) - moment).total_seconds()


def new_copy_id() -> str:
    return uuid.uuid4().hex
