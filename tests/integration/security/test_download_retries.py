"""
The transfer's downloads retry under the hooks' retry policy (retry_policy.RetryPolicy, billable=False):
the same statuses are transient for both, and a result host's Retry-After is honoured.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

import pytest

from airflow_provider_imggen.exceptions import ImageTransferError, ImageTransferRejectedError
from airflow_provider_imggen.retry_policy import classify_error
from tests.integration.security.conftest import Route, Server, image, use_gateway
from tests.integration.transfers.test_image_generation_to_s3 import make_operator, png_bytes, run
from tests.s3_fixtures import S3Bucket


def first_then(first: Route, then: Route) -> Route:
    """Answer the first request with ``first``, every later one with ``then``."""
    calls: list[int] = []

    def answer(handler: BaseHTTPRequestHandler) -> None:
        calls.append(1)
        (first if len(calls) == 1 else then)(handler)

    return answer


def failing(code: int, retry_after: str | None = None) -> Route:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(code)
        if retry_after is not None:
            handler.send_header("Retry-After", retry_after)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return answer


@pytest.mark.parametrize("code", [408, 429, 500, 502, 503, 504, 400, 404, 410, 425])
def test_a_status_is_transient_for_downloads_exactly_when_it_is_for_the_hooks(
    monkeypatch: pytest.MonkeyPatch, servers: Callable[..., Server], s3: S3Bucket, code: int
) -> None:
    png = png_bytes()
    host = servers({"/a.png": first_then(failing(code), image(png))})
    use_gateway(monkeypatch, host)
    transient = classify_error(code, None) is not None

    if transient:
        (entry,) = run(make_operator(generation=[host.url("/a.png")], s3_bucket=s3.name, s3_key="r.png"))
        assert s3.read(entry["key"]) == png
    else:
        with pytest.raises(ImageTransferRejectedError, match=f"HTTP {code}"):
            run(make_operator(generation=[host.url("/a.png")], s3_bucket=s3.name, s3_key="r.png"))
        assert s3.object_keys() == []
    assert len(host.gets()) == (2 if transient else 1)


def test_a_result_hosts_retry_after_is_honoured(
    monkeypatch: pytest.MonkeyPatch, servers: Callable[..., Server], s3: S3Bucket
) -> None:
    png = png_bytes()
    host = servers({"/a.png": first_then(failing(503, retry_after="1"), image(png))})
    use_gateway(monkeypatch, host)
    started = time.monotonic()

    # download_retry_wait is 0.01 s in these tests: the second attempt waits for the server's second.
    run(make_operator(generation=[host.url("/a.png")], s3_bucket=s3.name, s3_key="r.png"))

    assert time.monotonic() - started >= 0.95
    assert len(host.gets()) == 2 and s3.read("r.png") == png


def test_retries_stop_after_download_retries_with_a_retryable_error(
    monkeypatch: pytest.MonkeyPatch, servers: Callable[..., Server], s3: S3Bucket
) -> None:
    host = servers({"/a.png": failing(429)})
    use_gateway(monkeypatch, host)

    with pytest.raises(ImageTransferError, match=r"after 3 attempt\(s\): HTTP 429") as raised:
        run(
            make_operator(
                generation=[host.url("/a.png")], s3_bucket=s3.name, s3_key="r.png", download_retries=2
            )
        )
    assert not isinstance(raised.value, ImageTransferRejectedError), "a task retry may succeed"
    assert len(host.gets()) == 3 and s3.object_keys() == []
