"""
The DAG of tests/system/test_cluster_budget.py: 20 mapped generations of one image each against a DAG run
budget of 10 images, on the cluster of benchmarks/cluster.py (CeleryExecutor, two workers, the triggerer).

``imggen_default`` is the cluster's connection: the native task API (``wan2.2-t2i-flash``) with the billing
ledger in the cluster's PostgreSQL, where the budget's spending is kept. Even map indexes are deferrable
(the triggerer waits for their generation), odd ones wait on the worker. Each prompt names the DAG run, so
the emulator's request log tells the runs apart.

``params.crash`` (``{"<map index>": "<point>:sigkill"}``) arms the provider's test-only crash switch
(:mod:`airflow_provider_imggen.crash_points`) in try 1 of those map indexes, with ``params.crash_delay``
as the ``after_send`` alarm's delay: the task process dies inside its billable send, Airflow retries it.
"""

from __future__ import annotations

import os
from typing import Any

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_imggen.crash_points import DELAY_ENV
from airflow_provider_imggen.crash_points import ENV as CRASH_ENV
from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator

DAG_ID = "imggen_cluster_budget"
PROMPTS = 20
BUDGET_IMAGES = 10


def prompt_for(run_id: str, index: int) -> str:
    """The prompt of map index ``index`` in the DAG run ``run_id`` (how the test finds its submissions)."""
    return f"budget test {run_id} prompt {index:02d}: a glass teapot on a slate table"


class BudgetedGeneration(ImageGenerationOperator):
    """An ImageGenerationOperator whose try 1 may stop inside its billable send at ``crash``."""

    def __init__(self, *, crash: str | None = None, crash_delay: float = 0.05, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.crash = crash
        self.crash_delay = crash_delay

    def execute(self, context: Any, *args: Any, **kwargs: Any) -> Any:
        # Only the first entry of try 1 (a quota wait resumes execute() with keyword arguments).
        if self.crash and context["ti"].try_number == 1 and not args and not kwargs:
            os.environ[CRASH_ENV] = self.crash
            os.environ[DELAY_ENV] = str(self.crash_delay)
        else:
            os.environ.pop(CRASH_ENV, None)
        return super().execute(context, *args, **kwargs)


with DAG(
    dag_id=DAG_ID,
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    default_args={"retries": 2, "retry_delay": pendulum.duration(seconds=2)},
    params={"crash": {}, "crash_delay": 0.05},
    tags=["cluster"],
):

    @task
    def generations(params: dict[str, Any], run_id: str) -> list[dict[str, Any]]:
        crash = {int(index): spec for index, spec in (params.get("crash") or {}).items()}
        return [
            {
                "prompt": prompt_for(run_id, index),
                "deferrable": index % 2 == 0,
                "crash": crash.get(index),
                "crash_delay": float(params.get("crash_delay") or 0.05),
            }
            for index in range(PROMPTS)
        ]

    BudgetedGeneration.partial(
        task_id="generate",
        model="wan2.2-t2i-flash",
        size="512*512",
        n=1,
        budget={"dag_run": BUDGET_IMAGES},
        poll_interval=1,
        max_poll_interval=2,
    ).expand_kwargs(generations())
