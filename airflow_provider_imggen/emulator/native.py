"""
DashScope's native asynchronous task API: submission, status, cancel and the task list. Thin routes: parse,
ask the backend, render. Always in DashScope's error shape. The status and the list also serve the tasks of
the editing and messages-body endpoints (:mod:`~airflow_provider_imggen.emulator.image2image`).

The generation time is the task's PENDING + RUNNING time (``task_pending_ms``, ``task_duration_ms``);
``latency_ms``, which stands for a synchronous generation, does not apply. A submission's images are billed
when its task ends (successful images only; a task canceled while PENDING costs nothing).

Task list (``GET /api/v1/tasks``, §7): ``start_time`` / ``end_time`` as ``YYYYMMDDhhmmss`` only (400
InvalidParameter for any other form), at most 24 hours apart (400 beyond; when one is missing the window is
the 24 hours before ``end_time`` or after ``start_time``, when both are, the last 24 hours). The documentation
names no time zone: **the emulator reads them in Beijing time (UTC+8)**, a plausible choice a client assuming
UTC gets wrong by 8 hours. It lists the tasks of every key of the caller's account, never another account's;
entries carry no prompt. Status queries (task status and task list) count against the account's 20/s.
"""

from __future__ import annotations

import asyncio
import math
import re
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from airflow_provider_imggen.emulator.backend import TaskQuery
from airflow_provider_imggen.emulator.calls import Call, api_call, hold_answer
from airflow_provider_imggen.emulator.errors import (
    ServiceError,
    billed_fault_response,
    billed_fault_status,
    invalid,
)
from airflow_provider_imggen.emulator.faults import BILLED_FAULTS
from airflow_provider_imggen.emulator.models import ENDPOINT_PATHS
from airflow_provider_imggen.emulator.results import image_answer, result_url
from airflow_provider_imggen.emulator.tasks import TASK_STATUSES, Task
from airflow_provider_imggen.emulator.wire import BEIJING, dashscope_time

router = APIRouter()
SubmitCall = Annotated[Call, Depends(api_call("submit", style="dashscope", billable=True))]
StatusCall = Annotated[Call, Depends(api_call("task", style="dashscope", status_query=True))]
CancelCall = Annotated[Call, Depends(api_call("cancel", style="dashscope"))]
ListCall = Annotated[Call, Depends(api_call("list", style="dashscope", status_query=True))]
SUBMIT_PATH = ENDPOINT_PATHS["task"]
MAX_PAGE_SIZE = 100
MAX_LIST_SPAN = timedelta(hours=24)

# Messages of the task failures the emulator can inject (DashScope's wording where known).
_TASK_FAILURE_MESSAGES = {
    "InvalidParameter": "The request parameters are invalid for this model.",
    "DataInspectionFailed": "Output data may contain inappropriate content.",
    "InternalError.Algo": "An internal algorithm error occurred while generating the image.",
}
# The task list's service names of the task endpoints.
_API_KEYS = {
    "task": "text2image:image-synthesis",
    "image2image": "image2image:image-synthesis",
    "image-generation": "image-generation:generation",
}
# A failed image of a task that otherwise SUCCEEDED (an output content check, typically).
IMAGE_FAILURE = {"code": "DataInspectionFailed", "message": "Output data may contain inappropriate content."}


def failure_message(task: Task) -> str:
    code = task.failure_code or ""
    return task.failure_message or _TASK_FAILURE_MESSAGES.get(code, f"The task failed: {code}")


def require_async(call: Call) -> None:
    """A task endpoint's submission without ``X-DashScope-Async: enable``: 403 AccessDenied."""
    if call.request.headers.get("x-dashscope-async", "").strip().lower() != "enable":
        message = "current user api does not support synchronous calls"
        raise ServiceError(403, "AccessDenied", message, outcome="denied")


@router.post(SUBMIT_PATH)
async def submit_task(call: SubmitCall) -> Response:
    require_async(call)
    task = call.backend.submit_task(call.account, call.key_id, call.request_id, await call.body())
    return await answer_submission(call, task)


