"""
The ledger's stores against real parts: moto_server as S3 (tests/s3_fixtures.py) and a PostgreSQL server of
the machine, started once for the session (pg_server.py).

``ledger`` runs a test once per store, each with a fresh bucket or table, and a way to write whatever
bytes an editor of the store could (``Ledger.tamper``), past the store's own checks.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from airflow_provider_imggen.ledger import LedgerEntry, LedgerStore, make_owner, open_ledger_store
from tests.integration.ledger.pg_server import PostgresServer, find_initdb
from tests.s3_fixtures import S3Bucket

PG_CONN_ID = "ledger_pg"


def fingerprint() -> str:
    """A new fingerprint (the ledger never computes one: any sha256 hex will do)."""
    return uuid.uuid4().hex * 2


def claim(fp: str, *, owner: str | None = None, **fields: Any) -> LedgerEntry:
    """A ``claimed`` entry of ``fp``, other fields overridden by ``fields``."""
    values: dict[str, Any] = {
        "fingerprint": fp,
        "state": "claimed",
        "owner": owner or make_owner("content", "manual__2026-01-01T00:00:00+00:00", "generate", -1, 1),
        "claimed_at": "2026-01-01T00:00:00+00:00",
        "updated_at": "2026-01-01T00:00:00+00:00",
        "request": {"model": "wan2.2-t2i-flash", "prompt": "a lighthouse", "n": 2, "size": "1024*1024"},
    }
    values.update(fields)
    return LedgerEntry(**values)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    if find_initdb() is None:
        pytest.skip(
            "PostgreSQL's initdb is neither on PATH nor in /usr/lib/postgresql (apt-get install postgresql)"
        )
    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_conn(postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> PostgresServer:
    """The connection ``ledger_pg`` to the session's PostgreSQL, defined as a deployment would."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{PG_CONN_ID.upper()}", postgres_server.connection_json())
    return postgres_server


# PostgreSQL races: this many threads, each with a store (a connection) of its own.
RACERS = 8


@pytest.fixture
def racers(pg_conn: PostgresServer) -> Iterator[list[Any]]:
    """RACERS stores on one fresh table, each connected, for races released together (test_postgres.py)."""
    from airflow_provider_imggen.ledger.postgres import PostgresLedgerStore

    table = f"ledger_{uuid.uuid4().hex[:12]}"
    stores = [PostgresLedgerStore(postgres_conn_id=PG_CONN_ID, table=table) for _ in range(RACERS)]
    for store in stores:
        store.read(fingerprint())  # each connects (and finds the table) before the races
    yield stores
    for store in stores:
        store.close()


@dataclass
class Ledger:
    """A store under test, the setting that opened it, and a way to edit it behind its back."""

    kind: str
    setting: str
    store: LedgerStore
    # Write ``document`` (an entry's JSON, or anything) where the store keeps ``fingerprint``'s entry.
    tamper: Callable[[str, str], None]

    def open(self) -> LedgerStore:
        """Another store object on the same ledger (another worker)."""
        return open_ledger_store(self.setting)


def _s3_ledger(s3: S3Bucket) -> Ledger:
    setting = f"s3://aws_default@{s3.name}/ledger"

    def tamper(fp: str, document: str) -> None:
        # The store's own wrapping around the entry, so that only the entry is off.
        body = f'{{"ledger":1,"write":"{"0" * 32}","entry":{document}}}'
        s3.client.put_object(Bucket=s3.name, Key=f"ledger/{fp}.json", Body=body.encode())

    return Ledger("s3", setting, open_ledger_store(setting), tamper)


def _postgres_ledger(server: PostgresServer) -> Ledger:
    table = f"ledger_{uuid.uuid4().hex[:12]}"
    setting = f"postgres://{PG_CONN_ID}/{table}"
    store = open_ledger_store(setting)

    def tamper(fp: str, document: str) -> None:
        store.read(fingerprint())  # the store has created its table
        with server.connect() as conn:  # type: ignore[attr-defined]
            conn.execute(
                f"INSERT INTO {table} (fingerprint, version, entry) VALUES (%s, 1, %s::jsonb) "
                "ON CONFLICT (fingerprint) DO UPDATE SET entry = EXCLUDED.entry, version = "
                f"{table}.version + 1",
                (fp, document),
            )

    return Ledger("postgres", setting, store, tamper)


@pytest.fixture(params=["s3", "postgres"])
def ledger(request: pytest.FixtureRequest) -> Iterator[Ledger]:
    if request.param == "s3":
        made = _s3_ledger(request.getfixturevalue("s3"))
    else:
        made = _postgres_ledger(request.getfixturevalue("pg_conn"))
    try:
        yield made
    finally:
        made.store.close()


def entry_document(entry: LedgerEntry, **changes: Any) -> str:
    """``entry``'s JSON with fields changed (or removed, with the value ``...``), as an editor would."""
    data = entry.to_dict()
    for name, value in changes.items():
        if value is ...:
            del data[name]
        else:
            data[name] = value
    return json.dumps(data)
