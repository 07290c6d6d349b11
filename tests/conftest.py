"""Shared fixtures: an isolated AIRFLOW_HOME, the API emulator on loopback, and imggen connections."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before anything imports airflow: keep Airflow's files out of ~/airflow and its examples out of the way.
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="imggen-tests-airflow-home-")
os.environ.setdefault("AIRFLOW_HOME", _AIRFLOW_HOME)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
# A deployment's Fernet key (airflow.cfg gets one when Airflow creates it): result URLs are sealed with it in
# XCom. Set here so tests and the `airflow dags test` subprocesses share one; tests without it unset it.
os.environ.setdefault("AIRFLOW__CORE__FERNET_KEY", "x1Sn0hD8nL4p1ZkN0r3Jb2m9bQ8K6wEo2o3cY4f5T7E=")

from airflow_provider_imggen.emulator import EmulatorConfig, EmulatorServer, FaultConfig  # noqa: E402
from tests.local_executor import AIRFLOW_BIN, dag_run_rows  # noqa: E402, F401 - imported from here too

API_KEY = "sk-test-4f9c2b7e1d"
# moto_server and the aws connection to it (tests/s3_fixtures.py), for every test module that needs S3.
pytest_plugins = ["tests.s3_fixtures"]


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[EmulatorServer]:
    # Quotas off by default here (the real service, and the emulator's own default, have them on): most
    # tests are about something else and run many requests back to back. Quota tests turn them on with
    # ``emulator.set_faults(quotas=True)``; reset() brings them back off.
    with EmulatorServer(EmulatorConfig(api_key=API_KEY, faults=FaultConfig(quotas=False))) as server:
        yield server


@pytest.fixture
def emulator(emulator_server: EmulatorServer) -> Iterator[EmulatorServer]:
    """The session's emulator (quotas off) with faults and request log cleared before each test."""
    emulator_server.reset()
    yield emulator_server
    emulator_server.reset()


def set_imggen_connection(
    monkeypatch: pytest.MonkeyPatch,
    host: str,
    *,
    conn_id: str = "imggen_default",
    password: str = API_KEY,
    **extra: object,
) -> None:
    """Define an imggen connection through the environment, as a deployment would."""
    conn = {"conn_type": "imggen", "host": host, "password": password, "extra": extra}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


@pytest.fixture
def imggen_conn(emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    """``imggen_default`` pointing at the emulator, with fast retries."""
    set_imggen_connection(
        monkeypatch, f"{emulator.base_url}/v1", default_model="wan2.2-t2i-flash", max_retries=3
    )
    return emulator


@pytest.fixture
def dashscope_conn(emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    """``imggen_default`` speaking the emulator's native task API (api_style dashscope), fast retries."""
    set_imggen_connection(
        monkeypatch, emulator.base_url, default_model="wan2.2-t2i-flash", max_retries=3, api_style="dashscope"
    )
    return emulator


def task_submissions(emulator: EmulatorServer) -> list[dict[str, object]]:
    """The request-log entries of native task submissions (one per POST; ``task_id`` set if it made one)."""
    return [entry for entry in emulator.requests_log() if entry["kind"] == "submit"]


def task_queries(emulator: EmulatorServer) -> list[dict[str, object]]:
    """The request-log entries of native task status queries."""
    return [entry for entry in emulator.requests_log() if entry["kind"] == "task"]


TESTS_DIR = Path(__file__).parent


@pytest.fixture(scope="session")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment of a fresh AIRFLOW_HOME with a migrated SQLite metadata DB, for the CLI and `dags test`."""
    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        **{
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))
        },
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(TESTS_DIR / "dags"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
    }
    subprocess.run([str(AIRFLOW_BIN), "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    return env


def run_dag(
    airflow_env: dict[str, str],
    dag_id: str,
    dag_file: Path,
    conf: dict[str, object] | None = None,
    **extra_env: str,
) -> subprocess.CompletedProcess[str]:
    """`airflow dags test` one DAG file (``conf`` overrides params); returns the finished process."""
    command = [str(AIRFLOW_BIN), "dags", "test", dag_id, "--dagfile-path", str(dag_file)]
    if conf is not None:
        command += ["--conf", json.dumps(conf)]
    return subprocess.run(
        command,
        env={**airflow_env, **extra_env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def cli_json(stdout: str) -> object:
    """
    The JSON an ``airflow ... --output json`` command printed, without the log lines around it.

    Airflow logs to stdout too: with an amazon provider older than 9.20 (no 'cli' section), every command
    starts with a warning about it.
    """
    for start in (index for index, char in enumerate(stdout) if char in "[{"):
        try:
            return json.loads(stdout[start:])
        except json.JSONDecodeError:
            continue  # a bracket inside a log line: the document starts later
    raise AssertionError(f"no JSON in the command's output: {stdout[-2000:]}")


def emulator_connection_env(emulator: EmulatorServer, **extra: object) -> dict[str, str]:
    """AIRFLOW_CONN_IMGGEN_DEFAULT for a subprocess, pointing at the emulator."""
    # The gateway API lives under /v1; the native task API's paths start at the root (/api/v1/...).
    host = emulator.base_url if extra.get("api_style") == "dashscope" else f"{emulator.base_url}/v1"
    conn = {"conn_type": "imggen", "host": host, "password": API_KEY, "extra": extra}
    return {"AIRFLOW_CONN_IMGGEN_DEFAULT": json.dumps(conn)}


# The smoke subset `make matrix` runs against the built wheel (marker `matrix`), for tests of modules other
# branches own too; tests of their own modules carry @pytest.mark.matrix. Every public module, a
# generation, a deferrable generation, the sensor, the S3 transfer, the provider's registration.
MATRIX_TESTS = (
    "tests/integration/test_connection_settings.py::test_provider_info_matches_airflow_schema_and_model_table",
    "tests/integration/test_connection_settings.py::test_airflow_providers_list_shows_the_provider",
    "tests/integration/test_connection_settings.py::test_airflow_connections_add_cli",
    "tests/integration/emulator/test_emulator.py::test_url_success_downloads_png_of_requested_size",
    "tests/integration/hooks/test_image_generation.py::test_url_result_downloads_real_png",
    "tests/integration/operators/test_image_generation.py::test_xcom_shape_from_the_emulator",
    "tests/integration/operators/test_deferrable.py::test_deferrable_operator_submits_in_execute_and_resumes_with_the_same_xcom",
    "tests/integration/operators/test_deferrable.py::test_sensor_poke_mode_waits_then_pushes_the_operators_xcom_shape",
    "tests/integration/triggers/test_image_generation.py::test_registered_with_airflow",
    "tests/integration/triggers/test_image_generation.py::test_success_after_pending_and_running",
    "tests/integration/transfers/test_image_generation_to_s3.py::test_url_images_land_in_s3_with_content_type_size_and_metadata",
    "tests/system/test_dag_runs.py::test_example_content_pipeline_lands_images_and_metadata_in_s3",
    "tests/system/test_async_dag_runs.py::test_sensor_in_poke_reschedule_and_deferrable_modes",
    "tests/integration/test_plugin.py::test_plugin_is_registered_through_its_entry_point",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    collected = {item.nodeid.split("[")[0]: item for item in items}
    if config.getoption("markexpr") == "matrix" and len(items) > len(MATRIX_TESTS):
        missing = [test for test in MATRIX_TESTS if test not in collected]
        if missing:
            raise pytest.UsageError(f"MATRIX_TESTS names tests that do not exist (renamed?): {missing}")
    for item in items:
        if item.nodeid.split("[")[0] in MATRIX_TESTS:
            item.add_marker(pytest.mark.matrix)
