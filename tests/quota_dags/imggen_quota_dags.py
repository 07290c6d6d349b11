"""
A mapped generation larger than the account's quota, run by a real scheduler
(tests/system/test_quota_pool.py).

``imggen_quota_pool`` follows the README's recipe: the tasks run in the pool ``imggen_quota`` whose slots
equal the concurrent-task quota and which counts deferred tasks. ``imggen_quota_no_pool`` runs the same
prompts without it, all at once: the service throttles them, and the operators wait and submit again.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator

PROMPTS = [f"a travel poster of harbour number {number}" for number in range(8)]
POOL = "imggen_quota"

for dag_id, pool in (("imggen_quota_pool", POOL), ("imggen_quota_no_pool", "default_pool")):
    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        # Only the pool (or nothing) limits the run: the DAG allows every mapped task at once.
        max_active_tasks=len(PROMPTS),
        tags=["imggen-quota"],
    ):
        ImageGenerationOperator.partial(
            task_id="generate",
            pool=pool,
            deferrable=True,
            model="wan2.2-t2i-flash",
            size="512*512",
            n=1,
            poll_interval=0.5,
            max_poll_interval=1.0,
            throttle_timeout=600,
            retries=0,  # a failure must show, not be hidden by a retry
        ).expand(prompt=PROMPTS)