async def answer_submission(call: Call, task: Task) -> Response:
    """The answer to a task endpoint's submission that created ``task`` (or a billed fault in its place)."""
    fault = call.fault if call.fault in BILLED_FAULTS else None
    outcome = fault or ("invalid_params_task" if task.failure_message and not task.images else "ok")
    # billed_images (0 now) is settled when the task ends: see RequestLog.
    call.log(
        billed_fault_status(fault) if fault else 200,
        outcome=outcome,
        model=task.model,
        n=task.n,
        fault=fault,
        task_id=task.task_id,
    )
    if fault is not None:
        # The task was created and runs (and bills); only the answer to the submission fails.
        if fault == "billed_stall":
            await asyncio.sleep(call.state.faults.stall_ms / 1000)
        return billed_fault_response(fault, call.request_id, "dashscope")
    await hold_answer(call)
    return JSONResponse(
        {"output": {"task_status": "PENDING", "task_id": task.task_id}, "request_id": call.request_id}
    )


def task_output(call: Call, task_id: str, task: Task | None, status: str) -> dict[str, Any]:
    """A task's ``output`` as the status query answers it."""
    output: dict[str, Any] = {"task_id": task_id, "task_status": status}
    if task is None or status == "UNKNOWN":
        return output
    output["submit_time"] = dashscope_time(task.submitted_at)
    if status not in ("PENDING", "SUSPENDED") and task.canceled_at is None:
        output["scheduled_time"] = dashscope_time(task.scheduled_at)
    metrics = {"TOTAL": task.n, "SUCCEEDED": 0, "FAILED": 0}
    if status == "CANCELED" and task.canceled_at is not None:
        output["end_time"] = dashscope_time(task.canceled_at)
    elif status == "FAILED":
        output.update(
            end_time=dashscope_time(task.ended_at), code=task.failure_code, message=failure_message(task)
        )
        metrics["FAILED"] = task.n
    elif status == "SUCCEEDED":
        output["end_time"] = dashscope_time(task.ended_at)
        if task.endpoint == "image-generation":
            output.update(finished=True, choices=_choices(call, task))
            return output  # the Wan 2.6 task page shows no task_metrics
        results: list[dict[str, str]] = []
        for index, params in enumerate(task.images):
            if index in task.failed_images:
                results.append(dict(IMAGE_FAILURE))
                continue
            item = {"orig_prompt": task.orig_prompt}
            if task.actual_prompt:
                item["actual_prompt"] = task.actual_prompt
            item["url"] = result_url(call.state, call.request, params, index, issued_at=task.ended_at)
            results.append(item)
        output["results"] = results
        metrics.update(SUCCEEDED=task.succeeded_count, FAILED=task.n - task.succeeded_count)
    output["task_metrics"] = metrics
    return output


def _choices(call: Call, task: Task) -> list[dict[str, Any]]:
    """
    A SUCCEEDED image-generation task's images, one choice each (the Wan 2.6 task page's shape); a failed
    image is a choice with ``finish_reason: "error"``, its code and message (unverified: no page shows one).
    """
    choices: list[dict[str, Any]] = []
    for index, params in enumerate(task.images):
        if index in task.failed_images:
            choices.append({"finish_reason": "error", **IMAGE_FAILURE})
            continue
        url = result_url(call.state, call.request, params, index, issued_at=task.ended_at)
        message = {"role": "assistant", "content": [{"image": url, "type": "image"}]}
        choices.append({"finish_reason": "stop", "message": message})
    return choices


@router.get("/api/v1/tasks/{task_id}")
async def get_task(task_id: str, call: StatusCall) -> Response:
    task, status = call.backend.task(task_id)
    call.log(200, outcome="ok", task_id=task_id)
    body: dict[str, Any] = {"request_id": call.request_id, "output": task_output(call, task_id, task, status)}
    if task is not None and status == "SUCCEEDED":
        body["usage"] = {"image_count": task.succeeded_count}
        if task.endpoint == "image-generation":
            first = task.images[0] if task.images else None
            body["usage"]["size"] = f"{first.width}*{first.height}" if first else ""
            return image_answer(call.state, body, ("output", "choices"))
        return image_answer(call.state, body, ("output", "results"))
    return JSONResponse(body)


