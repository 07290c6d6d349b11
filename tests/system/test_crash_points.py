"""
Crash points in real task processes under LocalExecutor (SIGKILL included), each followed by Airflow's
retry: nothing is billed twice, nothing billed goes unreported, no task adopts another's generation.

The DAG (tests/dags/imggen_crash_points_dags.py) maps one task per case; benchmarks/bench_billing_safety.py
``--part crash`` runs every point x endpoint x way of dying with the same DAG and the same judge
(tests/crash_cases.py).
"""

from __future__ import annotations

from pathlib import Path

from airflow_provider_imggen.emulator import EmulatorServer
from tests.conftest import API_KEY
from tests.crash_cases import CRASH_DAGS, DAG_ID, crash_connections, judge_cases
from tests.system.test_async_dag_runs import api_server, run_dag_under_local_executor  # noqa: F401


def test_every_crash_point_is_retried_without_paying_twice(
    api_server: dict[str, str],  # noqa: F811
    emulator: EmulatorServer,
    tmp_path: Path,
) -> None:
    from tests.dags.imggen_crash_points_dags import DEFAULT_CASES

    # Answers held back long enough for the after_send alarm (0.5 s) to land while the request is in flight.
    emulator.set_faults(hold_ms=1500, task_pending_ms=300, task_duration_ms=300)
    printed = run_dag_under_local_executor(
        api_server,
        DAG_ID,
        crash_connections(emulator, API_KEY),
        dag_file=CRASH_DAGS,
        IMGGEN_CRASH_OUTPUT=str(tmp_path / "images"),
    )
    reports = judge_cases(api_server, emulator, DEFAULT_CASES)
    table = "\n".join(f"{report}" for report in reports) + "\n" + printed[-3000:]
    assert [r.outcome for r in reports] == [r.expected for r in reports], table
    assert not any(r.billed_twice for r in reports), table
    assert sum(r.unaccounted_images for r in reports) == 0, table
    assert not any(r.adopted_wrong_task for r in reports), table
    # Every case that sent anything paid n=2 exactly once.
    assert all(r.billed_images in (0, 2) for r in reports), table
