"""The provider's Airflow plugin: the ASGI middleware that lets the UI's Test button reach the hook."""

from __future__ import annotations

import json
from importlib.metadata import entry_points

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
