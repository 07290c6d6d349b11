"""The trigger of a batch: its requests sent from the triggerer under the ledger's claims, then read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TaskSuccessEvent, TriggerEvent

from airflow_provider_imggen import DEFAULT_CONN_ID

if TYPE_CHECKING:
    from airflow_provider_imggen.batch.run import BatchRun, Slot
    from airflow_provider_imggen.hooks.image_generation_async import ImageGenerationAsyncHook

# A claim with no outcome this long after the longest a send can take is another copy's that stopped.
STALE_MARGIN_SECONDS = 30.0
# The batch's read timeout for its requests (the connection's request_timeout if shorter).
SUBMISSION_TIMEOUT_SECONDS = 30.0


class ImageGenerationBatchTrigger(BaseTrigger):
    """
    Send a batch's native task submissions at the account's pace, each only after winning its claim in
    the billing ledger (:mod:`~airflow_provider_imggen.ledger.slots`), read every task until it ends, and
    end the Airflow task from here.

    It may run more than once at a time (a triggerer thought dead that wakes up, a task retry): every copy
    reads the ledger first and sends only under a claim it won, so no request is sent twice under one
    claim; a claim whose copy stopped between sending and recording is recovered from the task list or
    reported as outcome unknown, never sent again. See :class:`~airflow_provider_imggen.operators.
    image_generation_batch.ImageGenerationBatchOperator`, which validates the requests and defers to it.

    Its event: with every request delivered, ``end_from_trigger`` and a task instance, the XCom (a list of
    generation records, in request order) is pushed from here and a ``TaskSuccessEvent`` ends the task;
    otherwise ``{"status": "done", "tasks": [task id or None per request], "problems": [...], "sent",
    "throttled", "recovered", "over_quota"}`` for the worker to finish.

    :param requests: per request, ``{"key", "body", "recorded"}``: its ledger slot, the submission body and
        the request's recorded fields
    :param owner: the task instance and try, ``dag_id/run_id/task_id/map_index/try_number``
    :param imggen_conn_id: the ``imggen`` connection (``api_style`` dashscope, a ``ledger`` set)
    :param submissions_per_second: the account's submission rate for the model
    :param concurrent_tasks: the account's concurrent tasks for the model (None: not limited)
    :param status_queries_per_second: this batch's share of the account's 20 status queries per second
    :param over_quota: what the service does beyond the concurrency quota: ``probe`` (find out), ``queue``,
        ``refuse``
    :param poll_interval: the slowest status read before a task's end can be predicted
    :param max_task_failures: tasks of one request that may fail without billing before it is reported
    :param end_time: epoch seconds by which to give up on what is not done (None: never)
    :param end_from_trigger: end the task from here when every request is delivered
    :param do_xcom_push: the task's ``do_xcom_push``: without it the task ends with no XCom
    :param throttle_timeout: seconds without an accepted submission, while some wait, before the unsent
        requests are reported (throttled: nothing billed)
    :param stale_after: seconds another copy's claim may stay unchanged with no outcome, as seen from here,
        before it is taken over, for recovery only (default: the connection's request timeout plus 30 s,
        longer than any send lasts; tests set 0)
    """

    def __init__(
        self,
        *,
        requests: list[dict[str, Any]],
        owner: str,
        imggen_conn_id: str = DEFAULT_CONN_ID,
        submissions_per_second: float = 1.0,
        concurrent_tasks: int | None = 1,
        status_queries_per_second: float = 10.0,
        over_quota: str = "probe",
        poll_interval: float = 1.0,
        max_task_failures: int = 3,
        end_time: float | None = None,
        end_from_trigger: bool = True,
        do_xcom_push: bool = True,
        throttle_timeout: float = 3600.0,
        stale_after: float | None = None,
    ) -> None:
        super().__init__()
        _check_settings(
            requests=requests,
            submissions_per_second=submissions_per_second,
            concurrent_tasks=concurrent_tasks,
            status_queries_per_second=status_queries_per_second,
            over_quota=over_quota,
            poll_interval=poll_interval,
            max_task_failures=max_task_failures,
            throttle_timeout=throttle_timeout,
            stale_after=stale_after,
        )
        self.requests = requests
        self.owner = owner
        self.imggen_conn_id = imggen_conn_id
        self.submissions_per_second = submissions_per_second
        self.concurrent_tasks = concurrent_tasks
        self.status_queries_per_second = status_queries_per_second
        self.over_quota = over_quota
        self.poll_interval = poll_interval
        self.max_task_failures = max_task_failures
        self.end_time = end_time
        self.end_from_trigger = end_from_trigger
        self.do_xcom_push = do_xcom_push
        self.throttle_timeout = throttle_timeout
        self.stale_after = stale_after

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                # Request bodies and recorded fields (prompts...), stored in the metadata DB: never the key.
                "requests": self.requests,
                "owner": self.owner,
                "imggen_conn_id": self.imggen_conn_id,
                "submissions_per_second": self.submissions_per_second,
                "concurrent_tasks": self.concurrent_tasks,
                "status_queries_per_second": self.status_queries_per_second,
                "over_quota": self.over_quota,
                "poll_interval": self.poll_interval,
                "max_task_failures": self.max_task_failures,
                "end_time": self.end_time,
                "end_from_trigger": self.end_from_trigger,
                "do_xcom_push": self.do_xcom_push,
                "throttle_timeout": self.throttle_timeout,
                "stale_after": self.stale_after,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_provider_imggen import crash_points
        from airflow_provider_imggen.exceptions import ImageGenerationError
        from airflow_provider_imggen.hooks.image_generation_async import ImageGenerationAsyncHook

        store = search = None
        try:
            hook = ImageGenerationAsyncHook(self.imggen_conn_id)
            # A submission creates a task and is answered at once (the image is drawn later): one that
            # takes longer is outcome-unknown anyway, and a copy that stopped mid-send holds its claim for
            # this long (+ the margin) before another copy may recover it.
            timeout = (await hook.aget_settings()).request_timeout
            hook.request_timeout = min(timeout, SUBMISSION_TIMEOUT_SECONDS)
            async with hook:
                batch, store = await self._batch(hook)
                search = batch.search
                slots = await batch.run()
                crash_points.reach("trigger_event")
                event = await self._event(hook, batch, slots)
        except ImageGenerationError as error:
            # Nothing of the batch could start (the connection, the ledger): the worker says why.
            self.log.error("The batch could not run: %s", error)
            event = TriggerEvent(
                {"status": "error", "message": str(error), "tasks": [], "keys": [], "problems": []}
            )
        finally:
            if search is not None:
                search.close()
            if store is not None:
                await asyncio.to_thread(store.close)
        yield event

    async def _batch(self, hook: ImageGenerationAsyncHook) -> tuple[BatchRun, Any]:
        from airflow_provider_imggen.batch.pacing import Pacer
        from airflow_provider_imggen.batch.recovery import TaskListSearch
        from airflow_provider_imggen.batch.run import BatchRun, new_copy_id
        from airflow_provider_imggen.exceptions import ImageGenerationValidationError
        from airflow_provider_imggen.hooks.image_generation import ImageGenerationHook
        from airflow_provider_imggen.ledger import open_ledger_store
        from airflow_provider_imggen.ledger.claims import task_key
        from airflow_provider_imggen.ledger.slots import SendSlots

        settings = await hook.aget_settings()
        if settings.ledger is None:
            raise ImageGenerationValidationError(
                "ledger", None, f"connection {self.imggen_conn_id!r} needs a ledger for a batch"
            )
        store = await asyncio.to_thread(open_ledger_store, settings.ledger)
        # The task-list search is the blocking hook's; it gets the connection read above (in a thread).
        recovery_hook = ImageGenerationHook(self.imggen_conn_id)
        recovery_hook.__dict__["connection"] = hook.connection
        recovery_hook.__dict__["settings"] = settings
        copy = new_copy_id()
        self.log.info(
            "Batch of %d request(s), copy %s: %s/s, %s at once, over the quota: %s",
            len(self.requests),
            copy[:8],
            self.submissions_per_second,
            self.concurrent_tasks,
            self.over_quota,
        )
        pacer = Pacer(
            submissions_per_second=self.submissions_per_second,
            concurrent=self.concurrent_tasks,
            status_queries_per_second=self.status_queries_per_second,
            over_quota=self.over_quota,
            poll_interval=self.poll_interval,
        )
        stale_after = (
            self.stale_after
            if self.stale_after is not None
            else hook.effective_request_timeout + STALE_MARGIN_SECONDS
        )
        batch = BatchRun(
            hook=hook,
            search=TaskListSearch(recovery_hook, renew_every=stale_after / 3),
            slots=SendSlots(store=store, owner=self.owner, copy=copy),
            requests=self.requests,
            pacer=pacer,
            stale_after=stale_after,
            max_task_failures=self.max_task_failures,
            throttle_timeout=self.throttle_timeout,
            deadline=self.end_time,
            task_ledger_key=lambda task_id: task_key(settings, task_id),
            log=self.log,
        )
        return batch, store

    async def _event(
        self, hook: ImageGenerationAsyncHook, batch: BatchRun, slots: list[Slot]
    ) -> TriggerEvent:
        problems = [slot.problem for slot in slots if slot.problem is not None]
        tally = batch.tally
        self.log.info(
            "Batch done: %d delivered, %d problem(s); %d sent, %d throttled, %d recovered",
            sum(1 for slot in slots if slot.state is not None),
            len(problems),
            tally.sent,
            tally.throttled,
            tally.recovered,
        )
        payload = {
            "status": "done",
            "tasks": [slot.task_id if slot.state is not None else None for slot in slots],
            "keys": [slot.key for slot in slots],
            "problems": problems,
            "sent": tally.sent,
            "throttled": tally.throttled,
            "recovered": tally.recovered,
            "over_quota": batch.pacer.over_quota,
            "late_tasks": tally.late_tasks,
        }
        ti = self.task_instance
        if problems or tally.late_tasks or not self.end_from_trigger or ti is None:
            return TriggerEvent(payload)
        if not self.do_xcom_push:
            return TaskSuccessEvent()
        try:
            await asyncio.to_thread(self._push_xcom, hook, slots, ti)
        except Exception as error:  # the worker reads the results again and pushes them
            self.log.warning("Could not push the batch's XCom from the triggerer (%s)", type(error).__name__)
            return TriggerEvent(payload)
        return TaskSuccessEvent()

    def _push_xcom(self, hook: ImageGenerationAsyncHook, slots: list[Slot], ti: Any) -> None:
        from airflow.sdk.execution_time.xcom import XCom

        from airflow_provider_imggen.metadata import task_metadata
        from airflow_provider_imggen.sealed_urls import not_registering

        with not_registering():
            records = [
                task_metadata(hook, slot.state, slot.recorded) for slot in slots if slot.state is not None
            ]
        XCom.set(
            key="return_value",
            value=records,
            dag_id=ti.dag_id,
            task_id=ti.task_id,
            run_id=ti.run_id,
            map_index=ti.map_index,
        )


def _check_settings(**settings: Any) -> None:
    """Refuse settings that would never send, spin or divide by zero, naming the parameter."""
    from airflow_provider_imggen.batch.pacing import OVER_QUOTA_MODES
    from airflow_provider_imggen.exceptions import ImageGenerationValidationError

    requests = settings["requests"]
    if not isinstance(requests, list) or not requests:
        raise ImageGenerationValidationError("requests", type(requests).__name__, "a non-empty list")
    if settings["over_quota"] not in OVER_QUOTA_MODES:
        raise ImageGenerationValidationError(
            "over_quota", settings["over_quota"], f"one of {', '.join(OVER_QUOTA_MODES)}"
        )
    for name in ("submissions_per_second", "status_queries_per_second", "poll_interval", "throttle_timeout"):
        value = settings[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
            raise ImageGenerationValidationError(name, value, "a finite number > 0")
    if settings["status_queries_per_second"] > 20:
        raise ImageGenerationValidationError(
            "status_queries_per_second", settings["status_queries_per_second"], "at most the account's 20"
        )
    for name in ("concurrent_tasks", "max_task_failures"):
        value = settings[name]
        if (value is not None or name == "max_task_failures") and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ImageGenerationValidationError(name, value, "a whole number >= 1")
    stale = settings["stale_after"]
    if stale is not None and (
        isinstance(stale, bool) or not isinstance(stale, int | float) or not stale >= 0
    ):
        raise ImageGenerationValidationError("stale_after", stale, "seconds >= 0, or None")
