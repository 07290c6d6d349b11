"""The provider's Airflow plugin: the ASGI middleware that lets the UI's Test button reach the hook."""

from __future__ import annotations

import asyncio
import hashlib
import json
import tracemalloc
from importlib.metadata import entry_points
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from airflow_provider_imggen.plugin import ConnectionTestPortFix, ImageGenerationPlugin


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"body": json.loads(body), "content_length": int(request.headers["content-length"])})


def client(*, enabled: bool) -> TestClient:
    routes = [Route(path, echo, methods=["POST"]) for path in ("/api/v2/connections/test", "/other")]
    return TestClient(ConnectionTestPortFix(Starlette(routes=routes), enabled=enabled))


def post(test_client: TestClient, path: str, body: dict[str, object]) -> dict[str, object]:
    answer = test_client.post(path, content=json.dumps(body)).json()
    assert answer["content_length"] == len(json.dumps(answer["body"]).encode())
    return dict(answer["body"])


UI_BODY = {"conn_type": "imggen", "connection_id": "c", "host": "https://g.example/v1", "password": "***"}


def test_port_zero_from_the_ui_becomes_no_port_for_imggen() -> None:
    assert post(client(enabled=True), "/api/v2/connections/test", {**UI_BODY, "port": 0}) == {
        **UI_BODY,
        "port": None,
    }


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v2/connections/test", {**UI_BODY, "port": 8443}),
        ("/api/v2/connections/test", {**UI_BODY, "port": None}),
        ("/api/v2/connections/test", {**UI_BODY, "conn_type": "http", "port": 0}),
        ("/other", {**UI_BODY, "port": 0}),
    ],
)
def test_other_bodies_paths_and_connection_types_pass_unchanged(path: str, body: dict[str, object]) -> None:
    assert post(client(enabled=True), path, body) == body


def test_disabled_when_airflow_accepts_port_zero() -> None:
    body = {**UI_BODY, "port": 0}
    assert post(client(enabled=False), "/api/v2/connections/test", body) == body


def test_plugin_is_registered_through_its_entry_point() -> None:
    from airflow.plugins_manager import is_valid_plugin

    (entry_point,) = [ep for ep in entry_points(group="airflow.plugins") if ep.name == "imggen"]
    assert entry_point.load() is ImageGenerationPlugin
    assert is_valid_plugin(ImageGenerationPlugin)
    (middleware,) = ImageGenerationPlugin.fastapi_root_middlewares
    assert middleware["middleware"] is ConnectionTestPortFix


# -- what the middleware must never do: raise, buffer large bodies, touch what is not its business -------


async def raw_echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()})


def raw_client() -> TestClient:
    routes = [Route("/api/v2/connections/test", raw_echo, methods=["POST"])]
    return TestClient(
        ConnectionTestPortFix(Starlette(routes=routes), enabled=True), raise_server_exceptions=True
    )


def assert_untouched(body: bytes, **headers: str) -> None:
    answer = raw_client().post("/api/v2/connections/test", content=body, headers=headers)
    assert answer.status_code == 200
    assert answer.json() == {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}


@pytest.mark.parametrize("depth", [100_000, 30_000], ids=["over-the-bound", "under-the-bound"])
def test_deeply_nested_json_passes_through_untouched(depth: int) -> None:
    body = b'{"conn_type": "imggen", "port": 0, "x": ' + b"[" * depth + b"]" * depth + b"}"
    assert_untouched(body)


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"conn_type=imggen&port=0", {"Content-Type": "application/x-www-form-urlencoded"}),
        (b'{"conn_type": "imggen", "port": 0', {}),
        (b'\xff\xfe{"conn_type": "imggen", "port": 0}', {}),
        (b'["imggen", 0]', {}),
        (json.dumps({**UI_BODY, "port": 0, "pad": "x" * 70_000}).encode(), {}),
    ],
    ids=["form", "cut-json", "not-utf8", "a-list", "over-64-KiB"],
)
def test_non_json_and_oversized_bodies_pass_through_untouched(body: bytes, headers: dict[str, str]) -> None:
    assert_untouched(body, **headers)


def test_a_200_mib_body_streams_through_without_being_buffered() -> None:
    """Fed and consumed in 1 MiB messages: the middleware holds at most its bound plus one message."""
    chunk = b"x" * (1024 * 1024)
    total = 200
    state = {"sent": 0, "received": 0, "largest": 0}

    async def receive() -> dict[str, object]:
        state["sent"] += 1
        return {"type": "http.request", "body": chunk, "more_body": state["sent"] < total}

    async def app(scope: object, receive_: Any, send: Any) -> None:
        while True:
            message = await receive_()
            state["received"] += len(message["body"])
            state["largest"] = max(state["largest"], len(message["body"]))
            if not message.get("more_body"):
                break

    async def send(message: object) -> None:
        pass

    scope = {"type": "http", "method": "POST", "path": "/api/v2/connections/test", "headers": []}
    tracemalloc.start()
    try:
        asyncio.run(ConnectionTestPortFix(app, enabled=True)(scope, receive, send))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert state["received"] == total * len(chunk)
    assert state["largest"] == len(chunk), "passed on as it came, never joined"
    assert peak < 4 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB traced while streaming 200 MiB"


def test_a_body_announced_over_the_bound_is_not_even_read() -> None:
    reads = []

    async def receive() -> dict[str, object]:
        reads.append(1)
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def app(scope: object, receive_: Any, send: Any) -> None:
        pass

    async def send(message: object) -> None:
        pass

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/v2/connections/test",
        "headers": [(b"content-length", str(300 * 1024 * 1024).encode())],
    }
    asyncio.run(ConnectionTestPortFix(app, enabled=True)(scope, receive, send))
    assert reads == []
