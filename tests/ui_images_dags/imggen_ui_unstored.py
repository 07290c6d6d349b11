"""
Generations the Images view shows without any transfer: one whose result URLs expire within seconds
(connection ``imggen_short``, an emulator with a short URL lifetime), one whose URLs stay valid, and an edit
of a product photo in S3 (connection ``imggen_dashscope``), shown beside its input.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator

with DAG(
    dag_id="imggen_ui_unstored",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
):
    ImageGenerationOperator(
        task_id="generate_short_lived",
        prompt="a paper boat on a puddle, overcast",
        model="wan2.2-t2i-flash",
        size="512*512",
        imggen_conn_id="imggen_short",
    )
    ImageGenerationOperator(
        task_id="generate_not_stored",
        prompt="a red bicycle against a yellow wall",
        negative_prompt="people",
        model="wan2.2-t2i-flash",
        size="768*512",
    )
    ImageGenerationOperator(
        task_id="edit_product",
        prompt="the product on a marble counter",
        model="qwen-image-edit-plus",
        images=["s3://imggen-content/inputs/product.png"],
        imggen_conn_id="imggen_dashscope",
    )
