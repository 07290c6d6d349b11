"""
Real Airflow runs on the native task API: `airflow dags test` on SQLite (which runs triggers in-process)
against the emulator; deferral and resume, the sensor's three modes, retries that reconnect instead of
paying twice, and a task process killed by SIGKILL under a real executor.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_imggen.emulator import EmulatorServer
from tests import local_executor
from tests.conftest import TESTS_DIR, dag_run_rows, emulator_connection_env, run_dag, task_submissions
from tests.integration.operators.test_image_generation import XCOM_KEYS
from tests.local_executor import task_instances, xcoms
from tests.system.test_dag_runs import assert_key_nowhere, assert_no_signed_url, run_example_pipeline

if TYPE_CHECKING:
    from tests.s3_fixtures import S3Bucket

# The moto_server and s3 fixtures.

ASYNC_DAGS = TESTS_DIR / "dags" / "imggen_async_test_dags.py"
END_FROM_TRIGGER_DAGS = TESTS_DIR / "dags" / "imggen_end_from_trigger_dags.py"


def native_connection(emulator: EmulatorServer) -> dict[str, str]:
    return emulator_connection_env(emulator, api_style="dashscope", default_model="wan2.2-t2i-flash")


def remembered_tasks(airflow_env: dict[str, str], dag_id: str) -> dict[str, dict[str, Any]]:
    """What each Airflow task stored in the task state store: the native task it submitted."""
    rows = dag_run_rows(airflow_env, dag_id, "task_state_store", "task_id, key, value")
    return {task_id: json.loads(value) for task_id, key, value in rows if key == "imggen_task"}


def output(finished: Any) -> str:
    return finished.stdout[-4000:] + finished.stderr[-4000:]


def test_deferrable_and_polling_operators_in_a_dag_run(
    airflow_env: dict[str, str], emulator: EmulatorServer
) -> None:
    # The third submission (task "failed") ends FAILED: final, so no Airflow retry despite retries=2.
    emulator.set_faults(
        task_pending_ms=300, task_duration_ms=300, fail_next_tasks=["none", "none", "DataInspectionFailed"]
    )
    dag_id = "imggen_async_operator"
    finished = run_dag(airflow_env, dag_id, ASYNC_DAGS, **native_connection(emulator))

    states = task_instances(airflow_env, dag_id)
    assert states["deferred"] == ("success", 1), output(finished)
    assert states["polled"] == ("success", 1)
    assert states["failed"] == ("failed", 1), "FAILED is final: no retry"
    results = xcoms(airflow_env, dag_id)
    deferred, polled = results[("deferred", -1)], results[("polled", -1)]
    assert isinstance(deferred, dict) and isinstance(polled, dict)
    assert set(deferred) == set(polled) == XCOM_KEYS
    assert len(deferred["images"]) == len(polled["images"]) == 2
    assert "Deferring until task" in finished.stdout + finished.stderr
    assert "DataInspectionFailed" in finished.stdout + finished.stderr
    submissions = task_submissions(emulator)
    assert [entry["task_id"] for entry in submissions[:2]] == [
        deferred["generation_task_id"],
        polled["generation_task_id"],
    ]
    assert len(submissions) == 3
    assert_key_nowhere(airflow_env, dag_id, finished.stdout, finished.stderr)


def test_sensor_in_poke_reschedule_and_deferrable_modes(
    airflow_env: dict[str, str], emulator: EmulatorServer
) -> None:
    # Long enough PENDING that the reschedule sensor (run first) finds the task unfinished; image 1 fails.
    emulator.set_faults(task_pending_ms=6000, task_duration_ms=500, fail_next_task_images=[[1]])
    dag_id = "imggen_async_sensor"
    finished = run_dag(airflow_env, dag_id, ASYNC_DAGS, **native_connection(emulator))
    assert finished.returncode == 0, output(finished)

    states = task_instances(airflow_env, dag_id)
    assert all(state == "success" for state, _ in states.values()), states
    results = xcoms(airflow_env, dag_id)
    submitted = results[("submit", -1)]
    assert isinstance(submitted, dict) and submitted["task_status"] == "PENDING"
    for sensor in ("wait_poke", "wait_reschedule", "wait_deferred"):
        metadata = results[(sensor, -1)]
        assert isinstance(metadata, dict) and set(metadata) == XCOM_KEYS
        assert metadata["generation_task_id"] == submitted["generation_task_id"]
        assert [image["index"] for image in metadata["images"]] == [0, 2]
        assert [failed["index"] for failed in metadata["failed_images"]] == [1]
    # Given the submitting XCom, the sensors carry its seed; given a bare id (reschedule), they cannot.
    assert [image["seed"] for image in results[("wait_poke", -1)]["images"]] == [70, 72]  # type: ignore[index]
    assert results[("wait_reschedule", -1)]["seed"] is None  # type: ignore[index]
    assert results[("delivered", -1)] == [0, 2]
    assert _rescheduled(airflow_env, dag_id), "the reschedule-mode sensor freed its slot between pokes"
    assert len(task_submissions(emulator)) == 1, "sensors only read"
    assert_key_nowhere(airflow_env, dag_id, finished.stdout, finished.stderr)


def test_a_throttled_submission_waits_in_the_triggerer_and_resumes_in_execute(
    airflow_env: dict[str, str], emulator: EmulatorServer
) -> None:
    emulator.set_faults(fail_next=["throttle"], quota_retry_after_seconds=10, task_duration_ms=300)
    dag_id = "imggen_async_throttled"
    # The hook gives up on the first 429 (max_retries=0): the operator's wait takes over.
    connection = emulator_connection_env(
        emulator, api_style="dashscope", default_model="wan2.2-t2i-flash", max_retries=0
    )
    finished = run_dag(airflow_env, dag_id, ASYNC_DAGS, **connection)
    assert finished.returncode == 0, output(finished)

    assert task_instances(airflow_env, dag_id)["throttled"] == ("success", 1), "waited, not retried"
    logged = finished.stdout + finished.stderr
    assert "Submitting again in 10.0 s (as its Retry-After asks)" in logged
    assert "Waiting out the quota in the triggerer" in logged
    assert [(entry["status"], entry["billed"]) for entry in task_submissions(emulator)] == [
        (429, False),
        (200, True),
    ]
    metadata = xcoms(airflow_env, dag_id)[("throttled", -1)]
    assert isinstance(metadata, dict) and len(metadata["images"]) == 1
    assert emulator.billed_images() == 1


def _rescheduled(airflow_env: dict[str, str], dag_id: str) -> bool:
    """Whether the reschedule-mode sensor was rescheduled (task_reschedule rows are keyed by ti id)."""
    import sqlite3

    database = airflow_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///")
    with sqlite3.connect(database) as db:
        (count,) = db.execute(
            "SELECT COUNT(*) FROM task_reschedule"
            " JOIN task_instance ON task_instance.id = task_reschedule.ti_id"
            " WHERE task_instance.dag_id = ? AND task_instance.task_id = 'wait_reschedule'",
            (dag_id,),
        ).fetchone()
    return bool(count)


def test_retries_after_a_crash_reconnect_to_the_submitted_task(
    airflow_env: dict[str, str], emulator: EmulatorServer
) -> None:
    emulator.set_faults(task_pending_ms=1500, task_duration_ms=500)
    dag_id = "imggen_async_resume"
    finished = run_dag(airflow_env, dag_id, ASYNC_DAGS, **native_connection(emulator))
    assert finished.returncode == 0, output(finished)

    states = task_instances(airflow_env, dag_id)
    assert all(state == ("success", 2) for state in states.values()), f"each task crashed once: {states}"
    # The tasks are told apart by what they asked for: (model, n).
    by_request: dict[tuple[str, int], list[str]] = {}
    for entry in task_submissions(emulator):
        by_request.setdefault((entry["model"], entry["n"]), []).append(entry["task_id"])
    results = xcoms(airflow_env, dag_id)
    stored = remembered_tasks(airflow_env, dag_id)
    for airflow_task, n in (
        ("reconnect_polling", 1),
        ("reconnect_deferred", 2),
        ("succeeded_before_crash", 3),
        ("crash_after_resume", 4),
    ):
        metadata = results[(airflow_task, -1)]
        assert isinstance(metadata, dict)
        # Exactly one submission: try 2 took the task try 1 had paid for.
        assert by_request[("wan2.2-t2i-flash", n)] == [metadata["generation_task_id"]], airflow_task
        assert len(metadata["images"]) == n
        assert stored[airflow_task]["generation_task_id"] == metadata["generation_task_id"]
    # The expired task's results are gone: try 2 had to submit again.
    expired = results[("expired", -1)]
    assert isinstance(expired, dict)
    first, second = by_request[("qwen-image", 1)]
    assert expired["generation_task_id"] == second != first
    logged = finished.stdout + finished.stderr
    assert logged.count("submitted by an earlier try") >= 5
    assert "is unknown to the API" in logged
    assert_key_nowhere(airflow_env, dag_id, finished.stdout, finished.stderr)


def test_example_async_pipeline_submits_waits_deferred_and_lands_images_in_s3(
    airflow_env: dict[str, str], emulator: EmulatorServer, s3: S3Bucket
) -> None:
    emulator.set_faults(task_pending_ms=500, task_duration_ms=500)
    dag_id = "example_async_pipeline"
    subjects = ["a teapot on a windowsill", "a bicycle against a brick wall"]
    finished = run_example_pipeline(airflow_env, dag_id, s3, subjects, native_connection(emulator))
    assert finished.returncode == 0, output(finished)

    results = xcoms(airflow_env, dag_id)
    stored = results[("store_in_s3", -1)]
    assert isinstance(stored, list) and len(stored) == 2 * len(subjects)
    assert s3.object_keys() == sorted(entry["key"] for entry in stored)
    for map_index in range(len(subjects)):
        submitted, waited = results[("submit", map_index)], results[("wait", map_index)]
        assert isinstance(submitted, dict) and isinstance(waited, dict)
        assert submitted["generation_task_id"] == waited["generation_task_id"] and len(waited["images"]) == 2
        mine = [entry for entry in stored if entry["generation"] == map_index]
        assert sorted(entry["seed"] for entry in mine) == [image["seed"] for image in waited["images"]]
    assert "Deferring until task" in finished.stdout + finished.stderr
    assert len(task_submissions(emulator)) == len(subjects)
    assert emulator.billed_images() == len(stored)
    assert_key_nowhere(airflow_env, dag_id, finished.stdout, finished.stderr)
    # The sensor's XCom is all the transfer had: sealed URLs, nothing signed anywhere, every image landed.
    for entry in stored:
        assert hashlib.sha256(s3.read(entry["key"])).hexdigest() == entry["sha256"]
    waited_all = [results[("wait", map_index)] for map_index in range(len(subjects))]
    assert_no_signed_url(airflow_env, dag_id, waited_all, stored, finished)


@pytest.fixture(scope="module")
def api_server(airflow_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """`airflow api-server` for executor-run task processes; the environment pointing executors at it."""
    with local_executor.api_server(airflow_env) as env:
        yield env


def test_a_task_process_killed_after_submitting_reconnects_on_retry_under_an_executor(
    api_server: dict[str, str], emulator: EmulatorServer
) -> None:
    """
    The faithful crash: LocalExecutor runs the task in its own supervised process, which SIGKILLs itself
    after the submission was stored; the supervisor reports it, Airflow retries, and try 2 reconnects.
    """
    emulator.set_faults(task_pending_ms=1500, task_duration_ms=500)
    dag_id = "imggen_async_crash"
    printed = run_dag_under_local_executor(
        api_server, dag_id, native_connection(emulator), IMGGEN_TEST_CRASH="sigkill"
    )
    states = dag_run_rows(api_server, dag_id, "dag_run", "state")
    assert states == [("success",)], printed[-6000:]
    assert task_instances(api_server, dag_id)["killed_while_polling"] == ("success", 2), printed[-6000:]
    assert "exit_code=<Negsignal.SIGKILL: -9>" in printed
    (submission,) = task_submissions(emulator)
    metadata = xcoms(api_server, dag_id)[("killed_while_polling", -1)]
    assert isinstance(metadata, dict) and metadata["generation_task_id"] == submission["task_id"]
    assert len(metadata["images"]) == 2
    assert emulator.billed_images() == 2, "paid once"


def run_dag_under_local_executor(
    airflow_env: dict[str, str],
    dag_id: str,
    connection: dict[str, str],
    dag_file: Path = ASYNC_DAGS,
    **extra_env: str,
) -> str:
    """:func:`tests.local_executor.run_dag_under_local_executor`, of this module's DAG file by default."""
    return local_executor.run_dag_under_local_executor(airflow_env, dag_id, connection, dag_file, **extra_env)


