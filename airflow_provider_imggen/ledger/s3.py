"""
The ledger in S3: one JSON object per fingerprint, written by S3's conditional writes.

``create`` is ``PutObject`` with ``If-None-Match: *`` (S3 writes only if the key is free), ``replace`` is
``PutObject`` with ``If-Match: <ETag>`` (only if the object is still the one read); S3 refuses the loser of
a race with 412 ``PreconditionFailed`` or 409 ``ConditionalRequestConflict``. The version is the ETag.

An ETag is the MD5 of the object's bytes, so two writes of the same bytes would share one, and a replacer
holding the first one's ETag would win against the second. Each object therefore wraps the entry with a
random ``write`` token: every write has an ETag of its own, as every PostgreSQL write has a version.

The amazon provider (boto3) is imported when the first call needs a client, not with this module.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
from typing import TYPE_CHECKING, Any

from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from airflow_provider_imggen.ledger.entry import (
    MAX_ENTRY_BYTES,
    LedgerEntry,
    LedgerEntryUnreadableError,
    check_fingerprint,
    is_fingerprint,
    load_json,
)
from airflow_provider_imggen.ledger.store import LedgerStoreError, Version

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

log = logging.getLogger(__name__)

# S3 refusing a conditional write: the key is taken (If-None-Match), the ETag changed (If-Match), or a
# concurrent conditional write to the same key is in flight (409).
_LOST_RACE = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_ABSENT = frozenset({"NoSuchKey", "404"})
_ENVELOPE = ("ledger", "write", "entry")
_WRITE_TOKEN = re.compile(r"[0-9a-f]{32}")
_PREFIX = re.compile(r"[A-Za-z0-9!_.*'()/-]{0,512}")


class S3LedgerStore:
    """
    The ledger as objects ``<prefix>/<fingerprint>.json`` in an S3 bucket.

    :param aws_conn_id: the Airflow connection to S3 (an ``aws`` connection)
    :param bucket: the bucket holding the ledger
    :param prefix: the key prefix of the entries (``""``: the bucket's top level); leading and trailing
        ``/`` are dropped
    """

    def __init__(
        self, *, aws_conn_id: str = "aws_default", bucket: str, prefix: str = "imggen-ledger"
    ) -> None:
        if not isinstance(bucket, str) or not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            raise ImageGenerationValidationError(
                "bucket", bucket, "an S3 bucket name (3 to 63 of a-z 0-9 . -)"
            )
        prefix = prefix.strip("/") if isinstance(prefix, str) else prefix
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix) or "//" in prefix:
            raise ImageGenerationValidationError(
                "prefix", prefix, "S3 key characters (A-Z a-z 0-9 ! _ . * ' ( ) / -), no empty segment"
            )
        self.aws_conn_id = aws_conn_id
        self.bucket = bucket
        self.prefix = prefix
        self._client: Any = None
        # Building the boto3 client is not thread-safe; using it is.
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"S3LedgerStore(aws_conn_id={self.aws_conn_id!r}, bucket={self.bucket!r}, prefix={self.prefix!r})"
        )

    def key(self, fingerprint: str) -> str:
        """The object key of ``fingerprint``'s entry."""
        name = f"{check_fingerprint(fingerprint)}.json"
        return f"{self.prefix}/{name}" if self.prefix else name

    def read(self, fingerprint: str) -> tuple[LedgerEntry, Version] | None:
        key = self.key(fingerprint)
        source = f"s3://{self.bucket}/{key}"
        try:
            answer = self._s3().get_object(Bucket=self.bucket, Key=key)
        except Exception as error:
            if _code(error) in _ABSENT:
                return None
            raise _store_error("read", source, error) from error
        if answer.get("ContentLength", 0) > MAX_ENTRY_BYTES:
            answer["Body"].close()
            raise LedgerEntryUnreadableError(f"larger than {MAX_ENTRY_BYTES} bytes", source=source)
        try:
            body = answer["Body"].read(MAX_ENTRY_BYTES + 1)
        except Exception as error:
            raise _store_error("read", source, error) from error
        finally:
            answer["Body"].close()
        entry = _unwrap(body, source)
        if entry.fingerprint != fingerprint:
            # An entry copied under another fingerprint's key: it describes another request.
            raise LedgerEntryUnreadableError("fingerprint: is not the one of its key", source=source)
        return entry, Version(answer["ETag"])

    def fingerprints(self) -> list[str]:
        """Every fingerprint with an entry (for reports: :mod:`~airflow_provider_imggen.cost_report`)."""
        below = f"{self.prefix}/" if self.prefix else ""
        found = []
        try:
            pages = self._s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=below)
            for page in pages:
                for item in page.get("Contents", ()):
                    name = item["Key"][len(below) :]
                    if name.endswith(".json") and is_fingerprint(name[: -len(".json")]):
                        found.append(name[: -len(".json")])
        except Exception as error:
            raise _store_error("listing", f"s3://{self.bucket}/{below}", error) from error
        return found

    def create(self, entry: LedgerEntry) -> Version | None:
        return self._put(entry, {"IfNoneMatch": "*"}, "create")

    def replace(self, entry: LedgerEntry, expected: Version) -> Version | None:
        if not isinstance(expected, str) or not expected:
            raise ImageGenerationValidationError("expected", expected, "a version this store returned")
        return self._put(entry, {"IfMatch": expected}, "replace")

    def close(self) -> None:
        """Drop the client (a later call builds a new one); boto3 clients hold pooled connections."""
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> S3LedgerStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _put(self, entry: LedgerEntry, condition: dict[str, str], action: str) -> Version | None:
        key = self.key(entry.fingerprint)
        body = json.dumps(
            {"ledger": 1, "write": secrets.token_hex(16), "entry": entry.to_dict()},
            sort_keys=True,
            allow_nan=False,
            separators=(",", ":"),
        ).encode("ascii")
        try:
            answer = self._s3().put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType="application/json", **condition
            )
        except Exception as error:
            code = _code(error)
            # NoSuchKey on If-Match: the entry was removed since it was read, a change like any other.
            if code in _LOST_RACE or (action == "replace" and code in _ABSENT):
                log.info("Ledger %s of %s lost to another writer (%s)", action, entry.fingerprint, code)
                return None
            raise _store_error(action, f"s3://{self.bucket}/{key}", error) from error
        return Version(answer["ETag"])

    def _s3(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = self._hook().get_conn()
            return self._client

    def _hook(self) -> S3Hook:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return S3Hook(aws_conn_id=self.aws_conn_id)


def _unwrap(body: bytes, source: str) -> LedgerEntry:
    data = load_json(body, source=source)
    if not isinstance(data, dict) or sorted(data) != sorted(_ENVELOPE):
        raise LedgerEntryUnreadableError(f"must be a JSON object of {', '.join(_ENVELOPE)}", source=source)
    if data["ledger"] != 1 or isinstance(data["ledger"], bool):
        raise LedgerEntryUnreadableError("ledger: must be 1", source=source)
    if not isinstance(data["write"], str) or not _WRITE_TOKEN.fullmatch(data["write"]):
        raise LedgerEntryUnreadableError("write: must be 32 lowercase hex digits", source=source)
    return LedgerEntry.from_dict(data["entry"], source=source)


def _code(error: BaseException) -> str | None:
    """The S3 error code of a botocore ``ClientError`` (``None`` for any other error)."""
    response = getattr(error, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code")
    return str(code) if code is not None else None


def _store_error(action: str, source: str, error: BaseException) -> LedgerStoreError:
    # botocore's messages name the operation and S3's error code, never the credentials.
    return LedgerStoreError(f"Ledger {action} at {source} failed: {type(error).__name__}: {error}")
