"""
The batch mode under a real scheduler and triggerer (tests/system/test_batch_dag_runs.py runs them under
``airflow standalone``): prompts -> ImageGenerationBatchOperator (one worker run, one deferral, every
request sent from the triggerer under the ledger's claims) -> ImageGenerationToS3Operator.

``imggen_batch`` has no retries: every image is delivered and the triggerer ends the task. In
``imggen_batch_refused`` the emulator refuses some prompts for their content: the task fails on the worker
with the others in its XCom, and its one retry must resume from the ledger without sending anything again.
Its retry waits 5 s: a window in which the test reads the first try's XComs (the retry clears them when it
starts, and may lose its own to an Airflow race, see the test).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_imggen.operators.image_generation_batch import ImageGenerationBatchOperator
from airflow_provider_imggen.transfers.image_generation_to_s3 import ImageGenerationToS3Operator

PROMPTS = [
    "a lighthouse on a cliff, risograph print",
    "a tram crossing a bridge at dusk, risograph print",
    "a teapot on a windowsill, risograph print",
    "a fox in a snowy forest, risograph print",
    "a sailing boat in a harbour, risograph print",
    "a bicycle against a brick wall, risograph print",
]
MODEL = "wan2.2-t2i-flash"
S3_KEY = "batch/{generation}-{index}-seed{seed}.{ext}"


def batch_dag(dag_id: str, retries: int, retry_delay: float = 0) -> DAG:
    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        params={"bucket": "imggen-batch"},
        default_args={"retries": retries, "retry_delay": timedelta(seconds=retry_delay)},
        tags=["imggen-batch"],
    ) as dag:

        @task
        def prompts() -> list[str]:
            return PROMPTS

        generate = ImageGenerationBatchOperator(
            task_id="generate", prompts=prompts(), model=MODEL, size="512*512"
        )
        ImageGenerationToS3Operator(
            task_id="store_in_s3",
            generation=generate.output,
            s3_bucket="{{ params.bucket }}",
            s3_key=S3_KEY,
        )
    return dag


delivered = batch_dag("imggen_batch", retries=0)
# Retries left, which a batch whose problems are all final does not use.
refused = batch_dag("imggen_batch_refused", retries=1, retry_delay=5)
