"""
Every download has one wall-clock deadline from connect to last byte, headers included, and the head of
every answer is bounded (issue 25): the transfer, the Images view and input images, all through
``transfers/fetch.py``, against hostile servers on loopback.

A slow body is covered by test_result_urls.py::test_a_dripping_server_fails_at_the_deadline; here the
waits before the body: the status line and headers dripped, a TLS handshake stalled or dripped, and heads
too large to hold.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler

import pytest

from airflow_provider_imggen.exceptions import (
    ImageGenerationInputError,
    ImageGenerationValidationError,
    ImageResultUrlRefusedError,
)
from airflow_provider_imggen.transfers.deadline import DeadlineExceededError
from tests.input_images import png
from tests.integration.security.conftest import Names, Route, Server, gateway_answer, use_gateway
from tests.integration.transfers.test_image_generation_to_s3 import generate, make_operator, png_bytes, run
from tests.s3_fixtures import S3Bucket

PNG = png_bytes(32, 24)
# The bounds of an answer's head: bytes of all its lines, and header lines counted as http.client counts
# them (the blank end line included).
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADER_LINES = 100
# In every hostile header value: it must never show in an error or a log.
MARKER = "h3ader-s3cret-value"
# A dripped head takes 20 s (40 lines, one every 0.5 s): the old code waited it out; the deadlines here are
# 2 to 5 s.
DRIP_INTERVAL = 0.5
DRIP_LINES = 40


def _send(handler: BaseHTTPRequestHandler, data: bytes) -> None:
    handler.wfile.write(data)
    handler.wfile.flush()


def _answer_rest(handler: BaseHTTPRequestHandler, body: bytes = PNG) -> None:
    _send(
        handler,
        b"Content-Type: image/png\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body,
    )
    handler.close_connection = True


def header_drip(lines: int = DRIP_LINES, interval: float = DRIP_INTERVAL) -> Route:
    """The status line at once, then one header line every ``interval`` seconds, then a whole image."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        try:
            _send(handler, b"HTTP/1.1 200 OK\r\n")
            for number in range(lines):
                time.sleep(interval)
                _send(handler, f"X-Drip-{number}: {MARKER}\r\n".encode())
            _answer_rest(handler)
        except OSError:  # the client gave up: what the new code does at its deadline
            handler.close_connection = True

    return answer


def status_line_drip(interval: float = DRIP_INTERVAL) -> Route:
    """The status line one byte every ``interval`` seconds (a server that never finishes its first line)."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        try:
            for byte in b"HTTP/1.1 200 OK -- and so on, one byte at a time, for as long as it likes\r\n":
                _send(handler, bytes([byte]))
                time.sleep(interval)
            _answer_rest(handler)
        except OSError:
            handler.close_connection = True

    return answer


def raw_head(head: bytes, body: bytes = PNG) -> Route:
    """``head`` as it is (status line and headers, no end), then the usual end of head and ``body``."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        try:
            _send(handler, head)
            _answer_rest(handler, body)
        except OSError:
            handler.close_connection = True

    return answer


def head_of(total: int, *, lines: int = 10) -> bytes:
    """
    A 200 head of exactly ``total`` bytes with ``lines`` header lines, blank end line included (as the
    bounds count them); the last four (three headers and the blank line) are :func:`_answer_rest`'s.
    """
    status = b"HTTP/1.1 200 OK\r\n"
    tail = b"Content-Type: image/png\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(PNG)
    filler_lines = lines - 4
    room = total - len(status) - len(tail)
    fillers = []
    for number in range(filler_lines):
        name = f"X-Filler-{number:03d}: {MARKER}".encode()
        share = room // filler_lines + (1 if number < room % filler_lines else 0)
        fillers.append(name + b"x" * (share - len(name) - 2) + b"\r\n")
    head = status + b"".join(fillers)
    assert len(head + tail) == total and head.count(b"\r\n") - 1 + 4 == lines
    return head


