"""Real Airflow runs (`airflow dags test` on SQLite) of the example and test DAGs against the emulator."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.sealed_urls import unseal
from airflow_provider_imggen.utils import mask_url, url_secrets
from tests.conftest import API_KEY, TESTS_DIR, dag_run_rows, emulator_connection_env, run_dag
from tests.local_executor import xcoms

if TYPE_CHECKING:
    from tests.s3_fixtures import S3Bucket


TEST_DAGS = TESTS_DIR / "dags" / "imggen_test_dags.py"
EXAMPLE_DAGS = TESTS_DIR.parent / "example_dags"


def run_example_pipeline(
    airflow_env: dict[str, str],
    dag_id: str,
    s3: S3Bucket,
    subjects: list[str],
    imggen_connection_env: dict[str, str],
) -> subprocess.CompletedProcess[str]:
    """Run an example DAG with ``airflow dags test``, its images landing in the moto_server bucket."""
    from tests.s3_fixtures import aws_connection

    return run_dag(
        {**airflow_env, "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLE_DAGS)},
        dag_id,
        EXAMPLE_DAGS / f"{dag_id}.py",
        conf={"bucket": s3.name, "subjects": subjects},
        AIRFLOW_CONN_AWS_DEFAULT=aws_connection(s3.endpoint_url),
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        **imggen_connection_env,
    )


def assert_key_nowhere(airflow_env: dict[str, str], dag_id: str, *outputs: str) -> None:
    """The API key is in none of: the run's output, its XComs, its rendered fields, its task log files."""
    for output in outputs:
        assert API_KEY not in output
    for table, column in (("xcom", "value"), ("rendered_task_instance_fields", "rendered_fields")):
        stored = dag_run_rows(airflow_env, dag_id, table, column)
        assert stored, f"the run stored {table}"
        assert all(API_KEY not in str(value) for (value,) in stored)
    for log_file in (Path(airflow_env["AIRFLOW_HOME"]) / "logs").rglob("*"):
        if log_file.is_file():
            assert API_KEY not in log_file.read_text(errors="replace")


def log_text(airflow_env: dict[str, str], dag_id: str) -> str:
    """
    The task log files of a DAG's runs, concatenated. `airflow dags test` runs the tasks in its own process
    and writes their logs to its output rather than to files: check both.
    """
    logs = Path(airflow_env["AIRFLOW_HOME"]) / "logs" / f"dag_id={dag_id}"
    return "\n".join(path.read_text(errors="replace") for path in logs.rglob("*") if path.is_file())


def assert_nowhere(airflow_env: dict[str, str], dag_id: str, secrets: set[str], *outputs: str) -> None:
    """No secret (nor ``Signature=`` followed by anything but the mask) in outputs, XComs, fields, logs."""
    stored = [
        str(value)
        for table, column in (("xcom", "value"), ("rendered_task_instance_fields", "rendered_fields"))
        for (value,) in dag_run_rows(airflow_env, dag_id, table, column)
    ]
    for where, text in [
        *(("task log output", output) for output in outputs),
        *(("XCom or rendered field", value) for value in stored),
        ("task logs", log_text(airflow_env, dag_id)),
    ]:
        assert not re.search(r"Signature=(?!\*\*\*)", text), f"an unmasked Signature= in the {where}"
        leaked = sorted(secret for secret in secrets if secret in text)
        assert not leaked, f"signed query values in the {where}: {leaked}"


def test_mapped_dag_pushes_one_metadata_xcom_per_prompt(
    airflow_env: dict[str, str], emulator: EmulatorServer
) -> None:
    from tests.dags.imggen_test_dags import PROMPTS

    finished = run_dag(airflow_env, "imggen_test_mapped", TEST_DAGS, **emulator_connection_env(emulator))
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]

    results = xcoms(airflow_env, "imggen_test_mapped")
    assert sorted(results) == [("generate", 0), ("generate", 1), ("generate", 2)]
    for map_index, prompt in enumerate(PROMPTS):
        metadata = results[("generate", map_index)]
        assert isinstance(metadata, dict)
        assert metadata["prompt"] == prompt
        assert (metadata["model"], metadata["size"], metadata["n"]) == ("wan2.2-t2i-flash", "512x512", 2)
        assert [image["seed"] for image in metadata["images"]] == [metadata["seed"], metadata["seed"] + 1]
        assert all(image["url"].startswith(emulator.base_url) for image in metadata["images"])
        assert len(json.dumps(metadata)) < 64 * 1024
    assert emulator.billed_images() == 6
    assert_key_nowhere(airflow_env, "imggen_test_mapped", finished.stdout, finished.stderr)


