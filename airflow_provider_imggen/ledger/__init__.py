"""
The billing ledger's durable store: what each generation request (by fingerprint) cost and where its
images are, across Airflow runs, so that two runs asking for the same request pay once.

This package holds the storage only: :class:`~airflow_provider_imggen.ledger.entry.LedgerEntry` (what is
stored), :class:`~airflow_provider_imggen.ledger.store.LedgerStore` (read, create-if-absent,
replace-if-unchanged) and its two implementations, in S3 (:mod:`.s3`) and PostgreSQL (:mod:`.postgres`).
Importing it imports neither the amazon nor the postgres provider: a store imports its provider on its
first call.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from airflow_provider_imggen.ledger.entry import (
    STATES,
    LedgerEntry,
    LedgerEntryUnreadableError,
    LedgerState,
    StoredImage,
    is_fingerprint,
    make_owner,
    utc_now,
)
from airflow_provider_imggen.ledger.store import LedgerStore, LedgerStoreError, Version

if TYPE_CHECKING:
    from airflow_provider_imggen.ledger.postgres import PostgresLedgerStore
    from airflow_provider_imggen.ledger.s3 import S3LedgerStore

__all__ = [
    "STATES",
    "LedgerEntry",
    "LedgerEntryUnreadableError",
    "LedgerState",
    "LedgerStore",
    "LedgerStoreError",
    "StoredImage",
    "Version",
    "is_fingerprint",
    "make_owner",
    "open_ledger_store",
    "utc_now",
]

_CONN_ID = r"[A-Za-z0-9_.-]{1,250}"
_S3_SETTING = re.compile(rf"s3://(?P<conn_id>{_CONN_ID})@(?P<bucket>[^/]+)(?:/(?P<prefix>.*))?")
_POSTGRES_SETTING = re.compile(rf"postgres://(?P<conn_id>{_CONN_ID})(?:/(?P<table>.*))?")
_ALLOWED = (
    "s3://<aws_conn_id>@<bucket>/<prefix> (the prefix may be empty) or "
    "postgres://<postgres_conn_id>/<table> (the table may be left out: imggen_ledger)"
)


def open_ledger_store(setting: str) -> S3LedgerStore | PostgresLedgerStore:
    """
    The ledger store a setting names (a connection extra, an operator argument, a trigger's kwargs: a
    trigger serializes the setting, never the store).

    - ``s3://<aws_conn_id>@<bucket>/<prefix>``: objects ``<prefix>/<fingerprint>.json`` in ``bucket``,
      through the aws connection ``aws_conn_id``; ``s3://aws_default@my-bucket/imggen-ledger``. An empty
      prefix (``s3://aws_default@my-bucket``) puts them at the bucket's top level.
    - ``postgres://<postgres_conn_id>/<table>``: rows of ``table`` (``name`` or ``schema.name``, created
      if absent) through the postgres connection ``postgres_conn_id``; ``postgres://ledger_db/imggen_ledger``.
      Without ``/<table>``: ``imggen_ledger``.

    Nothing is connected here: the store connects on its first call.

    :param setting: the setting
    :raises ImageGenerationValidationError: the setting is neither form, or names an invalid bucket, prefix
        or table
    """
    if not isinstance(setting, str):
        raise ImageGenerationValidationError("ledger", setting, _ALLOWED)
    if match := _S3_SETTING.fullmatch(setting):
        from airflow_provider_imggen.ledger.s3 import S3LedgerStore

        return S3LedgerStore(
            aws_conn_id=match["conn_id"], bucket=match["bucket"], prefix=match["prefix"] or ""
        )
    if match := _POSTGRES_SETTING.fullmatch(setting):
        from airflow_provider_imggen.ledger.postgres import PostgresLedgerStore

        return PostgresLedgerStore(postgres_conn_id=match["conn_id"], table=match["table"] or "imggen_ledger")
    raise ImageGenerationValidationError("ledger", setting, _ALLOWED)
