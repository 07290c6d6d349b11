"""
What one run of a batch's trigger knows, and how it reads and writes the ledger's slots: the state that
sending (:mod:`.sending`), recovering (:mod:`.recovery`) and polling (:mod:`.run`) share.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from airflow_provider_imggen.batch.outcomes import safe_code

if TYPE_CHECKING:
    from airflow_provider_imggen.batch.pacing import Pacer
    from airflow_provider_imggen.batch.recovery import TaskListSearch
    from airflow_provider_imggen.hooks.image_generation_async import ImageGenerationAsyncHook
    from airflow_provider_imggen.ledger.slots import Held, SendSlots
    from airflow_provider_imggen.results import TaskState

_T = TypeVar("_T")
# A slot another copy claimed is read again this often, to see its task id (or that it gave it up).
RECHECK_SECONDS = 1.0
# Another copy's claim counts as a task at the service for this many expected generations after it was
# first seen (then it has ended there, whatever the claim says until it is recorded or stale), plus a second.
ELSEWHERE_GENERATIONS = 1.5
# Status reads of one task that may fail in a row (each already retried by the hook) before it is reported.
MAX_POLL_ERRORS = 10
# A ledger call that fails is tried this many times in all, after these pauses.
_LEDGER_PAUSES = (0.5, 1.0, 2.0)


@dataclass
class Slot:
    """One request of the batch, and what this run knows of it."""

    index: int
    key: str
    body: dict[str, Any]
    recorded: dict[str, Any]
    held: Held | None = None
    # pending | sending | in_flight | elsewhere | recovering | done
    phase: str = "pending"
    task_id: str | None = None
    sent_at: float = 0.0
    expected_end: float | None = None
    starts_now: bool = False
    next_poll: float = 0.0
    polls_since_end: int = 0
    poll_errors: int = 0
    state: TaskState | None = None
    problem: dict[str, Any] | None = None
    task_failures: int = 0
    next_check: float = 0.0
    # Another copy's claim as last seen, and since when (this process's clock: hosts' clocks differ).
    seen_version: str | None = None
    seen_since: float = 0.0

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
    # Tasks a copy's late answer proved billed after another attempt had taken the slot over: paid for,
    # not delivered (named in the event).
    late_tasks: list[str] = field(default_factory=list)


class BatchState:
    """
    :param hook: the triggerer's hook (status reads, the one-shot submission)
    :param search: the task-list search for sends whose outcome is unknown
    :param slots: the batch's slots in the ledger, as this copy writes them
    :param requests: per request, ``{"key", "body", "recorded"}`` (the slot key, the submission body and
        the request's recorded fields)
    :param pacer: the account's pace
    :param stale_after: seconds another copy's claim may stay unchanged, as seen from here, before it is
        taken over for recovery (longer than any send can last)
    :param max_task_failures: tasks of one request that may fail unbilled before it is reported
    :param throttle_timeout: seconds without an accepted submission, while some wait, before the unsent
        ones are reported (throttled, nothing billed)
    :param deadline: ``time.time()`` by which the run gives up on what is not done (None: never)
    :param task_ledger_key: the ledger key of a native task's record (which request created it)
    :param log: the trigger's logger
    """

    def __init__(
        self,
        *,
        hook: ImageGenerationAsyncHook,
        search: TaskListSearch,
        slots: SendSlots,
        requests: list[dict[str, Any]],
        pacer: Pacer,
        stale_after: float,
        max_task_failures: int,
        throttle_timeout: float,
        deadline: float | None,
        task_ledger_key: Callable[[str], str],
        log: Any,
    ) -> None:
        self.hook = hook
        self.search = search
        self.ledger = slots
        self.slots = [
            Slot(index=i, key=r["key"], body=r["body"], recorded=r["recorded"])
            for i, r in enumerate(requests)
        ]
        self.pacer = pacer
        self.stale_after = stale_after
        self.max_task_failures = max_task_failures
        self.throttle_timeout = throttle_timeout
        self.deadline = deadline
        self.task_ledger_key = task_ledger_key
        self.log = log
        self.tally = Tally()
        self.stopped: tuple[str, str] | None = None
        self._progress = time.monotonic()
        self._background: set[asyncio.Task[None]] = set()

    def _in_flight(self) -> int:
        """
        Sends that may hold one of the account's concurrent slots now. Another copy's claim counts for
        about one generation after it was first seen: its task (if its send made one) has ended by then,
        though its outcome may be learned only when the claim is recorded or recovered, a minute later. A
        send whose claim went stale (recovering) ended long ago. Until a duration is known, both count.
        """
        now, duration = time.monotonic(), self.pacer.expected_duration()
        held_for = None if duration is None else ELSEWHERE_GENERATIONS * duration + 1.0
        return sum(
            1
            for slot in self.slots
            if slot.phase in ("sending", "in_flight")
            or (slot.phase == "elsewhere" and (held_for is None or now - slot.seen_since < held_for))
            or (slot.phase == "recovering" and held_for is None)
        )

    def _room(self) -> bool:
        limit = self.pacer.in_flight_limit()
        return limit is None or self._in_flight() < limit

    # -- the ledger -------------------------------------------------------------------------------------

    async def _ledger(self, call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """One ledger call in a thread, tried again when the store fails (it answers for one slot only)."""
        from airflow_provider_imggen.ledger.store import LedgerStoreError

        for pause in (*_LEDGER_PAUSES, None):
            try:
                return await asyncio.to_thread(call, *args, **kwargs)
            except LedgerStoreError as error:
                if pause is None:
                    raise
                self.log.warning("The ledger failed (%s): trying again in %.1fs", type(error).__name__, pause)
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    async def _read(self, slot: Slot) -> Held | Exception | None:
        from airflow_provider_imggen.ledger.entry import LedgerEntryUnreadableError

        try:
            return await self._ledger(self.ledger.read, slot.key)
        except LedgerEntryUnreadableError as error:
            return error

    def _adopt(self, slot: Slot, held: Held | Exception | None, now: float) -> None:
        """What the ledger says of ``slot``: the phase this run goes on with."""
        if isinstance(held, Exception):
            self._report(slot, "unknown", "ledger_unreadable", f"its ledger entry is unreadable ({held})")
            return
        slot.held = held
        if held is not None:
            slot.task_failures = max(slot.task_failures, len(held.earlier_tasks))
        if held is None or held.state == "released":
            slot.phase = "pending"
        elif held.state == "billed" and held.entry.generation_task_id:
            self._track(slot, held.entry.generation_task_id, now, expected_end=None)
        elif held.state == "claimed":
            if slot.phase != "elsewhere" or held.version != slot.seen_version:
                slot.seen_version, slot.seen_since = held.version, now
            slot.phase, slot.next_check = "elsewhere", now
        elif held.state in ("unknown", "failed"):
            slot.task_id = held.entry.generation_task_id
            note = held.entry.request
            self._report(
                slot,
                held.state,
                safe_code(note.get("code")) or held.state,
                f"recorded {held.state} in the ledger",
                billed=note.get("billed") if isinstance(note.get("billed"), bool) else None,
            )
        else:
            self._report(slot, "unknown", "ledger_state", f"its ledger entry is {held.state}")

    def _track(self, slot: Slot, task_id: str, now: float, *, expected_end: float | None) -> None:
        slot.phase, slot.task_id, slot.poll_errors, slot.problem = "in_flight", task_id, 0, None
        slot.expected_end, slot.polls_since_end = expected_end, 0
        slot.next_poll = self.pacer.next_poll(now, expected_end, 0) if expected_end else now

    async def _settle(self, slot: Slot, state: str, **fields: Any) -> bool:
        """Write the slot's outcome over the claim this run holds; False (the slot re-read) if it changed."""
        assert slot.held is not None
        task_id, request_id = fields.pop("generation_task_id", None), fields.pop("request_id", None)
        written = await self._ledger(
            self.ledger.settle, slot.held, state, generation_task_id=task_id, request_id=request_id, **fields
        )
        if written is None:
            found = await self._read(slot)
            if (
                not isinstance(found, Exception)
                and found is not None
                and found.state == state
                and found.copy == self.ledger.copy
                and found.entry.generation_task_id
                == (task_id if state in ("billed", "failed", "unknown") else None)
            ):
                written = found  # this very write, applied before its answer was lost
            else:
                self.log.warning("Request %d: its ledger entry changed under this copy's claim", slot.index)
                self._adopt(slot, found, time.monotonic())
                return False
        slot.held = written
        if state == "released":
            slot.phase, slot.task_id = "pending", None
        return True

    async def _final(self, slot: Slot, state: str, code: str, reason: str, *, billed: bool | None) -> None:
        """Write a final outcome, then report it (not reported when another copy changed the slot first)."""
        if await self._settle(
            slot, state, generation_task_id=slot.task_id, code=code, reason=reason, billed=billed
        ):
            self._report(slot, state, code, reason, billed=billed)

    # -- ends -------------------------------------------------------------------------------------------

    def _report(self, slot: Slot, status: str, code: str, reason: str, *, billed: bool | None = None) -> None:
        slot.phase = "done"
        slot.problem = {
            "index": slot.index,
            "status": status,
            "code": safe_code(code),
            "reason": reason,
            "billed": billed,
            "generation_task_id": slot.task_id,
        }
        self.log.warning("Request %d: %s (%s): %s", slot.index, status, safe_code(code), reason)

    def _give_up(self, why: str, *, sending_only: bool = False) -> None:
        for slot in self.slots:
            if slot.phase == "pending":
                code = self.stopped[0] if self.stopped else "not_sent"
                self._report(slot, "failed", code, f"{why}: not sent, nothing billed", billed=False)
            elif not sending_only and slot.phase != "done":
                billed = True if slot.phase == "in_flight" else None
                self._report(slot, "unknown", "timeout", f"{why} while it was {slot.phase}", billed=billed)

    def _learned(self, mode: str | None) -> None:
        if mode is not None:
            self.tally.learned.append(mode)
            self.log.info(
                "The service %s a task beyond the concurrency quota: %s",
                "queues" if mode == "queue" else "refuses",
                "one task per slot now waits in its queue" if mode == "queue" else "keeping to the quota",
            )

    # -- what the other parts do --------------------------------------------------------------------------

    def _recover(self, slot: Slot, why: str, *, request_id: str | None = None) -> None:
        raise NotImplementedError

    async def _poll(self, slot: Slot) -> None:
        raise NotImplementedError
