"""
The OpenAI-compatible gateway: ``POST /v1/images/generations`` and ``GET /v1/models``.

Order of a generation: auth (401) → injected refusing fault (429/500/503/drop/200 error, not billed) →
body (400) → model: a name no channel serves answers like new-api / one-api, HTTP 503 ``model_not_found``
("no available channel", not transient, nothing generated or billed); served are the model table's names
(and dated snapshots) and ``FaultConfig.gateway_models`` → the account's quota for the model (429, relayed
from the service, not billed; models of the task API hold a concurrency slot while in flight) → generation
time (``latency_ms``) → validation (400) → the images, billed → the answer, or a billed fault in its place
(500/502/504/drop/stall), or a partial or malformed 200 answer.

``gateway_dialect="openai"`` reads every field at the top level (the seed document); ``"nested"`` plays
new-api's relay, see :mod:`~airflow_provider_imggen.emulator.relay`.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from airflow_provider_imggen.emulator.calls import Call, api_call, hold_answer
from airflow_provider_imggen.emulator.errors import (
    billed_fault_response,
    billed_fault_status,
    gateway_model_not_found,
    invalid,
)
from airflow_provider_imggen.emulator.faults import BILLED_FAULTS
from airflow_provider_imggen.emulator.models import GATEWAY_MODELS, NAMED_FIELDS, is_known, serves
from airflow_provider_imggen.emulator.objects import ImageParams, image_params, upsampled_prompt
from airflow_provider_imggen.emulator.relay import relay_generation
from airflow_provider_imggen.emulator.results import b64_image, image_answer, result_url
from airflow_provider_imggen.emulator.validation import InvalidRequestError, ValidRequest, validate_request

router = APIRouter()
GenerateCall = Annotated[Call, Depends(api_call("generate", billable=True, gateway=True))]
ModelsCall = Annotated[Call, Depends(api_call("models"))]
_USAGE = {
    "total_tokens": 0,
    "input_tokens": 0,
    "output_tokens": 0,
    "input_tokens_details": {"text_tokens": 0, "image_tokens": 0},
}
# A failed image as relays report it: an item with empty fields, or an empty object.
_EMPTY_ITEMS: tuple[dict[str, str], ...] = ({"url": "", "b64_json": "", "revised_prompt": ""}, {})
_TOO_MANY_IMAGES = 50


async def _item(call: Call, validated: ValidRequest, params: ImageParams, index: int) -> dict[str, Any]:
    item: dict[str, Any]
    if validated.response_format == "b64_json":
        item = {"b64_json": await b64_image(params)}
    else:
        item = {"url": result_url(call.state, call.request, params, index)}
    revised_prompt = upsampled_prompt(validated)
    shape = call.state.faults.gateway_revised_prompt
    if shape == "empty":
        item["revised_prompt"] = ""  # one relay always sends the field, empty
    elif shape == "text" and revised_prompt is not None:
        item["revised_prompt"] = revised_prompt
    return item


async def _answer(call: Call, validated: ValidRequest, fault: str | None) -> tuple[Response, int, str]:
    """The 200 answer of a generation: (response, images billed, outcome)."""
    params = image_params(validated)
    created: Any = int(time.time())
    data: list[Any] = []
    if fault == "partial":
        failed = set(call.state.dice.draw_failed_items(validated.n))
        for index, image in enumerate(params):
            if index in failed:
                data.append(dict(_EMPTY_ITEMS[0 if call.state.dice.draw_unit() < 0.5 else 1]))
            else:
                data.append(await _item(call, validated, image, index))
        body = {"created": created, "data": data, "usage": _USAGE}
        return image_answer(call.state, body, ("data",)), validated.n - len(failed), "partial"
    kind = fault.partition(":")[2] if fault and fault.startswith("malformed:") else None
    if kind == "bad_base64" and validated.response_format != "b64_json":
        kind = "url_not_string"
    if kind == "url_not_string":
        data = [{"url": 12345} for _ in params]
    elif kind == "data_strings":
        data = [result_url(call.state, call.request, image, index) for index, image in enumerate(params)]
    elif kind == "bad_base64":
        data = [{"b64_json": "iVBORw0KGgo=#not*base64!"} for _ in params]
    elif kind == "too_many_images":
        if validated.response_format == "b64_json":
            rendered = [await _item(call, validated, image, index) for index, image in enumerate(params)]
            data = [rendered[index % len(rendered)] for index in range(_TOO_MANY_IMAGES)]
        else:
            data = [
                await _item(call, validated, image, index)
                for index, image in enumerate(image_params(validated, count=_TOO_MANY_IMAGES))
            ]
    else:
        data = [await _item(call, validated, image, index) for index, image in enumerate(params)]
        if kind == "created_string":
            created = "yesterday"
    body = {"created": created, "data": data, "usage": _USAGE}
    if kind == "not_json":
        text = json.dumps(body)
        return Response(text[: len(text) // 2], media_type="application/json"), validated.n, fault or ""
    outcome = f"malformed:{kind}" if kind else "ok"
    return image_answer(call.state, body, ("data",)), validated.n, outcome


def served_model(call: Call, model: object) -> str:
    """The model if a channel of the gateway serves it; 400 for no model, 503 model_not_found else."""
    if not isinstance(model, str) or not model.strip():
        raise invalid(f"Invalid model={model!r}: expected a model name", "model")
    name = model.strip()
    if not is_known(name) and name not in call.state.faults.gateway_models:
        raise gateway_model_not_found(name)
    return name


@router.post("/v1/images/generations")
async def generate_images(
    call: GenerateCall,
) -> Response:
    body = await call.body()
    model = served_model(call, body.get("model"))
    task_api = is_known(model) and serves(model, "task")
    with call.backend.generation(call.account, model, task_api=task_api):
        faults = call.state.faults
        if faults.latency_ms > 0:
            await asyncio.sleep(faults.latency_ms / 1000)
        if faults.gateway_dialect == "nested":
            response = await relay_generation(call, model, body)
        else:
            response = await _generate(call, model, body)
    if call.fault == "billed_stall":
        # The relay holds the answer (its long poll) after the upstream task completed and billed.
        await asyncio.sleep(call.state.faults.stall_ms / 1000)
    await hold_answer(call)
    return response


def parse_generation(model: str, body: dict[str, Any]) -> ValidRequest:
    """The seed document's body: every field at the top level (``prompt_upsampling`` is prompt extension)."""
    try:
        return validate_request(
            prompt=body.get("prompt"),
            model=model,
            # JSON null means "not given" for the optional fields, as with the OpenAI client.
            n=body.get("n"),
            size=body.get("size"),
            response_format="url" if body.get("response_format") is None else body["response_format"],
            extra={key: value for key, value in body.items() if key not in NAMED_FIELDS},
            negative_prompt=body.get("negative_prompt"),
            prompt_upsampling=body.get("prompt_upsampling"),
            seed=body.get("seed"),
            watermark=body.get("watermark"),
        )
    except InvalidRequestError as exc:
        raise invalid(str(exc), exc.parameter, model) from None


async def _generate(call: Call, model: str, body: dict[str, Any]) -> Response:
    validated = parse_generation(model, body)
    fault = call.fault
    if fault in BILLED_FAULTS:
        assert fault is not None
        # Generated and billed upstream; the client gets a failure instead of the images.
        status = billed_fault_status(fault)
        call.log(status, outcome=fault, billed=validated.n, model=model, n=validated.n, fault=fault)
        return billed_fault_response(fault, call.request_id, call.style)
    response, billed, outcome = await _answer(call, validated, fault)
    call.log(200, outcome=outcome, billed=billed, model=model, n=validated.n, fault=fault)
    return response


@router.get("/v1/models")
async def list_models(call: ModelsCall) -> Response:
    # Faults apply here too (a failing gateway fails the connection test), but not the latency,
    # which stands for image generation time.
    call.log(200, outcome="ok")
    names = (
        *GATEWAY_MODELS,
        *(name for name in call.state.faults.gateway_models if name not in GATEWAY_MODELS),
    )
    return JSONResponse(
        {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": 0, "owned_by": "emulator"} for name in names],
        }
    )
