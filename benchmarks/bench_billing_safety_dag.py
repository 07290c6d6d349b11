"""
DAGs of benchmarks/bench_billing_safety.py: one mapped ImageGenerationOperator over N distinct prompts,
task retries on, once through the OpenAI-compatible gateway and once through the native task API.

Parsed by ``airflow dags test`` in a subprocess; the benchmark passes N, n and the retry settings through
the environment (``BENCH_BILLING_*``) and the connections as ``AIRFLOW_CONN_IMGGEN_BENCH_GATEWAY`` and
``AIRFLOW_CONN_IMGGEN_BENCH_NATIVE``.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG

from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator

START = pendulum.datetime(2026, 1, 1, tz="UTC")
GENERATIONS = int(os.environ.get("BENCH_BILLING_GENERATIONS", "100"))
IMAGES_PER_GENERATION = int(os.environ.get("BENCH_BILLING_N", "2"))
RETRIES = int(os.environ.get("BENCH_BILLING_RETRIES", "2"))
RETRY_DELAY = float(os.environ.get("BENCH_BILLING_RETRY_DELAY", "2"))
MODEL = "wan2.2-t2i-flash"


def prompts() -> list[str]:
    """Distinct prompts: each generation has a body of its own (the emulator's log tells them apart)."""
    return [f"billing safety generation {index}, a lighthouse in the fog" for index in range(GENERATIONS)]


for style in ("gateway", "native"):
    with DAG(
        dag_id=f"bench_billing_safety_{style}",
        schedule=None,
        start_date=START,
        catchup=False,
        default_args={"retries": RETRIES, "retry_delay": pendulum.duration(seconds=RETRY_DELAY)},
    ):
        ImageGenerationOperator.partial(
            task_id="generate",
            imggen_conn_id=f"imggen_bench_{style}",
            model=MODEL,
            size="512x512",
            n=IMAGES_PER_GENERATION,
            poll_interval=0.2,
            max_poll_interval=1.0,
        ).expand(prompt=prompts())
