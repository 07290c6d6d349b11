"""
The batch's loop in the races no real service can be made to run on cue: a copy stopped between its POST
and its answer while another takes its claim over, a ledger that fails under a recovery, a task that can
never be read. The ledger is an in-memory compare-and-set store (the real stores' atomicity is
tests/integration/ledger/test_slots.py's), the service a scripted one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_imggen.batch.pacing import Pacer
from airflow_provider_imggen.batch.recovery import TaskListSearch
from airflow_provider_imggen.batch.run import BatchRun
from airflow_provider_imggen.exceptions import (
    ImageGenerationRejectedError,
    ImageGenerationSubmissionUnknownError,
    ImageGenerationThrottledError,
)
from airflow_provider_imggen.ledger.slots import SendSlots, slot_key
from airflow_provider_imggen.ledger.store import LedgerStoreError
from airflow_provider_imggen.results import FailedImage, GeneratedImage, ListedTask, SubmittedTask, TaskState

LOG = logging.getLogger(__name__)


class Store:
    """A ledger store in memory: create-if-absent and replace-if-unchanged under a lock."""

    def __init__(self) -> None:
        self.entries: dict[str, Any] = {}
        self.versions = itertools.count(1)
        self.lock = threading.Lock()
        self.failing: Callable[[str], bool] = lambda operation: False

    def read(self, fp: str) -> Any:
        with self.lock:
            return self.entries.get(fp)

    def create(self, entry: Any) -> Any:
        with self.lock:
            if entry.fingerprint in self.entries:
                return None
            self.entries[entry.fingerprint] = (entry, str(next(self.versions)))
            return self.entries[entry.fingerprint][1]

    def replace(self, entry: Any, expected: Any) -> Any:
        if self.failing("replace"):
            raise LedgerStoreError("the store is down")
        with self.lock:
            current = self.entries.get(entry.fingerprint)
            if current is None or current[1] != expected:
                return None
            self.entries[entry.fingerprint] = (entry, str(next(self.versions)))
            return self.entries[entry.fingerprint][1]

    def close(self) -> None:
        pass


def succeeded(task_id: str) -> TaskState:
    image = GeneratedImage(index=0, url="https://dashscope-result.example/a.png", revised_prompt=None)
    return TaskState(
        generation_task_id=task_id, status="SUCCEEDED", images=(image,), usage={"image_count": 1}
    )


class Service:
    """submit_once and get_task, scripted; every submission is counted."""

    def __init__(
        self,
        submit: Callable[[int], Awaitable[SubmittedTask]] | None = None,
        read: Callable[[str], Awaitable[TaskState]] | None = None,
    ) -> None:
        self.sent = 0
        self._submit, self._read = submit, read

    async def submit_once(self, body: dict[str, Any], *, model: str, images: int) -> SubmittedTask:
        self.sent += 1
        if self._submit is not None:
            return await self._submit(self.sent)
        return SubmittedTask(
            generation_task_id=f"task-{self.sent}",
            task_status="PENDING",
            request_id=None,
            model=model,
            parameters={},
        )

    async def get_task(self, task_id: str) -> TaskState:
        return await self._read(task_id) if self._read is not None else succeeded(task_id)


class TaskList:
    """The blocking hook's task-list search, scripted."""

    def __init__(self, find: Callable[..., Any] | None = None) -> None:
        self.settings = SimpleNamespace(base_url="https://dashscope.example", api_key="sk-test")
        self._find = find

    def _find_submitted(self, request: Any, **kwargs: Any) -> Any:
        return self._find(request, **kwargs) if self._find is not None else (None, ())


def batch(
    store: Store,
    service: Service,
    tasks: TaskList,
    *,
    copy: str,
    prompts: int = 1,
    concurrent: int = 2,
    **overrides: Any,
) -> BatchRun:
    settings: dict[str, Any] = {
        "stale_after": 1e9,
        "max_task_failures": 3,
        "throttle_timeout": 60.0,
        "deadline": None,
    }
    settings.update(overrides)
    requests = [
        {
            "key": slot_key("content/run/generate/-1", index, "a" * 64),
            "body": {},
            "recorded": {"model": "wan2.2-t2i-flash", "prompt": f"a lighthouse {index}", "n": 1},
        }
        for index in range(prompts)
    ]
    return BatchRun(
        hook=service,  # type: ignore[arg-type]
        search=TaskListSearch(tasks, renew_every=0.2),  # type: ignore[arg-type]
        slots=SendSlots(store=store, owner="content/run/generate/-1/1", copy=copy),  # type: ignore[arg-type]
        requests=requests,
        pacer=Pacer(
            submissions_per_second=50.0,
            concurrent=concurrent,
            status_queries_per_second=20.0,
            over_quota="refuse",
            poll_interval=0.05,
        ),
        task_ledger_key=lambda task_id: slot_key("tasks", 0, "b" * 64) if task_id else "",
        log=LOG,
        **settings,
    )


