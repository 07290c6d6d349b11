"""
The batch mode (ImageGenerationBatchOperator) under a real scheduler and triggerer.

`airflow dags test` cannot show it: it runs triggers in-process with no task instance, so a trigger never
ends a task itself. So ``airflow standalone`` (scheduler, dag-processor, triggerer, api-server;
LocalExecutor, SQLite) runs tests/dags/imggen_batch_dags.py against the emulator with its quotas on
(2 submissions per second, 2 tasks at once for wan2.2-t2i-flash), a billing ledger in PostgreSQL
(tests/integration/ledger/pg_server.py) and S3 on moto_server:

- six prompts: one worker run validates them and defers once; the triggerer sends each request once under
  its ledger claim and ends the task with the XCom list; the transfer stores the six images in S3;
- six prompts of which the emulator refuses two for their content (one at submission, one as a FAILED
  task): the task fails on the worker with the four others in its XCom and the two in ``problems``, and
  is not retried although it has retries left: both refusals are final, a retry could only report them
  again (and its trigger, firing a second after the deferral, would meet the Airflow race of
  apache/airflow#67287; see test_quota_pool.py).

A try runs about 10 s in the triggerer (three waves of two 3 s tasks, and the probe of the over-quota
behaviour), clear of that race.

The first XCom a triggerer process pushes (here the delivered batch's list) waits for its supervisor to
build the in-process Execution API: 7 to 28 s between "Batch done" and "Trigger fired event" on 2 busy
cores, during which that triggerer's supervisor loop does nothing else. The test prints the timeline.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.sealed_urls import unseal
from airflow_provider_imggen.utils import mask_url, url_secrets
from benchmarks.bench_deferrable import Airflow, airflow_standalone, worker_workloads
from benchmarks.bench_deferrable import task_instances as api_task_instances
from tests.conftest import TESTS_DIR, dag_run_rows, task_submissions
from tests.dags.imggen_batch_dags import PROMPTS
from tests.integration.ledger.conftest import PG_CONN_ID, postgres_server  # noqa: F401 - fixture
from tests.integration.ledger.pg_server import PostgresServer
from tests.integration.operators.test_image_generation import IMAGE_KEYS, XCOM_KEYS
from tests.s3_fixtures import MotoServer, S3Bucket, aws_connection
from tests.system.test_dag_runs import assert_key_nowhere, assert_nowhere
from tests.system.test_quota_pool import standalone_env

DAG_FILE = TESTS_DIR / "dags" / "imggen_batch_dags.py"
DELIVERED, REFUSED = "imggen_batch", "imggen_batch_refused"
# Every batch run: the emulator's quotas on, tasks of 3 s (PENDING for none of it).
TIMINGS = {"quotas": True, "task_pending_ms": 0, "task_duration_ms": 3000}


class Ledger:
    """The batch's ledger: a table of the session's PostgreSQL, read apart from the code under test."""

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self.table = f"batch_{uuid.uuid4().hex[:10]}"

    @property
    def setting(self) -> str:
        return f"postgres://{PG_CONN_ID}/{self.table}"

    def slots(self, run_id: str) -> list[dict[str, Any]]:
        """The send slots of a run's batch (entries with a request index), in request order."""
        with self.server.connect() as conn:  # type: ignore[attr-defined]
            rows = conn.execute(f"SELECT entry FROM {self.table}").fetchall()
        entries = [entry if isinstance(entry, dict) else json.loads(entry) for (entry,) in rows]
        found = [e for e in entries if f"/{run_id}/generate/" in e["owner"] and "index" in e["request"]]
        return sorted(found, key=lambda entry: entry["request"]["index"])


@pytest.fixture(scope="module")
def ledger(request: pytest.FixtureRequest) -> Ledger:
    return Ledger(request.getfixturevalue("postgres_server"))  # skips without PostgreSQL's initdb


