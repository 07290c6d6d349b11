"""
DashScope's native asynchronous task API: submission, status, cancel and the task list.

Always in DashScope's error shape. The generation time is the task's PENDING + RUNNING time
(``task_pending_ms``, ``task_duration_ms``); ``latency_ms``, which stands for a synchronous generation,
does not apply. A submission's images are billed when its task ends (successful images only; a task
canceled while PENDING costs nothing).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from airflow_provider_imggen.emulator.models import (
    InvalidRequestError,
    ValidRequest,
    limits_of,
    serves,
    validate_request,
)
from airflow_provider_imggen.emulator.results import signed_url
from airflow_provider_imggen.emulator.state import (
    BILLED_FAULTS,
    REFUSING_FAULTS,
    EmulatorState,
    Task,
    image_params,
    upsampled_prompt,
)
from airflow_provider_imggen.emulator.wire import (
    billed_fault_response,
    billed_fault_status,
    caller_key_id,
    dashscope_time,
    error_response,
    invalid,
    is_authorized,
    json_object,
    record,
    refusal_status,
    refusing_fault_response,
    request_id_of,
    state_of,
    throttled,
    unauthorized,
)

router = APIRouter()
SUBMIT_PATH = "/api/v1/services/aigc/text2image/image-synthesis"
TASK_STATUSES = ("PENDING", "SUSPENDED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN")
MAX_PAGE_SIZE = 100

# Messages of the task failures the emulator can inject (DashScope's wording where known).
_TASK_FAILURE_MESSAGES = {
    "InvalidParameter": "The request parameters are invalid for this model.",
    "DataInspectionFailed": "Output data may contain inappropriate content.",
    "InternalError.Algo": "An internal algorithm error occurred while generating the image.",
}
# A failed image of a task that otherwise SUCCEEDED (an output content check, typically).
_IMAGE_FAILURE = {"code": "DataInspectionFailed", "message": "Output data may contain inappropriate content."}


def _refuse(state: EmulatorState, request: Request, request_id: str, kind: str) -> Response | None:
    """The 401 or the injected refusing fault this (non-billable) call gets, logged; None to serve it."""
    if not is_authorized(request, state.config.api_key):
        record(state, request, request_id, refusal_status(state, request), kind=kind, outcome="unauthorized")
        return unauthorized(state, request, request_id, "dashscope")
    fault = state.draw_api_fault()
    if fault is None:
        return None
    response = refusing_fault_response(state, fault, request_id, state.faults, "dashscope")
    status = 0 if fault == "drop" else response.status_code
    record(state, request, request_id, status, kind=kind, outcome=fault, fault=fault)
    return response


def _refused_at_submission(exc: InvalidRequestError) -> bool:
    """A missing model or prompt is refused at once; values out of the model's limits fail the task."""
    if exc.parameter == "model":
        return True
    return exc.parameter == "prompt" and (not isinstance(exc.value, str) or not exc.value.strip())


def _invalid_task(model: str, n: object, message: str, key: str, now: float, state: EmulatorState) -> Task:
    faults = state.faults
    return Task(
        task_id=str(uuid.uuid4()),
        model=model,
        n=n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1,
        images=(),
        orig_prompt="",
        actual_prompt="",
        submitted_at=now,
        pending_s=faults.task_pending_ms / 1000,
        duration_s=faults.task_duration_ms / 1000,
        suspended_s=faults.task_suspended_ms / 1000,
        failure_code="InvalidParameter",
        failure_message=message,
        failed_images=frozenset(),
        log_entry={},
        key_id=key,
    )


