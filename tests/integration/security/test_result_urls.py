"""
The result-URL policy against hostile servers on loopback: one test per attack of issue 12 and per rule.

A hostile gateway (the imggen connection's origin) hands out result URLs; what the transfer fetches, where
it connects, what it stores and what it prints are checked against real servers that record every request.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from typing import Any

import pytest

from airflow_provider_imggen.exceptions import (
    ImageGenerationMalformedResponseError,
    ImageResultUrlRefusedError,
    ImageTransferError,
    ImageTransferRejectedError,
)
from tests.conftest import API_KEY
from tests.integration.security.conftest import (
    RESULT_STORES_2026,
    Names,
    Server,
    drip,
    gateway_answer,
    image,
    redirect,
    status,
    use_gateway,
)
from tests.integration.transfers.test_image_generation_to_s3 import (
    StubTaskInstance,
    generate,
    make_operator,
    png_bytes,
    run,
)
from tests.s3_fixtures import S3Bucket

PNG = png_bytes(32, 24)
SECRET_BODY = b'{"admin_token": "tok-9f8e7d6c5b4a", "users": ["root"]}'


@pytest.fixture
def hostile(servers: Callable[..., Server]) -> Callable[[list[str]], Server]:
    """A gateway whose every generation answer carries the given result URLs."""

    def start(urls: list[str], request_id: str = "req-0001") -> Server:
        return servers({}, post=gateway_answer(urls, request_id))

    return start


def transfer(
    monkeypatch: pytest.MonkeyPatch,
    gateway: Server,
    s3: S3Bucket,
    *,
    s3_key: str = "r/{index}.{ext}",
    ti: StubTaskInstance | None = None,
    **extra: object,
) -> list[dict[str, Any]]:
    use_gateway(monkeypatch, gateway, **extra)
    generation = generate(n=1)
    return run(make_operator(generation=generation, s3_bucket=s3.name, s3_key=s3_key, download_retries=0), ti)


def output(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> str:
    captured = capsys.readouterr()
    return captured.out + captured.err + caplog.text


# -- rule: the API's own origin is trusted; anything else must be https ---------------------------------


def test_a_url_on_the_apis_own_origin_is_fetched_over_http(
    monkeypatch: pytest.MonkeyPatch, servers: Callable[..., Server], s3: S3Bucket
) -> None:
    """The gateway serves its own results (as the emulator does): trusted as the API is, plain http too."""
    api = servers({"/results/a.png": image(PNG)})
    api.post = gateway_answer([api.url("/results/a.png?Expires=9999999999&Signature=s1gn")])

    (entry,) = transfer(monkeypatch, api, s3)

    assert s3.read(entry["key"]) == PNG
    (request,) = api.gets()
    assert "Authorization" not in request["headers"] and API_KEY not in str(request["headers"])


def test_a_url_at_another_local_service_is_refused_without_a_connection(
    monkeypatch: pytest.MonkeyPatch,
    servers: Callable[..., Server],
    hostile: Callable[..., Server],
    s3: S3Bucket,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    internal = servers({"/admin": status(200, SECRET_BODY)}, host="127.0.0.2")
    gateway = hostile([internal.url("/admin?token=x")])

    with pytest.raises(ImageResultUrlRefusedError) as raised:
        transfer(monkeypatch, gateway, s3)

    assert raised.value.rule == "scheme"
    assert "result-URL policy (scheme)" in str(raised.value)
    assert internal.requests == [], "no connection to the refused target"
    assert s3.object_keys() == []
    text = output(capsys, caplog) + str(raised.value)
    assert "tok-9f8e7d6c5b4a" not in text and "token=x" not in text


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/a.png", "gopher://127.0.0.1:70/_x"])
def test_other_schemes_are_refused(
    monkeypatch: pytest.MonkeyPatch, hostile: Callable[..., Server], s3: S3Bucket, url: str
) -> None:
    # The hook already refuses such an answer when parsing it: it never reaches XCom ...
    with pytest.raises(ImageGenerationMalformedResponseError, match=r"not an http\(s\) URL"):
        transfer(monkeypatch, hostile([url]), s3)
    # ... and an image record carrying one anyway (an XCom written by other means) is refused by the policy.
    record = {"images": [{"index": 0, "url": url}], "request_id": "req-0001"}
    with pytest.raises(ImageResultUrlRefusedError, match=r"policy \(scheme\)"):
        run(make_operator(generation=record, s3_bucket=s3.name, s3_key="r/{index}.png", download_retries=0))
    assert s3.object_keys() == []


def test_an_https_url_on_a_host_not_allowed_is_refused_without_a_connection(
    monkeypatch: pytest.MonkeyPatch,
    servers: Callable[..., Server],
    hostile: Callable[..., Server],
    tls: ssl.SSLContext,
    names: Names,
    s3: S3Bucket,
) -> None:
    evil = servers({"/a.png": image(PNG)}, host="127.0.0.3", tls=tls)
    names.table["evil.imggen.test"] = ["127.0.0.3"]
    gateway = hostile([evil.url("/a.png", "evil.imggen.test")])

    with pytest.raises(
        ImageResultUrlRefusedError, match=r"policy \(result_hosts\).*evil\.imggen\.test"
    ) as raised:
        transfer(
            monkeypatch,
            gateway,
            s3,
            result_hosts=[f"results.imggen.test:{evil.port}"],
            allow_private_result_hosts=True,
        )
    assert raised.value.rule == "result_hosts"
    assert evil.requests == [] and names.lookups == {}, "refused before resolving or connecting"
    assert s3.object_keys() == []


def test_the_default_result_hosts_are_the_dashscope_stores() -> None:
    from airflow_provider_imggen.transfers.url_policy import ResultUrlPolicy

    resolved: list[str] = []
    policy = ResultUrlPolicy(origin=None, resolver=lambda host, port: resolved.append(host) or ["8.8.8.8"])
    target = policy.check("https://dashscope-result-bj.oss-cn-beijing.aliyuncs.com/1/a.png?Signature=x")
    assert (target.host, target.addresses, target.trusted_origin) == (
        "dashscope-result-bj.oss-cn-beijing.aliyuncs.com",
        ("8.8.8.8",),
        False,
    )
    for url in (
        "https://dashscope-result-bj.oss-cn-beijing.aliyuncs.com.evil.example/a.png",
        "https://evil.example/dashscope-result-bj.oss-cn-beijing.aliyuncs.com/a.png",
        "https://x.dashscope-result-bj.oss-cn-beijing.aliyuncs.com:8443/a.png",
        "http://dashscope-result-bj.oss-cn-beijing.aliyuncs.com/a.png",
    ):
        with pytest.raises(ImageResultUrlRefusedError):
            policy.check(url)
    assert resolved == ["dashscope-result-bj.oss-cn-beijing.aliyuncs.com"]


def test_the_default_result_hosts_accept_the_2026_result_stores() -> None:
    """api-notes §7: 2026 results also come from dashscope-<4 hex> buckets (accelerated, regional)."""
    from airflow_provider_imggen.transfers.url_policy import ResultUrlPolicy

    policy = ResultUrlPolicy(origin=None, resolver=lambda host, port: ["8.8.8.8"])
    for host in (
        "dashscope-7c2c.oss-accelerate.aliyuncs.com",
        "dashscope-a717.oss-accelerate.aliyuncs.com",
        "dashscope-7c2c.oss-cn-shanghai.aliyuncs.com",
    ):
        assert policy.check(f"https://{host}/1d/a.png?Expires=1900000000&Signature=x").host == host
    for url in (
        # Not a four-character bucket, not the accelerated or a regional endpoint, or not https.
        "https://dashscope-evil-bucket.oss-accelerate.aliyuncs.com/a.png",
        "https://dashscope-7c2.oss-accelerate.aliyuncs.com/a.png",
        "https://dashscope-7c2c.oss-us-east-1.aliyuncs.com/a.png",
        "https://dashscope-7c2c.oss-accelerate.aliyuncs.com.evil.example/a.png",
        "http://dashscope-7c2c.oss-accelerate.aliyuncs.com/a.png",
    ):
        with pytest.raises(ImageResultUrlRefusedError):
            policy.check(url)


def test_images_from_the_2026_result_stores_are_stored_under_the_default_policy(
    monkeypatch: pytest.MonkeyPatch,
    servers: Callable[..., Server],
    hostile: Callable[..., Server],
    tls: ssl.SSLContext,
    names: Names,
    s3: S3Bucket,
) -> None:
    """Over real https on port 443: a billed image from a 2026 result store is fetched and stored."""
    store = servers({"/1d/a.png": image(PNG)}, host="127.0.0.7", tls=tls, port=443)
    for host in RESULT_STORES_2026:
        names.table[host] = ["127.0.0.7"]
        gateway = hostile([f"https://{host}/1d/a.png?Expires=1900000000&OSSAccessKeyId=k&Signature=s1gn"])
        # allow_private only because the store listens on loopback; the host list is the default one.
        (entry,) = transfer(
            monkeypatch, gateway, s3, s3_key=f"{host}/{{index}}.{{ext}}", allow_private_result_hosts=True
        )
        assert s3.read(entry["key"]) == PNG
    assert [request["headers"]["Host"] for request in store.gets()] == list(RESULT_STORES_2026)


# -- rule: result hosts must resolve to public addresses unless the connection opts in -------------------


def test_an_allowed_host_resolving_to_loopback_is_refused_unless_the_connection_opts_in(
    monkeypatch: pytest.MonkeyPatch,
    servers: Callable[..., Server],
    hostile: Callable[..., Server],
    tls: ssl.SSLContext,
    names: Names,
    s3: S3Bucket,
) -> None:
    store_server = servers({"/a.png": image(PNG)}, host="127.0.0.2", tls=tls)
    names.table["store.imggen.test"] = ["127.0.0.2"]
    gateway = hostile([store_server.url("/a.png?Expires=9999999999&Signature=s1gn", "store.imggen.test")])
    hosts = [f"store.imggen.test:{store_server.port}"]

    with pytest.raises(ImageResultUrlRefusedError, match=r"policy \(public address\)") as raised:
        transfer(monkeypatch, gateway, s3, result_hosts=hosts)
    assert raised.value.rule == "public address"
    assert store_server.requests == []
    assert s3.object_keys() == []

    (entry,) = transfer(monkeypatch, gateway, s3, result_hosts=hosts, allow_private_result_hosts=True)
    assert s3.read(entry["key"]) == PNG
    (request,) = store_server.gets()
    assert request["headers"]["Host"] == f"store.imggen.test:{store_server.port}"
    assert "Authorization" not in request["headers"] and API_KEY not in str(request["headers"])


def test_the_checked_address_is_the_one_connected_to(
    monkeypatch: pytest.MonkeyPatch,
    servers: Callable[..., Server],
    hostile: Callable[..., Server],
    tls: ssl.SSLContext,
    names: Names,
    s3: S3Bucket,
) -> None:
    """DNS rebinding: the name resolves to .2 for the check, to .3 afterwards; .3 never sees a request."""
    checked = servers({"/a.png": image(PNG)}, host="127.0.0.2", tls=tls)
    rebound = servers({"/a.png": image(png_bytes(8, 8))}, host="127.0.0.3", tls=tls, port=checked.port)
    names.table["store.imggen.test"] = ["127.0.0.2", "127.0.0.3"]
    gateway = hostile([checked.url("/a.png", "store.imggen.test")])

    (entry,) = transfer(
        monkeypatch,
        gateway,
        s3,
        result_hosts=[f"store.imggen.test:{checked.port}"],
        allow_private_result_hosts=True,
    )

    assert s3.read(entry["key"]) == PNG
    assert names.lookups["store.imggen.test"] == 1, "resolved once: the address checked is the one used"
    assert len(checked.gets()) == 1 and rebound.requests == []


# -- rule: redirects are followed one hop at a time, each hop checked ------------------------------------


def test_a_redirect_to_an_internal_address_is_refused_and_nothing_is_stored(
    monkeypatch: pytest.MonkeyPatch,
    servers: Callable[..., Server],
    hostile: Callable[..., Server],
    tls: ssl.SSLContext,
    names: Names,
    s3: S3Bucket,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    internal = servers({"/internal.png": image(png_bytes(16, 16))}, host="127.0.0.4")
    store_server = servers(
        {"/a.png": redirect(internal.url("/internal.png?k=secretvalue"))}, host="127.0.0.2", tls=tls
    )
    names.table["store.imggen.test"] = ["127.0.0.2"]
    gateway = hostile([store_server.url("/a.png", "store.imggen.test")])

    with pytest.raises(ImageResultUrlRefusedError, match=r"policy \(scheme\)"):
        transfer(
            monkeypatch,
            gateway,
            s3,
            result_hosts=[f"store.imggen.test:{store_server.port}"],
            allow_private_result_hosts=True,
        )
    assert len(store_server.gets()) == 1
    assert internal.requests == []
    assert s3.object_keys() == []
    assert "secretvalue" not in output(capsys, caplog)


def test_redirects_between_allowed_hosts_are_followed_and_bounded(
    monkeypatch: pytest.MonkeyPatch,
    servers: Callable[..., Server],
    hostile: Callable[..., Server],
    tls: ssl.SSLContext,
    names: Names,
    s3: S3Bucket,
) -> None:
    final = servers({"/final.png": image(PNG)}, host="127.0.0.3", tls=tls)
    names.table["results.imggen.test"] = ["127.0.0.3"]
    names.table["store.imggen.test"] = ["127.0.0.2"]
    hop = servers({}, host="127.0.0.2", tls=tls)
    hop.routes["/a.png"] = redirect(final.url("/final.png", "results.imggen.test"), 307)
    hop.routes["/loop"] = redirect("/loop")
    hosts = [f"store.imggen.test:{hop.port}", f"results.imggen.test:{final.port}"]

    (entry,) = transfer(
        monkeypatch,
        hostile([hop.url("/a.png", "store.imggen.test")]),
        s3,
        result_hosts=hosts,
        allow_private_result_hosts=True,
    )
    assert s3.read(entry["key"]) == PNG

    with pytest.raises(ImageResultUrlRefusedError, match=r"policy \(redirects\): more than 5 redirects"):
        transfer(
            monkeypatch,
            hostile([hop.url("/loop", "store.imggen.test")]),
            s3,
            result_hosts=hosts,
            allow_private_result_hosts=True,
            s3_key="loop.png",
        )
    assert len([request for request in hop.gets() if request["path"] == "/loop"]) == 6


# -- no port scanning through error differences; no body bytes in errors ---------------------------------


def test_refusals_read_the_same_whatever_the_target_would_answer(
    monkeypatch: pytest.MonkeyPatch,
    servers: Callable[..., Server],
    hostile: Callable[..., Server],
    s3: S3Bucket,
) -> None:
    answering_json = servers({"/x": status(200, SECRET_BODY)}, host="127.0.0.2")
    answering_png = servers({"/x": image(PNG)}, host="127.0.0.2")
    answering_404 = servers({}, host="127.0.0.2")
    closed = servers({}, host="127.0.0.2")
    closed.close()
    messages = set()
    for target in (answering_json, answering_png, answering_404, closed):
        with pytest.raises(ImageResultUrlRefusedError) as raised:
            transfer(monkeypatch, hostile([f"http://127.0.0.2:{target.port}/x"]), s3)
        messages.add(str(raised.value).replace(str(target.port), "PORT"))
    assert len(messages) == 1, messages
    assert all(server.requests == [] for server in (answering_json, answering_png, answering_404))


def test_an_error_page_from_an_allowed_host_is_never_quoted(
    monkeypatch: pytest.MonkeyPatch,
    servers: Callable[..., Server],
    hostile: Callable[..., Server],
    tls: ssl.SSLContext,
    names: Names,
    s3: S3Bucket,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    store_server = servers({"/a.png": status(200, SECRET_BODY)}, host="127.0.0.2", tls=tls)
    names.table["store.imggen.test"] = ["127.0.0.2"]

    with pytest.raises(ImageTransferRejectedError, match="not a PNG, JPEG or WebP image") as raised:
        transfer(
            monkeypatch,
            hostile([store_server.url("/a.png", "store.imggen.test")]),
            s3,
            result_hosts=[f"store.imggen.test:{store_server.port}"],
            allow_private_result_hosts=True,
        )
    text = output(capsys, caplog) + str(raised.value)
    assert "admin_token" not in text and "tok-9f8e" not in text and '{"' not in str(raised.value)
    assert s3.object_keys() == []


# -- a download has a total deadline ------------------------------------------------------------------


def test_a_dripping_server_fails_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch, servers: Callable[..., Server], s3: S3Bucket
) -> None:
    api = servers({"/results/a.png": drip(PNG, interval=0.25)})
    api.post = gateway_answer([api.url("/results/a.png")])
    use_gateway(monkeypatch, api)
    generation = generate(n=1)
    operator = make_operator(
        generation=generation, s3_bucket=s3.name, s3_key="d.png", download_timeout="2", download_retries=2
    )

    started = time.monotonic()
    with pytest.raises(ImageTransferError, match="download_timeout"):
        run(operator)
    elapsed = time.monotonic() - started
    assert 2 <= elapsed < 5, f"{elapsed:.1f}s: the deadline is per download, and not retried"
    assert s3.object_keys() == []


def test_without_an_imggen_connection_no_origin_is_trusted(
    monkeypatch: pytest.MonkeyPatch, servers: Callable[..., Server], s3: S3Bucket
) -> None:
    results = servers({"/a.png": image(PNG)})
    monkeypatch.delenv("AIRFLOW_CONN_IMGGEN_DEFAULT", raising=False)

    with pytest.raises(Exception, match=r"imggen_conn_id.*no such connection"):
        run(make_operator(generation=results.url("/a.png"), s3_bucket=s3.name, s3_key="a.png"))
    with pytest.raises(ImageResultUrlRefusedError, match=r"policy \(scheme\)"):
        run(
            make_operator(
                generation=results.url("/a.png"), s3_bucket=s3.name, s3_key="a.png", imggen_conn_id=None
            )
        )
    assert results.requests == [] and s3.object_keys() == []
