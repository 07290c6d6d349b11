"""
One run of a batch's trigger: every request sent at most once per claim, at the account's pace, each task
read until it ends.

The loop holds no state that matters across runs: the ledger's slots (:mod:`~airflow_provider_imggen.
ledger.slots`) do. A run starts by reading every slot, so a second copy of the trigger, a triggerer that
took the trigger over, or a task retry picks up where the others are: it polls the tasks already billed,
sends what was never sent, waits for what another copy is sending, and recovers (from the task list, never
by sending again) what a copy that stopped may have sent.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from airflow_provider_imggen.batch.outcomes import after_task_end, said
from airflow_provider_imggen.batch.recovery import Recovering
from airflow_provider_imggen.batch.sending import Sending
from airflow_provider_imggen.batch.state import MAX_POLL_ERRORS, RECHECK_SECONDS, Slot, Tally
from airflow_provider_imggen.exceptions import ImageGenerationAPIError, ImageGenerationRejectedError

# The state, sending and recovering live in their own modules; Slot is imported from here too.
__all__ = ["BatchRun", "Slot", "Tally", "new_copy_id"]


# Slots read at once when a run starts.
LOAD_AT_ONCE = 8


class BatchRun(Sending, Recovering):
    """
    One run of a batch (see the module): the parts' state is :class:`~airflow_provider_imggen.batch.state.
    BatchState`'s, built from the same arguments.
    """

    # -- the loop ---------------------------------------------------------------------------------------

    async def run(self) -> list[Slot]:
        """Until every slot is done (delivered or reported): the slots, in request order."""
        try:
            # Read at once, a few at a time: a retry of a batch of hundreds reads hundreds of slots.
            reading = asyncio.Semaphore(LOAD_AT_ONCE)

            async def load(slot: Slot) -> None:
                async with reading:
                    self._adopt(slot, await self._read(slot), time.monotonic())

            await asyncio.gather(*(load(slot) for slot in self.slots))
            while not self._finished():
                if self.deadline is not None and time.time() > self.deadline:
                    self._give_up("the batch's timeout passed")
                    break
                await self._submit_what_may_go()
                await self._poll_what_is_due()
                await self._check_elsewhere(time.monotonic())
                if not self._finished():
                    await asyncio.sleep(self._sleep(time.monotonic()))
            # Outcomes still being written (a recovery's) are written before the event leaves.
            if self._background:
                await asyncio.gather(*self._background, return_exceptions=True)
        finally:
            for task in self._background:
                task.cancel()
        return self.slots

    def _finished(self) -> bool:
        return all(slot.phase == "done" for slot in self.slots) and not self._background

    def _sleep(self, now: float) -> float:
        wake = [now + RECHECK_SECONDS]
        if any(slot.phase == "pending" for slot in self.slots) and self._room():
            wake.append(now + self.pacer.submit_wait(now))
        due = [slot.next_poll for slot in self.slots if slot.phase == "in_flight"]
        if due:
            wake.append(max(min(due), now + self.pacer.query_wait(now)))
        return min(max(min(wake) - now, 0.005), RECHECK_SECONDS)

    # -- reading tasks ----------------------------------------------------------------------------------

    async def _poll_what_is_due(self) -> None:
        now = time.monotonic()
        due = sorted(
            (slot for slot in self.slots if slot.phase == "in_flight" and slot.next_poll <= now),
            key=lambda slot: slot.next_poll,
        )
        for slot in due:
            if self.pacer.query_wait(time.monotonic()) > 0:
                return
            self.pacer.querying(time.monotonic())
            await self._poll(slot)

    def _predict_unpredicted(self, now: float) -> None:
        """
        Tasks sent before any duration was known get their predicted end as soon as one is: read at the
        end they are due, in the order they were sent, rather than in turn at the status-query pace.
        """
        expected = self.pacer.expected_duration()
        if expected is None:
            return
        for other in self.slots:
            if (
                other.phase == "in_flight"
                and other.expected_end is None
                and other.starts_now
                and other.sent_at
            ):
                other.expected_end = other.sent_at + expected
                other.next_poll = self.pacer.next_poll(now, other.expected_end, 0)

    async def _poll(self, slot: Slot) -> None:
        assert slot.task_id is not None
        try:
            state = await self.hook.get_task(slot.task_id)
        except ImageGenerationAPIError as error:
            slot.poll_errors += 1
            if isinstance(error, ImageGenerationRejectedError) or slot.poll_errors >= MAX_POLL_ERRORS:
                self._report(
                    slot,
                    "unknown",
                    "unreadable",
                    f"task {slot.task_id} cannot be read ({said(error)}): it may have been billed",
                )
                return
            self.log.warning("Request %d: reading task %s failed (%s)", slot.index, slot.task_id, said(error))
            slot.next_poll = time.monotonic() + self.pacer.poll_interval
            return
        slot.poll_errors = 0
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
        self._predict_unpredicted(now)
        self._progress = now
        decision = after_task_end(
            state, failures_so_far=slot.task_failures, max_failures=self.max_task_failures
        )
        if decision is None:
            slot.state, slot.phase = state, "done"
        elif decision.action == "release":
            slot.task_failures += 1
            self.log.warning("Request %d: %s: sending it again", slot.index, decision.reason)
            await self._settle(slot, "released", reason=decision.reason)
        else:
            # Billed, or not worth sending again: final in the ledger too (a retry reports it unread).
            await self._final(
                slot, "failed", decision.code or state.status, decision.reason, billed=decision.billed
            )


def new_copy_id() -> str:
    return uuid.uuid4().hex
