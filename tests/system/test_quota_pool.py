"""
The README's pool recipe under a real scheduler: a mapped generation larger than the account's quota.

`airflow dags test` cannot show it: it runs the tasks one at a time and ignores pools (only the
scheduler enforces them). So ``airflow standalone`` (scheduler, dag-processor, triggerer, api-server;
LocalExecutor, SQLite) runs tests/quota_dags/imggen_quota_dags.py against the emulator with the real
quota (2 submissions per second, 2 concurrent tasks), deferrable tasks of about 10 s (shorter ones meet
an Airflow race: a trigger firing within seconds of the deferral gets the task failed by the executor's
stale event of the defer exit, apache/airflow#67287; the benchmarks keep clear of it the same way):

- with the pool (2 slots, deferred tasks counted) every task succeeds, never more than 2 hold a slot,
  each prompt is billed exactly once, and the service throttles (almost) nothing;
- without it, 8 tasks submit at once: the service throttles most of them, the hook gives up quickly
  (max_retries=1), the operators wait (in the worker, or deferred to a DateTimeTrigger from 10 s) and
  submit again, and every task still succeeds, each prompt billed once.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_imggen.emulator import EmulatorServer
from benchmarks.bench_deferrable import Airflow, airflow_standalone
from benchmarks.bench_deferrable import task_instances as api_task_instances
from tests.conftest import AIRFLOW_BIN, API_KEY, TESTS_DIR
from tests.s3_fixtures import free_port

QUOTA_DAGS = TESTS_DIR / "quota_dags"
PROMPTS = 8
QUOTA = {"quotas": True, "quota_submissions_per_second": 2, "quota_concurrent_tasks": 2}
NATIVE_SUBMIT_PATH = "/api/v1/services/aigc/text2image/image-synthesis"


def standalone_env(home: Path, emulator: EmulatorServer, dags_folder: Path = QUOTA_DAGS) -> dict[str, str]:
    connection = {
        "conn_type": "imggen",
        "host": emulator.base_url,
        "password": API_KEY,
        # The hook gives up on a throttled submission after one retry: the operator's waits take over.
        "extra": {"api_style": "dashscope", "default_model": "wan2.2-t2i-flash", "max_retries": 1},
    }
    return {
        **{key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "IMGGEN_"))},
        # standalone starts its components as plain `airflow` from PATH: this venv's.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(PROMPTS),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "PYTHONUNBUFFERED": "1",
        "AIRFLOW_CONN_IMGGEN_DEFAULT": json.dumps(connection),
    }


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory, emulator_server: EmulatorServer) -> Iterator[Airflow]:
    home = tmp_path_factory.mktemp("airflow-quota")
    env = standalone_env(home, emulator_server)
    # The recipe, as a deployment would run it: the pool exists before the DAG runs.
    for command in (
        ["db", "migrate"],
        ["pools", "set", "imggen_quota", "2", "DashScope: 2 concurrent tasks", "--include-deferred"],
    ):
        subprocess.run([str(AIRFLOW_BIN), *command], env=env, check=True, capture_output=True, timeout=300)
    with airflow_standalone(env, home) as running:
        running.wait_ready([], timeout=300)
        deadline = time.monotonic() + 180
        while True:
            try:
                known = {dag["dag_id"] for dag in running.api("dags?tags=imggen-quota")["dags"]}
            except (OSError, RuntimeError):
                known = set()
            if {"imggen_quota_pool", "imggen_quota_no_pool"} <= known:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"DAGs not parsed; see {home / 'standalone.log'}")
            time.sleep(1)
        yield running


def run_dag(airflow: Airflow, dag_id: str) -> dict[str, Any]:
    """Trigger a run and sample it until it ends: its state, wall time and the most slots held at once."""
    run_id = f"quota-{int(time.time())}"
    airflow.api(f"dags/{dag_id}/dagRuns", {"dag_run_id": run_id, "logical_date": None}, method="POST")
    most_in_slots = 0
    deadline = time.monotonic() + 600
    while True:
        airflow.check_alive()
        states = [instance["state"] for instance in api_task_instances(airflow, dag_id, run_id)]
        most_in_slots = max(most_in_slots, sum(state in ("running", "deferred") for state in states))
        run = airflow.api(f"dags/{dag_id}/dagRuns/{run_id}")
        if run["state"] in ("success", "failed"):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{dag_id} did not finish within 600 s; see {airflow.home / 'standalone.log'}")
        time.sleep(0.5)
    instances = api_task_instances(airflow, dag_id, run_id)
    started, ended = run.get("start_date") or run["queued_at"], run["end_date"]
    return {
        "state": run["state"],
        "task_states": sorted(instance["state"] for instance in instances),
        "most_in_slots": most_in_slots,
        "wall_seconds": (datetime.fromisoformat(ended) - datetime.fromisoformat(started)).total_seconds(),
    }


def logged(airflow: Airflow, dag_id: str, line: str) -> int:
    """How often the DAG's task logs say ``line``."""
    logs = airflow.home / "logs" / f"dag_id={dag_id}"
    return sum(path.read_text(errors="replace").count(line) for path in logs.rglob("*") if path.is_file())


def billing(emulator: EmulatorServer) -> dict[str, Any]:
    """What the emulator saw: submissions, 429s, billed submissions and billed images."""
    submissions = [
        entry
        for entry in emulator.requests_log()
        if entry["method"] == "POST" and entry["path"] == NATIVE_SUBMIT_PATH
    ]
    return {
        "submissions": len(submissions),
        "throttled": sum(entry["status"] == 429 for entry in submissions),
        "billed_submissions": sum(bool(entry["billed"]) for entry in submissions),
        "billed_images": emulator.billed_images(),
    }


@pytest.mark.parametrize(
    ("dag_id", "with_pool"), [("imggen_quota_pool", True), ("imggen_quota_no_pool", False)], ids=str
)
def test_a_mapped_dag_larger_than_the_quota_finishes_without_failures_each_prompt_billed_once(
    airflow: Airflow, emulator: EmulatorServer, dag_id: str, with_pool: bool
) -> None:
    emulator.set_faults(**QUOTA, task_pending_ms=500, task_duration_ms=9500)

    figures = run_dag(airflow, dag_id)
    figures["quota_waits"] = logged(airflow, dag_id, "The service throttled submission")
    figures["quota_deferrals"] = logged(airflow, dag_id, "Waiting out the quota in the triggerer")
    paid = billing(emulator)
    print(f"\n{dag_id}: {PROMPTS} prompts, {json.dumps({**figures, **paid})}")

    assert figures["state"] == "success", figures
    assert figures["task_states"] == ["success"] * PROMPTS
    # 8 tasks succeeded, each with its own billed task, and 8 were billed: each prompt exactly once.
    assert paid["billed_submissions"] == PROMPTS and paid["billed_images"] == PROMPTS, paid
    assert paid["submissions"] == PROMPTS + paid["throttled"], "every other submission was a 429"
    if with_pool:
        assert figures["most_in_slots"] <= 2, "the pool keeps running + deferred tasks within the quota"
        assert paid["throttled"] <= 2, f"few 429s with the pool: {paid}"
    else:
        assert figures["most_in_slots"] > 2
        assert paid["throttled"] > 0, "without the pool, the quota is met"
        assert figures["quota_waits"] > 0, "the hook gave up: the operators waited and submitted again"