@pytest.fixture(scope="module")
def airflow(
    tmp_path_factory: pytest.TempPathFactory,
    emulator_server: EmulatorServer,
    moto_server: MotoServer,
    ledger: Ledger,
) -> Iterator[Airflow]:
    home = tmp_path_factory.mktemp("airflow-batch")
    dags_folder = home / "dags"
    dags_folder.mkdir()
    shutil.copy(DAG_FILE, dags_folder / DAG_FILE.name)
    env = standalone_env(home, emulator_server, dags_folder)
    connection = json.loads(env["AIRFLOW_CONN_IMGGEN_DEFAULT"])
    connection["extra"]["ledger"] = ledger.setting
    env.update(
        {
            "AIRFLOW_CONN_IMGGEN_DEFAULT": json.dumps(connection),
            f"AIRFLOW_CONN_{PG_CONN_ID.upper()}": ledger.server.connection_json(),
            "AIRFLOW_CONN_AWS_DEFAULT": aws_connection(moto_server.endpoint_url),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            # The tests' Fernet key: the test opens the sealed result URLs the triggerer put in XCom.
            "AIRFLOW__CORE__FERNET_KEY": os.environ["AIRFLOW__CORE__FERNET_KEY"],
            # The components run this checkout's provider, whichever checkout the editable install names.
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(TESTS_DIR.parent), os.environ.get("PYTHONPATH")])
            ),
        }
    )
    env.pop("AWS_PROFILE", None)
    # No `airflow db migrate` first: standalone migrates the database itself (seconds saved on 2 cores).
    with airflow_standalone(env, home) as running:
        running.wait_ready([], timeout=300)
        deadline = time.monotonic() + 180
        while {DELIVERED, REFUSED} - _parsed(running):
            if time.monotonic() > deadline:
                raise RuntimeError(f"DAGs not parsed; see {home / 'standalone.log'}")
            time.sleep(1)
        yield running


def _parsed(airflow: Airflow) -> set[str]:
    try:
        return {dag["dag_id"] for dag in airflow.api("dags?tags=imggen-batch")["dags"]}
    except (OSError, RuntimeError):
        return set()


def api_retrying(airflow: Airflow, path: str, deadline: float) -> Any:
    """A GET of the REST API, tried again until ``deadline`` while the api-server does not answer in time."""
    while True:
        airflow.check_alive()
        try:
            return airflow.api(path)
        except OSError:  # a timeout: on 2 busy cores the api-server may stall behind SQLite's lock
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def wait_idle(airflow: Airflow, timeout: float = 300) -> None:
    """Wait until no run of the module's DAGs is queued or running (one a failed test left)."""
    deadline = time.monotonic() + timeout
    for dag_id in (DELIVERED, REFUSED):
        while api_retrying(airflow, f"dags/{dag_id}/dagRuns?state=queued&state=running", deadline)[
            "dag_runs"
        ]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{dag_id} still running; see {airflow.home / 'standalone.log'}")
            time.sleep(1)


def run_once(
    airflow: Airflow, dag_id: str, conf: dict[str, Any]
) -> tuple[str, str, dict[str, dict[str, Any]]]:
    """Trigger a run of the DAG and wait for it to end: its run id, state and task instances by task id."""
    run_id = f"batch-{uuid.uuid4().hex[:8]}"
    airflow.api(
        f"dags/{dag_id}/dagRuns", {"dag_run_id": run_id, "logical_date": None, "conf": conf}, method="POST"
    )
    deadline = time.monotonic() + 300
    while (state := api_retrying(airflow, f"dags/{dag_id}/dagRuns/{run_id}", deadline)["state"]) not in (
        "success",
        "failed",
    ):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{dag_id} did not finish within 300 s; see {airflow.home / 'standalone.log'}")
        time.sleep(0.5)
    instances = {ti["task_id"]: ti for ti in api_task_instances(airflow, dag_id, run_id)}
    return run_id, state, instances


def task_logs(airflow: Airflow, dag_id: str, task_id: str) -> dict[str, str]:
    """Every log file of a task, by file name: the worker's tries and the triggerer's parts."""
    logs = airflow.home / "logs" / f"dag_id={dag_id}"
    return {
        path.name: path.read_text(errors="replace")
        for path in sorted(logs.rglob("*"))
        if path.is_file() and f"task_id={task_id}" in str(path)
    }


def trigger_timeline(logs: dict[str, str]) -> dict[str, list[str]]:
    """Per triggerer log file, when its trigger started, finished the batch and fired its event."""
    marks = ("starting", "Batch done", "Trigger fired event")
    timeline = {}
    for name, text in logs.items():
        if ".trigger." in name:
            events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
            timeline[name] = [
                f"{event['timestamp'][11:23]} {event['event'][:40]}"
                for event in events
                if any(mark in event["event"] for mark in marks)
            ]
    return timeline


def metadata_env(airflow: Airflow) -> dict[str, str]:
    return {
        "AIRFLOW_HOME": str(airflow.home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow.home}/airflow.db",
    }


