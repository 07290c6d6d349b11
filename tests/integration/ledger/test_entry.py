"""LedgerEntry and its JSON, and open_ledger_store's settings: no store involved."""

from __future__ import annotations

import json
import subprocess
import sys
import traceback
from dataclasses import FrozenInstanceError

import pytest

from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from airflow_provider_imggen.ledger import (
    LedgerEntry,
    LedgerEntryUnreadableError,
    StoredImage,
    make_owner,
    open_ledger_store,
    utc_now,
)
from airflow_provider_imggen.ledger.entry import MAX_ENTRY_BYTES
from airflow_provider_imggen.ledger.postgres import PostgresLedgerStore
from airflow_provider_imggen.ledger.s3 import S3LedgerStore
from tests.integration.ledger.conftest import claim, fingerprint

IMAGE = StoredImage(index=0, bucket="imggen-content", key="posters/0.png", sha256="ab" * 32, bytes=10)


@pytest.mark.parametrize(
    "entry",
    [
        claim("0" * 64),
        claim("f" * 64, state="billed", generation_task_id="t-1", request_id=None, request={}),
        claim(
            "1" * 64,
            state="stored",
            images=(IMAGE, StoredImage(index=3, bucket="b.c-d", key="ü/1.png", sha256="0" * 64, bytes=0)),
            request={"nested": {"list": [1, 2.5, None, True, "x"]}, "seed": -1},
            updated_at=utc_now(),
        ),
        claim(
            "2" * 64,
            state="released",
            owner=make_owner("d", "run/with/slashes", "t", 3, 12),
            claimed_at="2026-01-01T00:00:00Z",
            updated_at="2026-01-01T00:00:00.5+00:00",
        ),
    ],
)
def test_json_round_trip(entry: LedgerEntry) -> None:
    text = entry.to_json()
    assert text.isascii()
    assert LedgerEntry.from_json(text) == entry
    assert LedgerEntry.from_json(text.encode()) == entry
    assert LedgerEntry.from_dict(json.loads(text)) == entry


def test_an_entry_is_frozen_and_keeps_no_dict_of_its_caller() -> None:
    request = {"prompt": "a lighthouse", "sizes": ["1024*1024"]}
    entry = claim(fingerprint(), request=request)
    request["prompt"] = "changed"
    request["sizes"].append("x")  # type: ignore[attr-defined]
    assert entry.request == {"prompt": "a lighthouse", "sizes": ["1024*1024"]}
    with pytest.raises(FrozenInstanceError):
        entry.state = "billed"  # type: ignore[misc]
    assert hash(entry) == hash(claim(entry.fingerprint, request={}))  # request is not hashed


@pytest.mark.parametrize(
    ("fields", "parameter"),
    [
        ({"fingerprint": "A" * 64}, "fingerprint"),
        ({"state": "paid"}, "state"),
        ({"owner": "dag/run/task"}, "owner"),
        ({"owner": "dag/run/task/x/1"}, "owner"),
        ({"claimed_at": "2026-01-01T00:00:00"}, "claimed_at"),  # no zone
        ({"updated_at": "yesterday"}, "updated_at"),
        ({"updated_at": "20260101T000000Z"}, "updated_at"),  # basic form: Python reads it, PostgreSQL not
        ({"updated_at": "2026-13-01T00:00:00Z"}, "updated_at"),
        ({"updated_at": "2026-01-01T00:00:00-00:00"}, "updated_at"),
        ({"request_id": ""}, "request_id"),
        ({"request": {"n": float("inf")}}, "request"),
        ({"request": {1: "x"}}, "request"),
        ({"request": {"x": object()}}, "request"),
        ({"state": "stored"}, "images"),  # stored without images
        ({"images": (IMAGE,)}, "images"),  # images on a claim
        ({"state": "stored", "images": (IMAGE, IMAGE)}, "images"),  # one index twice
        ({"images": [IMAGE]}, "images"),
    ],
)
def test_an_entry_built_against_the_rules_is_refused(fields: dict, parameter: str) -> None:
    with pytest.raises(ImageGenerationValidationError, match=rf"Invalid {parameter}"):
        claim(fingerprint(), **fields)


def test_a_stored_image_built_against_the_rules_is_refused() -> None:
    with pytest.raises(ImageGenerationValidationError, match=r"image\.sha256"):
        StoredImage(index=0, bucket="imggen-content", key="k", sha256="xyz", bytes=1)
    with pytest.raises(ImageGenerationValidationError, match=r"image\.index"):
        StoredImage(index=True, bucket="imggen-content", key="k", sha256="0" * 64, bytes=1)


def test_from_json_refuses_large_input_before_parsing_it() -> None:
    with pytest.raises(LedgerEntryUnreadableError, match="larger than"):
        LedgerEntry.from_json(" " * (MAX_ENTRY_BYTES + 1))


def test_the_error_names_no_unknown_key() -> None:
    data = claim(fingerprint()).to_dict()
    data["SECRET_key"] = 1
    with pytest.raises(LedgerEntryUnreadableError) as caught:
        LedgerEntry.from_json(json.dumps(data))
    assert "SECRET" not in "".join(traceback.format_exception(caught.value))


@pytest.mark.parametrize(
    ("setting", "made"),
    [
        ("s3://aws_default@imggen-ledger/ledger", S3LedgerStore(bucket="imggen-ledger", prefix="ledger")),
        (
            "s3://my.aws-conn_1@imggen-ledger/a/b/",
            S3LedgerStore(aws_conn_id="my.aws-conn_1", bucket="imggen-ledger", prefix="a/b"),
        ),
        ("s3://aws_default@imggen-ledger", S3LedgerStore(bucket="imggen-ledger", prefix="")),
        (
            "postgres://ledger_db/billing.ledger",
            PostgresLedgerStore(postgres_conn_id="ledger_db", table="billing.ledger"),
        ),
        ("postgres://ledger_db", PostgresLedgerStore(postgres_conn_id="ledger_db")),
    ],
)
def test_open_ledger_store(setting: str, made: object) -> None:
    assert repr(open_ledger_store(setting)) == repr(made)


@pytest.mark.parametrize(
    ("setting", "parameter"),
    [
        ("", "ledger"),
        ("s3://imggen-ledger/ledger", "ledger"),  # no connection
        ("s3://@imggen-ledger/ledger", "ledger"),
        ("S3://aws_default@imggen-ledger", "ledger"),
        ("postgresql://db/ledger", "ledger"),
        ("postgres://user:password@host/db", "ledger"),  # a URI, not a connection id
        ("s3://aws_default@Imggen_Ledger/ledger", "bucket"),
        ("s3://aws_default@imggen-ledger/a//b", "prefix"),
        ("postgres://db/ledger;drop", "table"),
        (None, "ledger"),
    ],
)
def test_open_ledger_store_refuses_other_settings(setting: str, parameter: str) -> None:
    with pytest.raises(ImageGenerationValidationError, match=rf"Invalid {parameter}=") as caught:
        open_ledger_store(setting)
    if parameter == "ledger":
        assert "s3://<aws_conn_id>@<bucket>/<prefix>" in str(caught.value)


def test_importing_the_ledger_imports_no_provider_hook() -> None:
    """DAG files may import it: neither boto3 nor a PostgreSQL driver comes with it."""
    code = (
        "import sys, airflow_provider_imggen.ledger, airflow_provider_imggen.ledger.s3, "
        "airflow_provider_imggen.ledger.postgres\n"
        "heavy = ('boto3', 'botocore', 'psycopg', 'psycopg2', 'airflow.providers.amazon.aws.hooks.s3',"
        " 'airflow.providers.postgres.hooks.postgres')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
