"""
Airflow plugin of the provider: the **Images** view, and the UI's Test button for ``imggen`` connections.

**Images view.** ``external_views`` add an *Images* tab to every task instance and DAG run; it shows, in
an iframe, the pages of a FastAPI app mounted under :data:`URL_PREFIX` (:mod:`airflow_provider_imggen.ui`):
thumbnails and metadata of what ``ImageGenerationOperator``, ``ImageGenerationTaskSensor`` and
``ImageGenerationToS3Operator`` produced, under Airflow's own per-DAG access checks. The app is built on
its first request (:class:`LazyImagesApp`), so importing this module stays cheap.

**Test button.**
Airflow 3.3's connection list posts ``port: Number(connection.port)`` to ``POST /api/v2/connections/test``,
which is ``0`` for a connection without a port (every ``imggen`` connection: the form hides Port). The API
server then takes ``0`` for "a different destination than the stored connection" and, because the UI sends
the masked ``***`` password, answers ``400 Bad Request`` before the hook is ever called. Fixed upstream in
apache/airflow#73298 (the endpoint treats port 0 as no port).

:class:`ConnectionTestPortFix` rewrites ``port: 0`` to ``null`` in those request bodies, for ``imggen``
connections only, and does nothing on an Airflow whose endpoint already accepts port 0. No port is ever 0,
so nothing a user meant is lost. Registered through the ``airflow.plugins`` entry point; this module is
imported by every Airflow process that loads plugins, so it stays stdlib-only until a request arrives.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_imggen.ui import DAG_RUN_ROUTE, TASK_INSTANCE_ROUTE, URL_PREFIX

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    Scope = MutableMapping[str, Any]
    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]
    Send = Callable[[Message], Awaitable[None]]
    ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CONNECTION_TEST_PATH = "/api/v2/connections/test"
CONN_TYPE = "imggen"
# The UI's test request is a few hundred bytes; the middleware never reads more than this of a request.
MAX_BODY_BYTES = 64 * 1024


def airflow_rejects_port_zero() -> bool:
    """Whether this Airflow's connection test endpoint refuses ``port: 0`` for a connection without port."""
    try:
        from airflow.api_fastapi.core_api.routes.public.connections import _same_endpoint
    except ImportError:
        # The comparison this works around is gone: leave the endpoint alone.
        return False
    return not _same_endpoint(0, None)


def fix_connection_test_body(body: bytes) -> bytes | None:
    """
    The body with ``port: 0`` replaced by ``null`` for an ``imggen`` connection, else ``None``.

    Never raises: anything it cannot read (not JSON, nested too deep, not a dict) is left alone.
    """
    if len(body) > MAX_BODY_BYTES or b'"' + CONN_TYPE.encode() + b'"' not in body:
        return None
    try:
        payload = json.loads(body)
        if not isinstance(payload, dict) or payload.get("conn_type") != CONN_TYPE:
            return None
        port = payload.get("port")
        if port != 0 or isinstance(port, bool):
            return None
        payload["port"] = None
        return json.dumps(payload).encode()
    except Exception:  # RecursionError from deep nesting, ValueError, UnicodeDecodeError: not ours to judge
        return None


class ConnectionTestPortFix:
    """
    ASGI middleware: ``port: 0`` → ``null`` in ``POST /api/v2/connections/test`` for ``imggen`` connections.

    It runs before authentication, so it reads at most ``MAX_BODY_BYTES`` of a request: a larger body, a
    body that is not JSON, or any other connection type reaches the application untouched and streamed
    as it came (what was read is replayed first). Nothing this middleware does raises.

    :param app: the wrapped ASGI application
    :param enabled: rewrite bodies; by default only when the installed Airflow still refuses port 0
    """

    def __init__(self, app: ASGIApp, *, enabled: bool | None = None) -> None:
        self.app = app
        self.enabled = airflow_rejects_port_zero() if enabled is None else enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (self.enabled and _is_connection_test(scope)):
            await self.app(scope, receive, send)
            return
        read: list[Message] = []
        size = 0
        while True:
            message = await receive()
            read.append(message)
            if message.get("type") != "http.request":
                # The client went away before sending its body: nothing to fix.
                break
            size += len(message.get("body", b""))
            if size > MAX_BODY_BYTES or not message.get("more_body", False):
                break
        fixed = None
        if read[-1].get("type") == "http.request" and not read[-1].get("more_body", False):
            fixed = fix_connection_test_body(b"".join(message.get("body", b"") for message in read))
        if fixed is None:
            await self.app(scope, _replay(read, receive), send)
            return
        headers = [(name, value) for name, value in scope["headers"] if name.lower() != b"content-length"]
        scope = {**scope, "headers": [*headers, (b"content-length", str(len(fixed)).encode())]}
        await self.app(
            scope, _replay([{"type": "http.request", "body": fixed, "more_body": False}], receive), send
        )


def _is_connection_test(scope: Scope) -> bool:
    """A POST to the connection test endpoint that says (if it says) it carries JSON, and not too much."""
    try:
        if scope.get("type") != "http" or scope.get("method") != "POST":
            return False
        if not str(scope.get("path", "")).endswith(CONNECTION_TEST_PATH):
            return False
        for name, value in scope.get("headers") or ():
            name = name.lower()
            if name == b"content-type" and b"json" not in value.lower():
                return False
            if name == b"content-length" and (not value.strip().isdigit() or int(value) > MAX_BODY_BYTES):
                return False
        return True
    except Exception:  # a malformed scope is the application's to answer
        return False


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that returns ``messages`` first, then defers to the original one."""
    pending = list(reversed(messages))

    async def replayed() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replayed


# The UI fills {DAG_ID}, {RUN_ID}, {TASK_ID} and {MAP_INDEX} (left as is for a task that is not mapped).
TASK_INSTANCE_VIEW = (
    f"{URL_PREFIX}/images?dag_id={{DAG_ID}}&run_id={{RUN_ID}}&task_id={{TASK_ID}}&map_index={{MAP_INDEX}}"
)
DAG_RUN_VIEW = f"{URL_PREFIX}/gallery?dag_id={{DAG_ID}}&run_id={{RUN_ID}}"


class LazyImagesApp:
    """
    ASGI app that builds the Images view's FastAPI app on its first request.

    Every Airflow process imports the plugin; only the API server ever calls this, and only when a user
    opens the view: FastAPI routes, Pillow and the amazon provider stay unimported everywhere else.
    """

    def __init__(self) -> None:
        self._app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is None:
            from airflow_provider_imggen.ui.app import create_app

            self._app = create_app()
        await self._app(scope, receive, send)


class ImageGenerationPlugin(AirflowPlugin):
    """The provider's API server and UI additions (see the module docstring)."""

    name = "imggen"
    fastapi_apps = [  # noqa: RUF012 (AirflowPlugin declares these as class attributes)
        {"app": LazyImagesApp(), "url_prefix": URL_PREFIX, "name": "imggen: Images view"}
    ]
    external_views = [  # noqa: RUF012
        {
            "name": "Images",
            "href": TASK_INSTANCE_VIEW,
            "destination": "task_instance",
            "url_route": TASK_INSTANCE_ROUTE,
        },
        {"name": "Images", "href": DAG_RUN_VIEW, "destination": "dag_run", "url_route": DAG_RUN_ROUTE},
    ]
    fastapi_root_middlewares = [  # noqa: RUF012
        {"middleware": ConnectionTestPortFix, "name": "imggen: accept port 0 from the connection Test button"}
    ]
