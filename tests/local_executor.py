"""
Real Airflow runs under LocalExecutor, for the tests and the benchmarks alike: ``airflow api-server`` (the
Execution API that executor-run task processes talk to), ``airflow dags test --use-executor``, and reading
a run back from the SQLite metadata database.

Importable outside pytest (benchmarks/bench_billing_safety.py ``--part crash``): no pytest, no fixtures,
nothing done at import.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

AIRFLOW_BIN = Path(sys.executable).with_name("airflow")
# How long `dags test` may take to stop LocalExecutor after the run finished (run_dag_under_local_executor).
_SHUTDOWN_GRACE = 30.0


class RunDidNotFinish(AssertionError):
    """``airflow dags test --use-executor`` did not finish the run in time."""


def dag_run_rows(airflow_env: dict[str, str], dag_id: str, table: str, columns: str) -> list[tuple]:
    """Rows of one metadata table for the latest run of a DAG (XComs, rendered fields...)."""
    database = airflow_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///")
    with sqlite3.connect(database) as db:
        (run_id,) = db.execute(
            "SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)
        ).fetchone()
        return db.execute(
            f"SELECT {columns} FROM {table} WHERE dag_id = ? AND run_id = ?", (dag_id, run_id)
        ).fetchall()


def xcoms(airflow_env: dict[str, str], dag_id: str) -> dict[tuple[str, int], object]:
    """(task_id, map_index) -> return value, of the latest run."""
    rows = [
        (task_id, map_index, value)
        for task_id, map_index, key, value in dag_run_rows(
            airflow_env, dag_id, "xcom", "task_id, map_index, key, value"
        )
        if key == "return_value"
    ]
    # SQLite's JSON column hands back plain numbers as numbers.
    return {
        (task_id, map_index): json.loads(value) if isinstance(value, str | bytes) else value
        for task_id, map_index, value in rows
    }


def task_instances(airflow_env: dict[str, str], dag_id: str) -> dict[str, tuple[str, int]]:
    """task_id -> (state, try_number) of the latest run."""
    rows = dag_run_rows(airflow_env, dag_id, "task_instance", "task_id, state, try_number")
    return {task_id: (state, try_number) for task_id, state, try_number in rows}


@contextmanager
def api_server(airflow_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """
    `airflow api-server` on a free loopback port, serving the Execution API that task processes run by an
    executor talk to; yields the environment pointing executors at it.
    """
    import secrets
    import signal
    import socket
    import subprocess
    import time

    import requests

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **airflow_env,
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
    }
    process = subprocess.Popen(
        [str(AIRFLOW_BIN), "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"airflow api-server exited with {process.returncode}")
            try:
                if requests.get(f"http://127.0.0.1:{port}/api/v2/version", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("airflow api-server did not answer within 180 s")
            time.sleep(0.5)
        yield env
    finally:
        # Its uvicorn workers share the process group: signal them all.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def run_dag_under_local_executor(
    airflow_env: dict[str, str],
    dag_id: str,
    connection: dict[str, str],
    dag_file: Path,
    timeout: float | None = None,
    **extra_env: str,
) -> str:
    """
    ``airflow dags test --use-executor`` with LocalExecutor (``airflow_env`` from :func:`api_server`); what
    it printed.

    Once the run has finished, ``dags test`` stops LocalExecutor, which joins its worker processes with no
    bound: in about one run in six here (Airflow 3.3.2) that join never returns although the run was marked
    successful ("DagRun Finished", then "Shutting down LocalExecutor" as the last line). That hang is
    Airflow's test harness, not the run under test, so it is bounded here: after the run has finished the
    process gets ``_SHUTDOWN_GRACE`` seconds, then its process group is killed, and the caller checks the
    run's outcome in the metadata database. A run not finished after ``timeout`` seconds (default
    ``IMGGEN_CRASH_TEST_TIMEOUT``, else 300) raises :class:`RunDidNotFinish`.
    """
    import signal
    import subprocess
    import tempfile
    import time
    import warnings

    command = [str(AIRFLOW_BIN), "dags", "test", dag_id, "--dagfile-path", str(dag_file), "--use-executor"]
    if timeout is None:
        timeout = float(os.environ.get("IMGGEN_CRASH_TEST_TIMEOUT", "300"))  # about 35 s for 8 cases here
    with tempfile.TemporaryDirectory() as directory:
        # Its own file (not a shared descriptor): reading it must not move the writer's offset.
        log_path = Path(directory, "dags-test.log")
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                command,
                env={**airflow_env, **connection, **extra_env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started = time.monotonic()
        finished_at: float | None = None
        try:
            while process.poll() is None:
                time.sleep(0.5)
                if finished_at is None and "DagRun Finished" in log_path.read_text(errors="replace"):
                    finished_at = time.monotonic()
                if finished_at is not None and time.monotonic() - finished_at > _SHUTDOWN_GRACE:
                    # The executor's shutdown hang described above: say so in the test report.
                    warnings.warn(f"dags test of {dag_id} killed in LocalExecutor.end()", stacklevel=2)
                    break
                if time.monotonic() - started > timeout:
                    raise RunDidNotFinish(
                        f"`airflow dags test --use-executor` did not finish the run within {timeout:.0f} s; "
                        f"task instances {task_instances(airflow_env, dag_id)}; the end of its output:\n"
                        f"{log_path.read_text(errors='replace')[-6000:]}"
                    )
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
        printed = log_path.read_text(errors="replace")
    if finished_at is None and process.returncode != 0:
        raise RunDidNotFinish(printed[-6000:])
    return printed
