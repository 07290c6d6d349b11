"""
DashScope's synchronous endpoint: ``POST /api/v1/services/aigc/multimodal-generation/generation``.

The images come in the answer (no task): the synchronous-only families here (qwen-image-max, qwen-image 2.x
and 3.0, wan2.7-image, z-image-turbo), qwen-image and qwen-image-plus here or on the task API (§7). Always in
DashScope's error shape.

Order: auth (401; 403 for a workspace the key may not use) → injected refusing fault (429/500/503/drop/
200 error, not billed) → body (400) → model (404 ModelNotFound; 400 for a task-only model) → the account's
rate quota for the model (429, not billed; no concurrency quota here, §7) → generation time
(``latency_ms``) → validation (400: a synchronous call has no task to fail later) → the images, billed → the
answer, or a billed fault in its place (500/502/504/drop/stall).

Body: ``{"model", "input": {"messages": [{"role": "user", "content": [{"text": prompt}]}]},
"parameters": {"size": "W*H", "n", "seed", "negative_prompt", "prompt_extend", "watermark"}}``. Answer:
``{"output": {"choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content":
[{"image": url}, ..., {"text": rewritten prompt}]}}], "task_metric": {"TOTAL", "SUCCEEDED", "FAILED"}},
"usage": {"width", "height", "image_count"}, "request_id"}``: ``task_metric`` for every family but
qwen-image-2.0 (§7); the ``text`` item (§7: content items may include text) when prompt extension ran and
``multimodal_text_item`` is on (default).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from airflow_provider_imggen.emulator.backend import validate_native
from airflow_provider_imggen.emulator.calls import Call, api_call, hold_answer
from airflow_provider_imggen.emulator.errors import billed_fault_response, billed_fault_status, invalid
from airflow_provider_imggen.emulator.faults import BILLED_FAULTS
from airflow_provider_imggen.emulator.models import limits_of
from airflow_provider_imggen.emulator.objects import image_params, upsampled_prompt
from airflow_provider_imggen.emulator.results import image_answer, result_url
from airflow_provider_imggen.emulator.validation import InvalidRequestError, ValidRequest

router = APIRouter()
MultimodalCall = Annotated[Call, Depends(api_call("multimodal", style="dashscope", billable=True))]
MULTIMODAL_PATH = "/api/v1/services/aigc/multimodal-generation/generation"


def _prompt_of(text_input: object) -> object:
    """The text of the first user message (what the service draws), or None when there is none."""
    messages = text_input.get("messages") if isinstance(text_input, dict) else None
    if not isinstance(messages, list):
        return None
    for message in messages:
        if not isinstance(message, dict) or message.get("role", "user") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and "text" in part:
                    return part["text"]
    return None


def _parse(model: str, body: dict[str, Any]) -> ValidRequest:
    parameters = body.get("parameters")
    parameters = {} if parameters is None else parameters
    if not isinstance(parameters, dict):
        raise invalid("parameters must be an object when given.", None, model)
    try:
        # A synchronous call names n itself or gets one image.
        return validate_native(model, {"prompt": _prompt_of(body.get("input"))}, {"n": 1, **parameters})
    except InvalidRequestError as exc:
        raise invalid(str(exc), exc.parameter, model) from None


@router.post(MULTIMODAL_PATH)
async def generate(
    call: MultimodalCall,
) -> Response:
    body = await call.body()
    model = call.backend.check_model(body.get("model"), "multimodal")
    with call.backend.generation(call.account, model, task_api=False):
        if call.state.faults.latency_ms > 0:
            await asyncio.sleep(call.state.faults.latency_ms / 1000)
        validated = _parse(model, body)
        response = _answer(call, validated)
    if call.fault == "billed_stall":
        await asyncio.sleep(call.state.faults.stall_ms / 1000)
    await hold_answer(call)
    return response


def _answer(call: Call, validated: ValidRequest) -> Response:
    fault = call.fault if call.fault in BILLED_FAULTS else None
    status = billed_fault_status(fault) if fault else 200
    call.log(
        status, outcome=fault or "ok", billed=validated.n, model=validated.model, n=validated.n, fault=fault
    )
    if fault is not None:
        return billed_fault_response(fault, call.request_id, "dashscope")
    content: list[dict[str, str]] = [
        {"image": result_url(call.state, call.request, params, index)}
        for index, params in enumerate(image_params(validated))
    ]
    rewritten = upsampled_prompt(validated)
    if rewritten and call.state.faults.multimodal_text_item:
        content.append({"text": rewritten})
    output: dict[str, Any] = {
        "choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": content}}]
    }
    if limits_of(validated.model)["task_metric"]:
        output["task_metric"] = {"TOTAL": validated.n, "SUCCEEDED": validated.n, "FAILED": 0}
    body = {
        "output": output,
        "usage": {"width": validated.width, "height": validated.height, "image_count": validated.n},
        "request_id": call.request_id,
    }
    return image_answer(call.state, body, ("output", "choices"))
