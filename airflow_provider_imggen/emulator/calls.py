"""
The one auth-and-fault dependency of every API route, and the one place a call is logged.

A route declares ``call: Annotated[Call, Depends(api_call("submit", style="dashscope", billable=True))]``.
Before the route runs, the dependency authenticates the key (401, or 403 for a workspace the key may not
use), finds the key's account, draws the call's fault (a refusing one answers in place of the service), and
for status queries applies the account's status-query quota (429). A route then only parses, asks the
backend and renders; it raises :class:`~airflow_provider_imggen.emulator.errors.ServiceError` for any error
answer, which the handler installed by :func:`install` renders in the call's style and logs. Every entry of
the request log is written by :meth:`Call.log`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from airflow_provider_imggen.emulator.accounts import key_id
from airflow_provider_imggen.emulator.backend import ImageBackend
from airflow_provider_imggen.emulator.errors import (
    ServiceError,
    invalid,
    refusing_fault_response,
    throttling,
    unauthorized,
)
from airflow_provider_imggen.emulator.faults import REFUSING_FAULTS, ErrorStyle
from airflow_provider_imggen.emulator.state import EmulatorState
from airflow_provider_imggen.emulator.wire import (
    FINGERPRINT,
    PROMPT,
    json_object,
    presented_key,
    request_id_of,
    state_of,
    workspace_of,
)

CALL = "imggen.call"


class Call:
    """One API call: who made it (account, key), the fault drawn for it, its error style and its log entry."""

    def __init__(self, request: Request, state: EmulatorState, kind: str, style: ErrorStyle) -> None:
        self.request = request
        self.state = state
        self.kind = kind
        self.style: ErrorStyle = style
        self.request_id = request_id_of(request)
        self.account = ""
        self.key = presented_key(request)
        self.key_id = key_id(self.key)
        self.fault: str | None = None

    @property
    def backend(self) -> ImageBackend:
        return self.state.backend

    def log(
        self,
        status: int,
        *,
        outcome: str,
        billed: int = 0,
        model: str | None = None,
        n: int | None = None,
        fault: str | None = None,
        task_id: str | None = None,
    ) -> dict[str, Any]:
        """
        Log this call. ``outcome``: ok, unauthorized, rejected, denied, throttled, model_not_found, an
        injected fault's name (429, billed_500, partial, malformed:<kind>...), relay_retry, task_failed,
        truncate (downloads), not_found, expired. ``fingerprint``: the digest of the request's JSON body
        once it was read; ``prompt``: the prompt it carried.
        """
        request = self.request
        return self.state.log.record(
            {
                "time": time.time(),
                "kind": self.kind,
                "method": request.method,
                "path": request.url.path,
                "status": status,
                "request_id": self.request_id,
                "billed_images": billed,
                "outcome": outcome,
                "model": model,
                "n": n,
                "fault": fault,
                "task_id": task_id,
                "fingerprint": request.scope.get(FINGERPRINT),
                "prompt": request.scope.get(PROMPT),
                "workspace": workspace_of(request),
                "account": self.account or None,
            }
        )

    async def body(self) -> dict[str, Any]:
        """The JSON object the call carries, or a 400."""
        body = await json_object(self.request)
        if isinstance(body, str):
            raise invalid(body)
        return body


class FaultRefusal(Exception):
    """A refusing fault drawn for a call: answered in place of the service, nothing billed."""

    def __init__(self, fault: str) -> None:
        super().__init__(fault)
        self.fault = fault


async def hold_answer(call: Call) -> None:
    """The ``hold_ms`` fault: the request is done and billed; its answer leaves this much later."""
    if call.state.faults.hold_ms > 0:
        await asyncio.sleep(call.state.faults.hold_ms / 1000)


def api_call(
    kind: str,
    *,
    style: ErrorStyle | None = None,
    billable: bool = False,
    gateway: bool = False,
    status_query: bool = False,
) -> Callable[[Request], Awaitable[Call]]:
    """
    The dependency of an API route: ``kind`` names it in the log; ``style`` is the error shape (None: the
    configured ``error_style``, as the gateway answers); ``billable`` / ``gateway`` say which faults may land
    on it; ``status_query``: the account's status-query quota applies.
    """

    async def dependency(request: Request) -> Call:
        state = state_of(request)
        call = Call(request, state, kind, style or state.faults.error_style)
        request.scope[CALL] = call
        account = state.accounts.account_of(call.key)
        workspace = workspace_of(request)
        if account is None or not state.accounts.workspace_allowed(workspace):
            raise unauthorized(call.key, account is not None, workspace)
        call.account = account
        fault = state.dice.draw_api_fault(billable=billable, gateway=gateway)
        if fault in REFUSING_FAULTS:
            assert fault is not None
            raise FaultRefusal(fault)
        call.fault = fault
        if status_query and not state.quotas.acquire_status_query(state.faults, account):
            raise throttling("status", state.faults)
        return call

    return dependency


def unauthenticated_call(kind: str) -> Callable[[Request], Awaitable[Call]]:
    """The dependency of a route anyone may call (result downloads): no key, no fault draw; logged alike."""

    async def dependency(request: Request) -> Call:
        state = state_of(request)
        call = Call(request, state, kind, "dashscope")
        request.scope[CALL] = call
        return call

    return dependency


def _call_of(request: Request) -> Call:
    call = request.scope.get(CALL)
    if isinstance(call, Call):
        return call
    state = state_of(request)
    return Call(request, state, "unknown", state.faults.error_style)


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    call = _call_of(request)
    call.log(exc.status, outcome=exc.outcome, model=exc.model, billed=exc.billed)
    return exc.response(call.style, call.request_id)


async def _fault_refusal(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FaultRefusal)
    call = _call_of(request)
    response = refusing_fault_response(exc.fault, call.request_id, call.state.faults, call.style)
    call.log(0 if exc.fault == "drop" else response.status_code, outcome=exc.fault, fault=exc.fault)
    return response


def install(app: FastAPI) -> None:
    """Install the handlers that answer and log what a call raised."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(FaultRefusal, _fault_refusal)
