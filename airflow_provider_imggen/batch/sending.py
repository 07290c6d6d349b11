"""
A batch's sends: each request claimed in the ledger, sent once, and its outcome recorded by
compare-and-set; a late answer proves its task for its own attempt only.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from airflow_provider_imggen import crash_points
from airflow_provider_imggen.batch.outcomes import after_send_failure
from airflow_provider_imggen.batch.state import BatchState, Slot
from airflow_provider_imggen.exceptions import ImageGenerationAPIError, ImageGenerationThrottledError

if TYPE_CHECKING:
    from airflow_provider_imggen.ledger.slots import Held


class Sending(BatchState):
    # -- sending ----------------------------------------------------------------------------------------

    async def _submit_what_may_go(self) -> None:
        waiting = [slot for slot in self.slots if slot.phase == "pending"]
        if waiting and self.stopped is None and time.monotonic() - self._progress > self.throttle_timeout:
            self._give_up(
                f"nothing was accepted for {self.throttle_timeout:.0f}s (throttled)", sending_only=True
            )
            return
        for slot in waiting:
            if slot.phase != "pending" or self.stopped is not None:
                continue
            if not self._room() or self.pacer.submit_wait(time.monotonic()) > 0:
                return
            if self.pacer.would_probe(self._in_flight()):
                # The probe tells a queueing service from a refusing one only if the quota is really full:
                # read the tasks in flight first (one that just ended would take the probe into its slot).
                for other in [s for s in self.slots if s.phase == "in_flight"]:
                    self.pacer.querying(time.monotonic())
                    await self._poll(other)
                if not self._room() or not self.pacer.would_probe(self._in_flight()):
                    continue
            await self._send(slot)

    async def _claim(self, slot: Slot) -> Held | None:
        """Claim the slot; a claim won while this copy is being cancelled is given back (nothing sent)."""
        claiming = asyncio.ensure_future(
            self._ledger(
                self.ledger.claim, slot.key, slot.held, index=slot.index, model=slot.model, images=slot.images
            )
        )
        try:
            return await asyncio.shield(claiming)
        except asyncio.CancelledError:
            held = await claiming
            if held is not None:
                slot.held = held
                await asyncio.shield(self._settle(slot, "released", reason="cancelled before sending"))
            raise

    async def _send(self, slot: Slot) -> None:
        """Claim the slot, send its request once, record what came of it."""
        held = await self._claim(slot)
        if held is None:
            found = await self._read(slot)
            expected_attempt = (slot.held.attempt if slot.held else 0) + 1
            if (
                not isinstance(found, Exception)
                and found is not None
                and found.copy == self.ledger.copy
                and found.state == "claimed"
                and found.attempt == expected_attempt
            ):
                held = found  # this copy's own claim, applied before its answer was lost
            if held is None:
                # Another copy claimed it first (and is sending it now: its submission counts here too).
                self.pacer.spend(time.monotonic())
                self._adopt(slot, found, time.monotonic())
                if slot.phase == "pending":
                    slot.phase, slot.next_check = "elsewhere", time.monotonic()
                return
        slot.held = held
        try:
            crash_points.reach("after_intent")
        except BaseException:
            # Stopped here, in this process, before anything left: provably nothing sent.
            await asyncio.shield(self._settle(slot, "released", reason="stopped before sending"))
            raise
        now = time.monotonic()
        ends_ahead = [s.expected_end for s in self.slots if s.phase == "in_flight" and s.expected_end]
        expected_end, slot.starts_now = self.pacer.expected_end(now, ends_ahead)
        self.pacer.submitting(now, self._in_flight())
        slot.sent_at, slot.phase = now, "sending"
        self.tally.sent += 1
        try:
            submitted = await self.hook.submit_once(slot.body, model=slot.model, images=slot.images)
        except ImageGenerationThrottledError as error:
            self._learned(
                self.pacer.throttled(
                    time.monotonic(), error.retry_after, rate="RateQuota" in (error.code or "")
                )
            )
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
        await self._answered(
            slot, held.attempt, submitted.generation_task_id, submitted.request_id, expected_end
        )

    async def _answered(
        self, slot: Slot, attempt: int, task_id: str, request_id: str | None, expected_end: float | None
    ) -> None:
        """Record the task a send created; the service's answer is checked before it reaches the ledger."""
        from airflow_provider_imggen.billing_journal import IDENTIFIER

        if not IDENTIFIER.fullmatch(task_id):
            self._recover(slot, "the answer's task id is not one the provider accepts")
            return
        self._progress = time.monotonic()
        self._learned(self.pacer.accepted())
        self.log.info("Request %d: sent, task %s", slot.index, task_id)
        request_id = request_id if request_id and IDENTIFIER.fullmatch(request_id) else None
        held = slot.held
        assert held is not None
        for _ in range(3):
            written = await self._ledger(
                self.ledger.settle, held, "billed", generation_task_id=task_id, request_id=request_id
            )
            if written is not None:
                slot.held = written
                break
            found = await self._read(slot)
            if isinstance(found, Exception) or found is None:
                self._late(slot, task_id, found)
                await self._record_task(task_id, slot)
                return
            if found.state == "billed" and found.entry.generation_task_id == task_id:
                slot.held = found  # this very write, applied before its answer was lost (or recovered)
                break
            if found.attempt != attempt or found.state not in ("claimed", "unknown"):
                self._late(slot, task_id, found)
                await self._record_task(task_id, slot)
                return
            # Taken over for recovery, or given up as unknown, while this copy waited for the answer: the
            # answer in hand proves the task (for this attempt only).
            held = found
        else:
            self._late(slot, task_id, await self._read(slot))
            await self._record_task(task_id, slot)
            return
        await self._record_task(task_id, slot)
        crash_points.reach("after_record")
        self._track(slot, task_id, time.monotonic(), expected_end=expected_end)

    def _late(self, slot: Slot, task_id: str, found: Held | Exception | None) -> None:
        """A task answered after another attempt took the request over: billed, named, not delivered."""
        self.tally.late_tasks.append(task_id)
        self.log.error(
            "Request %d: task %s was answered after the request was taken over: billed, not delivered",
            slot.index,
            task_id,
        )
        self._adopt(slot, found, time.monotonic())

    async def _record_task(self, task_id: str, slot: Slot) -> None:
        try:
            await self._ledger(self.ledger.record_task, self.task_ledger_key(task_id), task_id, slot.key)
        except Exception as error:  # best effort: it only keeps other runs' recoveries off this task
            self.log.warning(
                "Request %d: the ledger did not record whose task %s is (%s)", slot.index, task_id, error
            )

    async def _send_failed(self, slot: Slot, error: ImageGenerationAPIError) -> None:
        decision = after_send_failure(error)
        if decision.action == "hold":
            self.pacer.hold_off(time.monotonic(), 1.0)
            await self._settle(slot, "released", reason=decision.reason)
        elif decision.action == "release":
            slot.task_failures += 1
            if slot.task_failures >= self.max_task_failures:
                await self._final(slot, "failed", decision.code or "failed", decision.reason, billed=False)
            else:
                await self._settle(slot, "released", reason=decision.reason)
        elif decision.action == "stop":
            await self._final(slot, "failed", decision.code or "refused", decision.reason, billed=False)
            self.stopped = (decision.code or "refused", decision.reason)
            self._give_up(f"the account is refused ({decision.code})", sending_only=True)
        elif decision.action == "report":
            await self._final(slot, "failed", decision.code or "refused", decision.reason, billed=False)
        else:
            self._recover(slot, decision.reason, request_id=error.request_id)