# Heads the old code let through (the whole 6.4 MB http.client allows, or more with interim answers) or
# retried as if the connection had dropped.
OVERSIZED_HEADS = {
    "one header line of 100 KiB": b"HTTP/1.1 200 OK\r\nX-Huge: "
    + MARKER.encode()
    + b"x" * 100 * 1024
    + b"\r\n",
    "150 header lines": b"HTTP/1.1 200 OK\r\n"
    + b"".join(b"X-H%d: %s\r\n" % (i, MARKER.encode()) for i in range(150)),
    "90 KiB in 45 lines of 2 KiB": b"HTTP/1.1 200 OK\r\n"
    + b"".join(b"X-H%d: %s%s\r\n" % (i, MARKER.encode(), b"x" * 2000) for i in range(45)),
    "3000 interim 100 Continue answers": b"HTTP/1.1 100 Continue\r\n\r\n" * 3000 + b"HTTP/1.1 200 OK\r\n",
}


def _transfer(s3: S3Bucket, **operator: object) -> object:
    """One generation from the gateway ``use_gateway`` set, stored by the transfer (download_retries=2)."""
    operator.setdefault("s3_key", "d.png")
    operator.setdefault("download_retries", 2)
    return run(make_operator(generation=generate(n=1), s3_bucket=s3.name, **operator))


def _serve_result(servers: Callable[..., Server], route: Route) -> Server:
    """A gateway serving its own result (the API's origin: plain http is trusted there), at ``route``."""
    api = servers({"/results/a.png": route})
    api.post = gateway_answer([api.url("/results/a.png?Expires=9999999999&Signature=s1gn")])
    return api


# -- the transfer: status line and headers are under the deadline ------------------------------------------


@pytest.mark.parametrize("route", [header_drip(), status_line_drip()], ids=["header lines", "status line"])
def test_a_dripped_head_fails_the_transfer_at_its_deadline_and_stores_nothing(
    monkeypatch: pytest.MonkeyPatch,
    servers: Callable[..., Server],
    s3: S3Bucket,
    caplog: pytest.LogCaptureFixture,
    route: Route,
) -> None:
    api = _serve_result(servers, route)
    use_gateway(monkeypatch, api)

    started = time.monotonic()
    with pytest.raises(DeadlineExceededError, match=r"download_timeout\. Nothing was stored") as raised:
        _transfer(s3, download_timeout=5)
    elapsed = time.monotonic() - started

    # The old code waited for the last header line: 20 s and more for this 5 s download.
    assert elapsed < 5 + 3, f"{elapsed:.1f}s for a download_timeout of 5 s"
    assert len(api.gets()) == 1, "a download over its deadline is not retried"
    assert s3.object_keys() == []
    assert MARKER not in str(raised.value) and MARKER not in caplog.text


# -- the transfer: the TLS handshake is under the deadline -------------------------------------------------


