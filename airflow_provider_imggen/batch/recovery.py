"""
Recovering a batch's send whose outcome is unknown: which listed task, if any, is provably its own.

The search is the blocking hook's (:meth:`~airflow_provider_imggen.hooks.native_tasks.NativeTasksHook.
_find_submitted`: candidates in the claim's time window, adopted only by request id or, once finished, by
prompt and image count, never a task another request owns). It can wait minutes for candidates to finish,
so it runs in a small executor of its own (never the event loop's default one, which every trigger of the
triggerer shares), at most :data:`AT_ONCE` at a time, and the claim it recovers is renewed meanwhile, so
that no other copy takes it over as stale while this one is alive.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_imggen.batch.state import RECHECK_SECONDS, BatchState, Slot

if TYPE_CHECKING:
    from airflow_provider_imggen.hooks.image_generation import ImageGenerationHook
    from airflow_provider_imggen.results import ListedTask

AT_ONCE = 2


class TaskListSearch:
    """
    :param hook: a blocking hook on the batch's connection (its settings already read)
    :param renew_every: seconds between renewals of the claim being recovered
    """

    def __init__(self, hook: ImageGenerationHook, *, renew_every: float) -> None:
        self.hook = hook
        self.renew_every = max(renew_every, 0.5)
        self._executor = concurrent.futures.ThreadPoolExecutor(AT_ONCE, thread_name_prefix="imggen-recovery")
        self._at_once = asyncio.Semaphore(AT_ONCE)

    def close(self) -> None:
        # A search still running finishes in its thread; its result is dropped.
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def find(
        self,
        *,
        model: str,
        prompt: str,
        images: int,
        submitted_at: datetime,
        request_id: str | None,
        excluding: frozenset[str],
        foreign: Callable[[str], bool],
        renew: Callable[[], Awaitable[bool]],
    ) -> tuple[ListedTask | None, tuple[str, ...]]:
        """
        The one task proven the send's own (or None) and the candidates looked at. ``renew`` keeps the
        claim alive while the search runs; when it fails (another copy changed the slot), the search's
        result is dropped.
        """
        from airflow_provider_imggen.request import GenerationRequest

        request = GenerationRequest(model=model, prompt=prompt, n=images)
        loop = asyncio.get_running_loop()
        async with self._at_once:
            search: asyncio.Future[Any] = loop.run_in_executor(
                self._executor,
                lambda: self.hook._find_submitted(
                    request,
                    submitted_at=submitted_at,
                    request_id=request_id,
                    excluding=excluding,
                    foreign=foreign,
                ),
            )
            while True:
                try:
                    found, candidates = await asyncio.wait_for(asyncio.shield(search), self.renew_every)
                except TimeoutError:
                    if not await renew():
                        search.cancel()
                        return None, ()
                    continue
                return found, tuple(candidates)


class Recovering(BatchState):
    """Another copy's claims watched, and sends whose outcome is unknown recovered, never sent again."""

    async def _check_elsewhere(self, now: float) -> None:
        for slot in self.slots:
            if slot.phase != "elsewhere" or slot.next_check > now:
                continue
            slot.next_check = now + RECHECK_SECONDS
            held = await self._read(slot)
            self._adopt(slot, held, now)
            unchanged = now - slot.seen_since
            if slot.phase != "elsewhere" or unchanged <= self.stale_after:
                continue
            assert slot.held is not None
            taken = await self._ledger(self.ledger.take_for_recovery, slot.held)
            if taken is None:
                continue
            slot.held = taken
            self.log.warning(
                "Request %d: claimed by another copy, unchanged for %.0fs with no outcome: recovering its "
                "send from the task list (never sending it again)",
                slot.index,
                unchanged,
            )
            self._recover(slot, "the copy that claimed it stopped before recording an outcome")

    def _recover(self, slot: Slot, why: str, *, request_id: str | None = None) -> None:
        """Search the task list for the one task this slot's send created, in the background."""
        slot.phase = "recovering"
        task = asyncio.create_task(self._recovery(slot, why, request_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _recovery(self, slot: Slot, why: str, request_id: str | None) -> None:
        try:
            await self._search(slot, why, request_id)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the search or the ledger failed: another copy (or try) recovers it
            self.log.error(
                "Request %d: its recovery failed (%s): left to the next copy",
                slot.index,
                type(error).__name__,
            )
            self._report(
                slot, "unknown", "recovery_failed", f"{why}; its recovery failed: it may have been billed"
            )

    async def _search(self, slot: Slot, why: str, request_id: str | None) -> None:
        assert slot.held is not None
        claimed = slot.held
        excluding = frozenset([s.task_id for s in self.slots if s.task_id] + list(claimed.earlier_tasks))

        def foreign(task_id: str) -> bool:
            return self.ledger.owns_elsewhere(self.task_ledger_key(task_id), slot.key)

        async def renew() -> bool:
            taken = await self._ledger(self.ledger.take_for_recovery, slot.held)
            if taken is None:
                return False
            slot.held = taken
            return True

        found, candidates = await self.search.find(
            model=slot.model,
            prompt=str(slot.recorded["prompt"]),
            images=slot.images,
            submitted_at=datetime.fromisoformat(claimed.entry.claimed_at.replace("Z", "+00:00")),
            request_id=request_id,
            excluding=excluding,
            foreign=foreign,
            renew=renew,
        )
        if found is None:
            reason = (
                f"{why}; the task list shows no single task it could be"
                + (f" ({len(candidates)} candidate(s))" if candidates else "")
                + ": it may have been billed, and it is not sent again"
            )
            await self._final(slot, "unknown", "outcome_unknown", reason, billed=None)
            return
        self.tally.recovered += 1
        self.log.warning(
            "Request %d: the task list proves task %s its own: reconnected, nothing sent again",
            slot.index,
            found.generation_task_id,
        )
        recorded = await self._settle(slot, "billed", generation_task_id=found.generation_task_id)
        # Reported meanwhile (the batch gave up at its deadline): the ledger keeps the task for a retry.
        if recorded and slot.phase == "recovering":
            self._track(slot, found.generation_task_id, time.monotonic(), expected_end=None)
