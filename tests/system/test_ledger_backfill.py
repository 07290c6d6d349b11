"""
A backfill over a date the content pipeline already generated, under a real scheduler (``airflow
standalone``, LocalExecutor): with the ledger (connection extra ``ledger``) it bills nothing and leaves the
stored objects as they were.

Airflow's backfill clears the existing run of the date and runs it again under its run id: the same
requests (prompts dated by ``ds``, seeds derived from the task instance), which the ledger recognises.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_imggen.emulator import EmulatorServer
from benchmarks.bench_deferrable import Airflow, airflow_standalone
from tests.conftest import AIRFLOW_BIN, API_KEY, TESTS_DIR
from tests.s3_fixtures import S3Bucket, aws_connection
from tests.system.test_quota_pool import standalone_env

DAG_FILE = TESTS_DIR.parent / "example_dags" / "example_content_pipeline.py"
DAG_ID = "example_content_pipeline"
DATE = "2026-03-01T00:00:00Z"
SUBJECTS = ["a teapot on a windowsill", "a bicycle against a brick wall"]


@pytest.fixture
def airflow(
    tmp_path_factory: pytest.TempPathFactory, emulator: EmulatorServer, s3: S3Bucket
) -> Iterator[Airflow]:
    home = tmp_path_factory.mktemp("airflow-backfill")
    dags_folder = home / "dags"
    dags_folder.mkdir()
    shutil.copy(DAG_FILE, dags_folder / DAG_FILE.name)
    connection = {
        "conn_type": "imggen",
        "host": f"{emulator.base_url}/v1",
        "password": API_KEY,
        "extra": {"default_model": "wan2.2-t2i-flash", "ledger": f"s3://aws_default@{s3.name}/imggen-ledger"},
    }
    env = {
        **standalone_env(home, emulator, dags_folder),
        "AIRFLOW_CONN_IMGGEN_DEFAULT": json.dumps(connection),
        "AIRFLOW_CONN_AWS_DEFAULT": aws_connection(s3.endpoint_url),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AIRFLOW__CORE__FERNET_KEY": os.environ["AIRFLOW__CORE__FERNET_KEY"],
    }
    subprocess.run([str(AIRFLOW_BIN), "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    with airflow_standalone(env, home) as running:
        running.wait_ready([], timeout=300)
        deadline = time.monotonic() + 180
        while not running.api(f"dags?dag_id_pattern={DAG_ID}")["dags"]:
            assert time.monotonic() < deadline, f"{DAG_ID} not parsed; see {home / 'standalone.log'}"
            time.sleep(1)
        yield running


def wait_for_run(airflow: Airflow, run_id: str) -> str:
    deadline = time.monotonic() + 600
    while True:
        airflow.check_alive()
        state = airflow.api(f"dags/{DAG_ID}/dagRuns/{run_id}")["state"]
        if state in ("success", "failed"):
            return str(state)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{run_id} did not finish; see {airflow.home / 'standalone.log'}")
        time.sleep(1)


def campaign_objects(s3: S3Bucket) -> dict[str, tuple[str, Any]]:
    """The objects of the backfilled date (unpausing lets the scheduler add a run of its own too)."""
    listing = s3.client.list_objects_v2(Bucket=s3.name, Prefix="campaigns/2026-03-01/").get("Contents", [])
    return {item["Key"]: (item["ETag"], item["LastModified"]) for item in listing}


def billed_for_the_date(emulator: EmulatorServer) -> int:
    """Images billed for the backfilled date's prompts (dated by ``ds``), from the emulator's log."""
    return sum(
        int(entry["billed_images"] or 0)
        for entry in emulator.requests_log()
        if entry["billed"] and "campaign of 2026-03-01" in str(entry.get("prompt"))
    )


def test_a_backfill_over_a_generated_date_bills_nothing_with_the_ledger(
    airflow: Airflow, emulator: EmulatorServer, s3: S3Bucket
) -> None:
    conf = {"bucket": s3.name, "subjects": SUBJECTS}
    run = airflow.api(
        f"dags/{DAG_ID}/dagRuns", {"dag_run_id": "first", "logical_date": DATE, "conf": conf}, method="POST"
    )
    assert wait_for_run(airflow, run["dag_run_id"]) == "success", f"see {airflow.home / 'standalone.log'}"
    billed = billed_for_the_date(emulator)
    assert billed == 2 * len(SUBJECTS)
    before = campaign_objects(s3)
    assert len(before) == billed

    body = {
        "dag_id": DAG_ID,
        "from_date": DATE,
        "to_date": DATE,
        "reprocess_behavior": "completed",
        "dag_run_conf": conf,
    }
    for attempt in range(30):
        try:
            backfill = airflow.api("backfills", body, method="POST")
            break
        except RuntimeError as error:
            if "already a running backfill" in str(error) and attempt > 0:
                # An earlier attempt's 503 came after the backfill was written: that one is ours.
                (backfill,) = airflow.api(f"backfills?dag_id={DAG_ID}")["backfills"]
                break
            # SQLite: the API refuses (503) while the scheduler holds the database lock; it passes.
            if "Database is locked" not in str(error) or attempt == 29:
                raise
            time.sleep(2)
    deadline = time.monotonic() + 600
    while airflow.api(f"backfills/{backfill['id']}").get("completed_at") is None:
        airflow.check_alive()
        assert time.monotonic() < deadline, (
            f"backfill did not complete; see {airflow.home / 'standalone.log'}"
        )
        time.sleep(1)
    # The backfill ran the date's run again, under its run id.
    assert wait_for_run(airflow, "first") == "success", f"see {airflow.home / 'standalone.log'}"
    tries = {
        (ti["task_id"], ti["map_index"]): ti["try_number"]
        for ti in airflow.api(f"dags/{DAG_ID}/dagRuns/first/taskInstances")["task_instances"]
    }
    assert tries[("generate", 0)] >= 2, f"the backfill re-ran the generations: {tries}"
    assert billed_for_the_date(emulator) == billed, "the backfill paid nothing"
    for map_index in range(len(SUBJECTS)):
        entry = airflow.api(
            f"dags/{DAG_ID}/dagRuns/first/taskInstances/generate/xcomEntries/return_value"
            f"?map_index={map_index}&deserialize=true"
        )
        xcom = entry["value"] if isinstance(entry["value"], dict) else json.loads(entry["value"])
        assert xcom["reused"] is True, "from the ledger"
    assert campaign_objects(s3) == before, "objects unchanged"
