"""
An asynchronous content pipeline on DashScope's native task API: today's prompts -> one generation task
submitted per prompt -> a deferrable sensor per task -> images stored in S3 with their metadata.

Submitting takes a second; the wait (tens of seconds per image on the slower models) happens in the
triggerer, which holds no worker slot: hundreds of prompts need no more workers than a handful. A retried
submit step reconnects to the task it already submitted (Airflow's task state store): nothing is paid
twice. The one-step alternative is ``ImageGenerationOperator(deferrable=True)``, which submits and defers
in the same task.

Needs an ``imggen_default`` connection with extra ``{"api_style": "dashscope"}`` (Host
``https://dashscope.aliyuncs.com``), an ``aws_default`` connection whose bucket exists, and a running
triggerer (``airflow triggerer``; ``airflow standalone`` starts one).
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator
from airflow_provider_imggen.sensors.image_generation import ImageGenerationTaskSensor
from airflow_provider_imggen.transfers.image_generation_to_s3 import ImageGenerationToS3Operator

with DAG(
    dag_id="example_async_pipeline",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    default_args={"retries": 3, "retry_delay": pendulum.duration(seconds=10)},
    params={
        "bucket": "imggen-content",
        "model": "wan2.2-t2i-plus",
        "subjects": [
            "a ceramic coffee mug on a wooden table, morning light",
            "a pair of running shoes on wet asphalt, neon reflections",
        ],
    },
    tags=["example", "imggen", "s3", "deferrable"],
):

    @task
    def todays_prompts(params: dict[str, Any], ds: str) -> list[str]:
        return [f"Product photo, {subject}, campaign of {ds}" for subject in params["subjects"]]

    # Submit only: the XCom carries the task id and the request (seed, size...), no images yet.
    submitted = ImageGenerationOperator.partial(
        task_id="submit",
        model="{{ params.model }}",
        size="1024*768",
        n=2,
        wait_for_completion=False,
    ).expand(prompt=todays_prompts())

    # Wait in the triggerer. Given the submit step's XCom, each sensor's XCom also records its seed and size.
    waited = ImageGenerationTaskSensor.partial(
        task_id="wait", deferrable=True, poke_interval=3, timeout=3600
    ).expand(generation_task_id=submitted.output)

    ImageGenerationToS3Operator(
        task_id="store_in_s3",
        generation=waited.output,
        s3_bucket="{{ params.bucket }}",
        s3_key="async/{{ ds }}/{generation}-{index}-seed{seed}.{ext}",
    )
