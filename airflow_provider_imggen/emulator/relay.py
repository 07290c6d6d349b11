"""
The ``nested`` gateway dialect: new-api's Ali channel relaying ``/v1/images/generations`` to DashScope's task
API (api-notes §7, from new-api ``relay/channel/ali/image.go``), as hostile as it is:

- The relay builds the upstream body itself: ``input = {"prompt"}``, ``parameters = {"size" (x → *),
  "n", "watermark"}`` from the top level; ``seed``, ``negative_prompt``, ``prompt_extend`` at the top level
  are dropped. A ``parameters`` object in the body **replaces** the relay's parameters (top-level ``size``
  and ``n`` are then lost: the model's own defaults apply, Wan bills its default 4 images at 1024*1024), an
  ``input`` object **replaces** its input (the prompt is lost when only ``negative_prompt`` is nested: the
  upstream refuses the missing prompt, 400 InvalidParameter relayed).
- Parameters out of the model's limits are accepted upstream and the task FAILS (``invalid_native_params``):
  as any failed upstream task, that comes back as **HTTP 200** ``{"error": {"type": "ali_error", "code":
  <upstream code>, "message"}}``, nothing billed.
- Answers carry no ``usage``; every item's ``revised_prompt`` is ``""``. A failed image is an item with an
  empty ``url``. For ``b64_json`` the relay fetches each result URL and silently **drops** an item it could
  not fetch (a failed image; or ``rate_relay_fetch_fail``), so fewer items than billed may come back.
- ``relay_retries``: an upstream 5xx (the billed_500/502/504 faults) is retried on another channel, each
  attempt billed: the client gets its images, billed twice.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi.responses import Response

from airflow_provider_imggen.emulator.backend import validate_native
from airflow_provider_imggen.emulator.calls import Call
from airflow_provider_imggen.emulator.errors import (
    ServiceError,
    ali_error_200,
    billed_fault_response,
    billed_fault_status,
)
from airflow_provider_imggen.emulator.faults import BILLED_FAULTS
from airflow_provider_imggen.emulator.objects import image_params
from airflow_provider_imggen.emulator.results import b64_image, image_answer, result_url
from airflow_provider_imggen.emulator.validation import InvalidRequestError

_RETRIED_FAULTS = ("billed_500", "billed_502", "billed_504")


def upstream_body(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``input`` and ``parameters`` the relay sends upstream for a client's body."""
    text_input: dict[str, Any] = {"prompt": body.get("prompt")}
    parameters: dict[str, Any] = {}
    size = body.get("size")
    if isinstance(size, str) and size:
        parameters["size"] = size.replace("x", "*")
    if body.get("n") is not None:
        parameters["n"] = body["n"]
    if body.get("watermark") is not None:
        parameters["watermark"] = body["watermark"]
    if isinstance(body.get("parameters"), dict):
        parameters = dict(body["parameters"])
    if isinstance(body.get("input"), dict):
        text_input = dict(body["input"])
    return text_input, parameters


async def relay_generation(call: Call, model: str, body: dict[str, Any]) -> Response:
    """One generation through the relay (the quota is held by the caller)."""
    faults = call.state.faults
    text_input, parameters = upstream_body(body)
    response_format = body.get("response_format") or "url"
    if response_format not in ("url", "b64_json"):
        raise ServiceError(
            400, "InvalidParameter", f"Invalid response_format={response_format!r}", model=model
        )
    try:
        validated = validate_native(model, text_input, parameters)
    except InvalidRequestError as exc:
        value = exc.value
        missing_prompt = exc.parameter == "prompt" and (not isinstance(value, str) or not value.strip())
        if missing_prompt or exc.parameter == "model" or faults.invalid_native_params == "reject":
            raise ServiceError(
                400, "InvalidParameter", str(exc), error_type="ali_error", model=model
            ) from None
        call.log(200, outcome="task_failed", model=model)
        return ali_error_200("InvalidParameter", str(exc))
    code, failed = call.state.dice.draw_task_outcome()
    if code is not None:
        call.log(200, outcome="task_failed", model=model, n=validated.n)
        return ali_error_200(code, f"The task failed: {code}")
    images = image_params(validated)
    fault = call.fault
    if fault == "partial":
        failed = failed | frozenset(call.state.dice.draw_failed_items(validated.n))
        fault = None
    failed = frozenset(index for index in failed if index < validated.n)
    billed = validated.n - len(failed)
    outcome = "ok"
    if fault in _RETRIED_FAULTS and faults.relay_retries > 0:
        # The first attempt billed upstream and answered 5xx; the retry on another channel succeeds.
        billed, outcome, fault = billed * 2, "relay_retry", None
    if fault in BILLED_FAULTS:
        assert fault is not None
        call.log(
            billed_fault_status(fault), outcome=fault, billed=billed, model=model, n=validated.n, fault=fault
        )
        return billed_fault_response(fault, call.request_id, call.style)
    data: list[dict[str, str]] = []
    for index, params in enumerate(images):
        if response_format == "b64_json":
            if index in failed or call.state.dice.draw_relay_fetch_failure():
                continue  # the relay could not fetch it: dropped without a word
            data.append({"b64_json": await b64_image(params), "revised_prompt": ""})
        elif index in failed:
            data.append({"url": "", "revised_prompt": ""})
        else:
            data.append({"url": result_url(call.state, call.request, params, index), "revised_prompt": ""})
    call.log(200, outcome=outcome, billed=billed, model=model, n=validated.n, fault=call.fault)
    return image_answer(call.state, {"created": int(time.time()), "data": data}, ("data",))
