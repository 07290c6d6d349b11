"""
The asynchronous task endpoints beside text2image, and the upload policy the emulator refuses. Always in
DashScope's error shape; tasks are created by the backend as for text2image and polled on
``/api/v1/tasks/{id}`` (:mod:`~airflow_provider_imggen.emulator.native`), their images derived from the
inputs.

- ``POST /api/v1/services/aigc/image2image/image-synthesis`` (wan2.5-i2i-preview): ``X-DashScope-Async:
  enable`` (403 AccessDenied without), body ``{"model", "input": {"prompt", "images": [url_or_data_uri,
  ...], "negative_prompt"}, "parameters": {"n", "size", "prompt_extend", "watermark", "seed"}}``; answers
  ``{"output": {"task_id", "task_status": "PENDING"}, "request_id"}``; the task's status answers
  ``output.results[].url`` as text2image's.
- ``POST /api/v1/services/aigc/image-generation/generation`` (wan2.6-t2i, wan2.6-image, wan2.7-image*): the
  same header, the synchronous endpoint's messages body; the task's status answers in that shape
  (``output.choices[].message.content[{"image", "type"}]``, ``output.finished``, ``usage.size``).
- ``/api/v1/uploads`` (the DashScope SDK's ``action=getPolicy`` before it uploads a local file to ``oss://``):
  403 AccessDenied, the emulator does not host uploads: pass URLs or data URIs.

Order of a submission: auth → refusing fault → the header (403) → body (400) → model (404; 400 naming the
endpoint that serves it, 403 for a synchronous-only model on image-generation) → the input images: how many
(400), each fetched and checked (400), nothing billed → the account's quota (429) → the task (parameters
out of limits: a task that ends FAILED, or 400 with ``invalid_native_params="reject"``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from airflow_provider_imggen.emulator.calls import Call, api_call
from airflow_provider_imggen.emulator.editing import check_input_count, parameters_of
from airflow_provider_imggen.emulator.errors import ServiceError, invalid
from airflow_provider_imggen.emulator.inputs import load_inputs
from airflow_provider_imggen.emulator.models import ENDPOINT_PATHS
from airflow_provider_imggen.emulator.multimodal import read_messages_request
from airflow_provider_imggen.emulator.native import answer_submission, require_async

router = APIRouter()
# Logged as task submissions (kind "submit", told apart by path): billed when their task ends.
SubmitCall = Annotated[Call, Depends(api_call("submit", style="dashscope", billable=True))]
UploadCall = Annotated[Call, Depends(api_call("uploads", style="dashscope"))]
NO_UPLOADS = "The emulator does not host uploads: pass URLs or data URIs."


@router.post(ENDPOINT_PATHS["image2image"])
async def submit_edit(call: SubmitCall) -> Response:
    require_async(call)
    body = await call.body()
    model = call.backend.check_model(body.get("model"), "image2image")
    given = body.get("input")
    parameters = parameters_of(model, body)
    if not isinstance(given, dict):
        raise invalid("input must be an object with a prompt and images.", "input", model)
    images = given.get("images")
    if images is None:
        images = []
    if not isinstance(images, list):
        raise invalid("input.images must be a list of image URLs or data URIs.", "images", model)
    check_input_count(model, len(images), parameters)
    references = [(f"input.images[{index}]", image) for index, image in enumerate(images)]
    inputs = await load_inputs(model, references, call.state.faults.input_download_timeout_ms / 1000)
    task = call.backend.submit_task(
        call.account, call.key_id, call.request_id, body, endpoint="image2image", inputs=inputs
    )
    return await answer_submission(call, task)


@router.post(ENDPOINT_PATHS["image-generation"])
async def submit_generation(call: SubmitCall) -> Response:
    require_async(call)
    body = await call.body()
    model = call.backend.check_model(body.get("model"), "image-generation")
    prompt, parameters, inputs = await read_messages_request(call, model, body)
    task_body: dict[str, Any] = {"model": model, "input": {"prompt": prompt}, "parameters": parameters}
    task = call.backend.submit_task(
        call.account, call.key_id, call.request_id, task_body, endpoint="image-generation", inputs=inputs
    )
    return await answer_submission(call, task)


@router.api_route("/api/v1/uploads", methods=["GET", "POST"])
async def refuse_upload(call: UploadCall) -> Response:
    raise ServiceError(403, "AccessDenied", NO_UPLOADS, outcome="denied")
