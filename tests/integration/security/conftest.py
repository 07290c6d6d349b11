"""
Hostile servers on loopback for the security tests: a gateway answering what the test scripts, result hosts
(http or https with a test CA), redirecting and dripping servers, and test host names resolved to
127.0.0.0/8 addresses.

Every server binds a 127.0.0.x address; host names under ``imggen.test`` resolve through ``names`` (a
patched ``socket.getaddrinfo``), so the result-URL policy sees real names, real resolution results and real
TLS certificates for them.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import API_KEY

Route = Callable[[BaseHTTPRequestHandler], None]
TEST_NAMES = ("results.imggen.test", "store.imggen.test", "evil.imggen.test")
# Result stores of 2026 (api-notes §7), served on 127.0.0.7:443: the default result-host policy applies.
RESULT_STORES_2026 = (
    "dashscope-7c2c.oss-accelerate.aliyuncs.com",
    "dashscope-a717.oss-accelerate.aliyuncs.com",
    "dashscope-7c2c.oss-cn-shanghai.aliyuncs.com",
)


def image(body: bytes, *, content_length: bool = True, content_type: str = "image/png") -> Route:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        if content_length:
            handler.send_header("Content-Length", str(len(body)))
        else:
            handler.send_header("Connection", "close")
            handler.close_connection = True
        handler.end_headers()
        handler.wfile.write(body)

    return answer


def status(code: int, body: bytes = b"", content_type: str = "application/json") -> Route:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(code)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return answer


def redirect(location: str, code: int = 302) -> Route:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(code)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return answer


def drip(body: bytes, interval: float) -> Route:
    """Headers at once, then one byte every ``interval`` seconds (a declared, honest Content-Length)."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        try:
            for byte in body:
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
                time.sleep(interval)
        except OSError:
            pass

    return answer


class Server:
    """An HTTP(S) server on ``host`` (a 127.0.0.0/8 address) with scripted routes; records every request."""

    def __init__(
        self,
        routes: dict[str, Route],
        *,
        host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
        post: Route | None = None,
        port: int = 0,
    ) -> None:
        assert ipaddress.ip_address(host) in ipaddress.ip_network("127.0.0.0/8")
        self.routes = routes
        self.post = post  # the answer to every POST (a gateway's generation answer)
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                server.requests.append({"method": "GET", "path": self.path, "headers": dict(self.headers)})
                route = server.routes.get(self.path.split("?", 1)[0])
                (route or status(404, b"<Error>NoSuchKey</Error>"))(self)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                server.requests.append(
                    {"method": "POST", "path": self.path, "headers": dict(self.headers), "body": body}
                )
                (server.post or status(404))(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.host = host
        self.port = int(self._server.server_address[1])
        self.scheme = "https" if tls else "http"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str, name: str | None = None) -> str:
        return f"{self.scheme}://{name or self.host}:{self.port}{path}"

    def gets(self) -> list[dict[str, Any]]:
        return [request for request in self.requests if request["method"] == "GET"]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def servers() -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(routes: dict[str, Route], **kwargs: Any) -> Server:
        server = Server(routes, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for the test names and 127.0.0.1-5: (certificate, key) files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imggen test results")])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName(host) for host in TEST_NAMES + RESULT_STORES_2026]
    alt_names += [x509.IPAddress(ipaddress.ip_address(f"127.0.0.{i}")) for i in range(1, 6)]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


@pytest.fixture
def tls(test_ca: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """A server TLS context; downloads trust the test certificate (REQUESTS_CA_BUNDLE)."""
    cert_file, key_file = test_ca
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert_file))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


class Names:
    """Test host names → loopback addresses, and how often each was resolved."""

    def __init__(self) -> None:
        self.table: dict[str, list[str]] = {}
        self.lookups: dict[str, int] = {}


@pytest.fixture
def names(monkeypatch: pytest.MonkeyPatch) -> Names:
    """
    Resolve ``*.imggen.test`` and any name put in ``names.table`` from the table (a list: one address per
    lookup, the last repeats).
    """
    table = Names()
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and (host.endswith(".imggen.test") or host in table.table):
            answers = table.table.get(host)
            if not answers:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            count = table.lookups.get(host, 0)
            table.lookups[host] = count + 1
            address = answers[min(count, len(answers) - 1)]
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port)))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


def gateway_answer(urls: list[str], request_id: str = "req-0001") -> Route:
    """A gateway's image generation answer carrying whatever result URLs the test chose."""
    return json_answer({"created": int(time.time()), "data": [{"url": url} for url in urls]}, request_id)


def json_answer(payload: Any, request_id: str = "req-0001") -> Route:
    """A 200 answer with ``payload`` as JSON and the given ``x-request-id``."""
    body = json.dumps(payload).encode()

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("x-request-id", request_id)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return answer


def use_gateway(monkeypatch: pytest.MonkeyPatch, gateway: Server, **extra: object) -> None:
    """imggen_default points at ``gateway`` (its origin is the API's), with the given extras."""
    connection = {
        "conn_type": "imggen",
        "host": f"{gateway.url('')}/v1",
        "password": API_KEY,
        "extra": {"default_model": "wan2.2-t2i-flash", "max_retries": 0, **extra},
    }
    monkeypatch.setenv("AIRFLOW_CONN_IMGGEN_DEFAULT", json.dumps(connection))


class _OneRequestAtATime:
    """WSGI middleware: requests handled one at a time, as S3 makes each conditional write atomic."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        with self.lock:
            return list(self.app(environ, start_response))


@pytest.fixture(scope="session")
def atomic_moto_endpoint() -> Iterator[str]:
    """
    moto's S3 on loopback, serving one request at a time.

    moto (5.2.5) honours ``If-None-Match: *`` on PutObject and CompleteMultipartUpload, but moto_server is
    threaded and checks, then writes, without a lock: two concurrent conditional writes can both pass (seen
    with multipart uploads). S3 itself decides each conditional write atomically; serialising moto's
    requests gives the same guarantee, so the race tests test the transfer, not moto's locking.
    """
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    server = make_server(
        "127.0.0.1",
        0,
        _OneRequestAtATime(DomainDispatcherApplication(create_backend_app)),
        threaded=True,
        request_handler=MotoRequestHandler,
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.fixture
def atomic_s3(atomic_moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``aws_default`` pointing at :func:`atomic_moto_endpoint`, and a new empty bucket."""
    import uuid

    import boto3

    from tests.s3_fixtures import S3Bucket, aws_connection

    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection(atomic_moto_endpoint))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    client = boto3.client(
        "s3",
        endpoint_url=atomic_moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    name = f"imggen-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return S3Bucket(name=name, client=client, endpoint_url=atomic_moto_endpoint)