def test_end_from_trigger_under_dags_test_resumes_on_the_worker_with_the_same_xcom(
    airflow_env: dict[str, str], emulator: EmulatorServer
) -> None:
    """
    `airflow dags test` (3.3) runs triggers with no task instance and cannot end a task from one: it would
    resume the task with a task-end event's bare "success". The trigger sees that and sends its ordinary
    event, so the task resumes on the worker, as without end_from_trigger.
    (tests/system/test_end_from_trigger.py shows the task ended in a real triggerer.)
    """
    emulator.set_faults(
        task_pending_ms=300, task_duration_ms=300, fail_next_tasks=["none", "none", "DataInspectionFailed"]
    )
    dag_id = "imggen_end_from_trigger"
    finished = run_dag(airflow_env, dag_id, END_FROM_TRIGGER_DAGS, **native_connection(emulator))

    states = task_instances(airflow_env, dag_id)
    assert states["ended_in_triggerer"] == ("success", 1), output(finished)
    assert states["resumed_on_worker"] == ("success", 1)
    assert states["failed"] == ("failed", 1), "FAILED is final: no retry"
    results = xcoms(airflow_env, dag_id)
    assert results[("compare", -1)] == {"same": True, "keys": sorted(XCOM_KEYS), "images": [2, 2]}
    logged = finished.stdout + finished.stderr
    assert "no task instance attached to this trigger (airflow dags test)" in logged
    assert "ending the Airflow task from the triggerer" not in logged
    assert logged.count("Resumed on the worker") == 3
    assert len(task_submissions(emulator)) == 3 and emulator.billed_images() == 4