def unknown(_: int) -> Any:
    raise ImageGenerationSubmissionUnknownError("HTTP 500", status=500, model="m", images_at_risk=1)


def test_a_late_answer_never_overrides_a_later_attempt_nor_makes_the_request_sendable_again() -> None:
    store, answer = Store(), asyncio.Event()
    failed = TaskState(
        generation_task_id="T1", status="FAILED", code="InternalError", task_metrics={"SUCCEEDED": 0}
    )

    async def read(task_id: str) -> TaskState:
        return failed if task_id == "T1" else succeeded(task_id)

    async def stopped_after_the_post(_: int) -> SubmittedTask:
        await answer.wait()  # A is stopped after its POST left, before it reads the answer
        return SubmittedTask(
            generation_task_id="T1", task_status="PENDING", request_id=None, model="m", parameters={}
        )

    async def b_submit(_: int) -> SubmittedTask:
        unknown(0)
        raise AssertionError

    def listed(request: Any, **kwargs: Any) -> Any:
        if "T1" in kwargs["excluding"]:
            return None, ()  # attempt 2's own recovery proves nothing
        return ListedTask(
            generation_task_id="T1", status="FAILED", model=None, created_at=None, request_id=None
        ), ("T1",)

    a_service, b_service = Service(stopped_after_the_post, read), Service(b_submit, read)
    a = batch(store, a_service, TaskList(), copy="A")
    b = batch(store, b_service, TaskList(listed), copy="B", stale_after=0.2)

    async def both() -> None:
        a_run = asyncio.create_task(a.run())
        await asyncio.sleep(0.3)
        await asyncio.wait_for(b.run(), 10)  # B: recovers T1 (failed unbilled), sends attempt 2: unknown
        answer.set()
        await asyncio.wait_for(a_run, 10)

    asyncio.run(both())
    assert a_service.sent + b_service.sent == 2  # attempt 1 (A) and attempt 2 (B): never a third
    entry = next(iter(store.entries.values()))[0]
    assert entry.state == "unknown" and entry.request["attempt"] == 2
    assert a.tally.late_tasks == ["T1"]


def test_a_late_answer_proves_its_task_over_a_recovery_of_its_own_attempt() -> None:
    store, answer = Store(), asyncio.Event()

    async def stopped_after_the_post(_: int) -> SubmittedTask:
        await answer.wait()
        return SubmittedTask(
            generation_task_id="T1", task_status="PENDING", request_id=None, model="m", parameters={}
        )

    a_service = Service(stopped_after_the_post)
    a = batch(store, a_service, TaskList(), copy="A")
    b = batch(store, Service(), TaskList(), copy="B", stale_after=0.2)  # its recovery finds nothing

    async def both() -> None:
        a_run = asyncio.create_task(a.run())
        await asyncio.sleep(0.3)
        await asyncio.wait_for(b.run(), 10)
        answer.set()
        await asyncio.wait_for(a_run, 10)

    asyncio.run(both())
    entry = next(iter(store.entries.values()))[0]
    assert entry.state == "billed" and entry.generation_task_id == "T1"
    assert (
        a.slots[0].state is not None and a.slots[0].problem is None
    )  # delivered by the copy holding the answer
    assert a_service.sent == 1


def test_a_silent_claim_of_another_copy_holds_a_concurrent_slot_for_one_generation_not_until_stale() -> None:
    """
    A copy killed mid-send leaves a claim nobody may recover before it is stale (the submission timeout +
    30 s), but its task, if any, ends at the service within one generation: the batch sends its other
    requests in that slot meanwhile instead of running at half the quota for a minute.
    """
    store = Store()
    b_service = Service()
    b = batch(store, b_service, TaskList(), copy="B", stale_after=6.0, prompts=3, concurrent=1)
    b.pacer.observe(0.2)  # generations take 0.2 s here
    dead = SendSlots(store=store, owner="content/run/generate/-1/1", copy="dead")  # type: ignore[arg-type]
    assert dead.claim(b.slots[0].key, None, index=0, model="wan2.2-t2i-flash", images=1) is not None
    sent_while_stale_pending: list[int] = []

    async def run() -> None:
        running = asyncio.create_task(b.run())
        await asyncio.sleep(4.0)  # well before the dead copy's claim is stale (6 s)
        sent_while_stale_pending.append(b_service.sent)
        await asyncio.wait_for(running, 20)

    asyncio.run(run())
    assert sent_while_stale_pending == [2]  # both other requests went out through the one slot
    assert b.slots[1].problem is None and b.slots[2].problem is None
    assert b.slots[0].problem is not None and b.slots[0].problem["status"] == "unknown"  # never sent again
    assert b_service.sent == 2


