"""
Reading requests and writing DashScope's timestamps: request ids, the presented key and workspace, the JSON
body (and its fingerprint for the log), the emulator's state.

Times: DashScope's documentation states no time zone for its timestamps (``submit_time`` ...) nor for the
task list's ``start_time`` / ``end_time``; the emulator uses Beijing time (UTC+8) for both, the service's
home region, a plausible choice that a client assuming UTC gets wrong by 8 hours.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from fastapi import Request

from airflow_provider_imggen.emulator.state import EmulatorState
from airflow_provider_imggen.emulator.transport import REQUEST_ID

FINGERPRINT = "imggen.fingerprint"
PROMPT = "imggen.prompt"
WORKSPACE_HEADER = "x-dashscope-workspace"
BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")


def state_of(request: Request) -> EmulatorState:
    state: EmulatorState = request.app.state.emulator
    return state


def request_id_of(request: Request) -> str:
    return str(request.scope.get(REQUEST_ID) or uuid.uuid4())


def presented_key(request: Request) -> str | None:
    """The API key as the client sent it (None when there is no Authorization header at all)."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, rest = header.partition(" ")
    return rest.strip() if scheme.lower() == "bearer" else header


def workspace_of(request: Request) -> str | None:
    """The Model Studio workspace the request names (``X-DashScope-WorkSpace``), if any."""
    return request.headers.get(WORKSPACE_HEADER)


def dashscope_time(epoch: float) -> str:
    """DashScope's timestamp format, ``2025-01-08 16:03:59.840``, in Beijing time (see above)."""
    return datetime.fromtimestamp(epoch, BEIJING).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


async def json_object(request: Request) -> dict[str, Any] | str:
    """The request's body as a JSON object, or the message saying why it is not one."""
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"The request body is not valid JSON: {exc}"
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    request.scope[FINGERPRINT] = body_fingerprint(body)
    request.scope[PROMPT] = prompt_of(body)
    return body


def prompt_of(body: dict[str, Any]) -> str | None:
    """
    The prompt a request body carries, wherever its API puts it (top level on the gateway, ``input`` on
    the task API, the first text of ``input.messages`` on the synchronous endpoint): the billing log
    names what each charge was for, as a console does.
    """
    if isinstance(body.get("prompt"), str):
        return str(body["prompt"])
    given = body.get("input")
    if not isinstance(given, dict):
        return None
    if isinstance(given.get("prompt"), str):
        return str(given["prompt"])
    for message in given.get("messages") or ():
        for part in message.get("content") or () if isinstance(message, dict) else ():
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                return str(part["text"])
    return None


def body_fingerprint(body: dict[str, Any]) -> str:
    """
    A digest of a request's JSON body (its content never goes into the log): equal for a request and its
    re-sends, so a test or benchmark can tell one generation billed twice from two generations.
    """
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=repr)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:16]