class TcpTarpit:
    """
    A TCP server on a loopback address that never completes a TLS handshake: it accepts, reads the client's
    hello, then sends nothing (``drip=False``) or a TLS record header and then one byte of the record every
    ``DRIP_INTERVAL`` seconds (each read of the handshake gets a byte; only a bound on the whole handshake
    ends it).
    """

    def __init__(self, host: str, *, drip: bool) -> None:
        self.drip = drip
        self.connections = 0
        self._stop = threading.Event()
        self._listener = socket.create_server((host, 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(target=self._stall, args=(client,), daemon=True).start()

    def _stall(self, client: socket.socket) -> None:
        with client:
            try:
                client.recv(65536)
                if self.drip:
                    client.sendall(b"\x16\x03\x03\x00\x40")  # a handshake record of 64 bytes, to come
                for _ in range(64):
                    if self._stop.wait(DRIP_INTERVAL):
                        return
                    if self.drip:
                        client.sendall(b"\x02")
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._listener.close()


@pytest.fixture
def tarpits() -> Iterator[Callable[..., TcpTarpit]]:
    started: list[TcpTarpit] = []

    def start(**kwargs: bool) -> TcpTarpit:
        tarpit = TcpTarpit("127.0.0.3", **kwargs)
        started.append(tarpit)
        return tarpit

    yield start
    for tarpit in started:
        tarpit.close()


@pytest.mark.parametrize("drip", [False, True], ids=["stalled", "dripped"])
def test_a_tls_handshake_that_never_ends_fails_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
    servers: Callable[..., Server],
    tarpits: Callable[..., TcpTarpit],
    names: Names,
    s3: S3Bucket,
    drip: bool,
) -> None:
    tarpit = tarpits(drip=drip)
    names.table["store.imggen.test"] = ["127.0.0.3"]
    gateway = servers({}, post=gateway_answer([f"https://store.imggen.test:{tarpit.port}/a.png?Signature=s"]))
    use_gateway(
        monkeypatch,
        gateway,
        result_hosts=[f"store.imggen.test:{tarpit.port}"],
        allow_private_result_hosts=True,
    )

    started = time.monotonic()
    with pytest.raises(DeadlineExceededError, match="within download_timeout"):
        _transfer(s3, download_timeout=3)
    elapsed = time.monotonic() - started

    # The old code called it a read timeout and tried again, download_timeout each time.
    assert elapsed < 3 + 3, f"{elapsed:.1f}s for a download_timeout of 3 s"
    assert tarpit.connections == 1
    assert s3.object_keys() == []


# -- the transfer: heads are bounded, and an oversized one is refused at once ------------------------------


@pytest.mark.parametrize("head", list(OVERSIZED_HEADS.values()), ids=list(OVERSIZED_HEADS))
def test_an_oversized_head_is_refused_unread_and_not_retried(
    monkeypatch: pytest.MonkeyPatch,
    servers: Callable[..., Server],
    s3: S3Bucket,
    caplog: pytest.LogCaptureFixture,
    head: bytes,
) -> None:
    api = _serve_result(servers, raw_head(head))
    use_gateway(monkeypatch, api)

    with pytest.raises(ImageResultUrlRefusedError) as raised:
        _transfer(s3)

    assert raised.value.rule == "header size"
    assert f"over {MAX_HEADER_BYTES} bytes or {MAX_HEADER_LINES} lines" in str(raised.value)
    assert len(api.gets()) == 1, "the same request gets the same head: not retried"
    assert s3.object_keys() == []
    assert MARKER not in str(raised.value) and MARKER not in caplog.text


def test_a_head_with_a_line_that_is_no_header_is_refused_and_neither_it_nor_the_url_is_logged(
    monkeypatch: pytest.MonkeyPatch,
    servers: Callable[..., Server],
    s3: S3Bucket,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # http.client stops parsing at such a line (what follows, Content-Length too, is lost), and urllib3
    # logged a warning quoting the request's URL with its signature, and the lines it could not parse.
    head = b"HTTP/1.1 200 OK\r\nX-First: 1\r\nno colon on this line " + MARKER.encode() + b"\r\n"
    api = _serve_result(servers, raw_head(head))
    use_gateway(monkeypatch, api)

    with pytest.raises(ImageResultUrlRefusedError) as raised:
        _transfer(s3)

    assert raised.value.rule == "malformed headers"
    assert len(api.gets()) == 1 and s3.object_keys() == []
    assert MARKER not in caplog.text and "s1gn" not in caplog.text
    assert MARKER not in str(raised.value)


def test_a_head_at_the_bounds_is_read_and_one_byte_or_one_line_more_is_not(
    monkeypatch: pytest.MonkeyPatch, servers: Callable[..., Server], s3: S3Bucket
) -> None:
    at_bounds = head_of(MAX_HEADER_BYTES, lines=MAX_HEADER_LINES)
    byte_more = head_of(MAX_HEADER_BYTES + 1, lines=MAX_HEADER_LINES)
    line_more = head_of(8 * 1024, lines=MAX_HEADER_LINES + 1)
    api = _serve_result(servers, raw_head(at_bounds))
    use_gateway(monkeypatch, api)

    _transfer(s3)
    assert s3.read("d.png") == PNG

    for head in (byte_more, line_more):
        api.routes["/results/a.png"] = raw_head(head)
        with pytest.raises(ImageResultUrlRefusedError, match=r"policy \(header size\)"):
            _transfer(s3, s3_key="more.png")
    assert s3.object_keys() == ["d.png"]


# -- the Images view: its fetch of a result not yet stored has the same deadline and bounds ----------------


def _result_tile(url: str) -> object:
    from airflow_provider_imggen.sealed_urls import seal
    from airflow_provider_imggen.ui.tiles import Tile

    return Tile(
        task_id="t",
        map_index=-1,
        position=0,
        kind="result",
        url_sealed=seal(url),
        imggen_conn_id="imggen_default",
    )


def _view_url(server: Server) -> str:
    future = int((datetime.now(UTC) + timedelta(hours=1)).timestamp())
    return server.url(f"/results/a.png?Expires={future}&Signature=s1gn")


def test_the_images_view_gives_up_on_a_dripped_head_at_its_fetch_timeout(
    monkeypatch: pytest.MonkeyPatch, servers: Callable[..., Server], caplog: pytest.LogCaptureFixture
) -> None:
    from airflow_provider_imggen.ui import pixels

    api = servers({"/results/a.png": header_drip()})
    use_gateway(monkeypatch, api)
    monkeypatch.setattr(pixels, "FETCH_TIMEOUT", 2.0)

    started = time.monotonic()
    with pytest.raises(pixels.PixelsUnavailableError, match=r"could not be read \(DeadlineExceededError\)"):
        pixels.open_pixels(_result_tile(_view_url(api)))  # type: ignore[arg-type]
    elapsed = time.monotonic() - started

    # The old code held the fetch (and one of the view's four fetch slots) for the whole drip: 20 s.
    assert elapsed < 2 + 3, f"{elapsed:.1f}s for a fetch timeout of 2 s"
    assert MARKER not in caplog.text


def test_the_images_view_refuses_an_oversized_head(
    monkeypatch: pytest.MonkeyPatch, servers: Callable[..., Server]
) -> None:
    from airflow_provider_imggen.ui import pixels

    api = servers({"/results/a.png": raw_head(OVERSIZED_HEADS["90 KiB in 45 lines of 2 KiB"])})
    use_gateway(monkeypatch, api)

    with pytest.raises(
        pixels.PixelsUnavailableError, match=r"refused by the result-URL policy \(header size\)"
    ) as raised:
        pixels.open_pixels(_result_tile(_view_url(api)))  # type: ignore[arg-type]
    assert MARKER not in str(raised.value)


# -- input images: an https input is fetched with the same deadline and bounds -----------------------------


@pytest.fixture
def hostile_cdn(servers: Callable[..., Server], tls: ssl.SSLContext, names: Names) -> Server:
    names.table["store.imggen.test"] = ["127.0.0.1"]
    return servers(
        {"/drip.png": header_drip(), "/huge.png": raw_head(OVERSIZED_HEADS["150 header lines"], png(64, 64))},
        tls=tls,
    )


def _resolve(url: str) -> object:
    from airflow_provider_imggen.inputs.resolve import resolve_input_images
    from airflow_provider_imggen.request import validate_generation_request

    request = validate_generation_request(model="wan2.6-image", prompt="restyle it", images=[url])
    return resolve_input_images(request, aws_conn_id=None, imggen_conn_id="imggen_default")


def test_an_input_image_with_a_dripped_head_or_an_oversized_one_is_refused_in_time(
    monkeypatch: pytest.MonkeyPatch, hostile_cdn: Server
) -> None:
    from airflow_provider_imggen.inputs import resolve

    use_gateway(
        monkeypatch,
        hostile_cdn,
        result_hosts=[f"store.imggen.test:{hostile_cdn.port}"],
        allow_private_result_hosts=True,
    )
    monkeypatch.setattr(resolve, "READ_SECONDS", 2.0)

    started = time.monotonic()
    with pytest.raises(ImageGenerationInputError, match=r"could not be read \(DeadlineExceededError\)"):
        _resolve(hostile_cdn.url("/drip.png?Signature=input-secret", "store.imggen.test"))
    elapsed = time.monotonic() - started
    assert elapsed < 2 + 3, f"{elapsed:.1f}s for a read deadline of 2 s"

    with pytest.raises(ImageGenerationValidationError, match=r"policy \(header size\)") as raised:
        _resolve(hostile_cdn.url("/huge.png?Signature=input-secret", "store.imggen.test"))
    assert MARKER not in str(raised.value) and "input-secret" not in str(raised.value)
