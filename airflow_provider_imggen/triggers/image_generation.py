"""Triggers that wait on DashScope native generation tasks in the triggerer, holding no worker slot."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from airflow_provider_imggen.hooks.image_generation import (
    DEFAULT_MAX_POLL_INTERVAL,
    DEFAULT_POLL_INTERVAL,
    next_poll_interval,
)
from airflow_provider_imggen.models import check_poll_settings

if TYPE_CHECKING:
    from airflow_provider_imggen.hooks.image_generation import ImageGenerationAsyncHook, TaskState

DEFAULT_CONN_ID = "imggen_default"
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

    :param generation_task_id: the native task's id (``SubmittedTask.generation_task_id``)
    :param imggen_conn_id: the ``imggen`` connection (``api_style`` must be ``dashscope``)
    :param poll_interval: seconds between polls for the first 30 s
    :param max_poll_interval: the longest wait between polls once backing off
    :param end_time: deadline, in epoch seconds (``time.time()``); None waits as long as the task lives
    :param max_consecutive_errors: failed polls tolerated in a row; one more gives up
    :param cancel_on_kill: when a user kills the deferred task (mark failed, clear...), cancel the task if
        it is still PENDING. For the operator that submitted it; a sensor only watches a task it does not own
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
        # Not ``self.task_id``: the triggerer sets that to the Airflow task's id (BaseTrigger.task_instance).
        self.generation_task_id = generation_task_id
        self.imggen_conn_id = imggen_conn_id
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.end_time = end_time
        self.max_consecutive_errors = max_consecutive_errors
        self.cancel_on_kill = cancel_on_kill

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
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_provider_imggen.exceptions import ImageGenerationError
        from airflow_provider_imggen.hooks.image_generation import ImageGenerationAsyncHook

        # The hook's connection pool lives as long as the wait, and is closed before the event is sent.
        async with contextlib.AsyncExitStack() as stack:
            try:
                hook = await stack.enter_async_context(ImageGenerationAsyncHook(self.imggen_conn_id))
            except ImageGenerationError as error:
                event = self._payload("error", None, code=getattr(error, "code", None), message=str(error))
            else:
                event = await self._wait(hook)
        yield TriggerEvent(event)

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

    async def _wait(self, hook: ImageGenerationAsyncHook) -> dict[str, Any]:
        from airflow_provider_imggen.exceptions import (
            ImageGenerationAPIError,
            ImageGenerationRejectedError,
            ImageGenerationTaskFailedError,
        )

        started = time.monotonic()
        delay: float | None = None
        errors = 0
        task_status: str | None = None
        while True:
            try:
                state = await hook.get_task(self.generation_task_id)
            except (ImageGenerationValidationError, ImageGenerationRejectedError) as error:
                # A refused key or an unusable connection: polling again cannot help.
                return self._payload(
                    "error", task_status, code=getattr(error, "code", None), message=str(error)
                )
            except ImageGenerationAPIError as error:
                errors += 1
                if errors > self.max_consecutive_errors:
                    self.log.error(
                        "Task %s: giving up after %d failed polls in a row", self.generation_task_id, errors
                    )
                    return self._payload("error", task_status, code=error.code, message=str(error))
                self.log.warning(
                    "Task %s: poll failed (%d in a row, %d tolerated): %s",
                    self.generation_task_id,
                    errors,
                    self.max_consecutive_errors,
                    error,
                )
            else:
                errors = 0
                if state.status != task_status:
                    self.log.info("Task %s is %s", self.generation_task_id, state.status)
                    task_status = state.status
                if state.is_terminal:
                    try:
                        state.raise_for_status()
                    except ImageGenerationTaskFailedError as failure:
                        return self._payload("failed", task_status, state, failure.code, failure.message)
                    return self._payload("success", task_status, state)
            now = time.time()
            if self.end_time is not None and now >= self.end_time:
                self.log.info(
                    "Task %s: deadline passed while it was %s", self.generation_task_id, task_status
                )
                return self._payload("timeout", task_status, message=f"still {task_status} at end_time")
            delay = next_poll_interval(
                delay, time.monotonic() - started, self.poll_interval, self.max_poll_interval
            )
            await asyncio.sleep(delay if self.end_time is None else min(delay, self.end_time - now))

    def _payload(
        self,
        status: str,
        task_status: str | None,
        state: TaskState | None = None,
        code: str | None = None,
        message: str | None = None,
    ) -> dict[str, Any]:
        """The event: small and JSON-serialisable, with counts but never a URL (URLs are credentials)."""
        failed = 0
        if state is not None:
            metrics_failed = state.task_metrics.get("FAILED")
            failed = max(len(state.failed_images), metrics_failed if isinstance(metrics_failed, int) else 0)
        return {
            "status": status,
            "generation_task_id": self.generation_task_id,
            "task_status": task_status,
            "code": code,
            "message": message,
            "succeeded": len(state.images) if state is not None else 0,
            "failed": failed,
        }
