"""
HTTP helpers shared by the route modules: request ids, authentication, error bodies in the gateway's and
DashScope's shapes, proxy error pages, the request log entry, and responses that misbehave on purpose
(dropped connections, truncated bodies, stalls).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from airflow_provider_imggen.emulator.state import EmulatorState, ErrorStyle, FaultConfig, key_id

log = logging.getLogger(__name__)

# Keys under which the outermost ASGI layer stores per-request values in the scope (see EmulatorFastAPI).
RAW_SEND = "imggen.raw_send"
REQUEST_ID = "imggen.request_id"
FINGERPRINT = "imggen.fingerprint"
_DISCONNECT_WAIT_SECONDS = 5.0


def request_id_of(request: Request) -> str:
    return str(request.scope.get(REQUEST_ID) or uuid.uuid4())


def presented_key(request: Request) -> str | None:
    """The API key as the client sent it (None when there is no Authorization header at all)."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, rest = header.partition(" ")
    return rest.strip() if scheme.lower() == "bearer" else header


WORKSPACE_HEADER = "x-dashscope-workspace"


def workspace_of(request: Request) -> str | None:
    """The Model Studio workspace the request names (``X-DashScope-WorkSpace``), if any."""
    return request.headers.get(WORKSPACE_HEADER)


def _workspace_allowed(request: Request) -> bool:
    allowed: tuple[str, ...] = state_of(request).config.workspaces
    workspace = workspace_of(request)
    return workspace is None or not allowed or workspace in allowed


def refusal_status(state: EmulatorState, request: Request) -> int:
    """The status an unauthorized request is answered with: 403 for a workspace the right key may not use."""
    presented = presented_key(request)
    key_ok = presented is not None and hmac.compare_digest(presented.encode(), state.config.api_key.encode())
    return 403 if key_ok else 401


def is_authorized(request: Request, api_key: str) -> bool:
    """The right key, and (when the emulator lists workspaces) a workspace the key may use."""
    presented = presented_key(request)
    key_ok = presented is not None and hmac.compare_digest(presented.encode(), api_key.encode())
    return key_ok and _workspace_allowed(request)


def caller_key_id(request: Request) -> str:
    """Fingerprint of the caller's key (quotas and task lists are per key)."""
    return key_id(presented_key(request))


def dashscope_time(epoch: float) -> str:
    """DashScope's timestamp format, ``2025-01-08 16:03:59.840`` (the emulator uses UTC)."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


async def json_object(request: Request) -> dict[str, Any] | str:
    """The request's body as a JSON object, or the message saying why it is not one."""
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"The request body is not valid JSON: {exc}"
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    request.scope[FINGERPRINT] = body_fingerprint(body)
    return body


def body_fingerprint(body: dict[str, Any]) -> str:
    """
    A digest of a request's JSON body (its content never goes into the log): equal for a request and its
    re-sends, so a test or benchmark can tell one generation billed twice from two generations.
    """
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=repr)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:16]


def record(
    state: EmulatorState,
    request: Request,
    request_id: str,
    status: int,
    *,
    kind: str,
    outcome: str,
    billed: int = 0,
    model: str | None = None,
    n: int | None = None,
    fault: str | None = None,
    task_id: str | None = None,
) -> dict[str, Any]:
    """
    Log one request. ``kind``: generate, submit (one entry per task submission; ``task_id`` set when it
    created a task), task (status query), cancel, list (task list), download or models. ``outcome``: ok,
    unauthorized, rejected, denied, throttled, an injected fault's name (429, billed_500, partial,
    malformed:<kind>...), truncate (downloads), not_found, expired. ``fingerprint``: the digest of the
    request's JSON body once it was read (see :func:`body_fingerprint`), else None.
    """
    entry = {
        "time": time.time(),
        "kind": kind,
        "method": request.method,
        "path": request.url.path,
        "status": status,
        "request_id": request_id,
        "billed_images": billed,
        "billed": billed > 0,
        "outcome": outcome,
        "model": model,
        "n": n,
        "fault": fault,
        "task_id": task_id,
        "fingerprint": request.scope.get(FINGERPRINT),
        "workspace": workspace_of(request),
    }
    state.record(entry)
    return entry


