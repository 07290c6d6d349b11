"""Triggers that wait on DashScope native generation tasks in the triggerer, holding no worker slot."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TaskSuccessEvent, TriggerEvent

from airflow_provider_imggen import DEFAULT_CONN_ID
from airflow_provider_imggen.coercion import check_flag
from airflow_provider_imggen.events import task_event
from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from airflow_provider_imggen.polling import (
    DEFAULT_MAX_POLL_INTERVAL,
    DEFAULT_POLL_INTERVAL,
    TaskWait,
    check_poll_settings,
)
from airflow_provider_imggen.records import REQUEST_FIELDS

if TYPE_CHECKING:
    from pydantic import JsonValue

    from airflow_provider_imggen.hooks.image_generation import ImageGenerationAsyncHook, TaskState

DEFAULT_MAX_CONSECUTIVE_ERRORS = 3


class ImageGenerationTaskTrigger(BaseTrigger):
    """
    Wait for a native generation task (already submitted) to finish, polling its status from the triggerer.

    It only reads: a trigger may run more than once, so it never submits (and never bills). It polls every
    ``poll_interval`` for the first 30 s, then backs off to ``max_poll_interval``, as DashScope advises, and
    yields exactly one small event (never a result URL, never the key):
    ``{"status", "generation_task_id", "task_status", "code", "message", "succeeded", "failed"}`` where
    ``status`` is

    - ``success``: the task SUCCEEDED with at least one image (``failed`` > 0 for a partial failure). The
      resumed task fetches the results with :meth:`ImageGenerationHook.get_task
      <airflow_provider_imggen.hooks.image_generation.ImageGenerationHook.get_task>`;
    - ``failed``: the task ended FAILED, CANCELED or UNKNOWN (no such task, or expired), or SUCCEEDED
      without a single image; ``code`` and ``message`` say why;
    - ``timeout``: ``end_time`` passed while the task was still ``task_status``;
    - ``error``: polling failed more than ``max_consecutive_errors`` times in a row (each poll already
      retried by the hook, per the connection's ``max_retries``), or failed in a way no retry can fix
      (a refused key, an unusable connection).

    **Ending the task here** (``end_from_trigger=True``, set by ``ImageGenerationOperator(end_from_trigger=
    True)``): on ``success`` the trigger builds the task's XCom itself, with the function the resuming
    worker calls (:func:`~airflow_provider_imggen.metadata.task_metadata`: masked and sealed URLs, never
    image bytes), pushes it as a worker does (the task SDK's ``XCom.set``) and yields a
    ``TaskSuccessEvent``: Airflow marks the task successful, no worker runs again. Every other outcome is
    the ordinary event above, and the worker resumes to raise as it always did: a ``TaskFailedEvent``
    would be retried by Airflow whenever the task has retries left, and a FAILED generation must not be.
    The ordinary event is also sent when the trigger runs without a task instance (``airflow dags test``
    runs triggers that way and would resume the task on a worker with a bare ``"success"``), and when the
    XCom cannot be pushed from here (the worker then reads the results again and pushes it).

    :param generation_task_id: the native task's id (``SubmittedTask.generation_task_id``)
    :param imggen_conn_id: the ``imggen`` connection (``api_style`` must be ``dashscope``)
    :param poll_interval: seconds between polls for the first 30 s
    :param max_poll_interval: the longest wait between polls once backing off
    :param end_time: deadline, in epoch seconds (``time.time()``); None waits as long as the task lives
    :param max_consecutive_errors: failed polls tolerated in a row; one more gives up
    :param cancel_on_kill: when a user kills the deferred task (mark failed, clear...), cancel the task if
        it is still PENDING. For the operator that submitted it; a sensor only watches a task it does not own
    :param end_from_trigger: on success, end the Airflow task from the triggerer with its XCom (see above)
    :param request_fields: what the XCom records of the request
        (:data:`~airflow_provider_imggen.records.REQUEST_FIELDS`: model, prompt, seed...); the status query
        does not return them. Only with ``end_from_trigger``
    :param do_xcom_push: the task's ``do_xcom_push``: without it the task ends with no XCom, as on a worker
    :param multiple_outputs: the task's ``multiple_outputs``: each key of the XCom is pushed too, as on a
        worker
    :param task_id: the name ``generation_task_id`` had before; accepted so that a trigger serialised
        before the rename (a task deferred across an upgrade) still loads
    """

    def __init__(
        self,
        *,
        generation_task_id: str | None = None,
        imggen_conn_id: str = DEFAULT_CONN_ID,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
        end_time: float | None = None,
        max_consecutive_errors: int = DEFAULT_MAX_CONSECUTIVE_ERRORS,
        cancel_on_kill: bool = False,
        end_from_trigger: bool = False,
        request_fields: dict[str, Any] | None = None,
        do_xcom_push: bool = True,
        multiple_outputs: bool = False,
        task_id: str | None = None,
    ) -> None:
        super().__init__()
        generation_task_id = generation_task_id if generation_task_id is not None else task_id
        if not isinstance(generation_task_id, str) or not generation_task_id:
            raise ImageGenerationValidationError(
                "generation_task_id", generation_task_id, "expected the native task's id"
            )
        check_poll_settings(poll_interval, max_poll_interval)
        if (
            isinstance(max_consecutive_errors, bool)
            or not isinstance(max_consecutive_errors, int)
            or max_consecutive_errors < 0
        ):
            raise ImageGenerationValidationError(
                "max_consecutive_errors", max_consecutive_errors, "expected a whole number >= 0"
            )
        for name, flag in (
            ("end_from_trigger", end_from_trigger),
            ("do_xcom_push", do_xcom_push),
            ("multiple_outputs", multiple_outputs),
        ):
            check_flag(name, flag)
        _check_request_fields(request_fields)
        # Not ``self.task_id``: the triggerer sets that to the Airflow task's id (BaseTrigger.task_instance).
        self.generation_task_id = generation_task_id
        self.imggen_conn_id = imggen_conn_id
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.end_time = end_time
        self.max_consecutive_errors = max_consecutive_errors
        self.cancel_on_kill = cancel_on_kill
        self.end_from_trigger = end_from_trigger
        self.request_fields = request_fields
        self.do_xcom_push = do_xcom_push
        self.multiple_outputs = multiple_outputs

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "generation_task_id": self.generation_task_id,
                "imggen_conn_id": self.imggen_conn_id,
                "poll_interval": self.poll_interval,
                "max_poll_interval": self.max_poll_interval,
                "end_time": self.end_time,
                "max_consecutive_errors": self.max_consecutive_errors,
                "cancel_on_kill": self.cancel_on_kill,
                # Stored in the metadata DB: request fields (prompt, seed...), never the key or a URL.
                "end_from_trigger": self.end_from_trigger,
                "request_fields": self.request_fields,
                "do_xcom_push": self.do_xcom_push,
                "multiple_outputs": self.multiple_outputs,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_provider_imggen import crash_points
        from airflow_provider_imggen.exceptions import ImageGenerationError
        from airflow_provider_imggen.hooks.image_generation import ImageGenerationAsyncHook

        # The hook's connection pool lives as long as the wait, and is closed before the event is sent.
        async with contextlib.AsyncExitStack() as stack:
            try:
                hook = await stack.enter_async_context(ImageGenerationAsyncHook(self.imggen_conn_id))
            except ImageGenerationError as error:
                payload = self._payload("error", None, code=getattr(error, "code", None), message=str(error))
                event: TriggerEvent = TriggerEvent(payload)
            else:
                payload, state = await self._wait(hook)
                # Test-only: the generation ended, the event is not sent yet (a triggerer dying here).
                crash_points.reach("trigger_event")
                event = await self._event(hook, payload, state)
        yield event

    async def on_kill(self) -> None:
        """A user killed the deferred task: cancel the task while still PENDING (nothing is billed then)."""
        if not self.cancel_on_kill:
            return
        from airflow_provider_imggen.hooks.image_generation import ImageGenerationAsyncHook

        try:
            async with ImageGenerationAsyncHook(self.imggen_conn_id) as hook:
                canceled = await hook.cancel_task(self.generation_task_id)
        except Exception as error:  # the triggerer only logs it; say what happened to the task
            self.log.warning("Could not cancel task %s: %s", self.generation_task_id, error)
            return
        if not canceled:
            self.log.info("Task %s could not be canceled: it is no longer PENDING", self.generation_task_id)

    async def _wait(self, hook: ImageGenerationAsyncHook) -> tuple[dict[str, Any], TaskState | None]:
        """Poll until the task ends, the deadline passes or polling gives up: the payload (and, on success,
        the final state, which holds the results)."""
        from airflow_provider_imggen.exceptions import (
            ImageGenerationAPIError,
            ImageGenerationRejectedError,
            ImageGenerationTaskFailedError,
        )

        wait = TaskWait(self.poll_interval, self.max_poll_interval, deadline=self.end_time)
        errors = 0
        while True:
            task_status = wait.status
            try:
                state = await hook.get_task(self.generation_task_id)
            except (ImageGenerationValidationError, ImageGenerationRejectedError) as error:
                # A refused key or an unusable connection: polling again cannot help.
                return self._payload(
                    "error", task_status, code=getattr(error, "code", None), message=str(error)
                ), None
            except ImageGenerationAPIError as error:
                errors += 1
                if errors > self.max_consecutive_errors:
                    self.log.error(
                        "Task %s: giving up after %d failed polls in a row", self.generation_task_id, errors
                    )
                    return self._payload("error", task_status, code=error.code, message=str(error)), None
                self.log.warning(
                    "Task %s: poll failed (%d in a row, %d tolerated): %s",
                    self.generation_task_id,
                    errors,
                    self.max_consecutive_errors,
                    error,
                )
            else:
                errors = 0
                if wait.saw(state.status):
                    self.log.info("Task %s is %s", self.generation_task_id, state.status)
                task_status = state.status
                if state.is_terminal:
                    try:
                        state.raise_for_status()
                    except ImageGenerationTaskFailedError as failure:
                        payload = self._payload("failed", task_status, state, failure.code, failure.message)
                        return payload, None
                    return self._payload("success", task_status, state), state
            if wait.expired():
                self.log.info(
                    "Task %s: deadline passed while it was %s", self.generation_task_id, task_status
                )
                return self._payload("timeout", task_status, message=f"still {task_status} at end_time"), None
            await asyncio.sleep(wait.next_delay())

    async def _event(
        self, hook: ImageGenerationAsyncHook, payload: dict[str, Any], state: TaskState | None
    ) -> TriggerEvent:
        """The task-ending event when asked for and possible (see the class); the ordinary event otherwise."""
        if not self.end_from_trigger or payload["status"] != "success" or state is None:
            return TriggerEvent(payload)
        ti = self.task_instance
        if ti is None:
            self.log.info(
                "Task %s SUCCEEDED; no task instance attached to this trigger (airflow dags test), so the "
                "worker resumes the task and pushes its XCom",
                self.generation_task_id,
            )
            return TriggerEvent(payload)
        try:
            # In a thread: sealing (Fernet), the secrets masker and XCom.set wait on the supervisor.
            await asyncio.to_thread(self._push_xcoms, hook, state, ti)
        except Exception as error:  # never lose a paid generation to this: the worker can read it again
            self.log.warning(
                "Could not push the XCom of task %s from the triggerer (%s: %s): the worker resumes the task "
                "and reads its results instead",
                self.generation_task_id,
                type(error).__name__,
                error,
            )
            return TriggerEvent(payload)
        self.log.info(
            "Task %s SUCCEEDED: XCom pushed, ending the Airflow task from the triggerer (end_from_trigger)",
            self.generation_task_id,
        )
        # Not TaskSuccessEvent(xcoms=...): Airflow 3.3 stores those with json.dumps, so a downstream task
        # would read the XCom back as a JSON string rather than the dict a worker's push gives it.
        return TaskSuccessEvent()

    def _push_xcoms(self, hook: ImageGenerationAsyncHook, state: TaskState, ti: Any) -> None:
        """
        Push the XComs a worker returning this task's metadata would push, the way a worker pushes them.

        Through the task SDK's ``XCom.set``: the deployment's XCom backend serialises the value and the
        triggerer's supervisor sends it to the Execution API, which stores it as it stores a worker's push.
        """
        from airflow.sdk.execution_time.xcom import XCom

        from airflow_provider_imggen.metadata import task_metadata
        from airflow_provider_imggen.sealed_urls import not_registering

        with not_registering():  # the triggerer's masker would keep every URL's secrets for good
            metadata = task_metadata(hook, state, self.request_fields)
        xcoms = task_end_xcoms(
            metadata, do_xcom_push=self.do_xcom_push, multiple_outputs=self.multiple_outputs
        )
        for key, value in (xcoms or {}).items():
            XCom.set(
                key=key,
                value=value,
                dag_id=ti.dag_id,
                task_id=ti.task_id,
                run_id=ti.run_id,
                map_index=ti.map_index,
            )

    def _payload(
        self,
        status: str,
        task_status: str | None,
        state: TaskState | None = None,
        code: str | None = None,
        message: str | None = None,
    ) -> dict[str, Any]:
        return task_event(status, self.generation_task_id, task_status, state, code, message)


def task_end_xcoms(
    result: dict[str, Any], *, do_xcom_push: bool, multiple_outputs: bool
) -> dict[str, JsonValue] | None:
    """
    The XComs a worker pushes for a task that returned ``result``, by key.

    Mirrors the task runner: nothing without ``do_xcom_push``; with ``multiple_outputs`` every key too,
    and ``return_value`` always.
    """
    if not do_xcom_push:
        return None
    xcoms: dict[str, JsonValue] = dict(result) if multiple_outputs else {}
    xcoms["return_value"] = result
    return xcoms


def _check_request_fields(request_fields: object) -> None:
    if request_fields is None:
        return
    if not isinstance(request_fields, dict) or not set(request_fields) <= set(REQUEST_FIELDS):
        raise ImageGenerationValidationError(
            "request_fields",
            sorted(request_fields) if isinstance(request_fields, dict) else type(request_fields).__name__,
            f"expected a dict with keys among {', '.join(REQUEST_FIELDS)}",
        )
