"""S3LedgerStore's own ways against moto_server: its objects, its conditional writes, S3's failures."""

from __future__ import annotations

import json
import traceback

import pytest

from airflow_provider_imggen.ledger import LedgerEntryUnreadableError, LedgerStoreError
from airflow_provider_imggen.ledger.entry import MAX_ENTRY_BYTES
from airflow_provider_imggen.ledger.s3 import S3LedgerStore
from tests.integration.ledger.conftest import claim, fingerprint
from tests.s3_fixtures import S3Bucket

SECRET = "SECRET_sk-live-0123456789abcdef"


@pytest.fixture
def store(s3: S3Bucket) -> S3LedgerStore:
    return S3LedgerStore(aws_conn_id="aws_default", bucket=s3.name, prefix="/ledger/v1/")


def test_one_object_per_fingerprint_under_the_prefix_its_etag_the_version(
    store: S3LedgerStore, s3: S3Bucket
) -> None:
    fp = fingerprint()
    version = store.create(claim(fp))

    assert s3.object_keys() == [f"ledger/v1/{fp}.json"]
    head = s3.head(f"ledger/v1/{fp}.json")
    assert head["ETag"] == version
    assert head["ContentType"] == "application/json"
    body = json.loads(s3.read(f"ledger/v1/{fp}.json"))
    assert body["entry"] == claim(fp).to_dict()


def test_an_empty_prefix_is_the_top_level(s3: S3Bucket) -> None:
    fp = fingerprint()
    S3LedgerStore(bucket=s3.name, prefix="").create(claim(fp))
    assert s3.object_keys() == [f"{fp}.json"]


def _put(s3: S3Bucket, fp: str, body: bytes) -> None:
    s3.client.put_object(Bucket=s3.name, Key=f"ledger/v1/{fp}.json", Body=body)


@pytest.mark.parametrize(
    "body",
    [
        f'{{"entry": "{SECRET}"'.encode(),  # cut short
        SECRET.encode(),
        b"\xff\xfe" + SECRET.encode(),  # not UTF-8
        json.dumps({"ledger": 1, "write": "0" * 32}).encode(),  # no entry
        json.dumps({"ledger": 2, "write": "0" * 32, "entry": {}}).encode(),
        json.dumps({"ledger": True, "write": "0" * 32, "entry": {}}).encode(),
        json.dumps({"ledger": 1, "write": SECRET, "entry": {}}).encode(),
        b'{"ledger":1,"write":"' + b"0" * 32 + b'","entry":{},"entry":{}}',  # a key twice
        b'{"ledger":1,"write":"' + b"0" * 32 + b'","entry":NaN}',
        b"[" * 100_000,  # deeper than Python's recursion
        b'{"ledger":' + b"9" * 5000 + b"}",  # more digits than Python converts
    ],
    ids=[
        "cut short",
        "not JSON",
        "not UTF-8",
        "no entry",
        "unknown wrapping",
        "wrapping a boolean",
        "write token not hex",
        "a key twice",
        "NaN",
        "nested too deep",
        "a huge number",
    ],
)
def test_an_object_that_is_not_an_entry_is_refused_without_its_content(
    store: S3LedgerStore, s3: S3Bucket, body: bytes
) -> None:
    fp = fingerprint()
    _put(s3, fp, body)

    with pytest.raises(LedgerEntryUnreadableError) as caught:
        store.read(fp)

    # The traceback a task log would show, chained exceptions included (a JSONDecodeError holds the document).
    shown = "".join(traceback.format_exception(caught.value)) + repr(caught.value)
    assert SECRET not in shown
    assert f"s3://{s3.name}/ledger/v1/{fp}.json" in shown


def test_an_object_too_large_is_refused_unread(store: S3LedgerStore, s3: S3Bucket) -> None:
    fp = fingerprint()
    _put(s3, fp, b" " * (MAX_ENTRY_BYTES + 1))
    with pytest.raises(LedgerEntryUnreadableError, match="larger than"):
        store.read(fp)


def test_a_missing_bucket_is_a_store_error_not_an_absent_entry(s3: S3Bucket) -> None:
    missing = S3LedgerStore(bucket=f"{s3.name}-missing", prefix="ledger")
    fp = fingerprint()
    with pytest.raises(LedgerStoreError, match="NoSuchBucket"):
        missing.read(fp)
    with pytest.raises(LedgerStoreError, match="NoSuchBucket"):
        missing.create(claim(fp))


def test_an_s3_that_cannot_be_reached_is_a_store_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.s3_fixtures import aws_connection, free_port

    monkeypatch.setenv("AIRFLOW_CONN_AWS_LEDGER_DOWN", aws_connection(f"http://127.0.0.1:{free_port()}"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(LedgerStoreError, match="create"):
        S3LedgerStore(aws_conn_id="aws_ledger_down", bucket="imggen-ledger").create(claim(fingerprint()))


@pytest.mark.parametrize(
    ("argument", "value"),
    [("bucket", "Not_A_Bucket"), ("bucket", "ab"), ("prefix", "a//b"), ("prefix", "a b"), ("prefix", "ä")],
)
def test_invalid_arguments_are_refused_at_construction(argument: str, value: str) -> None:
    from airflow_provider_imggen.exceptions import ImageGenerationValidationError

    kwargs = {"bucket": "imggen-ledger", "prefix": "ledger", argument: value}
    with pytest.raises(ImageGenerationValidationError, match=argument):
        S3LedgerStore(**kwargs)
