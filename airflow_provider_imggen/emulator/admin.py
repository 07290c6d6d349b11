"""
Admin routes for tests and humans on loopback: the request log, billing, faults, tasks, reset.
Unauthenticated and not logged.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from airflow_provider_imggen.emulator.wire import state_of

router = APIRouter(prefix="/_emulator")


@router.get("/requests")
async def admin_requests(request: Request) -> dict[str, Any]:
    state = state_of(request)
    return {"requests": state.requests_log(), "billed_images": state.billed_images()}


@router.delete("/requests")
async def admin_clear_requests(request: Request) -> dict[str, Any]:
    state_of(request).clear_log()
    return {"requests": [], "billed_images": 0}


@router.get("/billing")
async def admin_billing(request: Request) -> dict[str, Any]:
    return state_of(request).billing()


@router.get("/faults")
async def admin_faults(request: Request) -> dict[str, Any]:
    return dataclasses.asdict(state_of(request).faults)


@router.put("/faults")
async def admin_set_faults(request: Request) -> Response:
    try:
        body = json.loads(await request.body() or b"{}")
        if not isinstance(body, dict):
            raise ValueError("expected a JSON object of FaultConfig fields")
        merged = state_of(request).set_faults(**body)
    except ValueError as exc:  # JSONDecodeError is a ValueError
        return JSONResponse(
            {"error": {"message": str(exc), "type": "invalid_request_error"}}, status_code=400
        )
    return JSONResponse(dataclasses.asdict(merged))


@router.get("/tasks")
async def admin_tasks(request: Request) -> dict[str, Any]:
    return {"tasks": state_of(request).tasks()}


@router.post("/tasks/{task_id}/expire")
async def admin_expire_task(request: Request, task_id: str) -> Response:
    if not state_of(request).expire_task(task_id):
        return JSONResponse(
            {"error": {"message": f"no task {task_id}", "type": "invalid_request_error"}}, status_code=404
        )
    return JSONResponse({"task_id": task_id, "task_status": "UNKNOWN"})


@router.post("/reset")
async def admin_reset(request: Request) -> dict[str, Any]:
    state = state_of(request)
    state.reset()
    return {"faults": dataclasses.asdict(state.faults), "requests": []}
