"""
The DAGs that benchmarks/bench_deferrable.py runs: each a single ImageGenerationOperator mapped over N
prompts (one mapped task instance, one generation, per prompt), one DAG per benchmark mode.

The benchmark copies this file into a throw-away dags folder and describes the DAGs in the environment
variable ``IMGGEN_BENCH`` (JSON), which ``airflow standalone`` hands to the dag-processor and the workers:
``[{"dag_id": ..., "tasks": 40, "conn_id": ..., "operator_kwargs": {...}}, ...]``.
"""

from __future__ import annotations

import json
import os

import pendulum
from airflow.sdk import DAG

from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator

for spec in json.loads(os.environ.get("IMGGEN_BENCH", "[]")):
    with DAG(
        dag_id=spec["dag_id"],
        description=f"bench_deferrable: {spec['tasks']} generations",
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        # Only [core] parallelism limits the run: the DAG allows every mapped task at once.
        max_active_tasks=max(16, spec["tasks"]),
        tags=["benchmark"],
    ):
        ImageGenerationOperator.partial(
            task_id="generate",
            imggen_conn_id=spec["conn_id"],
            model="wan2.2-t2i-flash",
            size="512*512",
            retries=0,  # a failure must show, not be hidden by a retry (and a second bill)
            **spec["operator_kwargs"],
        ).expand(prompt=[f"benchmark poster number {number}" for number in range(spec["tasks"])])
