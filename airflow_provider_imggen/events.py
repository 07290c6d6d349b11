"""
The event of :class:`~airflow_provider_imggen.triggers.image_generation.ImageGenerationTaskTrigger`: its
shape, built (:func:`task_event`) and read (:func:`raise_for_event` and the helpers below) here only, so
the trigger, the operator and the sensor agree on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from airflow_provider_imggen.exceptions import (
    ImageGenerationAPIError,
    ImageGenerationTaskFailedError,
    ImageGenerationTaskTimeoutError,
)

if TYPE_CHECKING:
    from airflow_provider_imggen.results import TaskState

# What an event's "status" may be: the task succeeded, ended otherwise (final), was still running at the
# deadline, or its status could not be read.
EVENT_STATUSES = ("success", "failed", "timeout", "error")


def task_event(
    status: str,
    generation_task_id: str,
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
        "generation_task_id": generation_task_id,
        "task_status": task_status,
        "code": code,
        "message": message,
        "succeeded": len(state.images) if state is not None else 0,
        "failed": failed,
    }


def raise_for_event(event: Mapping[str, Any] | None, *, waited: float | None) -> None:
    """
    Raise for an ``ImageGenerationTaskTrigger`` event that is not ``success``, with the API's message.

    ``failed`` (FAILED, CANCELED, UNKNOWN) is final: :class:`ImageGenerationTaskFailedError`, no Airflow
    retry. ``timeout`` and ``error`` (status reads kept failing) may be retried: the task goes on, and a
    retry that reconnects to it pays nothing more.
    """
    if not isinstance(event, Mapping):
        raise ImageGenerationAPIError(f"The trigger sent no usable event: {event!r}")
    status, generation_task_id = event.get("status"), str(event_generation_task_id(event))
    if status == "success":
        return
    if status == "failed":
        raise ImageGenerationTaskFailedError(
            str(event.get("message") or "the task did not succeed"),
            generation_task_id=generation_task_id,
            task_status=str(event.get("task_status")),
            code=event.get("code"),
        )
    if status == "timeout":
        raise ImageGenerationTaskTimeoutError(
            generation_task_id=generation_task_id, task_status=event.get("task_status"), waited=waited
        )
    if status == "error":
        raise ImageGenerationAPIError(
            f"Gave up reading the status of task {generation_task_id}: {event.get('message')}",
            code=event.get("code"),
        )
    raise ImageGenerationAPIError(f"The trigger sent an event with an unknown status: {status!r}")


class WarningLog(Protocol):
    """What is needed of a logger here (the task SDK's and the standard library's both have it)."""

    def warning(self, message: Any, /, *args: Any) -> Any: ...


def trigger_could_not_read_connection(
    event: object, log: WarningLog, conn_id: str, generation_task_id: str
) -> bool:
    """
    Whether an ``ImageGenerationTaskTrigger`` event says the triggerer could not read the connection (and
    if so, a warning saying the wait moves to this worker).

    The worker then waits for the task itself: it read the connection to submit, and the generation is paid.
    """
    from airflow_provider_imggen.exceptions import ImageGenerationConnectionUnreadableError

    if not (
        isinstance(event, Mapping)
        and event.get("status") == "error"
        and event.get("code") == ImageGenerationConnectionUnreadableError.CODE
    ):
        return False
    log.warning(
        "The triggerer could not read connection %r (%s): waiting for task %s in this worker instead. "
        "Give the triggerer the connection to keep such waits off the workers",
        conn_id,
        event.get("message"),
        generation_task_id,
    )
    return True


def event_generation_task_id(event: Mapping[str, Any]) -> object:
    """The native task id an ``ImageGenerationTaskTrigger`` event names (``task_id`` before the rename)."""
    return event.get("generation_task_id", event.get("task_id"))