@router.post(SUBMIT_PATH)
async def submit_task(request: Request) -> Response:
    state = state_of(request)
    request_id = request_id_of(request)
    if not is_authorized(request, state.config.api_key):
        record(
            state, request, request_id, refusal_status(state, request), kind="submit", outcome="unauthorized"
        )
        return unauthorized(state, request, request_id, "dashscope")
    fault = state.draw_api_fault(billable=True)
    if fault in REFUSING_FAULTS:
        assert fault is not None
        response = refusing_fault_response(state, fault, request_id, state.faults, "dashscope")
        status = 0 if fault == "drop" else response.status_code
        record(state, request, request_id, status, kind="submit", outcome=fault, fault=fault)
        return response
    if request.headers.get("x-dashscope-async", "").strip().lower() != "enable":
        record(state, request, request_id, 403, kind="submit", outcome="denied")
        return error_response(
            state,
            request_id,
            status=403,
            code="AccessDenied",
            message="current user api does not support synchronous calls",
            error_type="invalid_request_error",
            style="dashscope",
        )
    body = await json_object(request)
    if isinstance(body, str):
        record(state, request, request_id, 400, kind="submit", outcome="rejected")
        return invalid(state, request_id, body, None, "dashscope")
    model = body.get("model")
    text_input, parameters = body.get("input"), body.get("parameters")
    parameters = {} if parameters is None else parameters
    if not isinstance(text_input, dict) or not isinstance(parameters, dict):
        # Unreadable: refused at submission whatever invalid_native_params says.
        record(state, request, request_id, 400, kind="submit", outcome="rejected")
        message = "input must be an object with a prompt, and parameters an object when given."
        return invalid(state, request_id, message, None, "dashscope")
    shown_model = model.strip() if isinstance(model, str) and model.strip() else None
    if shown_model is not None and not serves(shown_model, "task"):
        # qwen-image-max and the 2.0 family: synchronous endpoint only (§6). Refused, nothing created.
        record(state, request, request_id, 400, kind="submit", outcome="rejected", model=shown_model)
        message = (
            f"Model {shown_model} does not support asynchronous calls: use "
            "/api/v1/services/aigc/multimodal-generation/generation."
        )
        return invalid(state, request_id, message, "model", "dashscope")
    native_n = parameters.get("n", min(limits_of(shown_model)["max_n"], 4) if shown_model else 1)
    try:
        validated = validate_request(
            prompt=text_input.get("prompt"),
            model=model,
            # The native default n is 4 (wan2.2-t2i-*), capped by what the model allows.
            n=native_n,
            size=parameters.get("size"),
            negative_prompt=text_input.get("negative_prompt"),
            prompt_upsampling=parameters.get("prompt_extend"),
            seed=parameters.get("seed"),
            native=True,
            watermark=parameters.get("watermark"),
        )
        failure: InvalidRequestError | None = None
    except InvalidRequestError as exc:
        if _refused_at_submission(exc) or state.faults.invalid_native_params == "reject":
            record(state, request, request_id, 400, kind="submit", outcome="rejected", model=shown_model)
            return invalid(state, request_id, str(exc), exc.parameter, "dashscope")
        failure = exc
    assert shown_model is not None
    key = caller_key_id(request)
    limit = state.acquire_submission(key, shown_model, in_flight=False)
    if limit is not None:
        record(state, request, request_id, 429, kind="submit", outcome="throttled", model=shown_model)
        return throttled(state, request_id, limit, state.faults, "dashscope")

    now = time.time()
    if failure is not None:
        task = _invalid_task(shown_model, native_n, str(failure), key, now, state)
    else:
        task = _new_task(state, validated, key, now)
    task.request_id = request_id
    billed_fault = fault if fault in BILLED_FAULTS else None
    status = billed_fault_status(billed_fault) if billed_fault else 200
    outcome = billed_fault or ("invalid_params_task" if failure is not None else "ok")
    # billed_images (0 now) is settled when the task ends: see EmulatorState.requests_log.
    task.log_entry = record(
        state,
        request,
        request_id,
        status,
        kind="submit",
        outcome=outcome,
        model=task.model,
        n=task.n,
        fault=billed_fault,
        task_id=task.task_id,
    )
    state.add_task(task)
    if billed_fault is not None:
        # The task was created and runs (and bills); only the answer to the submission fails.
        if billed_fault == "billed_stall":
            await asyncio.sleep(state.faults.stall_ms / 1000)
        return billed_fault_response(state, billed_fault, request_id, "dashscope")
    return JSONResponse(
        {"output": {"task_status": "PENDING", "task_id": task.task_id}, "request_id": request_id}
    )


