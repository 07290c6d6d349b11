"""
DashScope's synchronous endpoint: ``POST /api/v1/services/aigc/multimodal-generation/generation``.

The images come in the answer (no task): qwen-image-max and the qwen-image 2.0 family only here,
qwen-image and qwen-image-plus here or on the task API (api-notes §6). Always in DashScope's error shape.

Order: auth (401; 403 for a workspace the key may not use) → injected refusing fault (429/500/503/drop/
200 error, not billed) → body (400) → model served here (400) → quota per key and model (429, not billed)
→ generation time (``latency_ms``) → validation (400: a synchronous call has no task to fail later) → the
images, billed → the answer, or a billed fault in its place (500/502/504/drop/stall): the images were
made and billed, the caller cannot know.

Body: ``{"model", "input": {"messages": [{"role": "user", "content": [{"text": prompt}]}]},
"parameters": {"size": "W*H", "n", "seed", "negative_prompt", "prompt_extend", "watermark"}}``. Answer:
``{"output": {"choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content":
[{"image": url}, ...]}}]}, "usage": {"width", "height", "image_count"}, "request_id"}``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from airflow_provider_imggen.emulator.models import InvalidRequestError, serves, validate_request
from airflow_provider_imggen.emulator.results import signed_url
from airflow_provider_imggen.emulator.state import (
    BILLED_FAULTS,
    REFUSING_FAULTS,
    EmulatorState,
    image_params,
)
from airflow_provider_imggen.emulator.wire import (
    billed_fault_response,
    billed_fault_status,
    caller_key_id,
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
MULTIMODAL_PATH = "/api/v1/services/aigc/multimodal-generation/generation"
KIND = "multimodal"


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


@router.post(MULTIMODAL_PATH)
async def generate(request: Request) -> Response:
    state = state_of(request)
    request_id = request_id_of(request)
    if not is_authorized(request, state.config.api_key):
        record(state, request, request_id, refusal_status(state, request), kind=KIND, outcome="unauthorized")
        return unauthorized(state, request, request_id, "dashscope")
    fault = state.draw_api_fault(billable=True)
    if fault in REFUSING_FAULTS:
        assert fault is not None
        response = refusing_fault_response(state, fault, request_id, state.faults, "dashscope")
        status = 0 if fault == "drop" else response.status_code
        record(state, request, request_id, status, kind=KIND, outcome=fault, fault=fault)
        return response
    body = await json_object(request)
    if isinstance(body, str):
        record(state, request, request_id, 400, kind=KIND, outcome="rejected")
        return invalid(state, request_id, body, None, "dashscope")
    raw_model = body.get("model")
    model = raw_model.strip() if isinstance(raw_model, str) and raw_model.strip() else None
    parameters = body.get("parameters")
    parameters = {} if parameters is None else parameters
    if model is None or not isinstance(parameters, dict):
        record(state, request, request_id, 400, kind=KIND, outcome="rejected", model=model)
        message = "model must be a model name, and parameters an object when given."
        return invalid(state, request_id, message, None if model else "model", "dashscope")
    if not serves(model, "multimodal"):
        record(state, request, request_id, 400, kind=KIND, outcome="rejected", model=model)
        message = (
            f"Model {model} is not supported by multimodal-generation: use the asynchronous "
            "/api/v1/services/aigc/text2image/image-synthesis with X-DashScope-Async: enable."
        )
        return invalid(state, request_id, message, "model", "dashscope")
    key = caller_key_id(request)
    limit = state.acquire_submission(key, model, in_flight=True)
    if limit is not None:
        record(state, request, request_id, 429, kind=KIND, outcome="throttled", model=model)
        return throttled(state, request_id, limit, state.faults, "dashscope")
    try:
        response = await _generate(state, request, request_id, body, parameters, model, fault)
    finally:
        state.release_generation(key, model)
    if fault == "billed_stall":
        await asyncio.sleep(state.faults.stall_ms / 1000)
    return response


async def _generate(
    state: EmulatorState,
    request: Request,
    request_id: str,
    body: dict[str, Any],
    parameters: dict[str, Any],
    model: str,
    fault: str | None,
) -> Response:
    if state.faults.latency_ms > 0:
        await asyncio.sleep(state.faults.latency_ms / 1000)
    try:
        validated = validate_request(
            prompt=_prompt_of(body.get("input")),
            model=model,
            n=parameters.get("n", 1),
            size=parameters.get("size"),
            negative_prompt=parameters.get("negative_prompt"),
            prompt_upsampling=parameters.get("prompt_extend"),
            seed=parameters.get("seed"),
            native=True,
            watermark=parameters.get("watermark"),
        )
    except InvalidRequestError as exc:
        record(state, request, request_id, 400, kind=KIND, outcome="rejected", model=model)
        return invalid(state, request_id, str(exc), exc.parameter, "dashscope")
    if fault in BILLED_FAULTS:
        assert fault is not None
        record(
            state,
            request,
            request_id,
            billed_fault_status(fault),
            kind=KIND,
            outcome=fault,
            billed=validated.n,
            model=model,
            n=validated.n,
            fault=fault,
        )
        return billed_fault_response(state, fault, request_id, "dashscope")
    content = [{"image": signed_url(state, request, params)} for params in image_params(validated)]
    record(
        state,
        request,
        request_id,
        200,
        kind=KIND,
        outcome="ok",
        billed=validated.n,
        model=model,
        n=validated.n,
    )
    return JSONResponse(
        {
            "output": {
                "choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": content}}]
            },
            "usage": {"width": validated.width, "height": validated.height, "image_count": validated.n},
            "request_id": request_id,
        }
    )
