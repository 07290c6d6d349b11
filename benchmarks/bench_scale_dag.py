"""
The DAG that benchmarks/bench_scale.py runs on the cluster: the content pipeline at volume.

N prompts (``params.prompts``) -> one deferrable generation per prompt, ending in the triggerer, in the pool
that stands for the account's concurrent-task quota (``imggen_quota``, deferred tasks counted) -> every
image stored in S3.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator
from airflow_provider_imggen.transfers.image_generation_to_s3 import ImageGenerationToS3Operator

with DAG(
    dag_id="bench_scale",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    # The pool, not the DAG, limits the generations.
    max_active_tasks=64,
    default_args={"retries": 3, "retry_delay": pendulum.duration(seconds=5)},
    params={"prompts": 200, "bucket": "imggen-content"},
    tags=["benchmark"],
) as dag:

    @task
    def prompts(params: dict[str, Any], run_id: str) -> list[str]:
        return [f"Product photo number {number}, run {run_id}" for number in range(int(params["prompts"]))]

    generated = ImageGenerationOperator.partial(
        task_id="generate",
        model="wan2.2-t2i-flash",
        size="512*512",
        n=1,
        deferrable=True,
        # A generation ends in the triggerer: one worker run (the submission) per image, not two.
        end_from_trigger=True,
        pool="imggen_quota",
        # 4 s generations: read the status every second.
        poll_interval=1,
        max_poll_interval=2,
    ).expand(prompt=prompts())

    ImageGenerationToS3Operator(
        task_id="store_in_s3",
        generation=generated.output,
        s3_bucket="{{ params.bucket }}",
        s3_key="scale/{{ run_id }}/{generation}-{index}-seed{seed}.{ext}",
    )
