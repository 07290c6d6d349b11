"""
A DAG whose generations have a price, for the Images view's cost (tests/system/test_ui_images.py copies it
into the browser stack's DAGs folder): two on connection ``imggen_beijing`` (list prices in CNY), one of them
not stored, and one on ``imggen_singapore`` (USD), the stored ones landed in S3 by one transfer. The run's
total is then one amount per currency, never CNY added to USD.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator
from airflow_provider_imggen.transfers.image_generation_to_s3 import ImageGenerationToS3Operator

MODEL = "wan2.2-t2i-flash"

with DAG(
    dag_id="imggen_ui_costs",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
):
    cny = ImageGenerationOperator(
        task_id="generate_cny",
        prompt="a teapot on a windowsill, morning light",
        model=MODEL,
        size="512*512",
        n=2,
        imggen_conn_id="imggen_beijing",
    )
    ImageGenerationOperator(
        task_id="generate_cny_unstored",
        prompt="a kite over a beach",
        model=MODEL,
        size="512*512",
        imggen_conn_id="imggen_beijing",
    )
    usd = ImageGenerationOperator(
        task_id="generate_usd",
        prompt="a lantern in the snow",
        model=MODEL,
        size="512*512",
        imggen_conn_id="imggen_singapore",
    )
    ImageGenerationToS3Operator(
        task_id="store",
        generation=[cny.output, usd.output],
        s3_bucket="imggen-content",
        s3_key="costs/{{ ds_nodash }}/{generation}-{index}-seed{seed}.{ext}",
    )