@router.post("/api/v1/tasks/{task_id}/cancel")
async def cancel_task(task_id: str, call: CancelCall) -> Response:
    call.backend.cancel(task_id)
    call.log(200, outcome="ok", task_id=task_id)
    return JSONResponse({"request_id": call.request_id})


def parse_list_time(parameter: str, value: str) -> datetime:
    """A task-list time, ``YYYYMMDDhhmmss`` in Beijing time (see the module docstring), or a 400."""
    if not re.fullmatch(r"[0-9]{14}", value):
        raise invalid(f"Invalid {parameter}={value!r}: expected YYYYMMDDhhmmss", parameter)
    try:
        return datetime.strptime(value, "%Y%m%d%H%M%S").replace(tzinfo=BEIJING)
    except ValueError:
        raise invalid(f"Invalid {parameter}={value!r}: not a date and time", parameter) from None


def _page_number(parameter: str, value: str | None, default: int, high: int | None) -> int:
    if value is None:
        return default
    allowed = f"expected a whole number >= 1{f' and <= {high}' if high else ''}"
    if not re.fullmatch(r"\s*[0-9]+\s*", value) or int(value) < 1 or (high is not None and int(value) > high):
        raise invalid(f"Invalid {parameter}={value!r}: {allowed}", parameter)
    return int(value)


def parse_task_query(query: dict[str, str]) -> TaskQuery:
    start = parse_list_time("start_time", query["start_time"]) if query.get("start_time") else None
    end = parse_list_time("end_time", query["end_time"]) if query.get("end_time") else None
    if start is None and end is None:
        end = datetime.now(BEIJING)
    if start is None:
        assert end is not None
        start = end - MAX_LIST_SPAN
    if end is None:
        end = start + MAX_LIST_SPAN
    if end < start or end - start > MAX_LIST_SPAN:
        raise invalid("start_time and end_time must be in order and at most 24 hours apart", "end_time")
    status = query.get("status") or None
    if status is not None and status not in TASK_STATUSES:
        raise invalid(f"Invalid status={status!r}: expected one of {', '.join(TASK_STATUSES)}", "status")
    return TaskQuery(
        start=start.timestamp(),
        # Whole seconds: a task submitted during the end second is in.
        end=end.timestamp() + 1,
        task_id=query.get("task_id") or None,
        model=query.get("model_name") or None,
        status=status,
        page_no=_page_number("page_no", query.get("page_no"), 1, None),
        page_size=_page_number("page_size", query.get("page_size"), 10, MAX_PAGE_SIZE),
    )


def _list_item(task: Task, status: str) -> dict[str, Any]:
    item: dict[str, Any] = {
        "api_key_id": task.key_id,
        "caller_parent_id": task.account,
        "caller_uid": task.account,
        "gmt_create": int(task.submitted_at * 1000),
        "model_name": task.model,
        "region": "cn-beijing",
        "request_id": task.request_id,
        "status": status,
        "task_id": task.task_id,
        "user_api_unique_key": f"apikey:v1:aigc:{_API_KEYS.get(task.endpoint, task.endpoint)}:{task.model}",
    }
    if status not in ("PENDING", "SUSPENDED") and task.canceled_at is None:
        item["start_time"] = int(task.scheduled_at * 1000)
    if status in ("SUCCEEDED", "FAILED") or task.canceled_at is not None:
        item["end_time"] = int((task.canceled_at if task.canceled_at is not None else task.ended_at) * 1000)
    return item


@router.get("/api/v1/tasks")
async def list_tasks(
    call: ListCall,
) -> Response:
    """The account's tasks, newest first, in the DashScope SDK's task-list shape (not billed)."""
    query = parse_task_query(dict(call.request.query_params))
    page, total = call.backend.list_tasks(call.account, query)
    call.log(200, outcome="ok", model=query.model)
    return JSONResponse(
        {
            "request_id": call.request_id,
            "data": [_list_item(task, status) for task, status in page],
            "total": total,
            "total_page": math.ceil(total / query.page_size),
            "page_no": query.page_no,
            "page_size": query.page_size,
        }
    )
