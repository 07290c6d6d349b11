"""
Minimal example: one poster a day, its prompt templated from the run's date and the DAG's params.

Needs an ``imggen_default`` connection (``make demo`` points it at the offline emulator).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator

with DAG(
    dag_id="example_image_generation",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"style": "watercolour"},
    tags=["example", "imggen"],
) as dag:
    ImageGenerationOperator(
        task_id="generate_poster",
        prompt="A poster announcing the farmers' market of {{ ds }}, {{ params.style }} style",
        model="qwen-image",
        size="1328x1328",
        negative_prompt="low resolution, blurry text",
    )
