"""Sensor waiting for a native image generation task (DashScope's asynchronous task API)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.configuration import conf
from airflow.sdk.exceptions import AirflowSensorTimeout

from airflow_provider_imggen import DEFAULT_CONN_ID
from airflow_provider_imggen.coercion import check_flag
from airflow_provider_imggen.events import raise_for_event, trigger_could_not_read_connection
from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from airflow_provider_imggen.metadata import task_metadata
from airflow_provider_imggen.polling import check_poll_settings
from airflow_provider_imggen.records import GenerationRecord

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_imggen.hooks.image_generation import ImageGenerationHook, TaskState

# The defer timeout leaves the trigger this long past the sensor's timeout to report "timeout" itself.
_DEFER_GRACE_SECONDS = 120.0


class ImageGenerationTaskSensor(BaseSensorOperator):
    """
    Wait for a native image generation task to end, and push its results' metadata to XCom.

    The XCom has the shape of :class:`~airflow_provider_imggen.operators.image_generation.
    ImageGenerationOperator`'s (a :class:`~airflow_provider_imggen.records.GenerationRecord`: result URLs
    masked, and sealed with Airflow's Fernet key, or read again from the task by the transfer when no key is
    configured), so :class:`~airflow_provider_imggen.transfers.image_generation_to_s3.
    ImageGenerationToS3Operator` can store the images directly (``generation=sensor.output``). The task's
    status reports the prompt but not the rest of the request (model, seed, size...): those are ``None``
    unless ``generation_task_id`` is the submitting operator's XCom, which records them.

    It waits in one of three ways: ``mode="poke"`` holds a worker slot and reads the status every
    ``poke_interval``; ``mode="reschedule"`` frees the slot between reads; ``deferrable=True`` (which takes
    precedence over ``mode``) hands the wait to the triggerer
    (:class:`~airflow_provider_imggen.triggers.image_generation.ImageGenerationTaskTrigger`), which polls
    with backoff and tolerates a few failed status reads.

    A SUCCEEDED task ends the wait. Images that failed in it (a per-image content check) are logged one by
    one and listed under ``failed_images``; the others are delivered. FAILED, CANCELED and UNKNOWN fail the
    sensor at once with the API's code and message, without Airflow retries: they are final. UNKNOWN means
    the API has no such task: the id is wrong, belongs to another account or region, or expired (task ids
    live 24 h); waiting longer cannot change that, and only re-running the submitting task (which bills a
    new task) can. With ``soft_fail=True`` these skip instead. A status read that keeps failing after the
    hook's retries fails the try, and Airflow may retry it: waiting again costs nothing.

    :param generation_task_id: the native task's id (templated), or the XCom of an
        ``ImageGenerationOperator(wait_for_completion=False)`` that submitted it (a dict with
        ``generation_task_id``; ``task_id`` in XComs pushed before that key was renamed)
    :param imggen_conn_id: the ``imggen`` connection, with ``api_style`` ``dashscope`` (templated)
    :param deferrable: wait in the triggerer; defaults to ``[operators] default_deferrable``
    :param poke_interval: seconds between status reads (in deferrable mode: at first, then backing off)
    :param max_poll_interval: in deferrable mode, the longest wait between status reads
    """

    template_fields: Sequence[str] = ("generation_task_id", "imggen_conn_id")
    template_fields_renderers: ClassVar[dict[str, str]] = {"generation_task_id": "json"}
    ui_color = "#e8d8ff"

    def __init__(
        self,
        *,
        generation_task_id: str | Mapping[str, Any],
        imggen_conn_id: str = DEFAULT_CONN_ID,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poke_interval: timedelta | float = 5.0,
        max_poll_interval: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, **kwargs)
        self.generation_task_id = generation_task_id
        self.imggen_conn_id = imggen_conn_id
        self.deferrable = deferrable
        self.max_poll_interval = max_poll_interval
        check_flag("deferrable", deferrable)
        check_poll_settings(self.poke_interval, max_poll_interval, poll_interval_name="poke_interval")

    @cached_property
    def hook(self) -> ImageGenerationHook:
        from airflow_provider_imggen.hooks.image_generation import ImageGenerationHook

        return ImageGenerationHook(imggen_conn_id=self.imggen_conn_id)

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        from airflow_provider_imggen.triggers.image_generation import ImageGenerationTaskTrigger

        generation_task_id = self._generation_task_id()
        self.log.info("Deferring until task %s ends (the worker slot is free meanwhile)", generation_task_id)
        self.defer(
            trigger=ImageGenerationTaskTrigger(
                generation_task_id=generation_task_id,
                imggen_conn_id=self.imggen_conn_id,
                poll_interval=self.poke_interval,
                max_poll_interval=self.max_poll_interval,
                end_time=time.time() + self.timeout,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout + _DEFER_GRACE_SECONDS),
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Resume after the trigger's event: read the results once (URLs never travel in events)."""
        generation_task_id = self._generation_task_id()
        if isinstance(event, Mapping) and event.get("status") == "timeout":
            raise AirflowSensorTimeout(
                f"Task {generation_task_id} was still {event.get('task_status')} when the sensor's "
                f"timeout of {self.timeout:g}s passed"
            )
        if trigger_could_not_read_connection(event, self.log, self.imggen_conn_id, generation_task_id):
            # A paid generation is not lost to the triggerer's configuration: this worker reads it.
            state = self.hook.wait_for_task(
                generation_task_id,
                poll_interval=self.poke_interval,
                max_poll_interval=self.max_poll_interval,
                timeout=self.timeout,
            )
            return self._metadata(state)
        raise_for_event(event, waited=self.timeout)
        return self._metadata(self.hook.get_task(generation_task_id))

    def poke(self, context: Context) -> bool | PokeReturnValue:
        generation_task_id = self._generation_task_id()
        state = self.hook.get_task(generation_task_id)
        if not state.is_terminal:
            self.log.info("Task %s is %s", generation_task_id, state.status)
            return False
        return PokeReturnValue(is_done=True, xcom_value=self._metadata(state))

    def _generation_task_id(self) -> str:
        target: object = self.generation_task_id
        if isinstance(target, Mapping):
            target = GenerationRecord.from_dict(target, where="generation_task_id").generation_task_id
        if not isinstance(target, str) or not target.strip():
            raise ImageGenerationValidationError(
                "generation_task_id",
                self.generation_task_id,
                "expected a native task id, or the XCom of an ImageGenerationOperator "
                "(wait_for_completion=False) that submitted one",
            )
        return target.strip()

    def _metadata(self, state: TaskState) -> dict[str, Any]:
        target = self.generation_task_id
        known = (
            GenerationRecord.from_dict(target, where="generation_task_id").request_fields()
            if isinstance(target, Mapping)
            else {}
        )
        return task_metadata(self.hook, state, known)
