"""
DashScope's synchronous endpoint: ``POST /api/v1/services/aigc/multimodal-generation/generation``.

The images come in the answer (no task): the synchronous-only families here (qwen-image-max, qwen-image 2.x
and 3.0, wan2.7-image, z-image-turbo), qwen-image and qwen-image-plus here or on the task API (§7). Always in
DashScope's error shape.

Order: auth (401; 403 for a workspace the key may not use) → injected refusing fault (429/500/503/drop/
200 error, not billed) → body (400) → model (404 ModelNotFound; 400 for a model only a task endpoint serves)
→ the account's rate quota for the model (429, not billed; no concurrency quota here, §7) → generation time
(``latency_ms``) → the message (400) → the input images: how many (400), each fetched and checked (400,
:mod:`~airflow_provider_imggen.emulator.inputs`) → validation (400: a synchronous call has no task to fail
later) → the images, billed → the answer, or a billed fault in its place (500/502/504/drop/stall).

Body: ``{"model", "input": {"messages": [{"role": "user", "content": [{"image": url_or_data_uri}, ...,
{"text": prompt}]}]}, "parameters": {"size": "W*H", "n", "seed", "negative_prompt", "prompt_extend",
"watermark", ...}}``: exactly one message, any number of image items in order (the model's range, see
:mod:`~airflow_provider_imggen.emulator.editing`), exactly one text item. Answer: ``{"output": {"choices":
[{"finish_reason": "stop", "message": {"role": "assistant", "content": [{"image": url}, ..., {"text":
rewritten prompt}]}}], "task_metric": {"TOTAL", "SUCCEEDED", "FAILED"}}, "usage": {"width", "height",
"image_count"}, "request_id"}``: ``task_metric`` for every family but qwen-image-2.0 (§7); the ``text`` item
(§7: content items may include text) when prompt extension ran and ``multimodal_text_item`` is on
(default). Wan 2.6 / 2.7 answer as their page shows: image items ``{"image": url, "type": "image"}``,
``output.finished: true`` and ``usage.size`` (``"W*H"``) besides.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from airflow_provider_imggen.emulator.backend import validate_native
from airflow_provider_imggen.emulator.calls import Call, api_call, hold_answer
from airflow_provider_imggen.emulator.editing import check_input_count, message_parts, parameters_of
from airflow_provider_imggen.emulator.errors import billed_fault_response, billed_fault_status, invalid
from airflow_provider_imggen.emulator.faults import BILLED_FAULTS
from airflow_provider_imggen.emulator.inputs import load_inputs
from airflow_provider_imggen.emulator.models import ENDPOINT_PATHS, limits_of
from airflow_provider_imggen.emulator.objects import InputImage, image_params, upsampled_prompt
from airflow_provider_imggen.emulator.results import image_answer, result_url
from airflow_provider_imggen.emulator.validation import InvalidRequestError, ValidRequest

router = APIRouter()
MultimodalCall = Annotated[Call, Depends(api_call("multimodal", style="dashscope", billable=True))]
MULTIMODAL_PATH = ENDPOINT_PATHS["multimodal"]


async def read_messages_request(
    call: Call, model: str, body: dict[str, Any]
) -> tuple[object, dict[str, Any], tuple[InputImage, ...]]:
    """A messages body's prompt, parameters and input images (counted, fetched and checked), or a 400."""
    prompt, references = message_parts(model, body.get("input"))
    parameters = parameters_of(model, body)
    check_input_count(model, len(references), parameters)
    timeout_s = call.state.faults.input_download_timeout_ms / 1000
    return prompt, parameters, await load_inputs(model, references, timeout_s)


def _parse(
    model: str, prompt: object, parameters: dict[str, Any], inputs: tuple[InputImage, ...]
) -> ValidRequest:
    try:
        # A synchronous call names n itself or gets one image.
        return validate_native(model, {"prompt": prompt}, parameters, inputs, sync=True)
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
        prompt, parameters, inputs = await read_messages_request(call, model, body)
        validated = _parse(model, prompt, parameters, inputs)
        response = _answer(call, validated, inputs)
    if call.fault == "billed_stall":
        await asyncio.sleep(call.state.faults.stall_ms / 1000)
    await hold_answer(call)
    return response


def _answer(call: Call, validated: ValidRequest, inputs: tuple[InputImage, ...]) -> Response:
    fault = call.fault if call.fault in BILLED_FAULTS else None
    status = billed_fault_status(fault) if fault else 200
    call.log(
        status, outcome=fault or "ok", billed=validated.n, model=validated.model, n=validated.n, fault=fault
    )
    if fault is not None:
        return billed_fault_response(fault, call.request_id, "dashscope")
    limits = limits_of(validated.model)
    typed = {"type": "image"} if limits["wan_answer"] else {}
    content: list[dict[str, str]] = [
        {"image": result_url(call.state, call.request, params, index), **typed}
        for index, params in enumerate(image_params(validated, inputs=inputs))
    ]
    rewritten = upsampled_prompt(validated)
    if rewritten and call.state.faults.multimodal_text_item:
        content.append({"text": rewritten})
    output: dict[str, Any] = {
        "choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": content}}]
    }
    if limits["task_metric"]:
        output["task_metric"] = {"TOTAL": validated.n, "SUCCEEDED": validated.n, "FAILED": 0}
    usage: dict[str, Any] = {"width": validated.width, "height": validated.height, "image_count": validated.n}
    if limits["wan_answer"]:
        output["finished"] = True
        usage["size"] = f"{validated.width}*{validated.height}"
    body = {"output": output, "usage": usage, "request_id": call.request_id}
    return image_answer(call.state, body, ("output", "choices"))
