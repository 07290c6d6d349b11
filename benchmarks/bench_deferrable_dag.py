"""
The DAGs that benchmarks/bench_deferrable.py runs, one DAG per benchmark mode: for a ``mapped`` mode a
single ImageGenerationOperator mapped over N prompts (one mapped task instance, one generation, per
prompt); for the ``batch`` mode a single ImageGenerationBatchOperator with the N prompts (one task
instance, whose trigger sends every prompt from the triggerer).

The benchmark copies this file into a throw-away dags folder and describes the DAGs in the environment
variable ``IMGGEN_BENCH`` (JSON), which ``airflow standalone`` hands to the dag-processor and the workers:
``[{"dag_id": ..., "kind": "mapped" | "batch", "tasks": 40, "conn_id": ..., "operator_kwargs": {...}}, ...]``
(``kind`` defaults to ``mapped``).
"""

from __future__ import annotations

import json
import os

import pendulum
from airflow.sdk import DAG

from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator

for spec in json.loads(os.environ.get("IMGGEN_BENCH", "[]")):
    prompts = [f"benchmark poster number {number}" for number in range(spec["tasks"])]
    with DAG(
        dag_id=spec["dag_id"],
        description=f"bench_deferrable: {spec['tasks']} generations ({spec.get('kind', 'mapped')})",
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        # Only [core] parallelism limits the run: the DAG allows every mapped task at once.
        max_active_tasks=max(16, spec["tasks"]),
        tags=["benchmark"],
    ):
        common = {
            "task_id": "generate",
            "imggen_conn_id": spec["conn_id"],
            "model": "wan2.2-t2i-flash",
            "size": "512*512",
            "retries": 0,  # a failure must show, not be hidden by a retry (and a second bill)
            **spec["operator_kwargs"],
        }
        if spec.get("kind", "mapped") == "batch":
            # Imported only here: a checkout without the batch operator still runs the mapped modes.
            from airflow_provider_imggen.operators.image_generation_batch import (
                ImageGenerationBatchOperator,
            )

            ImageGenerationBatchOperator(prompts=prompts, **common)
        else:
            ImageGenerationOperator.partial(**common).expand(prompt=prompts)
