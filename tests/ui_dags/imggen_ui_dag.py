"""The DAG tests/system/test_ui_connection.py triggers: one generation on the connection from the UI form."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator

with DAG(
    dag_id="imggen_ui_connection",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
):
    # No model: the connection's default model (set in the form) decides.
    ImageGenerationOperator(
        task_id="generate",
        prompt="a lighthouse at dawn, watercolour",
        size="512x512",
        imggen_conn_id="imggen_ui",
    )
