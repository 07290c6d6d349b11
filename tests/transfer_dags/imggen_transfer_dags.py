"""A DAG the transfer tests run for real with `airflow dags test`: a mapped generation, then S3."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator
from airflow_provider_imggen.transfers.image_generation_to_s3 import ImageGenerationToS3Operator

PROMPTS = ["a red fox in the snow", "a lighthouse at dawn"]

with DAG(
    dag_id="imggen_transfer_mapped",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
):
    generate = ImageGenerationOperator.partial(
        task_id="generate", model="wan2.2-t2i-flash", size="512x512", n=2, seed=7
    ).expand(prompt=PROMPTS)
    ImageGenerationToS3Operator(
        task_id="store",
        generation=generate.output,
        s3_bucket="{{ var.value.imggen_test_bucket }}",
        s3_key="dags/{{ ds }}/{generation}-{index}.{ext}",
    )
    # Not mapped: `generation` renders to the XCom dict itself, signed URLs included.
    single = ImageGenerationOperator(
        task_id="generate_one", prompt="a bowl of ramen", model="wan2.2-t2i-flash", size="512x512", seed=9
    )
    ImageGenerationToS3Operator(
        task_id="store_one",
        generation=single.output,
        s3_bucket="{{ var.value.imggen_test_bucket }}",
        s3_key="dags/{{ ds }}/single-{index}.{ext}",
    )
