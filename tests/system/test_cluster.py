"""
The content pipeline on a real CeleryExecutor deployment, a Celery worker killed in the middle of it.

benchmarks/cluster.py brings up PostgreSQL, Redis, the scheduler, api-server, dag-processor, triggerer,
two Celery workers, the emulator with the account's real quota and moto_server, all on loopback (installing
what is missing: `make cluster-deps` does the apt-get part). The pipeline generates 4 prompts x 2 images
through the scheduler; while a generation runs on a worker, every process of that worker gets SIGKILL and
the worker is restarted. The killed tasks are failed by the scheduler's heartbeat timeout and retried on a
worker, where they reconnect to their generation: each image billed once and stored once, no failed task.
About 2 minutes; every wait is bounded, and every process started is stopped, also on failure.
"""

from __future__ import annotations

import pytest

from benchmarks.cluster import cluster, smoke

pytestmark = pytest.mark.cluster


def test_content_pipeline_survives_a_celery_worker_kill() -> None:
    with cluster(start_timeout=300) as deployment:
        result = smoke(deployment, run_timeout=300)
    print(
        f"smoke: {result.seconds:.0f} s, killed {result.killed_worker}, {result.submissions} submissions, "
        f"{result.billed_images} images billed, {len(result.stored_keys)} stored, tasks {result.task_states}"
    )
    assert result.problems == []
