"""
The emulator's ASGI layer and the answers that misbehave on purpose: request ids on every answer, dropped
connections (TCP RST), truncated downloads.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from fastapi import FastAPI
from fastapi.responses import Response
from starlette.types import Message, Receive, Scope, Send

log = logging.getLogger(__name__)

# Keys under which the outermost ASGI layer stores per-request values in the scope (see EmulatorFastAPI).
RAW_SEND = "imggen.raw_send"
REQUEST_ID = "imggen.request_id"
_DISCONNECT_WAIT_SECONDS = 5.0


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