def test_a_task_that_succeeded_without_a_usable_image_is_reported_never_sent_again() -> None:
    async def read(task_id: str) -> TaskState:
        failure = FailedImage(index=0, code="MalformedItem", message="its URL is refused")
        return TaskState(
            generation_task_id=task_id,
            status="SUCCEEDED",
            failed_images=(failure,),
            task_metrics={"TOTAL": 1, "SUCCEEDED": 1, "FAILED": 0},
        )

    service = Service(read=read)
    run = batch(Store(), service, TaskList(), copy="A")
    asyncio.run(asyncio.wait_for(run.run(), 10))
    assert service.sent == 1
    assert run.slots[0].problem is not None and run.slots[0].problem["status"] == "failed"


def test_a_task_that_failed_without_billing_is_sent_again_within_the_task() -> None:
    async def read(task_id: str) -> TaskState:
        if task_id == "task-1":
            return TaskState(
                generation_task_id=task_id,
                status="FAILED",
                code="InternalError.Algo",
                task_metrics={"TOTAL": 1, "SUCCEEDED": 0, "FAILED": 1},
            )
        return succeeded(task_id)

    service = Service(read=read)
    run = batch(Store(), service, TaskList(), copy="A")
    asyncio.run(asyncio.wait_for(run.run(), 10))
    assert service.sent == 2 and run.slots[0].task_id == "task-2" and run.slots[0].problem is None


def test_a_ledger_failing_under_a_recovery_ends_the_run_with_the_request_reported() -> None:
    store = Store()

    def listed(request: Any, **kwargs: Any) -> Any:
        store.failing = lambda operation: operation == "replace"  # down exactly when the result is written
        return ListedTask(
            generation_task_id="T9", status="SUCCEEDED", model=None, created_at=None, request_id=None
        ), ("T9",)

    run = batch(store, Service(unknown), TaskList(listed), copy="A")  # type: ignore[arg-type]
    asyncio.run(asyncio.wait_for(run.run(), 30))
    assert run.slots[0].problem is not None and run.slots[0].problem["status"] == "unknown"


def test_a_task_that_cannot_be_read_is_reported_not_polled_forever() -> None:
    async def read(task_id: str) -> TaskState:
        raise ImageGenerationRejectedError("refused", status=401, code="InvalidApiKey")

    run = batch(Store(), Service(read=read), TaskList(), copy="A")
    asyncio.run(asyncio.wait_for(run.run(), 10))
    assert run.slots[0].problem is not None and run.slots[0].problem["billed"] is None


def test_throttling_that_never_clears_is_reported_as_not_billed() -> None:
    async def throttled(_: int) -> SubmittedTask:
        raise ImageGenerationThrottledError("429", status=429, code="Throttling", retry_after=0.05)

    run = batch(Store(), Service(throttled), TaskList(), copy="A", throttle_timeout=0.5)
    asyncio.run(asyncio.wait_for(run.run(), 10))
    problem = run.slots[0].problem
    assert problem is not None and problem["status"] == "failed" and problem["billed"] is False


@pytest.mark.parametrize(
    ("status", "action"), [(400, "report"), (401, "stop"), (200, "release"), (500, "recover")]
)
def test_failed_sends_are_sorted_by_what_the_service_provably_did(status: int, action: str) -> None:
    from airflow_provider_imggen.batch.outcomes import after_send_failure
    from airflow_provider_imggen.exceptions import ImageGenerationAPIError

    assert (
        after_send_failure(ImageGenerationAPIError("x", status=status, code="Code\nforged")).action == action
    )
    assert after_send_failure(ImageGenerationAPIError("x", status=status, code="Code\nforged")).code in (
        None,
        "unreadable-code",
        f"HTTP {status}",
    )