def _new_task(state: EmulatorState, validated: ValidRequest, key: str, now: float) -> Task:
    failure_code, failed_images = state.draw_task_outcome()
    faults = state.faults
    return Task(
        task_id=str(uuid.uuid4()),
        model=validated.model,
        n=validated.n,
        images=tuple(image_params(validated)),
        orig_prompt=validated.prompt,
        # §6: actual_prompt is absent when prompt extension is off ("" here: left out of the answer).
        actual_prompt=upsampled_prompt(validated) or "",
        submitted_at=now,
        pending_s=faults.task_pending_ms / 1000,
        duration_s=faults.task_duration_ms / 1000,
        suspended_s=faults.task_suspended_ms / 1000,
        failure_code=failure_code,
        failed_images=frozenset(index for index in failed_images if index < validated.n),
        log_entry={},
        key_id=key,
    )


@router.get("/api/v1/tasks/{task_id}")
async def get_task(request: Request, task_id: str) -> Response:
    state = state_of(request)
    request_id = request_id_of(request)
    refused = _refuse(state, request, request_id, "task")
    if refused is not None:
        return refused
    task, status = state.lookup_task(task_id)
    record(state, request, request_id, 200, kind="task", outcome="ok", task_id=task_id)
    output: dict[str, Any] = {"task_id": task_id, "task_status": status}
    body: dict[str, Any] = {"request_id": request_id, "output": output}
    if task is None or status == "UNKNOWN":
        return JSONResponse(body)
    output["submit_time"] = dashscope_time(task.submitted_at)
    if status not in ("PENDING", "SUSPENDED") and task.canceled_at is None:
        output["scheduled_time"] = dashscope_time(task.scheduled_at)
    total = task.n
    metrics = {"TOTAL": total, "SUCCEEDED": 0, "FAILED": 0}
    if status == "CANCELED" and task.canceled_at is not None:
        output["end_time"] = dashscope_time(task.canceled_at)
    elif status == "FAILED":
        output["end_time"] = dashscope_time(task.ended_at)
        output["code"] = task.failure_code
        output["message"] = task.failure_message or _TASK_FAILURE_MESSAGES.get(
            task.failure_code or "", f"The task failed: {task.failure_code}"
        )
        metrics["FAILED"] = total
    elif status == "SUCCEEDED":
        output["end_time"] = dashscope_time(task.ended_at)
        results: list[dict[str, str]] = []
        for index, params in enumerate(task.images):
            if index in task.failed_images:
                results.append(dict(_IMAGE_FAILURE))
            else:
                item = {"orig_prompt": task.orig_prompt}
                if task.actual_prompt:
                    item["actual_prompt"] = task.actual_prompt
                item["url"] = signed_url(state, request, params, issued_at=task.ended_at)
                results.append(item)
        output["results"] = results
        metrics.update(SUCCEEDED=task.succeeded_count, FAILED=total - task.succeeded_count)
        body["usage"] = {"image_count": task.succeeded_count}
    output["task_metrics"] = metrics
    return JSONResponse(body)


@router.post("/api/v1/tasks/{task_id}/cancel")
async def cancel_task(request: Request, task_id: str) -> Response:
    state = state_of(request)
    request_id = request_id_of(request)
    refused = _refuse(state, request, request_id, "cancel")
    if refused is not None:
        return refused
    previous = state.cancel_task(task_id)
    if previous != "PENDING":
        record(state, request, request_id, 400, kind="cancel", outcome="rejected", task_id=task_id)
        return error_response(
            state,
            request_id,
            status=400,
            code="UnsupportedOperation",
            message=f"Failed to cancel the task: only PENDING tasks can be canceled, it is {previous}.",
            error_type="invalid_request_error",
            style="dashscope",
        )
    record(state, request, request_id, 200, kind="cancel", outcome="ok", task_id=task_id)
    return JSONResponse({"request_id": request_id})


