"""
The ledger in PostgreSQL: one row per fingerprint, with a version counter the writes compare and set.

``create`` is one ``INSERT … ON CONFLICT (fingerprint) DO NOTHING RETURNING version``, ``replace`` one
``UPDATE … SET version = version + 1 … WHERE fingerprint = %s AND version = %s RETURNING version``: each a
single statement in autocommit, atomic in PostgreSQL itself (a concurrent writer waits on the row lock,
then finds the key taken or the version moved, and gets no row back). The version is that counter.

The table is created on the first call of each store object, under a transaction-scoped advisory lock:
``CREATE TABLE IF NOT EXISTS`` alone can fail when two sessions run it at once.

The postgres provider (and its driver, psycopg 3 or psycopg2) is imported when the first call connects,
not with this module; install the ``postgres`` extra.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import TYPE_CHECKING, Any

from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from airflow_provider_imggen.ledger.entry import (
    LedgerEntry,
    LedgerEntryUnreadableError,
    check_fingerprint,
    is_fingerprint,
)
from airflow_provider_imggen.ledger.store import LedgerStoreError, Version

if TYPE_CHECKING:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

log = logging.getLogger(__name__)

# Unquoted PostgreSQL identifiers, optionally schema-qualified: the only text ever put into the SQL itself.
_TABLE = re.compile(r"[a-z_][a-z0-9_]{0,62}(\.[a-z_][a-z0-9_]{0,62})?")
_VERSION = re.compile(r"[1-9][0-9]{0,17}")


class PostgresLedgerStore:
    """
    The ledger as rows of a PostgreSQL table
    ``(fingerprint text primary key, version bigint not null, entry jsonb not null, updated_at timestamptz)``.

    Each store object holds one connection, opened on its first call; calls from several threads take turns
    on it. :meth:`close` closes it (a later call opens a new one).

    :param postgres_conn_id: the Airflow connection to the database (a ``postgres`` connection)
    :param table: the table, ``name`` or ``schema.name`` (lowercase letters, digits, ``_``); created if
        absent
    """

    def __init__(self, *, postgres_conn_id: str = "postgres_default", table: str = "imggen_ledger") -> None:
        if not isinstance(table, str) or not _TABLE.fullmatch(table):
            raise ImageGenerationValidationError(
                "table", table, "a table name, or schema.table, of lowercase letters, digits and _"
            )
        self.postgres_conn_id = postgres_conn_id
        self.table = table
        quoted = ".".join(f'"{part}"' for part in table.split("."))
        self._create_table = (
            f"CREATE TABLE IF NOT EXISTS {quoted} (fingerprint text PRIMARY KEY, version bigint NOT NULL, "
            "entry jsonb NOT NULL, updated_at timestamptz)"
        )
        self._select = f"SELECT version, entry::text FROM {quoted} WHERE fingerprint = %s"
        self._insert = (
            f"INSERT INTO {quoted} (fingerprint, version, entry, updated_at) "
            "VALUES (%s, 1, %s::jsonb, %s::timestamptz) "
            "ON CONFLICT (fingerprint) DO NOTHING RETURNING version"
        )
        self._update = (
            f"UPDATE {quoted} SET version = version + 1, entry = %s::jsonb, updated_at = %s::timestamptz "
            "WHERE fingerprint = %s AND version = %s RETURNING version"
        )
        self._list = f"SELECT fingerprint FROM {quoted} ORDER BY fingerprint"
        self._conn: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PostgresLedgerStore(postgres_conn_id={self.postgres_conn_id!r}, table={self.table!r})"

    def read(self, fingerprint: str) -> tuple[LedgerEntry, Version] | None:
        row = self._one("read", self._select, (check_fingerprint(fingerprint),))
        if row is None:
            return None
        version, text = row
        source = f"PostgreSQL table {self.table}, fingerprint {fingerprint}"
        entry = LedgerEntry.from_json(text, source=source)
        if entry.fingerprint != fingerprint:
            # A row whose entry was copied from another: it describes another request.
            raise LedgerEntryUnreadableError("fingerprint: is not the one of its row", source=source)
        return entry, Version(str(version))

    def create(self, entry: LedgerEntry) -> Version | None:
        row = self._one("create", self._insert, (entry.fingerprint, entry.to_json(), entry.updated_at))
        if row is None:
            log.info("Ledger create of %s lost: the fingerprint has an entry", entry.fingerprint)
            return None
        return Version(str(row[0]))

    def replace(self, entry: LedgerEntry, expected: Version) -> Version | None:
        if not isinstance(expected, str) or not _VERSION.fullmatch(expected):
            raise ImageGenerationValidationError("expected", expected, "a version this store returned")
        row = self._one(
            "replace", self._update, (entry.to_json(), entry.updated_at, entry.fingerprint, int(expected))
        )
        if row is None:
            log.info("Ledger replace of %s lost: not at version %s", entry.fingerprint, expected)
            return None
        return Version(str(row[0]))

    def fingerprints(self) -> list[str]:
        """Every fingerprint with an entry (for reports: :mod:`~airflow_provider_imggen.cost_report`)."""
        with self._lock:
            try:
                with self._connection().cursor() as cursor:
                    cursor.execute(self._list)
                    rows = cursor.fetchall()
            except Exception as error:
                self._drop_if_broken()
                raise LedgerStoreError(
                    f"Ledger listing of PostgreSQL table {self.table} failed: {type(error).__name__}: {error}"
                ) from error
        return [row[0] for row in rows if is_fingerprint(row[0])]

    def close(self) -> None:
        """Close the connection, if open."""
        with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                conn.close()

    def __enter__(self) -> PostgresLedgerStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _one(self, action: str, sql: str, params: tuple[object, ...]) -> tuple[Any, ...] | None:
        """Run one statement (autocommit: it is its own transaction) and return its first row."""
        with self._lock:
            try:
                conn = self._connection()
                with conn.cursor() as cursor:
                    cursor.execute(sql, params)
                    row = cursor.fetchone()
            except Exception as error:
                self._drop_if_broken()
                # The drivers' messages name the server and the statement's failure, never the password.
                raise LedgerStoreError(
                    f"Ledger {action} in PostgreSQL table {self.table} failed: "
                    f"{type(error).__name__}: {error}"
                ) from error
            return None if row is None else tuple(row)

    def _connection(self) -> Any:
        if self._conn is None:
            # Any: the hook's CompatConnection type names no autocommit, which both drivers have.
            conn: Any = self._hook().get_conn()
            try:
                with conn.cursor() as cursor:
                    # One creator at a time, for this table only; the lock ends with the transaction.
                    cursor.execute(
                        "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"imggen-ledger:{self.table}",)
                    )
                    cursor.execute(self._create_table)
                conn.commit()
                conn.autocommit = True
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _drop_if_broken(self) -> None:
        # In autocommit a failed statement leaves nothing to roll back; a lost connection is reopened by
        # the next call.
        if self._conn is not None and self._conn.closed:
            self._conn = None

    def _hook(self) -> PostgresHook:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        return PostgresHook(postgres_conn_id=self.postgres_conn_id)
