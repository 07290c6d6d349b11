"""
Atomic no-overwrite: with replace=False every write is conditional (If-None-Match: *), so of two concurrent
writers of one key exactly one creates the object; the loser compares checksums.

moto (5.2.5, in-process and moto_server) honours If-None-Match="*" on PutObject and
CompleteMultipartUpload, but moto_server checks and writes without a lock, so two truly concurrent writes
can both pass there; the race tests run against moto's S3 app serving one request at a time
(``atomic_s3``), which is what S3 guarantees for each conditional write.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import Any

import pytest

from airflow_provider_imggen.exceptions import ImageTransferRejectedError
from airflow_provider_imggen.transfers.upload import Uploader
from tests.integration.security.conftest import Server, image, use_gateway
from tests.integration.transfers.test_image_generation_to_s3 import make_operator, png_bytes, run
from tests.s3_fixtures import S3Bucket

MiB = 1024 * 1024


def big_png(size: int, seed: int) -> bytes:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[3] / "benchmarks"))
    import transfer_bench_common

    return transfer_bench_common.png_of_size(size, seed=seed)


def race(
    monkeypatch: pytest.MonkeyPatch,
    servers: Callable[..., Server],
    s3: S3Bucket,
    bodies: list[bytes],
) -> list[Any]:
    """Two transfers of ``bodies`` to one key, released together once both have planned their upload."""
    api = servers({f"/results/{i}.png": image(body) for i, body in enumerate(bodies)})
    use_gateway(monkeypatch, api)
    barrier = threading.Barrier(len(bodies), timeout=30)
    real_upload = Uploader.upload

    def upload_together(self: Uploader, plan: Any) -> bool:
        barrier.wait()  # both saw a free key: now both write
        return real_upload(self, plan)

    monkeypatch.setattr(Uploader, "upload", upload_together)
    outcomes: list[Any] = [None] * len(bodies)

    def transfer(i: int) -> None:
        operator = make_operator(
            generation=api.url(f"/results/{i}.png"), s3_bucket=s3.name, s3_key="same.png"
        )
        try:
            outcomes[i] = run(operator)[0]
        except Exception as error:
            outcomes[i] = error

    threads = [threading.Thread(target=transfer, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcomes


@pytest.mark.parametrize("size", [0, 9 * MiB], ids=["put-object", "multipart"])
def test_two_concurrent_writers_of_different_bytes_one_wins_the_other_fails_on_the_checksum(
    monkeypatch: pytest.MonkeyPatch, servers: Callable[..., Server], atomic_s3: S3Bucket, size: int
) -> None:
    s3 = atomic_s3
    bodies = [big_png(size, seed) for seed in (1, 2)] if size else [png_bytes(10, 10), png_bytes(11, 10)]

    outcomes = race(monkeypatch, servers, s3, bodies)

    winners = [outcome for outcome in outcomes if isinstance(outcome, dict)]
    losers = [outcome for outcome in outcomes if isinstance(outcome, Exception)]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    (winner,), (loser,) = winners, losers
    assert isinstance(loser, ImageTransferRejectedError)
    assert f"s3://{s3.name}/same.png" in str(loser) and "checksum differs" in str(loser)
    stored = s3.read("same.png")
    assert hashlib.sha256(stored).hexdigest() == winner["sha256"] == s3.head("same.png")["Metadata"]["sha256"]
    assert winner["skipped"] is False
    assert s3.object_keys() == ["same.png"]


def test_two_concurrent_writers_of_the_same_bytes_store_it_once_and_the_loser_skips(
    monkeypatch: pytest.MonkeyPatch, servers: Callable[..., Server], atomic_s3: S3Bucket
) -> None:
    s3 = atomic_s3
    body = png_bytes(12, 12)

    outcomes = race(monkeypatch, servers, s3, [body, body])

    assert all(isinstance(outcome, dict) for outcome in outcomes), outcomes
    assert sorted(outcome["skipped"] for outcome in outcomes) == [False, True]
    assert s3.read("same.png") == body


def test_a_write_racing_past_the_plan_is_conditional_on_moto_server_too(
    monkeypatch: pytest.MonkeyPatch, servers: Callable[..., Server], s3: S3Bucket
) -> None:
    """The object appears between the plan and the upload (not concurrently): moto_server refuses it."""
    api = servers({"/results/a.png": image(png_bytes(9, 9))})
    use_gateway(monkeypatch, api)
    real_upload = Uploader.upload

    def someone_else_first(self: Uploader, plan: Any) -> bool:
        s3.client.put_object(Bucket=s3.name, Key=plan.key, Body=b"someone else's bytes")
        return real_upload(self, plan)

    monkeypatch.setattr(Uploader, "upload", someone_else_first)
    operator = make_operator(generation=api.url("/results/a.png"), s3_bucket=s3.name, s3_key="k.png")
    with pytest.raises(ImageTransferRejectedError, match=r"s3://.*/k\.png.*checksum differs"):
        run(operator)
    assert s3.read("k.png") == b"someone else's bytes"


def test_moto_in_process_honours_if_none_match_too() -> None:
    import boto3
    from botocore.exceptions import ClientError
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="bucket-b")
        client.put_object(Bucket="bucket-b", Key="k", Body=b"first", IfNoneMatch="*")
        with pytest.raises(ClientError, match="PreconditionFailed"):
            client.put_object(Bucket="bucket-b", Key="k", Body=b"second", IfNoneMatch="*")
        upload = client.create_multipart_upload(Bucket="bucket-b", Key="k")
        part = client.upload_part(
            Bucket="bucket-b", Key="k", UploadId=upload["UploadId"], PartNumber=1, Body=b"x"
        )
        with pytest.raises(ClientError, match="PreconditionFailed"):
            client.complete_multipart_upload(
                Bucket="bucket-b",
                Key="k",
                UploadId=upload["UploadId"],
                MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
                IfNoneMatch="*",
            )
        assert client.get_object(Bucket="bucket-b", Key="k")["Body"].read() == b"first"
