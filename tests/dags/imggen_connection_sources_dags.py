"""
Deferrable generations whose triggers read their connection from each place a deployment keeps one
(tests/system/test_trigger_connections.py runs it under ``airflow dags test`` and under
``airflow standalone``).

Each task names its own connection: ``imggen_metadata_db`` (created with ``airflow connections add``),
``imggen_environment`` (an ``AIRFLOW_CONN_*`` variable) and ``imggen_secrets_backend`` (a file read by
Airflow's ``LocalFilesystemBackend``). ``wait_metadata_db`` is a deferrable sensor on a task submitted by
``submit_metadata_db``: the sensor's trigger reads the metadata-DB connection too.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator
from airflow_provider_imggen.sensors.image_generation import ImageGenerationTaskSensor

SOURCES = ("metadata_db", "environment", "secrets_backend")
REQUEST = {"prompt": "a paper lantern over a river", "n": 1, "size": "512x512", "seed": 5}

with DAG(
    dag_id="imggen_connection_sources",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["imggen-connection-sources"],
):
    for source in SOURCES:
        ImageGenerationOperator(
            task_id=f"deferred_{source}",
            imggen_conn_id=f"imggen_{source}",
            deferrable=True,
            poll_interval=0.5,
            max_poll_interval=1.0,
            **REQUEST,
        )
    submitted = ImageGenerationOperator(
        task_id="submit_metadata_db",
        imggen_conn_id="imggen_metadata_db",
        wait_for_completion=False,
        **REQUEST,
    )
    ImageGenerationTaskSensor(
        task_id="wait_metadata_db",
        imggen_conn_id="imggen_metadata_db",
        generation_task_id=submitted.output,
        deferrable=True,
        poke_interval=0.5,
        max_poll_interval=1.0,
        timeout=300,
    )
