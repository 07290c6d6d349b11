"""
A generation ended in the triggerer next to one resumed on a worker (tests/system/test_end_from_trigger.py
runs it under ``airflow standalone``; tests/system/test_async_dag_runs.py under ``airflow dags test``).

``ended_in_triggerer`` and ``resumed_on_worker`` ask for the same images (same prompt, seed, size), so
their XComs must match but for the generation's own ids; ``compare`` reads both on a worker, as any
downstream task would. ``failed`` is the third submission, which the emulator's faults make FAILED: with
``end_from_trigger`` and retries left it must still fail once, on the worker, without a retry.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator

REQUEST = {"prompt": "a paper boat on a pond", "n": 2, "size": "512x512", "seed": 31}
POLLING = {"poll_interval": 0.5, "max_poll_interval": 1.0}
# Their own to each generation (and read): ids, times, the result URLs and their expiry.
OWN_FIELDS = {"generation_task_id", "created", "created_at", "request_id"}
OWN_IMAGE_FIELDS = {"url", "url_sealed", "url_expires_at"}


def shape(generation: dict[str, Any]) -> dict[str, Any]:
    """A generation record with what is its own replaced by the value's type: equal for equal requests."""

    def typed(record: dict[str, Any], own: set[str]) -> dict[str, Any]:
        return {key: type(value).__name__ if key in own else value for key, value in record.items()}

    return {
        **typed(generation, OWN_FIELDS),
        "images": [typed(image, OWN_IMAGE_FIELDS) for image in generation["images"]],
    }


with DAG(
    dag_id="imggen_end_from_trigger",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=0)},
    tags=["imggen-end-from-trigger"],
):
    ended = ImageGenerationOperator(
        task_id="ended_in_triggerer", deferrable=True, end_from_trigger=True, **REQUEST, **POLLING
    )
    resumed = ImageGenerationOperator(task_id="resumed_on_worker", deferrable=True, **REQUEST, **POLLING)
    failed = ImageGenerationOperator(
        task_id="failed",
        prompt="a lighthouse at dawn",
        size="512x512",
        deferrable=True,
        end_from_trigger=True,
        **POLLING,
    )

    @task
    def compare(ended: dict[str, Any], resumed: dict[str, Any]) -> dict[str, Any]:
        """What a downstream task sees of each: the same record but for what is each generation's own."""
        return {
            "same": shape(ended) == shape(resumed),
            "keys": sorted(ended),
            "images": [len(ended["images"]), len(resumed["images"])],
        }

    # The failing task runs last: the emulator's faults are scripted by submission order.
    [compare(ended.output, resumed.output), ended, resumed] >> failed