def parse_list_time(parameter: str, value: str) -> float:
    """
    A task-list time as epoch seconds (UTC): ``YYYY-MM-DD HH:MM:SS`` (the documented form, optional
    ``.fff``), ``YYYYMMDDHHMMSS`` (the Python SDK's docstring) or epoch milliseconds (the Java SDK's).
    """
    text = value.strip()
    if re.fullmatch(r"\d{13}", text):
        return int(text) / 1000
    for pattern in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S.%f", "%Y%m%d%H%M%S"):
        try:
            return datetime.strptime(text, pattern).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    raise InvalidRequestError(parameter, value, "expected 'YYYY-MM-DD HH:MM:SS' (UTC)")


def _page_number(parameter: str, value: str | None, default: int, high: int | None) -> int:
    if value is None:
        return default
    allowed = f"expected a whole number >= 1{f' and <= {high}' if high else ''}"
    if not re.fullmatch(r"\s*[0-9]+\s*", value) or int(value) < 1 or (high is not None and int(value) > high):
        raise InvalidRequestError(parameter, value, allowed)
    return int(value)


def _ms(epoch: float) -> int:
    return int(epoch * 1000)


@router.get("/api/v1/tasks")
async def list_tasks(request: Request) -> Response:
    """The caller's tasks, newest first, in the DashScope SDK's task-list shape (not billed)."""
    state = state_of(request)
    request_id = request_id_of(request)
    refused = _refuse(state, request, request_id, "list")
    if refused is not None:
        return refused
    query = request.query_params
    try:
        start = parse_list_time("start_time", query["start_time"]) if query.get("start_time") else None
        end = parse_list_time("end_time", query["end_time"]) if query.get("end_time") else None
        status = query.get("status") or None
        if status is not None and status not in TASK_STATUSES:
            raise InvalidRequestError("status", status, f"expected one of {', '.join(TASK_STATUSES)}")
        page_no = _page_number("page_no", query.get("page_no"), 1, None)
        page_size = _page_number("page_size", query.get("page_size"), 10, MAX_PAGE_SIZE)
    except InvalidRequestError as exc:
        record(state, request, request_id, 400, kind="list", outcome="rejected")
        return invalid(state, request_id, str(exc), exc.parameter, "dashscope")
    model = query.get("model_name") or None
    key = caller_key_id(request)
    found = state.list_tasks(key, start=start, end=end, model=model, status=status)
    page = found[(page_no - 1) * page_size : page_no * page_size]
    data = []
    for task, task_status in page:
        item: dict[str, Any] = {
            "api_key_id": key,
            "caller_parent_id": "emulator",
            "caller_uid": "emulator",
            "gmt_create": _ms(task.submitted_at),
            "model_name": task.model,
            "region": "cn-beijing",
            "request_id": task.request_id,
            "status": task_status,
            "task_id": task.task_id,
            "user_api_unique_key": f"apikey:v1:aigc:text2image:image-synthesis:{task.model}",
        }
        if task_status not in ("PENDING", "SUSPENDED") and task.canceled_at is None:
            item["start_time"] = _ms(task.scheduled_at)
        if task_status in ("SUCCEEDED", "FAILED") or task.canceled_at is not None:
            item["end_time"] = _ms(task.canceled_at if task.canceled_at is not None else task.ended_at)
        data.append(item)
    record(state, request, request_id, 200, kind="list", outcome="ok", model=model)
    return JSONResponse(
        {
            "request_id": request_id,
            "data": data,
            "total": len(found),
            "total_page": math.ceil(len(found) / page_size),
            "page_no": page_no,
            "page_size": page_size,
        }
    )
