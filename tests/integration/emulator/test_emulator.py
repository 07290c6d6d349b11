"""
Tests of the offline emulator over real HTTP on loopback: the service as it behaves when nothing goes
wrong, and the original faults. Quotas, billed faults, malformed answers and the task list are in
tests/integration/emulator/test_hostile.py.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import io
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from PIL import Image

from airflow_provider_imggen.emulator import EmulatorConfig, EmulatorServer, FaultConfig, render_png
from airflow_provider_imggen.emulator.models import GATEWAY_MODELS

API_KEY = "sk-test"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO_ROOT = Path(__file__).resolve().parents[3]


# Quotas off: these tests send requests back to back (test_hostile.py and test_accounts.py cover quotas).
NO_QUOTAS = FaultConfig(quotas=False)


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorConfig(api_key=API_KEY, faults=NO_QUOTAS)) as server:
        yield server


@pytest.fixture(autouse=True)
def _reset(emu: EmulatorServer) -> None:
    emu.reset()


def generate(emu: EmulatorServer, headers: dict[str, str] | None = None, **body: Any) -> requests.Response:
    body.setdefault("model", "wan2.2-t2i-flash")
    body.setdefault("prompt", "a red fox in the snow")
    return requests.post(
        f"{emu.base_url}/v1/images/generations",
        json=body,
        headers=AUTH if headers is None else headers,
        timeout=30,
    )


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_MAGIC)
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.size


# Success ---------------------------------------------------------------------------------------------------
def test_url_success_downloads_png_of_requested_size(emu: EmulatorServer) -> None:
    response = generate(emu, model="qwen-image", size="1664x928", seed="7", prompt_upsampling=False)
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"]
    body = response.json()
    assert isinstance(body["created"], int)
    assert body["usage"] == {
        "total_tokens": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "input_tokens_details": {"text_tokens": 0, "image_tokens": 0},
    }
    [item] = body["data"]
    assert set(item) == {"url"}  # no revised_prompt with prompt_upsampling=false
    parts = urlsplit(item["url"])
    assert f"{parts.hostname}:{parts.port}" == f"127.0.0.1:{emu.port}"
    assert parts.path.startswith("/results/") and parts.path.endswith(".png")
    query = parse_qs(parts.query)
    assert set(query) == {"Expires", "OSSAccessKeyId", "Signature"}
    assert int(query["Expires"][0]) > time.time() + 86000

    download = requests.get(item["url"], timeout=30)
    assert download.status_code == 200
    assert download.headers["content-type"] == "image/png"
    assert int(download.headers["content-length"]) == len(download.content)
    assert png_size(download.content) == (1664, 928)


def test_same_request_same_bytes_different_prompt_different_bytes(emu: EmulatorServer) -> None:
    def fetch(prompt: str) -> bytes:
        response = generate(emu, prompt=prompt, seed=42, size="768x512")
        assert response.status_code == 200, response.text
        return requests.get(response.json()["data"][0]["url"], timeout=30).content

    first, again, other = (
        fetch("a lighthouse at dusk"),
        fetch("a lighthouse at dusk"),
        fetch("a bowl of ramen"),
    )
    assert first == again
    assert first != other
    assert png_size(other) == (768, 512)


def test_seed_absent_is_still_deterministic(emu: EmulatorServer) -> None:
    urls = [generate(emu, prompt="no seed given").json()["data"][0]["url"] for _ in range(2)]
    assert urlsplit(urls[0]).path == urlsplit(urls[1]).path


def test_b64_json_success(emu: EmulatorServer) -> None:
    response = generate(emu, response_format="b64_json", size="512x640", seed=3)
    assert response.status_code == 200, response.text
    [item] = response.json()["data"]
    assert "url" not in item
    assert item["revised_prompt"] == "a red fox in the snow, highly detailed"  # upsampling defaults to true
    assert png_size(base64.b64decode(item["b64_json"])) == (512, 640)


def test_n4_gives_four_distinct_images_with_consecutive_seeds(emu: EmulatorServer) -> None:
    response = generate(
        emu, n=4, seed="100", size="512x512", response_format="b64_json", negative_prompt="blurry"
    )
    assert response.status_code == 200, response.text
    images = [base64.b64decode(item["b64_json"]) for item in response.json()["data"]]
    assert len(images) == 4 and len(set(images)) == 4
    for index, image in enumerate(images):
        expected = render_png("wan2.2-t2i-flash", "a red fox in the snow", "blurry", 100 + index, 512, 512)
        assert image == expected


def test_seed_wraps_around(emu: EmulatorServer) -> None:
    response = generate(emu, n=2, seed=2147483647, size="512x512", response_format="b64_json")
    second = base64.b64decode(response.json()["data"][1]["b64_json"])
    assert second == render_png("wan2.2-t2i-flash", "a red fox in the snow", None, 0, 512, 512)


def test_unknown_body_fields_are_accepted(emu: EmulatorServer) -> None:
    response = generate(emu, watermark=False, user="someone")
    assert response.status_code == 200, response.text


# Auth and validation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "You didn't provide an API key"),
        ({"Authorization": "Bearer sk-wrong-123"}, "Incorrect API key provided: sk-wrong-123"),
    ],
)
def test_401(emu: EmulatorServer, headers: dict[str, str], message: str) -> None:
    response = generate(emu, headers=headers)
    assert response.status_code == 401
    assert response.headers["x-request-id"]
    error = response.json()["error"]
    assert error["message"].startswith(message)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_api_key"
    assert error["param"] is None
    assert emu.billed_images() == 0


def test_400_names_parameter_value_and_limit(emu: EmulatorServer) -> None:
    response = generate(emu, model="qwen-image", n=2)
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "Invalid n=2: qwen-image accepts n=1 only",
            "type": "invalid_request_error",
            "param": "n",
            "code": "InvalidParameter",
        }
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "no model"}, "model"),
        ({"model": "wan2.2-t2i-plus", "prompt": "big", "size": "2048x2048"}, "size"),
        ({"model": "wan2.2-t2i-plus", "prompt": "x", "seed": "-1"}, "seed"),
        ({"model": "wan2.2-t2i-plus"}, "prompt"),
        # Wire types as documented, not as a lenient client would coerce them: the witness catches a
        # provider that sends the wrong type instead of agreeing with it.
        ({"model": "wan2.2-t2i-plus", "prompt": "x", "n": "2"}, "n"),
        ({"model": "wan2.2-t2i-plus", "prompt": "x", "prompt_upsampling": "yes"}, "prompt_upsampling"),
        ({"model": "wan2.2-t2i-plus", "prompt": "x", "size": "512 x 512"}, "size"),
        ({"model": "wan2.2-t2i-plus", "prompt": "x", "size": "512×512"}, "size"),
        ({"model": "wan2.2-t2i-plus", "prompt": "x", "size": "٥١٢x512"}, "size"),
        ({"model": "wan2.2-t2i-plus", "prompt": "x", "seed": "٤٢"}, "seed"),
    ],
)
def test_400_params(emu: EmulatorServer, body: dict[str, Any], param: str) -> None:
    response = requests.post(f"{emu.base_url}/v1/images/generations", json=body, headers=AUTH, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_400_bad_json(emu: EmulatorServer) -> None:
    response = requests.post(
        f"{emu.base_url}/v1/images/generations",
        data=b"{not json",
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "InvalidParameter"


def test_models_endpoint_needs_auth(emu: EmulatorServer) -> None:
    assert requests.get(f"{emu.base_url}/v1/models", timeout=30).status_code == 401
    response = requests.get(f"{emu.base_url}/v1/models", headers=AUTH, timeout=30)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert [model["id"] for model in body["data"]] == list(GATEWAY_MODELS)
    assert emu.billed_images() == 0


# Result URLs -----------------------------------------------------------------------------------------------
def _first_url(emu: EmulatorServer) -> str:
    response = generate(emu, size="512x512")
    assert response.status_code == 200, response.text
    return str(response.json()["data"][0]["url"])


def _xml_code(response: requests.Response) -> str:
    assert response.headers["content-type"].startswith("application/xml")
    assert response.text.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    return response.text.split("<Code>")[1].split("</Code>")[0]


def test_tampered_signature_403(emu: EmulatorServer) -> None:
    url = _first_url(emu)
    tampered = url.replace("Signature=", "Signature=AAAA")
    response = requests.get(tampered, timeout=30)
    assert response.status_code == 403
    assert _xml_code(response) == "SignatureDoesNotMatch"
    assert f"<RequestId>{response.headers['x-request-id']}</RequestId>" in response.text
    # Extending Expires invalidates the signature too.
    expires = parse_qs(urlsplit(url).query)["Expires"][0]
    longer = url.replace(f"Expires={expires}", f"Expires={int(expires) + 1000}")
    assert _xml_code(requests.get(longer, timeout=30)) == "SignatureDoesNotMatch"
    # No query string at all.
    assert _xml_code(requests.get(url.split("?")[0], timeout=30)) == "SignatureDoesNotMatch"


def test_unknown_image_404(emu: EmulatorServer) -> None:
    url = _first_url(emu)
    path = urlsplit(url).path
    unknown_path = path.rsplit("/", 1)[0] + "/" + "0" * 32 + ".png"
    expires = int(time.time()) + 60
    signature = emu.state.objects.sign(unknown_path, expires)
    response = requests.get(
        f"{emu.base_url}{unknown_path}",
        params={
            "Expires": str(expires),
            "OSSAccessKeyId": emu.config.access_key_id,
            "Signature": signature,
        },
        timeout=30,
    )
    assert response.status_code == 404
    assert _xml_code(response) == "NoSuchKey"


def test_expired_url_403() -> None:
    with EmulatorServer(EmulatorConfig(api_key=API_KEY, url_ttl_seconds=0.2)) as short_lived:
        url = _first_url(short_lived)
        expires = int(parse_qs(urlsplit(url).query)["Expires"][0])
        time.sleep(max(0.0, expires - time.time()) + 0.05)
        response = requests.get(url, timeout=30)
    assert response.status_code == 403
    assert _xml_code(response) == "AccessDenied"
    assert "<Message>Request has expired.</Message>" in response.text


# Faults ----------------------------------------------------------------------------------------------------
def test_429_with_retry_headers(emu: EmulatorServer) -> None:
    emu.set_faults(rate_429=1.0, retry_after_seconds=1.5)
    response = generate(emu)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2"
    assert response.headers["retry-after-ms"] == "1500"
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "Throttling.RateQuota")
    assert emu.requests_log()[-1]["fault"] == "429"


@pytest.mark.parametrize(
    ("field", "status", "code"), [("rate_500", 500, "InternalError"), ("rate_503", 503, "ModelUnavailable")]
)
def test_5xx(emu: EmulatorServer, field: str, status: int, code: str) -> None:
    emu.set_faults(**{field: 1.0})
    response = generate(emu)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["type"] == "server_error"


def test_faults_come_after_auth(emu: EmulatorServer) -> None:
    emu.set_faults(rate_500=1.0)
    assert generate(emu, headers={"Authorization": "Bearer nope"}).status_code == 401


def test_drop_gives_connection_error(emu: EmulatorServer) -> None:
    emu.set_faults(rate_drop=1.0)
    with pytest.raises(requests.ConnectionError):
        generate(emu)
    entry = emu.requests_log()[-1]
    assert (entry["fault"], entry["status"], entry["billed_images"]) == ("drop", 0, 0)
    emu.set_faults(rate_drop=0.0)
    assert generate(emu).status_code == 200  # the server survives


def test_truncated_download(emu: EmulatorServer) -> None:
    url = _first_url(emu)
    full = requests.get(url, timeout=30).content
    emu.set_faults(rate_truncate=1.0)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(url, timeout=30)
    # At the wire level: the full Content-Length is announced, half the bytes arrive, then EOF.
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        connection.request("GET", f"{parts.path}?{parts.query}")
        response = connection.getresponse()
        assert int(response.headers["Content-Length"]) == len(full)
        with pytest.raises(http.client.IncompleteRead) as excinfo:
            response.read()
        assert excinfo.value.partial == full[: len(full) // 2]
    finally:
        connection.close()
    assert [entry["fault"] for entry in emu.requests_log()[-2:]] == ["truncate", "truncate"]


def test_200_error(emu: EmulatorServer) -> None:
    emu.set_faults(rate_200_error=1.0)
    response = generate(emu)
    assert response.status_code == 200
    assert response.json() == {
        "error": {
            "message": "upstream task failed: InternalError.Algo",
            "type": "upstream_error",
            "param": None,
            "code": "InternalError.Algo",
        }
    }
    assert emu.billed_images() == 0


def test_dashscope_error_style(emu: EmulatorServer) -> None:
    emu.set_faults(error_style="dashscope")
    bad_key = generate(emu, headers={"Authorization": "Bearer sk-leaked"})
    assert bad_key.status_code == 401
    assert bad_key.json() == {
        "code": "InvalidApiKey",
        "message": "Incorrect API key provided: sk-leaked",
        "request_id": bad_key.headers["x-request-id"],
    }
    invalid = generate(emu, model="qwen-image", size="1024x1024")
    assert invalid.status_code == 400
    assert set(invalid.json()) == {"code", "message", "request_id"}
    assert invalid.json()["code"] == "InvalidParameter"
    emu.set_faults(rate_200_error=1.0)
    quirk = generate(emu)
    assert quirk.status_code == 200
    assert quirk.json()["code"] == "InternalError.Algo"
    assert quirk.json()["request_id"] == quirk.headers["x-request-id"]


def test_seeded_fault_sequence_repeats(emu: EmulatorServer) -> None:
    def run() -> list[int]:
        statuses = []
        for _ in range(16):
            try:
                statuses.append(generate(emu, size="512x512").status_code)
            except requests.ConnectionError:
                statuses.append(0)
        return statuses

    faults = {"rate_429": 0.25, "rate_500": 0.15, "rate_503": 0.1, "rate_drop": 0.1, "seed": 1234}
    emu.set_faults(**faults)
    first = run()
    emu.reset()
    # The same settings through the admin endpoint reseed the RNG the same way.
    put = requests.put(f"{emu.base_url}/_emulator/faults", json=faults, timeout=30)
    assert put.status_code == 200 and put.json()["seed"] == 1234
    assert run() == first
    assert len(set(first)) > 2  # the mix really varies


def test_fail_next_scripts_the_next_calls(emu: EmulatorServer) -> None:
    emu.set_faults(fail_next=["429", "drop", "none", "moderation"], retry_after_seconds=0.01)
    assert generate(emu).status_code == 429
    with pytest.raises(requests.ConnectionError):
        generate(emu)
    assert generate(emu, size="512x512").status_code == 200
    moderated = generate(emu)
    assert moderated.status_code == 400
    assert moderated.json()["error"]["code"] == "DataInspectionFailed"
    assert emu.state.faults.fail_next == ()
    assert generate(emu, size="512x512").status_code == 200  # script used up: rates (all 0) apply again
    faults = [entry["fault"] for entry in emu.requests_log()]
    assert faults == ["429", "drop", None, "moderation", None]
    assert emu.billed_images() == 2


def test_models_endpoint_is_subject_to_faults(emu: EmulatorServer) -> None:
    emu.set_faults(rate_500=1.0, latency_ms=5000)  # latency stands for generation time only
    started = time.monotonic()
    response = requests.get(f"{emu.base_url}/v1/models", headers=AUTH, timeout=30)
    assert response.status_code == 500
    assert time.monotonic() - started < 2
    assert emu.requests_log()[-1]["path"] == "/v1/models"


def test_latency(emu: EmulatorServer) -> None:
    emu.set_faults(latency_ms=300)
    started = time.monotonic()
    assert generate(emu, size="512x512").status_code == 200
    assert time.monotonic() - started >= 0.3


# Native task API (DashScope's asynchronous flow) -----------------------------------------------------------
SUBMIT_PATH = "/api/v1/services/aigc/text2image/image-synthesis"
ASYNC = {**AUTH, "X-DashScope-Async": "enable"}


def submit(
    emu: EmulatorServer,
    headers: dict[str, str] | None = None,
    *,
    model: str = "wan2.2-t2i-flash",
    prompt: str = "a red fox in the snow",
    **parameters: Any,
) -> requests.Response:
    parameters.setdefault("n", 1)
    parameters.setdefault("size", "512*512")
    return requests.post(
        f"{emu.base_url}{SUBMIT_PATH}",
        json={"model": model, "input": {"prompt": prompt}, "parameters": parameters},
        headers=ASYNC if headers is None else headers,
        timeout=30,
    )


def submitted_task_id(response: requests.Response) -> str:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["output"]["task_status"] == "PENDING"
    assert body["request_id"] == response.headers["x-request-id"]
    return str(body["output"]["task_id"])


def task(emu: EmulatorServer, task_id: str) -> dict[str, Any]:
    response = requests.get(f"{emu.base_url}/api/v1/tasks/{task_id}", headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def submissions(emu: EmulatorServer) -> list[dict[str, Any]]:
    return [entry for entry in emu.requests_log() if entry["kind"] == "submit"]


def test_task_succeeds_with_downloadable_results(emu: EmulatorServer) -> None:
    task_id = submitted_task_id(
        submit(emu, n=2, size="768*512", seed=100, prompt_extend=False, watermark=False)
    )
    body = task(emu, task_id)

    output = body["output"]
    assert (output["task_id"], output["task_status"]) == (task_id, "SUCCEEDED")
    assert output["submit_time"] <= output["scheduled_time"] <= output["end_time"]
    assert output["task_metrics"] == {"TOTAL": 2, "SUCCEEDED": 2, "FAILED": 0}
    assert body["usage"] == {"image_count": 2}
    for index, result in enumerate(output["results"]):
        # prompt_extend=False: no actual_prompt at all (api-notes §6).
        assert result["orig_prompt"] == "a red fox in the snow" and "actual_prompt" not in result
        download = requests.get(result["url"], timeout=30)
        assert download.status_code == 200
        expected = render_png("wan2.2-t2i-flash", "a red fox in the snow", None, 100 + index, 768, 512)
        assert download.content == expected
    # The task answers the same on every query (URLs signed from the task's end time).
    assert task(emu, task_id)["output"]["results"] == output["results"]
    # One log entry per submission, carrying the task id; the images are billed once.
    [entry] = submissions(emu)
    assert (entry["task_id"], entry["billed_images"], entry["n"]) == (task_id, 2, 2)
    assert emu.billed_images() == 2
    assert [t["task_id"] for t in emu.tasks()] == [task_id]


def test_prompt_extend_defaults_to_true(emu: EmulatorServer) -> None:
    [result] = task(emu, submitted_task_id(submit(emu)))["output"]["results"]
    assert result["orig_prompt"] == "a red fox in the snow"
    assert result["actual_prompt"] == "a red fox in the snow, highly detailed"


def test_native_default_n_is_four(emu: EmulatorServer) -> None:
    # Why the hook always sends n: left out, wan2.2-t2i-* generate (and bill) 4 images.
    response = requests.post(
        f"{emu.base_url}{SUBMIT_PATH}",
        json={"model": "wan2.2-t2i-flash", "input": {"prompt": "x"}, "parameters": {"size": "512*512"}},
        headers=ASYNC,
        timeout=30,
    )
    assert len(task(emu, submitted_task_id(response))["output"]["results"]) == 4
    assert emu.billed_images() == 4


@pytest.mark.parametrize(
    ("pending_ms", "duration_ms", "status"),
    [(60_000, 0, "PENDING"), (0, 60_000, "RUNNING"), (0, 0, "SUCCEEDED")],
)
def test_task_status_follows_configured_times(
    emu: EmulatorServer, pending_ms: int, duration_ms: int, status: str
) -> None:
    emu.set_faults(task_pending_ms=pending_ms, task_duration_ms=duration_ms)
    output = task(emu, submitted_task_id(submit(emu)))["output"]
    assert output["task_status"] == status
    assert ("results" in output) == (status == "SUCCEEDED")
    assert ("scheduled_time" in output) == (status != "PENDING")


def test_task_progresses_pending_running_succeeded(emu: EmulatorServer) -> None:
    emu.set_faults(task_pending_ms=400, task_duration_ms=400)
    task_id = submitted_task_id(submit(emu))
    # Settings changed after submission do not change a submitted task's timings.
    emu.set_faults(task_pending_ms=0, task_duration_ms=600_000)
    seen = [task(emu, task_id)["output"]["task_status"]]
    while seen[-1] != "SUCCEEDED":
        time.sleep(0.05)
        seen.append(task(emu, task_id)["output"]["task_status"])
    order = ["PENDING", "RUNNING", "SUCCEEDED"]
    assert [order.index(status) for status in seen] == sorted(order.index(status) for status in seen)
    output = task(emu, task_id)["output"]
    submitted, scheduled, ended = (
        datetime.strptime(output[name], "%Y-%m-%d %H:%M:%S.%f")
        for name in ("submit_time", "scheduled_time", "end_time")
    )
    assert abs((scheduled - submitted).total_seconds() - 0.4) < 0.01
    assert abs((ended - scheduled).total_seconds() - 0.4) < 0.01


def test_submission_needs_the_async_header(emu: EmulatorServer) -> None:
    response = submit(emu, headers=AUTH)
    assert response.status_code == 403  # the service's answer (api-notes §6)
    assert response.json() == {
        "code": "AccessDenied",
        "message": "current user api does not support synchronous calls",
        "request_id": response.headers["x-request-id"],
    }
    assert emu.tasks() == [] and emu.billed_images() == 0
    [entry] = submissions(emu)
    assert (entry["status"], entry["task_id"], entry["outcome"], entry["billed"]) == (
        403,
        None,
        "denied",
        False,
    )


OUT_OF_LIMITS = [
    ({"model": "qwen-image", "input": {"prompt": "x"}, "parameters": {"n": 2}}, "Invalid n=2"),
    ({"model": "wan2.2-t2i-plus", "input": {"prompt": "x"}, "parameters": {"size": "2048*2048"}}, "size"),
    ({"model": "wan2.2-t2i-plus", "input": {"prompt": "x" * 801}}, "at most 800 characters"),
]
UNREADABLE = [
    ({"model": "wan2.2-t2i-plus", "input": {"prompt": ""}}, "prompt"),
    ({"model": "wan2.2-t2i-plus", "prompt": "not under input"}, "input must be an object"),
    ({"input": {"prompt": "no model"}}, "model"),
]


@pytest.mark.parametrize(("body", "message"), [*OUT_OF_LIMITS, *UNREADABLE])
def test_submission_validates_like_the_gateway_when_rejecting(
    emu: EmulatorServer, body: dict[str, Any], message: str
) -> None:
    emu.set_faults(invalid_native_params="reject")
    response = requests.post(f"{emu.base_url}{SUBMIT_PATH}", json=body, headers=ASYNC, timeout=30)
    assert response.status_code == 400
    error = response.json()
    assert set(error) == {"code", "message", "request_id"}
    assert error["code"] == "InvalidParameter" and message in error["message"]
    assert emu.tasks() == [] and emu.billed_images() == 0


@pytest.mark.parametrize(("body", "message"), UNREADABLE)
def test_unreadable_submission_is_refused_in_any_mode(
    emu: EmulatorServer, body: dict[str, Any], message: str
) -> None:
    assert emu.state.faults.invalid_native_params == "fail_task"
    response = requests.post(f"{emu.base_url}{SUBMIT_PATH}", json=body, headers=ASYNC, timeout=30)
    assert response.status_code == 400 and message in response.json()["message"]
    assert emu.tasks() == []


@pytest.mark.parametrize(("body", "message"), OUT_OF_LIMITS)
def test_out_of_limits_submission_is_accepted_then_fails(
    emu: EmulatorServer, body: dict[str, Any], message: str
) -> None:
    # The service's default (api-notes §6): accepted at submission, then the task ends FAILED.
    task_id = submitted_task_id(
        requests.post(f"{emu.base_url}{SUBMIT_PATH}", json=body, headers=ASYNC, timeout=30)
    )
    output = task(emu, task_id)["output"]
    assert (output["task_status"], output["code"]) == ("FAILED", "InvalidParameter")
    assert message in output["message"] and "results" not in output
    [entry] = submissions(emu)
    assert (entry["status"], entry["outcome"], entry["billed_images"]) == (200, "invalid_params_task", 0)
    assert emu.billed_images() == 0


def test_injected_failed_task(emu: EmulatorServer) -> None:
    emu.set_faults(fail_next_tasks=["DataInspectionFailed", "none"])
    failed_id = submitted_task_id(submit(emu, n=2))
    ok_id = submitted_task_id(submit(emu))

    output = task(emu, failed_id)["output"]
    assert output["task_status"] == "FAILED"
    assert output["code"] == "DataInspectionFailed"
    assert output["message"] == "Output data may contain inappropriate content."
    assert output["task_metrics"] == {"TOTAL": 2, "SUCCEEDED": 0, "FAILED": 2}
    assert "results" not in output
    assert task(emu, ok_id)["output"]["task_status"] == "SUCCEEDED"
    assert emu.state.faults.fail_next_tasks == ()
    assert [entry["billed_images"] for entry in submissions(emu)] == [0, 1]  # a failed task costs nothing


def test_injected_partial_failure(emu: EmulatorServer) -> None:
    emu.set_faults(fail_next_task_images=[[1, 7]])  # 7 is past n: ignored
    body = task(emu, submitted_task_id(submit(emu, n=3)))

    output = body["output"]
    assert output["task_status"] == "SUCCEEDED"
    assert output["results"][1] == {
        "code": "DataInspectionFailed",
        "message": "Output data may contain inappropriate content.",
    }
    assert all("url" in output["results"][index] for index in (0, 2))
    assert output["task_metrics"] == {"TOTAL": 3, "SUCCEEDED": 2, "FAILED": 1}
    assert body["usage"] == {"image_count": 2}
    assert emu.billed_images() == 2
    assert task(emu, submitted_task_id(submit(emu, n=3)))["output"]["task_metrics"]["FAILED"] == 0


def test_unknown_and_expired_tasks_read_unknown(emu: EmulatorServer) -> None:
    assert task(emu, "no-such-task")["output"] == {"task_id": "no-such-task", "task_status": "UNKNOWN"}

    expired_id = submitted_task_id(submit(emu))
    response = requests.post(f"{emu.base_url}/_emulator/tasks/{expired_id}/expire", timeout=30)
    assert response.status_code == 200
    assert task(emu, expired_id)["output"] == {"task_id": expired_id, "task_status": "UNKNOWN"}
    assert requests.post(f"{emu.base_url}/_emulator/tasks/nope/expire", timeout=30).status_code == 404

    old_id = submitted_task_id(submit(emu))
    assert task(emu, old_id)["output"]["task_status"] == "SUCCEEDED"
    emu.set_faults(task_ttl_ms=0)  # every task is now older than its lifetime
    assert task(emu, old_id)["output"]["task_status"] == "UNKNOWN"


def test_cancel_only_pending_tasks(emu: EmulatorServer) -> None:
    def cancel(task_id: str) -> requests.Response:
        return requests.post(f"{emu.base_url}/api/v1/tasks/{task_id}/cancel", headers=AUTH, timeout=30)

    emu.set_faults(task_pending_ms=600_000)
    pending_id = submitted_task_id(submit(emu, n=2))
    assert emu.billed_images() == 0  # billed when the task ends
    response = cancel(pending_id)
    assert response.status_code == 200
    assert response.json() == {"request_id": response.headers["x-request-id"]}
    output = task(emu, pending_id)["output"]
    assert output["task_status"] == "CANCELED" and "results" not in output
    assert emu.billed_images() == 0  # a canceled task is not billed

    emu.set_faults(task_pending_ms=0)
    done_id = submitted_task_id(submit(emu))
    for task_id, status in ((pending_id, "CANCELED"), (done_id, "SUCCEEDED"), ("no-such-task", "UNKNOWN")):
        refused = cancel(task_id)
        assert refused.status_code == 400
        assert refused.json()["code"] == "UnsupportedOperation"
        assert status in refused.json()["message"]
    assert [entry["status"] for entry in emu.requests_log() if entry["kind"] == "cancel"] == [
        200,
        400,
        400,
        400,
    ]


def test_task_routes_need_the_key_and_take_faults(emu: EmulatorServer) -> None:
    wrong = {"Authorization": "Bearer sk-leaked-1"}
    task_id = submitted_task_id(submit(emu))
    for response in (
        submit(emu, headers={**wrong, "X-DashScope-Async": "enable"}),
        requests.get(f"{emu.base_url}/api/v1/tasks/{task_id}", headers=wrong, timeout=30),
        requests.post(f"{emu.base_url}/api/v1/tasks/{task_id}/cancel", headers=wrong, timeout=30),
    ):
        assert response.status_code == 401
        assert response.json()["code"] == "InvalidApiKey"  # DashScope's shape, whatever error_style says

    emu.set_faults(fail_next=["429", "500", "none"], retry_after_seconds=0.01)
    throttled = submit(emu)
    assert throttled.status_code == 429 and throttled.json()["code"] == "Throttling.RateQuota"
    failed = requests.get(f"{emu.base_url}/api/v1/tasks/{task_id}", headers=AUTH, timeout=30)
    assert failed.status_code == 500 and failed.json()["code"] == "InternalError"
    assert task(emu, task_id)["output"]["task_status"] == "SUCCEEDED"
    assert len(emu.tasks()) == 1  # the throttled submission created no task
    kinds = [(entry["kind"], entry["fault"]) for entry in emu.requests_log()]
    assert kinds[-3:] == [("submit", "429"), ("task", "500"), ("task", None)]


def test_admin_tasks_endpoint(emu: EmulatorServer) -> None:
    emu.set_faults(fail_next_tasks=["InvalidParameter"], task_pending_ms=600_000)
    task_id = submitted_task_id(submit(emu, n=2))
    [listed] = requests.get(f"{emu.base_url}/_emulator/tasks", timeout=30).json()["tasks"]
    assert listed["task_id"] == task_id and listed["task_status"] == "PENDING"
    assert (listed["model"], listed["n"], listed["failure_code"]) == (
        "wan2.2-t2i-flash",
        2,
        "InvalidParameter",
    )


# Admin and log ---------------------------------------------------------------------------------------------
def test_request_log_counts_billed_images(emu: EmulatorServer) -> None:
    assert generate(emu, n=3, size="512x512").status_code == 200
    assert generate(emu, headers={}).status_code == 401
    assert generate(emu, model="qwen-image", n=2).status_code == 400
    emu.set_faults(rate_429=1.0)
    assert generate(emu).status_code == 429
    assert emu.billed_images() == 3

    admin = requests.get(f"{emu.base_url}/_emulator/requests", timeout=30).json()
    assert admin["billed_images"] == 3
    entries = admin["requests"]
    assert [(e["status"], e["billed_images"], e["billed"], e["fault"], e["outcome"]) for e in entries] == [
        (200, 3, True, None, "ok"),
        (401, 0, False, None, "unauthorized"),
        (400, 0, False, None, "rejected"),
        (429, 0, False, "429", "429"),
    ]
    assert entries[0]["model"] == "wan2.2-t2i-flash" and entries[0]["n"] == 3
    assert all(e["path"] == "/v1/images/generations" for e in entries)
    assert all(isinstance(e["time"], float) and e["request_id"] for e in entries)

    assert requests.delete(f"{emu.base_url}/_emulator/requests", timeout=30).status_code == 200
    assert emu.requests_log() == [] and emu.billed_images() == 0


def test_admin_faults_endpoints(emu: EmulatorServer) -> None:
    base = emu.base_url
    defaults = {
        **dataclasses.asdict(NO_QUOTAS),
        **{name: [] for name in ("fail_next", "fail_next_tasks", "fail_next_task_images", "gateway_models")},
        "malformed_kinds": list(NO_QUOTAS.malformed_kinds),
    }
    assert requests.get(f"{base}/_emulator/faults", timeout=30).json() == defaults
    assert (
        requests.put(f"{base}/_emulator/faults", json={"rate_500": 1}, timeout=30).json()["rate_500"] == 1.0
    )
    assert requests.put(f"{base}/_emulator/faults", json={"bogus": 1}, timeout=30).status_code == 400
    assert requests.put(f"{base}/_emulator/faults", json={"rate_429": 2}, timeout=30).status_code == 400
    for bad in (
        {"fail_next": ["418"]},
        {"fail_next_tasks": "InvalidParameter"},
        {"fail_next_task_images": [1]},
    ):
        assert requests.put(f"{base}/_emulator/faults", json=bad, timeout=30).status_code == 400
    assert generate(emu).status_code == 500
    assert requests.post(f"{base}/_emulator/reset", timeout=30).status_code == 200
    assert emu.state.faults == NO_QUOTAS
    assert emu.requests_log() == []


# Clients ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("response_format", ["url", "b64_json"])
def test_openai_client_strict_validation(
    emu: EmulatorServer, response_format: Literal["url", "b64_json"]
) -> None:
    from openai import OpenAI

    client = OpenAI(
        base_url=f"{emu.base_url}/v1", api_key=API_KEY, _strict_response_validation=True, max_retries=0
    )
    result = client.images.generate(
        prompt="a watercolour map of an imaginary island",
        model="wan2.2-t2i-flash",
        n=2,
        size="1024x1024",
        response_format=response_format,
        extra_body={"negative_prompt": "blurry", "prompt_upsampling": False, "seed": "42"},
    )
    assert result.data is not None and len(result.data) == 2
    for image in result.data:
        assert image.revised_prompt is None
        if response_format == "url":
            assert image.url is not None
            assert png_size(requests.get(image.url, timeout=30).content) == (1024, 1024)
        else:
            assert image.b64_json is not None
            assert png_size(base64.b64decode(image.b64_json)) == (1024, 1024)
    assert result.usage is not None and result.usage.total_tokens == 0
    assert emu.billed_images() == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_cli_serves_and_stops_on_sigterm() -> None:
    port = _free_port()
    with (
        subprocess.Popen(
            [
                *(sys.executable, "-m", "airflow_provider_imggen.emulator"),
                *("--host", "127.0.0.1", "--port", str(port), "--api-key", "sk-cli"),
                *("--task-duration-ms", "600000"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        ) as process,
        selectors.DefaultSelector() as selector,
    ):
        assert process.stdout is not None and process.stderr is not None
        try:
            selector.register(process.stdout, selectors.EVENT_READ)
            assert selector.select(timeout=60), "the CLI printed nothing within 60 s"
            line = process.stdout.readline().decode()
            assert line.strip() == f"imggen emulator listening on http://127.0.0.1:{port}"

            response = requests.post(
                f"http://127.0.0.1:{port}/v1/images/generations",
                json={"model": "wan2.2-t2i-flash", "prompt": "from the cli", "size": "512x512"},
                headers={"Authorization": "Bearer sk-cli"},
                timeout=30,
            )
            assert response.status_code == 200, response.text
            assert png_size(requests.get(response.json()["data"][0]["url"], timeout=30).content) == (512, 512)
            native = {"Authorization": "Bearer sk-cli", "X-DashScope-Async": "enable"}
            submitted = requests.post(
                f"http://127.0.0.1:{port}{SUBMIT_PATH}",
                json={"model": "qwen-image", "input": {"prompt": "from the cli"}},
                headers=native,
                timeout=30,
            )
            task_id = submitted.json()["output"]["task_id"]
            status = requests.get(
                f"http://127.0.0.1:{port}/api/v1/tasks/{task_id}", headers=native, timeout=30
            )
            assert status.json()["output"]["task_status"] == "RUNNING"  # --task-duration-ms took effect

            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=20) == 0
            stderr = process.stderr.read().decode()
            assert "Traceback" not in stderr, stderr
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