def test_prompts_render_from_dag_context(
    airflow_env: dict[str, str], emulator: EmulatorServer, tmp_path: Path
) -> None:
    finished = run_dag(
        airflow_env,
        "imggen_test_rendering",
        TEST_DAGS,
        AIRFLOW_VAR_IMGGEN_OUTPUT=str(tmp_path),
        **emulator_connection_env(emulator),
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]

    results = xcoms(airflow_env, "imggen_test_rendering")
    (logical_date,) = {
        row[0][:10] for row in dag_run_rows(airflow_env, "imggen_test_rendering", "dag_run", "logical_date")
    }
    from_file = results[("from_template_file", -1)]
    assert isinstance(from_file, dict)
    # prompts/poster.j2: params, ds and an upstream XCom.
    assert from_file["prompt"].strip() == f"A risograph poster for {logical_date} featuring a vintage tram"
    assert (from_file["seed"], from_file["prompt_upsampling"]) == (4242, False)

    from_context = results[("from_context", -1)]
    assert isinstance(from_context, dict)
    assert from_context["prompt"] == f"risograph skyline on {logical_date}: a vintage tram"
    assert (from_context["size"], from_context["n"], from_context["response_format"]) == (
        "768x512",
        2,
        "b64_json",
    )
    for image in from_context["images"]:
        assert image["location"].startswith(f"file://{tmp_path}/imggen_test_rendering/")
        assert Path(image["location"].removeprefix("file://")).stat().st_size == image["bytes"]
    assert_key_nowhere(airflow_env, "imggen_test_rendering", finished.stdout, finished.stderr)


