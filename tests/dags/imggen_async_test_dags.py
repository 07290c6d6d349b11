"""
DAGs on the native task API that the tests run for real (`airflow dags test`) against the emulator.

``imggen_async_resume`` simulates a worker dying after the billable submission: on try 1 each task stops
at a chosen point after its task id was stored. IMGGEN_TEST_CRASH=sigkill kills the task process (only
under an executor: `airflow dags test` without one runs tasks in its own process); anything else raises.
"""

from __future__ import annotations

import os
import signal
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, BaseHook, task

from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator
from airflow_provider_imggen.sensors.image_generation import ImageGenerationTaskSensor

START = pendulum.datetime(2026, 1, 1, tz="UTC")
FAST = {"poll_interval": 0.2, "max_poll_interval": 0.5}
SENSOR_FAST = {"poke_interval": 0.2, "max_poll_interval": 0.5}


class CrashingAfterSubmit(ImageGenerationOperator):
    """
    An ImageGenerationOperator whose try 1 dies at ``crash_in`` (after its task id was stored).

    :param crash_in: ``poll_until_complete`` (the task was submitted, the wait had not started),
        ``get_job_result`` (the task SUCCEEDED, the XCom was not pushed yet) or ``execute_complete``
        (resumed from the triggerer, before reading the results)
    :param expire_first: make the emulator forget the task first, as if its 24 h had passed
    """

    def __init__(self, *, crash_in: str, expire_first: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.crash_in = crash_in
        self.expire_first = expire_first

    def poll_until_complete(self, external_id: Any, context: Any) -> Any:
        self._maybe_crash("poll_until_complete", context)
        return super().poll_until_complete(external_id, context)

    def get_job_result(self, external_id: Any, context: Any) -> Any:
        self._maybe_crash("get_job_result", context)
        return super().get_job_result(external_id, context)

    def execute_complete(self, context: Any, event: dict[str, Any], request: Any = None) -> Any:
        self._generation_task_id = event["generation_task_id"]
        self._maybe_crash("execute_complete", context)
        return super().execute_complete(context, event=event, request=request)

    def _maybe_crash(self, where: str, context: Any) -> None:
        if where != self.crash_in or context["ti"].try_number != 1:
            return
        if self.expire_first:
            import requests

            base_url = BaseHook.get_connection(self.imggen_conn_id).host
            requests.post(
                f"{base_url}/_emulator/tasks/{self._generation_task_id}/expire", timeout=10
            ).raise_for_status()
        print(f"Simulating a worker crash in {where} after submitting task {self._generation_task_id}")
        if os.environ.get("IMGGEN_TEST_CRASH") == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(
            f"simulated worker crash in {where} after submitting task {self._generation_task_id}"
        )


with DAG(
    dag_id="imggen_async_operator",
    schedule=None,
    start_date=START,
    catchup=False,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=0)},
):
    deferred = ImageGenerationOperator(
        task_id="deferred", prompt="a red fox in the snow", n=2, size="512x512", deferrable=True, **FAST
    )
    polled = ImageGenerationOperator(
        task_id="polled", prompt="a red fox in the snow", n=2, size="512x512", deferrable=False, **FAST
    )
    failed = ImageGenerationOperator(
        task_id="failed", prompt="a lighthouse at dawn", size="512x512", deferrable=True, **FAST
    )
    # The task that fails last: its emulator fault is scripted for the third submission.
    deferred >> polled >> failed


with DAG(dag_id="imggen_async_sensor", schedule=None, start_date=START, catchup=False):
    submitted = ImageGenerationOperator(
        task_id="submit", prompt="a bowl of ramen", n=3, size="512x512", seed=70, wait_for_completion=False
    )
    sensors = [
        ImageGenerationTaskSensor(
            task_id="wait_poke", generation_task_id=submitted.output, mode="poke", **SENSOR_FAST
        ),
        ImageGenerationTaskSensor(
            task_id="wait_reschedule",
            generation_task_id="{{ ti.xcom_pull(task_ids='submit')['generation_task_id'] }}",
            mode="reschedule",
            **SENSOR_FAST,
        ),
        ImageGenerationTaskSensor(
            task_id="wait_deferred", generation_task_id=submitted.output, deferrable=True, **SENSOR_FAST
        ),
    ]
    # dags test runs the tasks of a round in no set order, one at a time, and the poke and deferrable
    # sensors block until the task is done: the reschedule sensor (whose template pull sets no dependency)
    # must run right after "submit", while the task is still PENDING, to show it frees its slot.
    submitted >> sensors[1] >> [sensors[0], sensors[2]]

    @task
    def delivered(poke: dict, reschedule: dict, deferred: dict) -> list[int]:
        """What a downstream task gets from each sensor: the same images."""
        urls = [[image["url"] for image in sensed["images"]] for sensed in (poke, reschedule, deferred)]
        assert urls[0] == urls[1] == urls[2]
        return [image["index"] for image in poke["images"]]

    delivered(*(sensor.output for sensor in sensors))


with DAG(
    dag_id="imggen_async_resume",
    schedule=None,
    start_date=START,
    catchup=False,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=0)},
):
    # Each task asks for a distinct (model, n), so the test can tell their submissions apart.
    reconnect_polling = CrashingAfterSubmit(
        task_id="reconnect_polling",
        crash_in="poll_until_complete",
        prompt="a red fox in the snow",
        n=1,
        size="512x512",
        **FAST,
    )
    reconnect_deferred = CrashingAfterSubmit(
        task_id="reconnect_deferred",
        crash_in="poll_until_complete",
        prompt="a red fox in the snow",
        n=2,
        size="512x512",
        deferrable=True,
        **FAST,
    )
    succeeded_before_crash = CrashingAfterSubmit(
        task_id="succeeded_before_crash",
        crash_in="get_job_result",
        prompt="a red fox in the snow",
        n=3,
        size="512x512",
        **FAST,
    )
    crash_after_resume = CrashingAfterSubmit(
        task_id="crash_after_resume",
        crash_in="execute_complete",
        prompt="a red fox in the snow",
        n=4,
        size="512x512",
        deferrable=True,
        **FAST,
    )
    expired = CrashingAfterSubmit(
        task_id="expired",
        crash_in="poll_until_complete",
        expire_first=True,
        # The expired task may have been billed: a retry fails closed unless asked to pay again.
        reuse=False,
        prompt="a red fox in the snow",
        model="qwen-image",
        **FAST,
    )
    reconnect_polling >> reconnect_deferred >> succeeded_before_crash >> crash_after_resume >> expired


with DAG(
    dag_id="imggen_async_crash",
    schedule=None,
    start_date=START,
    catchup=False,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=0)},
):
    # Run under an executor with IMGGEN_TEST_CRASH=sigkill: try 1's process is killed mid-wait.
    CrashingAfterSubmit(
        task_id="killed_while_polling",
        crash_in="poll_until_complete",
        prompt="a lighthouse at dawn",
        n=2,
        size="512x512",
        **FAST,
    )


with DAG(dag_id="imggen_async_throttled", schedule=None, start_date=START, catchup=False):
    # The service throttles the first submission and asks for 10 s: the task defers to a DateTimeTrigger,
    # resumes in execute and submits again (`airflow dags test` hands back only the event, not the
    # deferral's kwargs: the deadline then counts from the try's start date).
    ImageGenerationOperator(
        task_id="throttled",
        prompt="a lighthouse at dawn",
        size="512x512",
        deferrable=True,
        throttle_timeout=120,
        **FAST,
    )
