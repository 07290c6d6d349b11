"""
A generation ended in the triggerer (``end_from_trigger=True``) under a real scheduler and triggerer.

`airflow dags test` cannot show it: it runs triggers in-process with no task instance and resumes every
deferred task on the worker (see test_async_dag_runs.py). So ``airflow standalone`` (scheduler,
dag-processor, triggerer, api-server; LocalExecutor, SQLite) runs tests/dags/imggen_end_from_trigger_dags.py
against the emulator: one generation ended in the triggerer, the same request resumed on a worker, and a
FAILED generation with end_from_trigger and retries left. Generations take about 10 s: a trigger firing
within seconds of the deferral meets an Airflow race (apache/airflow#67287; see test_quota_pool.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.sealed_urls import unseal
from airflow_provider_imggen.utils import mask_url
from benchmarks.bench_deferrable import Airflow, airflow_standalone, worker_workloads
from benchmarks.bench_deferrable import task_instances as api_task_instances
from tests.conftest import AIRFLOW_BIN, TESTS_DIR, task_submissions
from tests.integration.operators.test_image_generation import IMAGE_KEYS, XCOM_KEYS
from tests.system.test_dag_runs import assert_key_nowhere, xcoms
from tests.system.test_quota_pool import standalone_env

DAG_FILE = TESTS_DIR / "dags" / "imggen_end_from_trigger_dags.py"
DAG_ID = "imggen_end_from_trigger"


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory, emulator_server: EmulatorServer) -> Iterator[Airflow]:
    home = tmp_path_factory.mktemp("airflow-end-from-trigger")
    dags_folder = home / "dags"
    dags_folder.mkdir()
    shutil.copy(DAG_FILE, dags_folder / DAG_FILE.name)
    # The tests' Fernet key: the test opens the sealed result URLs the triggerer put in XCom.
    env = {
        **standalone_env(home, emulator_server, dags_folder),
        "AIRFLOW__CORE__FERNET_KEY": os.environ["AIRFLOW__CORE__FERNET_KEY"],
    }
    subprocess.run([str(AIRFLOW_BIN), "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    with airflow_standalone(env, home) as running:
        running.wait_ready([], timeout=300)
        deadline = time.monotonic() + 180
        while DAG_ID not in _parsed(running):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{DAG_ID} not parsed; see {home / 'standalone.log'}")
            time.sleep(1)
        yield running


def _parsed(airflow: Airflow) -> set[str]:
    try:
        return {dag["dag_id"] for dag in airflow.api("dags?tags=imggen-end-from-trigger")["dags"]}
    except (OSError, RuntimeError):
        return set()


def run_once(airflow: Airflow) -> list[dict[str, Any]]:
    """Trigger a run of the DAG, wait for it to end; its task instances."""
    run_id = f"end-from-trigger-{int(time.time())}"
    airflow.api(f"dags/{DAG_ID}/dagRuns", {"dag_run_id": run_id, "logical_date": None}, method="POST")
    deadline = time.monotonic() + 600
    while airflow.api(f"dags/{DAG_ID}/dagRuns/{run_id}")["state"] not in ("success", "failed"):
        airflow.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{DAG_ID} did not finish within 600 s; see {airflow.home / 'standalone.log'}")
        time.sleep(0.5)
    return api_task_instances(airflow, DAG_ID, run_id)


def task_log(airflow: Airflow, task_id: str) -> str:
    """Every log file of a task: the worker's tries and the triggerer's part."""
    logs = airflow.home / "logs" / f"dag_id={DAG_ID}"
    return "\n".join(
        path.read_text(errors="replace")
        for path in logs.rglob("*")
        if path.is_file() and f"task_id={task_id}" in str(path)
    )


def test_a_generation_ends_in_the_triggerer_with_the_workers_xcom_after_one_worker_run(
    airflow: Airflow, emulator: EmulatorServer
) -> None:
    emulator.set_faults(
        task_pending_ms=500, task_duration_ms=9500, fail_next_tasks=["none", "none", "DataInspectionFailed"]
    )
    instances = {instance["task_id"]: instance for instance in run_once(airflow)}
    states = {task_id: (ti["state"], ti["try_number"]) for task_id, ti in instances.items()}
    runs: dict[str, list[str]] = {task_id: [] for task_id in instances}
    by_ti_id = {ti["id"]: task_id for task_id, ti in instances.items()}
    for workload in worker_workloads(
        airflow.home / "standalone.log", set(by_ti_id), last_states=("success", "deferred", "failed")
    ):
        runs[by_ti_id[workload.ti_id]].append(workload.final_state)
    print(f"\ntask states {states}; worker runs {runs}")

    assert states == {
        "ended_in_triggerer": ("success", 1),
        "resumed_on_worker": ("success", 1),
        "compare": ("success", 1),
        "failed": ("failed", 1),  # FAILED is final: no retry, though retries=2 and end_from_trigger
    }, f"see {airflow.home / 'standalone.log'}"
    # One worker run (submit, defer) against two (submit, then resume); a failure resumes to raise.
    assert runs["ended_in_triggerer"] == ["deferred"]
    assert sorted(runs["resumed_on_worker"]) == ["deferred", "success"]
    assert sorted(runs["failed"]) == ["deferred", "failed"]
    ended_log, resumed_log = task_log(airflow, "ended_in_triggerer"), task_log(airflow, "resumed_on_worker")
    assert "ending the Airflow task from the triggerer" in ended_log
    assert "Resumed on the worker" not in ended_log, "execute_complete never ran"
    assert "Resumed on the worker" in resumed_log
    assert "ImageGenerationTaskFailedError" in task_log(airflow, "failed")

    env = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow.home}/airflow.db"}
    results = xcoms(env, DAG_ID)
    ended = results[("ended_in_triggerer", -1)]
    assert isinstance(ended, dict) and set(ended) == XCOM_KEYS
    assert ended["task_status"] == "SUCCEEDED" and [image["seed"] for image in ended["images"]] == [31, 32]
    for image in ended["images"]:
        assert set(image) == IMAGE_KEYS and image["url"].endswith("Signature=***")
        assert mask_url(unseal(image["url_sealed"], label="image")) == image["url"]
    # A worker read both XComs: equal but for each generation's own ids, times and URLs.
    assert results[("compare", -1)] == {"same": True, "keys": sorted(XCOM_KEYS), "images": [2, 2]}

    submissions = task_submissions(emulator)
    assert len(submissions) == 3 and emulator.billed_images() == 4, "each generation submitted once"
    assert ended["generation_task_id"] in {entry["task_id"] for entry in submissions}
    assert_key_nowhere({**env, "AIRFLOW_HOME": str(airflow.home)}, DAG_ID)
