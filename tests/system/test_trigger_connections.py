"""
Triggers read their connection wherever the deployment keeps it: the metadata DB (``airflow connections
add``), an ``AIRFLOW_CONN_*`` variable, a secrets backend (Airflow's ``LocalFilesystemBackend``), under
``airflow dags test`` (triggers run in-process) and under a real triggerer (``airflow standalone``).

Before the fix, ``airflow dags test`` of a deferrable native generation failed after the submission was
billed when its connection came from the metadata DB: Airflow 3.3's in-process trigger runner gives
triggers a supervisor channel without ``asend``, so the async lookup missed the metadata DB
(airflow_provider_imggen/connections.py). And when a triggerer truly cannot read the connection, the
paid generation is not lost: the trigger says so and the worker, which read it to submit, waits itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_provider_imggen.connections import aget_connection
from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.exceptions import ImageGenerationConnectionUnreadableError
from airflow_provider_imggen.triggers.image_generation import ImageGenerationTaskTrigger
from benchmarks.bench_deferrable import Airflow, airflow_standalone
from benchmarks.bench_deferrable import task_instances as api_task_instances
from tests.conftest import (
    AIRFLOW_BIN,
    API_KEY,
    TESTS_DIR,
    cli_json,
    run_dag,
    task_queries,
    task_submissions,
)
from tests.integration.operators.test_deferrable import make_sensor, run_trigger, submit
from tests.integration.operators.test_image_generation import XCOM_KEYS, make_context, make_operator
from tests.system.test_dag_runs import assert_key_nowhere, xcoms
from tests.system.test_quota_pool import standalone_env

DAG_FILE = TESTS_DIR / "dags" / "imggen_connection_sources_dags.py"
DAG_ID = "imggen_connection_sources"
SOURCES = ("metadata_db", "environment", "secrets_backend")
# Every task whose trigger reads a connection; the sensor's submitting task has none.
DEFERRED_TASKS = (*(f"deferred_{source}" for source in SOURCES), "wait_metadata_db")


def connection(emulator: EmulatorServer) -> dict[str, Any]:
    return {
        "conn_type": "imggen",
        "host": emulator.base_url,
        "password": API_KEY,
        "extra": {"api_style": "dashscope", "default_model": "wan2.2-t2i-flash", "max_retries": 3},
    }


def connection_sources(emulator: EmulatorServer, env: dict[str, str], home: Path) -> dict[str, str]:
    """
    Put one connection in each place: the metadata DB of ``env`` (with the CLI, as the README says), a
    connections file for LocalFilesystemBackend; the environment variables to add (the third source and
    the backend's configuration).
    """
    conn = connection(emulator)
    subprocess.run(
        [str(AIRFLOW_BIN), "connections", "delete", "imggen_metadata_db"], env=env, capture_output=True
    )
    subprocess.run(
        [
            str(AIRFLOW_BIN), "connections", "add", "imggen_metadata_db",
            "--conn-type", "imggen",
            "--conn-host", conn["host"],
            "--conn-password", conn["password"],
            "--conn-extra", json.dumps(conn["extra"]),
        ],
        env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    saved = subprocess.run(
        [str(AIRFLOW_BIN), "connections", "get", "imggen_metadata_db", "-o", "json"],
        env=env, check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    (saved_conn,) = cli_json(saved.stdout)  # type: ignore[misc]
    assert saved_conn["conn_type"] == "imggen", "saved as its own type, not generic"
    connections_file = home / "connections.json"
    backend_conn = {key: value for key, value in conn.items() if key != "extra"}
    connections_file.write_text(
        json.dumps({"imggen_secrets_backend": {**backend_conn, "extra_dejson": conn["extra"]}})
    )
    return {
        "AIRFLOW_CONN_IMGGEN_ENVIRONMENT": json.dumps(conn),
        "AIRFLOW__SECRETS__BACKEND": "airflow.secrets.local_filesystem.LocalFilesystemBackend",
        "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps({"connections_file_path": str(connections_file)}),
    }


def assert_each_trigger_read_its_connection(log: str, emulator: EmulatorServer) -> None:
    """Each trigger polled and reported success itself: the worker's fallback wait was never needed."""
    assert "could not read connection" not in log, log[-3000:]
    assert log.count("the trigger reported task") == len(SOURCES), log[-3000:]
    assert task_queries(emulator), "the triggers polled the task status"
    assert len(task_submissions(emulator)) == len(SOURCES) + 1, "each generation submitted once"


# -- the lookup, and what happens when a trigger truly cannot read the connection ----------------------


@pytest.mark.matrix
def test_a_connection_defined_nowhere_is_named_in_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_IMGGEN_NOWHERE", raising=False)
    with pytest.raises(ImageGenerationConnectionUnreadableError, match="imggen_nowhere") as raised:
        asyncio.run(aget_connection("imggen_nowhere"))
    assert raised.value.code == "connection_unreadable"


@pytest.mark.matrix
def test_a_trigger_that_cannot_read_its_connection_sends_an_error_event_and_polls_nothing(
    dashscope_conn: EmulatorServer,
) -> None:
    trigger = ImageGenerationTaskTrigger(generation_task_id="task-1", imggen_conn_id="imggen_nowhere")

    async def first_event() -> dict[str, Any]:
        return dict((await anext(trigger.run())).payload)

    event = asyncio.run(first_event())
    assert event["status"] == "error" and event["code"] == "connection_unreadable"
    assert "imggen_nowhere" in event["message"]
    assert not task_queries(dashscope_conn)


@pytest.mark.matrix
def test_the_operator_waits_in_the_worker_when_the_triggerer_cannot_read_the_connection(
    dashscope_conn: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    operator = make_operator(n=2, size="512x512", deferrable=True, poll_interval=0.05, max_poll_interval=0.1)
    context = make_context(operator)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    # The triggerer's environment lacks the variable the worker had.
    worker_connection = os.environ["AIRFLOW_CONN_IMGGEN_DEFAULT"]
    monkeypatch.delenv("AIRFLOW_CONN_IMGGEN_DEFAULT")
    event = run_trigger(deferred.value)
    assert event["code"] == "connection_unreadable"
    monkeypatch.setenv("AIRFLOW_CONN_IMGGEN_DEFAULT", worker_connection)

    metadata = operator.execute_complete(context, event=event, **(deferred.value.kwargs or {}))
    assert set(metadata) == XCOM_KEYS and metadata["task_status"] == "SUCCEEDED"
    assert len(metadata["images"]) == 2
    assert len(task_submissions(dashscope_conn)) == 1, "waited for the paid task, never submitted again"


@pytest.mark.matrix
def test_a_connection_the_triggers_code_cannot_read_is_found_before_billing_and_the_worker_waits(
    dashscope_conn: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What Airflow 3.3.0 did to every trigger (no Connection.aextra_dejson), or 3.3.2's in-process runner
    # to metadata-DB connections: the trigger's lookup fails where the worker's works.
    submissions_when_checked: list[int] = []

    async def broken_lookup(conn_id: str) -> Any:
        submissions_when_checked.append(len(task_submissions(dashscope_conn)))
        raise AttributeError("'Connection' object has no attribute 'aextra_dejson'")

    monkeypatch.setattr("airflow_provider_imggen.connections.aget_connection", broken_lookup)
    operator = make_operator(n=1, size="512x512", deferrable=True, poll_interval=0.05, max_poll_interval=0.1)
    metadata = operator.execute(make_context(operator))  # no TaskDeferred: it waited here

    assert submissions_when_checked == [0], "checked before the billable submission"
    assert metadata["task_status"] == "SUCCEEDED" and len(metadata["images"]) == 1
    assert len(task_submissions(dashscope_conn)) == 1


@pytest.mark.matrix
def test_the_sensor_waits_in_the_worker_when_the_triggerer_cannot_read_the_connection(
    dashscope_conn: EmulatorServer,
) -> None:
    sensor = make_sensor(generation_task_id=submit(n=1), deferrable=True, timeout=60)
    with pytest.raises(TaskDeferred):
        sensor.execute(make_context(sensor))
    event = {
        "status": "error",
        "generation_task_id": sensor.generation_task_id,
        "task_status": None,
        "code": "connection_unreadable",
        "message": "Cannot read connection 'imggen_default' here",
        "succeeded": 0,
        "failed": 0,
    }
    metadata = sensor.execute_complete(make_context(sensor), event=event)
    assert metadata["task_status"] == "SUCCEEDED" and len(metadata["images"]) == 1


# -- under `airflow dags test` (triggers in-process) ------------------------------------------------------


@pytest.mark.matrix
def test_dags_test_triggers_read_connections_from_the_metadata_db_environment_and_a_secrets_backend(
    airflow_env: dict[str, str], emulator: EmulatorServer, tmp_path: Path
) -> None:
    emulator.set_faults(task_pending_ms=300, task_duration_ms=300)
    extra_env = connection_sources(emulator, airflow_env, tmp_path)
    finished = run_dag(airflow_env, DAG_ID, DAG_FILE, **extra_env)
    log = finished.stdout + finished.stderr
    assert finished.returncode == 0, log[-4000:]
    results = xcoms(airflow_env, DAG_ID)
    for task_id in DEFERRED_TASKS:
        record = results[(task_id, -1)]
        assert isinstance(record, dict) and record["task_status"] == "SUCCEEDED", task_id
    assert_each_trigger_read_its_connection(log, emulator)
    assert_key_nowhere(airflow_env, DAG_ID, finished.stdout, finished.stderr)


# -- under a real triggerer -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def standalone(
    tmp_path_factory: pytest.TempPathFactory, emulator_server: EmulatorServer
) -> Iterator[Airflow]:
    home = tmp_path_factory.mktemp("airflow-connection-sources")
    dags_folder = home / "dags"
    dags_folder.mkdir()
    shutil.copy(DAG_FILE, dags_folder / DAG_FILE.name)
    env = standalone_env(home, emulator_server, dags_folder)
    subprocess.run([str(AIRFLOW_BIN), "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    env.update(connection_sources(emulator_server, env, home))
    with airflow_standalone(env, home) as running:
        running.wait_ready([], timeout=300)
        deadline = time.monotonic() + 180
        while not _parsed(running):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{DAG_ID} not parsed; see {home / 'standalone.log'}")
            time.sleep(1)
        yield running


def _parsed(airflow: Airflow) -> bool:
    try:
        dags = airflow.api("dags?tags=imggen-connection-sources")["dags"]
    except (OSError, RuntimeError):
        return False
    return any(dag["dag_id"] == DAG_ID for dag in dags)


def test_a_real_triggerer_reads_connections_from_the_metadata_db_environment_and_a_secrets_backend(
    standalone: Airflow, emulator: EmulatorServer
) -> None:
    # Long enough that each trigger polls a few times (and clear of apache/airflow#67287's race).
    emulator.set_faults(task_pending_ms=500, task_duration_ms=7500)
    run_id = f"connection-sources-{int(time.time())}"
    standalone.api(f"dags/{DAG_ID}/dagRuns", {"dag_run_id": run_id, "logical_date": None}, method="POST")
    deadline = time.monotonic() + 300
    while standalone.api(f"dags/{DAG_ID}/dagRuns/{run_id}")["state"] not in ("success", "failed"):
        standalone.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{DAG_ID} did not finish; see {standalone.home / 'standalone.log'}")
        time.sleep(0.5)
    states = {ti["task_id"]: ti["state"] for ti in api_task_instances(standalone, DAG_ID, run_id)}
    assert set(states.values()) == {"success"}, f"{states}; see {standalone.home / 'standalone.log'}"
    logs = "\n".join(
        path.read_text(errors="replace")
        for path in (standalone.home / "logs" / f"dag_id={DAG_ID}").rglob("*")
        if path.is_file() and run_id in str(path)
    )
    assert_each_trigger_read_its_connection(logs, emulator)
