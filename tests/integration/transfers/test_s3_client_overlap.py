"""The S3 client is built while the images download: a task's first one takes 0.3-0.6 s to build."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from airflow_provider_imggen.exceptions import ImageTransferRejectedError
from airflow_provider_imggen.transfers._s3 import ImageS3Hook
from airflow_provider_imggen.transfers.image_generation_to_s3 import BUILD_WAIT_ON_ERROR
from tests.integration.transfers.test_image_generation_to_s3 import (
    StaticServer,
    make_operator,
    png_bytes,
    run,
)
from tests.s3_fixtures import S3Bucket

HELD_SECONDS = 1.5


def test_the_client_is_built_beside_the_download(s3: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[tuple[float, str]] = []
    real_get_conn = ImageS3Hook.get_conn

    def watched_get_conn(self: ImageS3Hook) -> Any:
        builds.append((time.monotonic(), threading.current_thread().name))
        return real_get_conn(self)

    monkeypatch.setattr(ImageS3Hook, "get_conn", watched_get_conn)
    png = png_bytes()
    # hold_for=2 with one request: the server holds the answer for HELD_SECONDS.
    routes = {"/a.png": {"status": 200, "body": png}}
    with StaticServer(routes, hold_for=2, hold_seconds=HELD_SECONDS) as server:
        started = time.monotonic()
        (entry,) = run(make_operator(generation=server.url("/a.png"), s3_bucket=s3.name, s3_key="a.png"))
        finished = time.monotonic()

    first_build, thread_name = builds[0]
    assert thread_name == "imggen-s3-client"
    assert first_build - started < HELD_SECONDS / 2, "the client was built while the answer was held"
    assert finished - started >= HELD_SECONDS
    assert s3.read(entry["key"]) == png


def test_a_client_that_cannot_be_built_fails_the_task_after_the_download(
    s3: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_get_conn(self: ImageS3Hook) -> Any:
        raise RuntimeError("no AWS credentials here")

    monkeypatch.setattr(ImageS3Hook, "get_conn", broken_get_conn)
    routes = {"/a.png": {"status": 200, "body": png_bytes()}}
    with StaticServer(routes) as server, pytest.raises(RuntimeError, match="no AWS credentials"):
        run(make_operator(generation=server.url("/a.png"), s3_bucket=s3.name, s3_key="a.png"))
    assert s3.object_keys() == []
    assert not [thread for thread in threading.enumerate() if thread.name == "imggen-s3-client"]


def test_a_failing_task_does_not_wait_for_a_slow_client_build(
    s3: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build held up (a slow secrets backend) must not hold back a download's failure."""
    real_get_conn = ImageS3Hook.get_conn
    release = threading.Event()

    def slow_get_conn(self: ImageS3Hook) -> Any:
        release.wait(10)
        return real_get_conn(self)

    monkeypatch.setattr(ImageS3Hook, "get_conn", slow_get_conn)
    routes = {"/gone.png": {"status": 404, "body": b"missing"}}
    try:
        with StaticServer(routes) as server:
            started = time.monotonic()
            # {sha256} in the key: nothing can be looked up in S3 before the download.
            operator = make_operator(
                generation=server.url("/gone.png"), s3_bucket=s3.name, s3_key="{sha256}.png"
            )
            with pytest.raises(ImageTransferRejectedError, match="HTTP 404"):
                run(operator)
            failed_after = time.monotonic() - started
    finally:
        release.set()
    assert failed_after < BUILD_WAIT_ON_ERROR + 2.0, f"the failure waited {failed_after:.1f}s for the build"


def test_the_user_agent_still_names_the_operator(s3: S3Bucket) -> None:
    """AwsBaseHook finds the caller on the stack; the client's own thread has no execute() frame."""
    routes = {"/a.png": {"status": 200, "body": png_bytes()}}
    with StaticServer(routes) as server:
        operator = make_operator(generation=server.url("/a.png"), s3_bucket=s3.name, s3_key="a.png")
        run(operator)
    hook = operator.get_s3_hook()
    assert "Caller/ImageGenerationToS3Operator" in hook.get_conn().meta.config.user_agent_extra