def error_response(
    state: EmulatorState,
    request_id: str,
    *,
    status: int,
    code: str,
    message: str,
    error_type: str,
    param: str | None = None,
    dashscope_code: str | None = None,
    headers: dict[str, str] | None = None,
    style: ErrorStyle | None = None,
) -> JSONResponse:
    """
    Error body in ``style`` (default: the configured one): OpenAI ``{"error": {...}}`` or DashScope
    ``{code, message, request_id}``. The native task routes always answer in DashScope's shape.
    """
    if (style or state.faults.error_style) == "dashscope":
        body: dict[str, Any] = {"code": dashscope_code or code, "message": message, "request_id": request_id}
    else:
        body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def invalid(
    state: EmulatorState, request_id: str, message: str, param: str | None, style: ErrorStyle | None = None
) -> JSONResponse:
    return error_response(
        state,
        request_id,
        status=400,
        code="InvalidParameter",
        message=message,
        error_type="invalid_request_error",
        param=param,
        style=style,
    )


def unauthorized(
    state: EmulatorState, request: Request, request_id: str, style: ErrorStyle | None = None
) -> JSONResponse:
    presented = presented_key(request)
    if presented is not None and hmac.compare_digest(presented.encode(), state.config.api_key.encode()):
        # The key is right: the workspace it names is not one of the key's (wording unverified).
        return error_response(
            state,
            request_id,
            status=403,
            code="AccessDenied",
            message=f"The API key has no access to workspace {workspace_of(request)!r}.",
            error_type="invalid_request_error",
            style=style,
        )
    if presented is None:
        message = (
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    else:
        # Echoed verbatim on purpose, like real gateways: the provider must redact keys from error messages.
        message = f"Incorrect API key provided: {presented}"
    return error_response(
        state,
        request_id,
        status=401,
        code="invalid_api_key",
        dashscope_code="InvalidApiKey",
        message=message,
        error_type="invalid_request_error",
        style=style,
    )


def throttled(
    state: EmulatorState, request_id: str, limit: str, faults: FaultConfig, style: ErrorStyle | None = None
) -> JSONResponse:
    """The service's 429 for a quota (``limit``: rate or concurrency), relayed as is on the gateway."""
    headers = None
    if faults.quota_retry_after_seconds is not None:
        headers = {
            "Retry-After": str(math.ceil(faults.quota_retry_after_seconds)),
            "retry-after-ms": str(round(faults.quota_retry_after_seconds * 1000)),
        }
    if limit == "concurrency":
        code = "Throttling"
        message = "Requests throttling triggered: too many concurrent tasks, please try again later."
    else:
        code = "Throttling.RateQuota"
        message = "Requests rate limit exceeded, please try again later."
    return error_response(
        state,
        request_id,
        status=429,
        code=code,
        message=message,
        error_type="rate_limit_error",
        headers=headers,
        style=style,
    )


def refusing_fault_response(
    state: EmulatorState, fault: str, request_id: str, faults: FaultConfig, style: ErrorStyle | None = None
) -> Response:
    """The answer of a fault that stands in for the service before it did anything (not billed)."""
    if fault == "drop":
        return DroppedConnection()
    if fault == "throttle":
        return throttled(state, request_id, "rate", faults, style)
    if fault == "429":
        return error_response(
            state,
            request_id,
            status=429,
            code="Throttling.RateQuota",
            message="Rate limit exceeded: requests rate limit exceeded, please try again later.",
            error_type="rate_limit_error",
            style=style,
            headers={
                "Retry-After": str(math.ceil(faults.retry_after_seconds)),
                "retry-after-ms": str(round(faults.retry_after_seconds * 1000)),
            },
        )
    if fault == "moderation":
        return error_response(
            state,
            request_id,
            status=400,
            code="DataInspectionFailed",
            message="Input data may contain inappropriate content.",
            error_type="invalid_request_error",
            style=style,
        )
    if fault == "500":
        return error_response(
            state,
            request_id,
            status=500,
            code="InternalError",
            message="An internal error has occurred, please try again later or contact service support.",
            error_type="server_error",
            style=style,
        )
    if fault == "503":
        return error_response(
            state,
            request_id,
            status=503,
            code="ModelUnavailable",
            message="The model is temporarily unavailable, please try again later.",
            error_type="server_error",
            style=style,
        )
    # 200_error: the gateway relays a failed upstream task with HTTP 200.
    if faults.error_200_type == "ali_error" and (style or faults.error_style) == "openai":
        body = {
            "error": {
                "message": "upstream task failed: InternalError.Algo",
                "type": "ali_error",
                "param": None,
                "code": "InternalError.Algo",
            }
        }
        return JSONResponse(body, status_code=200)
    return error_response(
        state,
        request_id,
        status=200,
        code="InternalError.Algo",
        message="upstream task failed: InternalError.Algo",
        error_type="upstream_error",
        style=style,
    )


def _proxy_page(status: int, reason: str) -> Response:
    """An nginx-style HTML error page, as a proxy in front of the service answers."""
    body = (
        f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )
    return Response(body, status_code=status, media_type="text/html")


def billed_fault_status(fault: str) -> int:
    """The HTTP status a billed fault answers with (0: no answer at all)."""
    return {"billed_drop": 0, "billed_502": 502, "billed_504": 504, "billed_stall": 504}.get(fault, 500)


def billed_fault_response(
    state: EmulatorState, fault: str, request_id: str, style: ErrorStyle | None = None
) -> Response:
    """
    The failed answer of a request the service did perform and bill. For ``billed_stall`` the caller
    holds the answer ``stall_ms`` first (after releasing what the request held).
    """
    if fault == "billed_drop":
        return DroppedConnection()
    if fault == "billed_502":
        return _proxy_page(502, "Bad Gateway")
    if fault in ("billed_504", "billed_stall"):
        return _proxy_page(504, "Gateway Time-out")
    # billed_500: a relay whose long poll of the upstream task timed out while the task went on.
    return error_response(
        state,
        request_id,
        status=500,
        code="InternalError",
        message="Request timed out waiting for the upstream task, please try again later.",
        error_type="server_error",
        style=style,
    )


async def _wait_for_disconnect(receive: Receive) -> None:
    """Wait for the server to notice the connection is gone, so it does not log an unfinished response."""

    async def drain() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(drain(), timeout=_DISCONNECT_WAIT_SECONDS)
    except TimeoutError:
        log.debug("connection did not report a disconnect within %ss", _DISCONNECT_WAIT_SECONDS)


def _transport_of(send: Send) -> asyncio.Transport | None:
    # uvicorn passes send as a bound method of its RequestResponseCycle, which holds the transport.
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    return transport if transport is not None and hasattr(transport, "abort") else None


async def _abort_connection(send: Send, receive: Receive) -> None:
    """
    Drop the connection without any HTTP response (TCP RST): clients see a connection error.

    Outside uvicorn (no transport to reach), fall back to starting a response and raising, which makes the
    server close the connection mid-response.
    """
    transport = _transport_of(send)
    if transport is not None:
        transport.abort()
        await _wait_for_disconnect(receive)
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1")]})
    raise ConnectionAbortedError("emulator fault: connection dropped")


class DroppedConnection(Response):
    """Response that answers nothing: it aborts the underlying connection."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _abort_connection(scope.get(RAW_SEND, send), receive)


class TruncatedResponse(Response):
    """
    Sends the full Content-Length, about half the body, then closes the connection.

    The close is a graceful one (FIN after the buffered half is flushed) rather than an abort: an abort
    discards whatever is still buffered, which would make what the client receives depend on socket buffer
    sizes; this way the client deterministically gets exactly half the bytes and then EOF.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send(
            {"type": "http.response.body", "body": self.body[: len(self.body) // 2], "more_body": True}
        )
        transport = _transport_of(scope.get(RAW_SEND, send))
        if transport is None:
            raise ConnectionAbortedError("emulator fault: download truncated")
        transport.close()
        await _wait_for_disconnect(receive)


class EmulatorFastAPI(FastAPI):
    """
    FastAPI whose outermost ASGI layer assigns the request id and keeps uvicorn's raw ``send``.

    Starlette's middleware wraps ``send`` in closures, so a route can only reach the transport (to drop a
    connection) through the raw callable stored here. Every response, including framework 404s, gets the
    ``x-request-id`` header.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request_id = str(uuid.uuid4())
        scope[REQUEST_ID] = request_id
        scope[RAW_SEND] = send
        header = (b"x-request-id", request_id.encode("ascii"))

        async def send_with_request_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        await super().__call__(scope, receive, send_with_request_id)


def state_of(request: Request) -> EmulatorState:
    state: EmulatorState = request.app.state.emulator
    return state
