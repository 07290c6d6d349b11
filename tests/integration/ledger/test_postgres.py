"""
PostgresLedgerStore's own ways against a real PostgreSQL: its table, its races, a lost connection.

The races run 8 threads, each with a store object (a connection) of its own, released together by a
barrier: psycopg waits on the network without the GIL, so the statements meet in PostgreSQL itself.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from airflow_provider_imggen.ledger import LedgerStoreError, Version, open_ledger_store
from airflow_provider_imggen.ledger.postgres import PostgresLedgerStore
from tests.integration.ledger.conftest import PG_CONN_ID, RACERS, claim, fingerprint
from tests.integration.ledger.pg_server import PostgresServer

ROUNDS = 50


def new_table() -> str:
    return f"ledger_{uuid.uuid4().hex[:12]}"


def race(stores: list[PostgresLedgerStore], call: Callable[[int, PostgresLedgerStore], Any]) -> list[Any]:
    """``call(i, stores[i])`` in one thread per store, all released at once; their results, in order."""
    barrier = threading.Barrier(len(stores))
    results: list[Any] = [None] * len(stores)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait(timeout=30)
        try:
            results[i] = call(i, stores[i])
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return results


def owner(i: int) -> str:
    return f"content/run_{i}/generate/-1/1"


def test_concurrent_creates_of_one_fingerprint_have_exactly_one_winner(
    racers: list[PostgresLedgerStore],
) -> None:
    for _ in range(ROUNDS):
        fp = fingerprint()
        versions = race(racers, lambda i, store, fp=fp: store.create(claim(fp, owner=owner(i))))

        winners = [i for i, version in enumerate(versions) if version is not None]
        assert len(winners) == 1, f"{len(winners)} winners: {versions}"
        entry, version = racers[0].read(fp)  # type: ignore[misc]
        assert (entry.owner, version) == (owner(winners[0]), versions[winners[0]])


def test_concurrent_replaces_at_one_version_have_exactly_one_winner(
    racers: list[PostgresLedgerStore],
) -> None:
    for _ in range(ROUNDS):
        fp = fingerprint()
        v1 = racers[0].create(claim(fp))
        assert v1 is not None

        versions = race(
            racers,
            lambda i, store, fp=fp, v1=v1: store.replace(
                claim(fp, state="billed", request_id=f"req-{i}"), v1
            ),
        )

        winners = [i for i, version in enumerate(versions) if version is not None]
        assert len(winners) == 1, f"{len(winners)} winners: {versions}"
        entry, version = racers[0].read(fp)  # type: ignore[misc]
        assert (entry.request_id, version) == (f"req-{winners[0]}", versions[winners[0]])


def test_first_calls_of_many_stores_on_a_new_table_create_it_once(pg_conn: PostgresServer) -> None:
    """CREATE TABLE IF NOT EXISTS run by concurrent sessions can fail; the store serializes its creators."""
    for _ in range(5):
        table = new_table()
        stores = [PostgresLedgerStore(postgres_conn_id=PG_CONN_ID, table=table) for _ in range(RACERS)]
        fp = fingerprint()
        versions = race(stores, lambda i, store, fp=fp: store.create(claim(fp, owner=owner(i))))
        assert sum(version is not None for version in versions) == 1
        for store in stores:
            store.close()


def test_the_table_has_the_documented_columns(pg_conn: PostgresServer) -> None:
    table = new_table()
    store = open_ledger_store(f"postgres://{PG_CONN_ID}/{table}")
    fp = fingerprint()
    store.create(claim(fp))

    with pg_conn.connect() as conn:  # type: ignore[attr-defined]
        columns = conn.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_name = %s ORDER BY ordinal_position",
            (table,),
        ).fetchall()
        row = conn.execute(
            f"SELECT version, entry, updated_at FROM {table} WHERE fingerprint = %s", (fp,)
        ).fetchone()
        primary = conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary",
            (table,),
        ).fetchall()
    assert columns == [
        ("fingerprint", "text", "NO"),
        ("version", "bigint", "NO"),
        ("entry", "jsonb", "NO"),
        ("updated_at", "timestamp with time zone", "YES"),
    ]
    assert primary == [("fingerprint",)]
    assert row[0] == 1 and row[1] == claim(fp).to_dict()
    assert row[2] == datetime.fromisoformat(claim(fp).updated_at)
    store.close()


def test_a_schema_qualified_table(pg_conn: PostgresServer) -> None:
    schema = f"s_{uuid.uuid4().hex[:8]}"
    with pg_conn.connect() as conn:  # type: ignore[attr-defined]
        conn.execute(f"CREATE SCHEMA {schema}")
    with PostgresLedgerStore(postgres_conn_id=PG_CONN_ID, table=f"{schema}.ledger") as store:
        fp = fingerprint()
        version = store.create(claim(fp))
        assert store.read(fp) == (claim(fp), version)
    with pg_conn.connect() as conn:  # type: ignore[attr-defined]
        assert conn.execute(f"SELECT count(*) FROM {schema}.ledger").fetchone() == (1,)


@pytest.mark.parametrize(
    "table",
    ["imggen_ledger; DROP TABLE x", 'a"b', "Ledger", "a.b.c", "1ledger", "", "a" * 64, "public."],
)
def test_a_table_that_is_not_an_identifier_is_refused(table: str) -> None:
    with pytest.raises(ImageGenerationValidationError, match="table"):
        PostgresLedgerStore(postgres_conn_id=PG_CONN_ID, table=table)


@pytest.mark.parametrize("version", ["", "0", "01", "1.0", "x", "1; DROP TABLE x", "9" * 19, '"etag"'])
def test_a_version_that_is_not_one_of_its_own_is_refused(pg_conn: PostgresServer, version: str) -> None:
    with PostgresLedgerStore(postgres_conn_id=PG_CONN_ID, table=new_table()) as store:
        fp = fingerprint()
        store.create(claim(fp))
        with pytest.raises(ImageGenerationValidationError, match="expected"):
            store.replace(claim(fp, state="released"), Version(version))


def test_a_lost_connection_is_a_store_error_and_the_next_call_reconnects(pg_conn: PostgresServer) -> None:
    with PostgresLedgerStore(postgres_conn_id=PG_CONN_ID, table=new_table()) as store:
        fp = fingerprint()
        version = store.create(claim(fp))
        with pg_conn.connect() as conn:  # type: ignore[attr-defined]
            # Every session of the store's user but this one: the store's connection.
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE usename = current_user AND pid <> pg_backend_pid()"
            )

        with pytest.raises(LedgerStoreError, match="read"):
            store.read(fp)
        assert store.read(fp) == (claim(fp), version)


def test_an_unreachable_server_is_a_store_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.s3_fixtures import free_port

    monkeypatch.setenv(
        "AIRFLOW_CONN_LEDGER_PG_DOWN",
        f'{{"conn_type": "postgres", "host": "127.0.0.1", "port": {free_port()}, "login": "ledger"}}',
    )
    with pytest.raises(LedgerStoreError, match="create"):
        PostgresLedgerStore(postgres_conn_id="ledger_pg_down").create(claim(fingerprint()))