@pytest.mark.parametrize("dag_id", ["example_image_generation"])
def test_example_dag_runs(airflow_env: dict[str, str], emulator: EmulatorServer, dag_id: str) -> None:
    finished = run_dag(
        {**airflow_env, "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLE_DAGS)},
        dag_id,
        EXAMPLE_DAGS / f"{dag_id}.py",
        **emulator_connection_env(emulator),
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    (metadata,) = xcoms(airflow_env, dag_id).values()
    assert isinstance(metadata, dict) and metadata["model"] == "qwen-image"
    assert "watercolour style" in metadata["prompt"]
    assert emulator.billed_images() == 1


def test_example_content_pipeline_lands_images_and_metadata_in_s3(
    airflow_env: dict[str, str], emulator: EmulatorServer, s3: S3Bucket
) -> None:
    dag_id = "example_content_pipeline"
    subjects = ["a teapot on a windowsill", "a bicycle against a brick wall"]
    finished = run_example_pipeline(airflow_env, dag_id, s3, subjects, emulator_connection_env(emulator))
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]

    results = xcoms(airflow_env, dag_id)
    stored = results[("store_in_s3", -1)]
    assert isinstance(stored, list) and len(stored) == 2 * len(subjects)
    (logical_date,) = {row[0][:10] for row in dag_run_rows(airflow_env, dag_id, "dag_run", "logical_date")}
    assert s3.object_keys() == sorted(entry["key"] for entry in stored)
    for entry in stored:
        assert entry["key"].startswith(f"campaigns/{logical_date}/")
        body = s3.read(entry["key"])
        assert hashlib.sha256(body).hexdigest() == entry["sha256"]
        assert (len(body), entry["width"], entry["height"]) == (entry["bytes"], 1024, 768)
        assert s3.head(entry["key"])["ContentType"] == "image/png"
        assert subjects[entry["generation"]] in entry["prompt"]
    # Each mapped generation's metadata reached the transfer: seeds and request ids match its XCom.
    for map_index in range(len(subjects)):
        generation = results[("generate", map_index)]
        assert isinstance(generation, dict)
        mine = [entry for entry in stored if entry["generation"] == map_index]
        assert {entry["request_id"] for entry in mine} == {generation["request_id"]}
        assert sorted(entry["seed"] for entry in mine) == [image["seed"] for image in generation["images"]]
    summary = results[("summarize", -1)]
    assert isinstance(summary, dict)
    assert summary["images"] == len(stored)
    assert summary["objects"] == [entry["s3_uri"] for entry in stored]
    assert emulator.billed_images() == len(stored)
    assert len(json.dumps(stored)) < 64 * 1024
    assert_key_nowhere(airflow_env, dag_id, finished.stdout, finished.stderr)
    generations = [results[("generate", map_index)] for map_index in range(len(subjects))]
    assert_no_signed_url(airflow_env, dag_id, generations, stored, finished)


def assert_no_signed_url(
    airflow_env: dict[str, str],
    dag_id: str,
    generations: list[Any],
    stored: list[Any],
    finished: subprocess.CompletedProcess[str],
) -> None:
    """
    No usable signed URL outside the tasks that fetch it: every query value of every result URL (the
    signature, the access key id, the expiry) is absent from the run's XCom table, rendered fields and task
    logs, which show the URLs masked; the transfer opened the sealed copies on its own and stored one
    object per image (the callers check each object's sha256 against its record).
    """
    images = [image for generation in generations for image in generation["images"]]
    assert len(images) == len(stored)
    secrets = set()
    for image in images:
        assert image["url"].endswith("?Expires=***&OSSAccessKeyId=***&Signature=***")
        signed = unseal(image["url_sealed"], label="image")
        assert mask_url(signed) == image["url"]
        secrets.update(secret for secret in url_secrets(signed) if len(secret) >= 5)
    assert secrets, "the emulator signs its result URLs"
    assert_nowhere(airflow_env, dag_id, secrets, finished.stdout, finished.stderr)
    task_logs = finished.stdout + finished.stderr + log_text(airflow_env, dag_id)
    assert "Signature=***" in task_logs, "the task logs show result URLs, masked"
    assert len({(entry["generation"], entry["index"]) for entry in stored}) == len(images)


def test_rerunning_a_generated_date_of_the_content_pipeline_pays_nothing_with_the_ledger(
    airflow_env: dict[str, str], emulator: EmulatorServer, s3: S3Bucket
) -> None:
    """
    The same run again, as clearing it or a backfill over its date does (Airflow's backfill clears an
    existing run and runs it again under its run id): the ledger (connection extra ``ledger``) hands back
    the stored images, nothing is billed, and the objects stay as they were. DAG.test deletes the run
    first, its task state store with it: the ledger alone remembers.
    """
    from tests.s3_fixtures import aws_connection

    dag_id = "example_content_pipeline"
    subjects = ["a teapot on a windowsill", "a bicycle against a brick wall"]
    connection = emulator_connection_env(emulator, ledger=f"s3://aws_default@{s3.name}/imggen-ledger")
    # The run of 2026-03-01 under one run id, twice: DAG.test with a fixed run_after (the CLI's uses now).
    import sys

    driver = (
        "import json, runpy, sys, pendulum; when = pendulum.datetime(2026, 3, 1, tz='UTC'); "
        "runpy.run_path(sys.argv[1])['dag'].test(run_after=when, logical_date=when, "
        "run_conf=json.loads(sys.argv[2]))"
    )
    command = [
        sys.executable,
        "-c",
        driver,
        str(EXAMPLE_DAGS / f"{dag_id}.py"),
        json.dumps({"bucket": s3.name, "subjects": subjects}),
    ]
    env = {
        **airflow_env,
        "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLE_DAGS),
        "AIRFLOW_CONN_AWS_DEFAULT": aws_connection(s3.endpoint_url),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        **connection,
    }
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    billed = emulator.billed_images()
    assert billed == 2 * len(subjects)

    def campaign_objects() -> dict[str, tuple[str, object]]:
        listing = s3.client.list_objects_v2(Bucket=s3.name, Prefix="campaigns/").get("Contents", [])
        return {item["Key"]: (item["ETag"], item["LastModified"]) for item in listing}

    before = campaign_objects()
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert emulator.billed_images() == billed, (
        "the rerun paid nothing\n"
        + "\n".join(
            line for line in (again.stdout + again.stderr).splitlines() if "edger" in line or "run_id" in line
        )[-4000:]
    )
    assert campaign_objects() == before, "objects unchanged"
    results = xcoms(airflow_env, dag_id)
    for map_index in range(len(subjects)):
        generation = results[("generate", map_index)]
        assert isinstance(generation, dict) and generation["reused"] is True
    stored = results[("store_in_s3", -1)]
    assert isinstance(stored, list) and all(entry["skipped"] for entry in stored)
