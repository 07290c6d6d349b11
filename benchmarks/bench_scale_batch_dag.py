"""
The batch DAG that benchmarks/bench_scale.py runs on the cluster: the content pipeline at volume, in one task.

N prompts (``params.prompts``) -> one ImageGenerationBatchOperator: a worker validates every prompt and
defers once; the trigger submits them from the triggerer at the account's quota, each send claimed in the
billing ledger first (the ``imggen_default`` connection's ``ledger``), polls, and ends the task with one
generation record per prompt -> every image stored in S3. No pool: one task instance holds no quota slot
worth counting, the trigger paces the sends by the account's limits itself.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_imggen.operators.image_generation_batch import ImageGenerationBatchOperator
from airflow_provider_imggen.transfers.image_generation_to_s3 import ImageGenerationToS3Operator

with DAG(
    dag_id="bench_scale_batch",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    default_args={"retries": 3, "retry_delay": pendulum.duration(seconds=5)},
    params={"prompts": 200, "bucket": "imggen-content"},
    tags=["benchmark"],
) as dag:

    @task
    def prompts(params: dict[str, Any], run_id: str) -> list[str]:
        # The same prompts as bench_scale_dag.py: the bench finds each one's image by its prompt-sha256.
        return [f"Product photo number {number}, run {run_id}" for number in range(int(params["prompts"]))]

    generate = ImageGenerationBatchOperator(
        task_id="generate",
        prompts=prompts(),
        model="wan2.2-t2i-flash",
        size="512*512",
        n=1,
        # 4 s generations: read the status every second.
        poll_interval=1,
        # The task ends in the triggerer: one worker run (validation and the deferral) for every prompt.
        end_from_trigger=True,
    )

    ImageGenerationToS3Operator(
        task_id="store_in_s3",
        generation=generate.output,
        s3_bucket="{{ params.bucket }}",
        s3_key="scale/{{ run_id }}/{generation}-{index}-seed{seed}.{ext}",
    )
