"""Shared fixtures: an isolated AIRFLOW_HOME, the API emulator on loopback, and imggen connections."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator

import pytest

# Before anything imports airflow: keep Airflow's files out of ~/airflow and its examples out of the way.
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="imggen-tests-airflow-home-")
os.environ.setdefault("AIRFLOW_HOME", _AIRFLOW_HOME)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

from airflow_provider_imggen.emulator import EmulatorConfig, EmulatorServer  # noqa: E402

API_KEY = "sk-test-4f9c2b7e1d"


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorConfig(api_key=API_KEY)) as server:
        yield server


@pytest.fixture
def emulator(emulator_server: EmulatorServer) -> Iterator[EmulatorServer]:
    """The session's emulator with faults and request log cleared before each test."""
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
