"""The triggers' fixtures: a batch's connection, with a PostgreSQL ledger (tests/integration/ledger)."""

from __future__ import annotations

import uuid

import pytest

from airflow_provider_imggen.emulator import EmulatorServer
from tests.conftest import set_imggen_connection
from tests.integration.ledger.conftest import PG_CONN_ID, pg_conn, postgres_server  # noqa: F401 - fixtures

MODEL = "wan2.2-t2i-flash"


@pytest.fixture
def batch_conn(
    emulator: EmulatorServer, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> str:
    """``imggen_default`` on the emulator's task API with a PostgreSQL ledger of its own (a fresh table)."""
    request.getfixturevalue("pg_conn")
    setting = f"postgres://{PG_CONN_ID}/batch_{uuid.uuid4().hex[:10]}"
    set_imggen_connection(
        monkeypatch,
        emulator.base_url,
        default_model=MODEL,
        api_style="dashscope",
        max_retries=0,
        request_timeout=5,
        ledger=setting,
    )
    return setting