def stored_xcoms(airflow: Airflow, dag_id: str) -> dict[tuple[str, int, str], Any]:
    """(task_id, map_index, key) -> value, of the DAG's latest run."""
    rows = dag_run_rows(metadata_env(airflow), dag_id, "xcom", "task_id, map_index, key, value")
    return {
        (task_id, map_index, key): json.loads(value) if isinstance(value, str | bytes) else value
        for task_id, map_index, key, value in rows
    }


def accepted(submissions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The submissions that created a task."""
    return [entry for entry in submissions if entry.get("task_id")]


def check_records(records: Any, prompts: list[str], task_ids: set[str]) -> set[str]:
    """
    ``records`` are generation records of ``prompts``, in that order, each of its own emulator task, with
    result URLs only masked (the sealed copy opens to the signed one): the signed URLs' secrets.
    """
    assert isinstance(records, list)
    assert [record["prompt"] for record in records] == prompts, "one record per prompt, in prompt order"
    secrets: set[str] = set()
    for record in records:
        assert set(record) == XCOM_KEYS and record["task_status"] == "SUCCEEDED"
        assert (record["model"], record["n"]) == ("wan2.2-t2i-flash", 1)
        assert len(record["images"]) == 1
        for image in record["images"]:
            assert set(image) == IMAGE_KEYS
            assert image["url"].endswith("?Expires=***&OSSAccessKeyId=***&Signature=***")
            signed = unseal(image["url_sealed"], label="image")
            assert mask_url(signed) == image["url"]
            secrets.update(secret for secret in url_secrets(signed) if len(secret) >= 5)
    assert {record["generation_task_id"] for record in records} <= task_ids
    assert len({record["generation_task_id"] for record in records}) == len(records)
    assert secrets, "the emulator signs its result URLs"
    return secrets


def test_a_batch_is_sent_from_the_triggerer_once_each_and_ended_there_after_one_worker_run(
    airflow: Airflow, emulator: EmulatorServer, s3: S3Bucket, ledger: Ledger
) -> None:
    wait_idle(airflow)
    emulator.clear_log()
    emulator.set_faults(**TIMINGS)
    started = time.monotonic()
    run_id, state, instances = run_once(airflow, DELIVERED, {"bucket": s3.name})
    took = time.monotonic() - started
    generate = instances["generate"]
    workloads = worker_workloads(
        airflow.home / "standalone.log", {generate["id"]}, last_states=("success", "deferred", "failed")
    )
    runs = [workload.final_state for workload in workloads]
    logs = task_logs(airflow, DELIVERED, "generate")
    submissions = task_submissions(emulator)
    slots = ledger.slots(run_id)
    print(
        f"\n{DELIVERED}: run {state} in {took:.1f} s; tasks "
        f"{ {task_id: (ti['state'], ti['try_number']) for task_id, ti in instances.items()} }; "
        f"generate's worker runs {runs}; submissions {[entry['status'] for entry in submissions]}; "
        f"billed {emulator.billed_images()}; ledger slots {[slot['state'] for slot in slots]}; "
        f"triggerer {trigger_timeline(logs)}"
    )

    assert state == "success", f"see {airflow.home / 'standalone.log'}"
    assert {task_id: (ti["state"], ti["try_number"]) for task_id, ti in instances.items()} == {
        "prompts": ("success", 1),
        "generate": ("success", 1),
        "store_in_s3": ("success", 1),
    }
    # One worker run (validate, defer); the triggerer ended the task: execute_complete never ran.
    assert runs == ["deferred"], f"see {airflow.home / 'standalone.log'}"
    text = "\n".join(logs.values())
    assert "Batch done: 6 delivered, 0 problem(s)" in text
    assert "TriggerEvent<'success'>" in text, "a TaskSuccessEvent ended the task"
    assert not re.search(r"Batch: \d+ delivered", text), "execute_complete never ran"

    # Each request sent and billed once; anything else the service answered was the quota's 429.
    tasks = accepted(submissions)
    task_ids = {entry["task_id"] for entry in tasks}
    assert len(tasks) == 6 and len(task_ids) == 6
    assert emulator.billed_images() == 6
    assert all(entry["status"] == 429 for entry in submissions if not entry.get("task_id")), submissions

    results = stored_xcoms(airflow, DELIVERED)
    records = results[("generate", -1, "return_value")]
    secrets = check_records(records, PROMPTS, task_ids)
    assert ("generate", -1, "problems") not in results
    # The ledger names the task each prompt created: the one its record came from.
    assert [(slot["state"], slot["generation_task_id"]) for slot in slots] == [
        ("billed", record["generation_task_id"]) for record in records
    ]

    stored = results[("store_in_s3", -1, "return_value")]
    assert isinstance(stored, list) and len(stored) == 6
    assert s3.object_keys() == sorted(entry["key"] for entry in stored)
    assert sorted(entry["generation"] for entry in stored) == list(range(6))
    for entry in stored:
        body = s3.read(entry["key"])
        assert hashlib.sha256(body).hexdigest() == entry["sha256"]
        assert (len(body), entry["width"], entry["height"]) == (entry["bytes"], 512, 512)
        assert entry["prompt"] == PROMPTS[entry["generation"]]
        assert entry["request_id"] == records[entry["generation"]]["request_id"]
    env = metadata_env(airflow)
    assert_key_nowhere(env, DELIVERED)
    assert_nowhere(env, DELIVERED, secrets)


def test_prompts_refused_for_their_content_fail_the_task_with_the_others_delivered_never_sent_again(
    airflow: Airflow, emulator: EmulatorServer, s3: S3Bucket, ledger: Ledger
) -> None:
    wait_idle(airflow)
    emulator.clear_log()
    # The first submission is refused for its input (400 DataInspectionFailed, no task): prompt 0. The
    # third task created (prompts 1, 2, then 3: slots are sent in order) ends FAILED DataInspectionFailed.
    emulator.set_faults(
        **TIMINGS, fail_next=["moderation"], fail_next_tasks=["none", "none", "DataInspectionFailed"]
    )
    started = time.monotonic()
    run_id, state, instances = run_once(airflow, REFUSED, {"bucket": s3.name})
    took = time.monotonic() - started
    logs = task_logs(airflow, REFUSED, "generate")
    submissions = task_submissions(emulator)
    slots = ledger.slots(run_id)
    final = stored_xcoms(airflow, REFUSED)
    print(
        f"\n{REFUSED}: run {state} in {took:.1f} s; tasks "
        f"{ {task_id: (ti['state'], ti['try_number']) for task_id, ti in instances.items()} }; submissions "
        f"{[(entry['status'], entry.get('outcome')) for entry in submissions]}; "
        f"billed {emulator.billed_images()}; ledger slots {[slot['state'] for slot in slots]}; XComs "
        f"{sorted(key for task_id, _, key in final if task_id == 'generate')}; "
        f"triggerer {trigger_timeline(logs)}"
    )

    assert state == "failed"
    assert {task_id: (ti["state"], ti["try_number"]) for task_id, ti in instances.items()} == {
        "prompts": ("success", 1),
        "generate": ("failed", 1),
        "store_in_s3": ("upstream_failed", 0),
    }, f"see {airflow.home / 'standalone.log'}"

    # Prompt 0 refused at submission; prompts 1-5 each sent once (prompt 3's task FAILED, unbilled).
    tasks = accepted(submissions)
    task_ids = {entry["task_id"] for entry in tasks}
    refused = [entry for entry in submissions if entry["status"] == 400]
    assert len(refused) == 1 and len(tasks) == 5 and len(task_ids) == 5, submissions
    assert all(entry["status"] in (200, 400, 429) for entry in submissions), submissions
    assert emulator.billed_images() == 4
    text = "\n".join(logs.values())
    assert text.count("Batch done: 4 delivered, 2 problem(s)") == 1
    assert "ImageGenerationBatchFailedError" in text and "Airflow does not retry" in text
    # Every slot has its outcome, the refused ones final: none left claimed (or released, to send again).
    assert [slot["state"] for slot in slots].count("failed") == 2 and slots[0]["state"] == "failed"
    assert all(slot["state"] in ("billed", "failed") for slot in slots) and len(slots) == 6, slots

    delivered = [PROMPTS[index] for index in (1, 2, 4, 5)]
    records = final[("generate", -1, "return_value")]
    secrets = check_records(records, delivered, task_ids)
    problems = final[("generate", -1, "problems")]
    assert [(problem["index"], problem["status"], problem["code"]) for problem in problems] == [
        (0, "failed", "DataInspectionFailed"),
        (3, "failed", "DataInspectionFailed"),
    ], problems
    assert [problem["billed"] for problem in problems] == [False, False]
    assert problems[0]["generation_task_id"] is None and problems[1]["generation_task_id"] in task_ids
    assert s3.object_keys() == []
    env = metadata_env(airflow)
    assert_key_nowhere(env, REFUSED)
    assert_nowhere(env, REFUSED, secrets)
