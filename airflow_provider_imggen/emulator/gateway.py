"""
The OpenAI-compatible gateway: ``POST /v1/images/generations`` and ``GET /v1/models``.

Order of a generation: auth (401) → injected refusing fault (429/500/503/drop/200 error, not billed) →
body (400) → quota per key and model (429, relayed from the service, not billed) → generation time
(``latency_ms``) → validation (400) → the images, billed → the answer, or a billed fault in its place
(500/502/504/drop/stall), or a partial or malformed 200 answer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from airflow_provider_imggen.emulator.images import render_png
from airflow_provider_imggen.emulator.models import (
    GATEWAY_MODELS,
    NAMED_FIELDS,
    InvalidRequestError,
    ValidRequest,
    validate_request,
)
from airflow_provider_imggen.emulator.results import signed_url
from airflow_provider_imggen.emulator.state import (
    BILLED_FAULTS,
    REFUSING_FAULTS,
    EmulatorState,
    ImageParams,
    image_params,
    upsampled_prompt,
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
_USAGE = {
    "total_tokens": 0,
    "input_tokens": 0,
    "output_tokens": 0,
    "input_tokens_details": {"text_tokens": 0, "image_tokens": 0},
}
# A failed image as relays report it: an item with empty fields, or an empty object.
_EMPTY_ITEMS: tuple[dict[str, str], ...] = ({"url": "", "b64_json": "", "revised_prompt": ""}, {})
_TOO_MANY_IMAGES = 50


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def _item(
    state: EmulatorState, request: Request, validated: ValidRequest, params: ImageParams
) -> dict[str, Any]:
    item: dict[str, Any]
    if validated.response_format == "b64_json":
        # Rendering and encoding take tens of ms per image: keep them off the event loop.
        png = await run_in_threadpool(
            render_png,
            params.model,
            params.prompt,
            params.negative_prompt,
            params.seed,
            params.width,
            params.height,
            params.watermark,
        )
        item = {"b64_json": await run_in_threadpool(_b64encode, png)}
    else:
        item = {"url": signed_url(state, request, params)}
    revised_prompt = upsampled_prompt(validated)
    shape = state.faults.gateway_revised_prompt
    if shape == "empty":
        item["revised_prompt"] = ""  # one relay always sends the field, empty
    elif shape == "text" and revised_prompt is not None:
        item["revised_prompt"] = revised_prompt
    return item


async def _answer(
    state: EmulatorState, request: Request, validated: ValidRequest, fault: str | None
) -> tuple[Response, int, str]:
    """The 200 answer of a generation: (response, images billed, outcome)."""
    params = image_params(validated)
    created: Any = int(time.time())
    data: list[Any] = []
    if fault == "partial":
        failed = set(state.draw_failed_items(validated.n))
        for index, image in enumerate(params):
            if index in failed:
                data.append(dict(_EMPTY_ITEMS[0 if state.draw_unit() < 0.5 else 1]))
            else:
                data.append(await _item(state, request, validated, image))
        body = {"created": created, "data": data, "usage": _USAGE}
        return JSONResponse(body), validated.n - len(failed), "partial"
    kind = fault.partition(":")[2] if fault and fault.startswith("malformed:") else None
    if kind == "bad_base64" and validated.response_format != "b64_json":
        kind = "url_not_string"
    if kind == "url_not_string":
        data = [{"url": 12345} for _ in params]
    elif kind == "data_strings":
        data = [signed_url(state, request, image) for image in params]
    elif kind == "bad_base64":
        data = [{"b64_json": "iVBORw0KGgo=#not*base64!"} for _ in params]
    elif kind == "too_many_images":
        if validated.response_format == "b64_json":
            rendered = [await _item(state, request, validated, image) for image in params]
            data = [rendered[index % len(rendered)] for index in range(_TOO_MANY_IMAGES)]
        else:
            data = [
                await _item(state, request, validated, image)
                for image in image_params(validated, count=_TOO_MANY_IMAGES)
            ]
    else:
        data = [await _item(state, request, validated, image) for image in params]
        if kind == "created_string":
            created = "yesterday"
    body = {"created": created, "data": data, "usage": _USAGE}
    if kind == "not_json":
        text = json.dumps(body)
        return Response(text[: len(text) // 2], media_type="application/json"), validated.n, fault or ""
    outcome = f"malformed:{kind}" if kind else "ok"
    return JSONResponse(body), validated.n, outcome


@router.post("/v1/images/generations")
async def generate_images(request: Request) -> Response:
    state = state_of(request)
    request_id = request_id_of(request)
    if not is_authorized(request, state.config.api_key):
        record(
            state,
            request,
            request_id,
            refusal_status(state, request),
            kind="generate",
            outcome="unauthorized",
        )
        return unauthorized(state, request, request_id)
    fault = state.draw_api_fault(billable=True, gateway=True)
    if fault in REFUSING_FAULTS:
        assert fault is not None
        response = refusing_fault_response(state, fault, request_id, state.faults)
        status = 0 if fault == "drop" else response.status_code
        record(state, request, request_id, status, kind="generate", outcome=fault, fault=fault)
        return response

    body = await json_object(request)
    if isinstance(body, str):
        record(state, request, request_id, 400, kind="generate", outcome="rejected")
        return invalid(state, request_id, body, None)
    raw_model = body.get("model")
    model = raw_model.strip() if isinstance(raw_model, str) and raw_model.strip() else None
    key = caller_key_id(request)
    if model is not None:
        limit = state.acquire_submission(key, model, in_flight=True)
        if limit is not None:
            record(state, request, request_id, 429, kind="generate", outcome="throttled", model=model)
            return throttled(state, request_id, limit, state.faults)
    try:
        response = await _generate(state, request, request_id, body, fault)
    finally:
        if model is not None:
            state.release_generation(key, model)
    if fault == "billed_stall":
        # The relay holds the answer (its long poll) after the upstream task completed and billed.
        await asyncio.sleep(state.faults.stall_ms / 1000)
    return response


async def _generate(
    state: EmulatorState, request: Request, request_id: str, body: dict[str, Any], fault: str | None
) -> Response:
    faults = state.faults
    if faults.latency_ms > 0:
        await asyncio.sleep(faults.latency_ms / 1000)
    model = body.get("model")
    fields = _dashscope_fields(body, faults.gateway_dialect)
    try:
        validated = validate_request(
            prompt=body.get("prompt"),
            model=model,
            # JSON null means "not given" for the optional fields, as with the OpenAI client.
            n=1 if body.get("n") is None else body["n"],
            size=body.get("size"),
            response_format="url" if body.get("response_format") is None else body["response_format"],
            extra={key: value for key, value in body.items() if key not in NAMED_FIELDS},
            **fields,
        )
    except InvalidRequestError as exc:
        shown_model = model if isinstance(model, str) else None
        record(state, request, request_id, 400, kind="generate", outcome="rejected", model=shown_model)
        return invalid(state, request_id, str(exc), exc.parameter)

    if fault in BILLED_FAULTS:
        assert fault is not None
        # Generated and billed upstream; the client gets a failure instead of the images.
        record(
            state,
            request,
            request_id,
            billed_fault_status(fault),
            kind="generate",
            outcome=fault,
            billed=validated.n,
            model=validated.model,
            n=validated.n,
            fault=fault,
        )
        return billed_fault_response(state, fault, request_id)

    response, billed, outcome = await _answer(state, request, validated, fault)
    record(
        state,
        request,
        request_id,
        200,
        kind="generate",
        outcome=outcome,
        billed=billed,
        model=validated.model,
        n=validated.n,
        fault=fault,
    )
    return response


def _dashscope_fields(body: dict[str, Any], dialect: str) -> dict[str, Any]:
    """
    The fields DashScope reads from its ``input`` / ``parameters``, as a relay of ``dialect`` forwards them.

    ``openai``: from the top level (``prompt_upsampling`` is prompt extension); a ``parameters`` or
    ``input`` object is passed through unread. ``nested``: seed, negative_prompt and prompt extension only
    from ``parameters`` / ``input`` (the top-level ones are dropped without a word, as that relay does);
    watermark from either place.
    """
    if dialect != "nested":
        return {
            "negative_prompt": body.get("negative_prompt"),
            "prompt_upsampling": body.get("prompt_upsampling"),
            "seed": body.get("seed"),
            "watermark": body.get("watermark"),
        }
    raw_parameters, raw_input = body.get("parameters"), body.get("input")
    parameters: dict[str, Any] = raw_parameters if isinstance(raw_parameters, dict) else {}
    text_input: dict[str, Any] = raw_input if isinstance(raw_input, dict) else {}
    watermark = parameters.get("watermark")
    return {
        "negative_prompt": text_input.get("negative_prompt", parameters.get("negative_prompt")),
        "prompt_upsampling": parameters.get("prompt_extend"),
        "seed": parameters.get("seed"),
        "watermark": body.get("watermark") if watermark is None else watermark,
    }


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    state = state_of(request)
    request_id = request_id_of(request)
    # Faults apply here too (a failing gateway fails the connection test), but not the latency,
    # which stands for image generation time.
    if not is_authorized(request, state.config.api_key):
        record(
            state, request, request_id, refusal_status(state, request), kind="models", outcome="unauthorized"
        )
        return unauthorized(state, request, request_id)
    fault = state.draw_api_fault()
    if fault is not None:
        response = refusing_fault_response(state, fault, request_id, state.faults)
        status = 0 if fault == "drop" else response.status_code
        record(state, request, request_id, status, kind="models", outcome=fault, fault=fault)
        return response
    record(state, request, request_id, 200, kind="models", outcome="ok")
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "emulator"}
                for name in GATEWAY_MODELS
            ],
        }
    )
