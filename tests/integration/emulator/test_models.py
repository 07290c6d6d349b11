"""
The emulator's models, endpoints and gateway relays as api-notes §7 describes them, over real HTTP: the
synchronous-only families refused by the task API (403), unknown models (404 ModelNotFound on DashScope,
model_not_found on a gateway), the service's defaults and limits, the synchronous answer's ``task_metric`` and
text items, and new-api's relay (``gateway_dialect="nested"``) with its replacement semantics.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from PIL import Image

from airflow_provider_imggen.emulator import EmulatorConfig, EmulatorServer, FaultConfig

KEY = "sk-models"
AUTH = {"Authorization": f"Bearer {KEY}"}
ASYNC = {**AUTH, "X-DashScope-Async": "enable"}
SUBMIT_PATH = "/api/v1/services/aigc/text2image/image-synthesis"
SYNC_PATH = "/api/v1/services/aigc/multimodal-generation/generation"
SYNC_ONLY = (
    "qwen-image-max",
    "qwen-image-2.0",
    "qwen-image-2.0-pro",
    "qwen-image-2.0-pro-2026-04-22",
    "qwen-image-2.1-pro",
    "qwen-image-3.0",
    "qwen-image-3.0-pro",
    "wan2.7-image",
    "z-image-turbo",
)


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorConfig(api_key=KEY, faults=FaultConfig(quotas=False))) as emulator:
        yield emulator


@pytest.fixture
def emu(server: EmulatorServer) -> EmulatorServer:
    server.reset()
    return server


def submit(
    emu: EmulatorServer, *, model: str, prompt: str = "a lighthouse", **params: Any
) -> requests.Response:
    body = {"model": model, "input": {"prompt": prompt}, "parameters": params}
    return requests.post(f"{emu.base_url}{SUBMIT_PATH}", json=body, headers=ASYNC, timeout=30)


def sync(emu: EmulatorServer, *, model: str, **params: Any) -> requests.Response:
    body = {
        "model": model,
        "input": {"messages": [{"role": "user", "content": [{"text": "a lighthouse"}]}]},
        "parameters": params,
    }
    return requests.post(f"{emu.base_url}{SYNC_PATH}", json=body, headers=AUTH, timeout=30)


def generate(emu: EmulatorServer, **body: Any) -> requests.Response:
    body.setdefault("model", "wan2.2-t2i-flash")
    body.setdefault("prompt", "a red fox in the snow")
    return requests.post(f"{emu.base_url}/v1/images/generations", json=body, headers=AUTH, timeout=30)


def finished(emu: EmulatorServer, task_id: str) -> dict[str, Any]:
    response = requests.get(f"{emu.base_url}/api/v1/tasks/{task_id}", headers=AUTH, timeout=30)
    body: dict[str, Any] = response.json()
    return body


def image_size(url: str) -> tuple[int, int]:
    with Image.open(io.BytesIO(requests.get(url, timeout=30).content)) as image:
        return image.size


def billed(emu: EmulatorServer) -> int:
    return emu.billed_images()


# Endpoints --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", SYNC_ONLY)
def test_synchronous_only_models_are_denied_by_the_task_api(emu: EmulatorServer, model: str) -> None:
    refused = submit(emu, model=model)
    assert refused.status_code == 403, refused.text
    body = refused.json()
    assert body["code"] == "AccessDenied"
    assert body["message"] == "current user api does not support asynchronous calls"
    assert emu.tasks() == [] and billed(emu) == 0
    size = "1328*1328" if model == "qwen-image-max" else "1024*1024"
    assert sync(emu, model=model, size=size).status_code == 200


@pytest.mark.parametrize("model", ["qwen-image", "qwen-image-plus"])
def test_qwen_image_and_plus_serve_both(emu: EmulatorServer, model: str) -> None:
    assert submit(emu, model=model).status_code == 200
    assert sync(emu, model=model).status_code == 200


def test_unknown_model_is_not_found_on_dashscope(emu: EmulatorServer) -> None:
    for answer in (submit(emu, model="qwen-image-9000"), sync(emu, model="qwen-image-9000")):
        assert answer.status_code == 404 and answer.json()["code"] == "ModelNotFound"
    assert emu.tasks() == [] and billed(emu) == 0


def test_gateway_answers_model_not_found_for_a_model_it_does_not_serve(emu: EmulatorServer) -> None:
    refused = generate(emu, model="dall-e-3", size="1024x1024")
    assert refused.status_code == 503
    error = refused.json()["error"]
    assert error["code"] == "model_not_found" and "dall-e-3" in error["message"]
    assert billed(emu) == 0
    assert [entry["outcome"] for entry in emu.requests_log()] == ["model_not_found"]


def test_gateway_models_option_adds_names(emu: EmulatorServer) -> None:
    emu.set_faults(gateway_models=["gpt-image-1"])
    answer = generate(emu, model="gpt-image-1", size="1024x1024")
    assert answer.status_code == 200 and billed(emu) == 1
    listed = requests.get(f"{emu.base_url}/v1/models", headers=AUTH, timeout=30).json()
    assert "gpt-image-1" in [model["id"] for model in listed["data"]]


@pytest.mark.parametrize("model", ["wan2.1-t2i-turbo", "wan2.1-t2i-plus", "wanx2.1-t2i-turbo"])
def test_singapore_wan21_names_are_known(emu: EmulatorServer, model: str) -> None:
    assert submit(emu, model=model, n=1, size="512*512").status_code == 200
    assert generate(emu, model=model, size="512x512").status_code == 200


# Defaults and limits ----------------------------------------------------------------------------------------
def test_qwen_image_default_size_is_1664_by_928(emu: EmulatorServer) -> None:
    answer = generate(emu, model="qwen-image")
    assert answer.status_code == 200
    assert image_size(answer.json()["data"][0]["url"]) == (1664, 928)
    task_id = submit(emu, model="qwen-image").json()["output"]["task_id"]
    assert image_size(finished(emu, task_id)["output"]["results"][0]["url"]) == (1664, 928)


@pytest.mark.parametrize("size", ["1472x1140", "1140x1472"])
def test_qwen_image_older_sizes_are_refused(emu: EmulatorServer, size: str) -> None:
    refused = generate(emu, model="qwen-image", size=size)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "InvalidParameter"
    assert sync(emu, model="qwen-image", size=size.replace("x", "*")).status_code == 400
    emu.set_faults(invalid_native_params="reject")
    assert submit(emu, model="qwen-image", size=size.replace("x", "*")).status_code == 400
    assert billed(emu) == 0


@pytest.mark.parametrize("size", ["1664x928", "1472x1104", "1328x1328", "1104x1472", "928x1664"])
def test_qwen_image_current_sizes(emu: EmulatorServer, size: str) -> None:
    assert generate(emu, model="qwen-image", size=size).status_code == 200


def test_qwen_image_2_defaults_and_limits(emu: EmulatorServer) -> None:
    answer = sync(emu, model="qwen-image-2.0")
    assert answer.status_code == 200
    assert answer.json()["usage"] == {"width": 2048, "height": 2048, "image_count": 1}
    assert sync(emu, model="qwen-image-2.0", n=6, size="600*600").status_code == 200
    for params in ({"n": 7}, {"size": "500*500"}, {"size": "2049*2048"}):
        assert sync(emu, model="qwen-image-2.0", **params).status_code == 400, params


def test_wan25_preview_defaults_and_limits(emu: EmulatorServer) -> None:
    task_id = submit(emu, model="wan2.5-t2i-preview").json()["output"]["task_id"]
    output = finished(emu, task_id)["output"]
    assert output["task_metrics"]["TOTAL"] == 4 and len(output["results"]) == 4
    assert image_size(output["results"][0]["url"]) == (1280, 1280)
    assert generate(emu, model="wan2.5-t2i-preview", prompt="p" * 2000).status_code == 200
    for body in (
        {"prompt": "p" * 2001},
        {"size": "2000x400"},  # 5:1
        {"size": "700x700"},  # under 768*768 pixels (one reference says 1280*1280: unknown)
        {"n": 5},
    ):
        assert generate(emu, model="wan2.5-t2i-preview", **body).status_code == 400, body
    assert generate(emu, model="wan2.5-t2i-preview", size="1600x400").status_code == 200  # 4:1


def test_wan_v2_defaults_four_images_extension_on_no_watermark(emu: EmulatorServer) -> None:
    task_id = submit(emu, model="wan2.2-t2i-flash").json()["output"]["task_id"]
    body = finished(emu, task_id)
    assert body["usage"] == {"image_count": 4}
    assert all(result["actual_prompt"] for result in body["output"]["results"])
    assert image_size(body["output"]["results"][0]["url"]) == (1024, 1024)
    assert billed(emu) == 4


# Synchronous answers ----------------------------------------------------------------------------------------
def test_synchronous_answers_carry_task_metric_except_the_2_0_family(emu: EmulatorServer) -> None:
    output = sync(emu, model="qwen-image-max").json()["output"]
    assert output["task_metric"] == {"TOTAL": 1, "SUCCEEDED": 1, "FAILED": 0}
    assert "task_metric" not in sync(emu, model="qwen-image-2.0").json()["output"]


def test_synchronous_content_may_include_a_text_item(emu: EmulatorServer) -> None:
    content = sync(emu, model="qwen-image-max").json()["output"]["choices"][0]["message"]["content"]
    assert [sorted(item) for item in content] == [["image"], ["text"]]
    content = sync(emu, model="qwen-image-max", prompt_extend=False).json()["output"]["choices"][0]
    assert [sorted(item) for item in content["message"]["content"]] == [["image"]]
    emu.set_faults(multimodal_text_item=False)
    content = sync(emu, model="qwen-image-max").json()["output"]["choices"][0]["message"]["content"]
    assert [sorted(item) for item in content] == [["image"]]


# new-api's relay --------------------------------------------------------------------------------------------
@pytest.fixture
def relay(emu: EmulatorServer) -> EmulatorServer:
    emu.set_faults(gateway_dialect="nested")
    return emu


def test_relay_maps_size_and_n_and_answers_without_usage(relay: EmulatorServer) -> None:
    answer = generate(relay, size="768x512", n=2)
    assert answer.status_code == 200
    body = answer.json()
    assert "usage" not in body
    assert [item["revised_prompt"] for item in body["data"]] == ["", ""]
    assert image_size(body["data"][0]["url"]) == (768, 512)
    assert billed(relay) == 2


def test_relay_drops_top_level_seed_negative_prompt_and_extension(relay: EmulatorServer) -> None:
    first = generate(relay, size="512x512", seed=1, negative_prompt="blur").json()["data"][0]["url"]
    second = generate(relay, size="512x512", seed=2, negative_prompt="fog").json()["data"][0]["url"]
    assert (
        first.split("?")[0] == second.split("?")[0]
    )  # the same object: seed and negative prompt never arrived


def test_relay_parameters_object_replaces_size_and_n(relay: EmulatorServer) -> None:
    answer = generate(relay, size="512x512", n=1, parameters={"seed": 42})
    assert answer.status_code == 200
    data = answer.json()["data"]
    assert len(data) == 4 and billed(relay) == 4  # Wan's default n, all billed
    assert image_size(data[0]["url"]) == (1024, 1024)


def test_relay_input_object_replaces_the_prompt(relay: EmulatorServer) -> None:
    refused = generate(relay, size="512x512", input={"negative_prompt": "blur"})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "InvalidParameter"
    assert billed(relay) == 0


def test_relay_answers_a_failed_task_with_http_200_ali_error(relay: EmulatorServer) -> None:
    relay.set_faults(fail_next_tasks=["InternalError.Algo"])
    failed = generate(relay, size="512x512")
    assert failed.status_code == 200
    assert failed.json()["error"]["type"] == "ali_error"
    assert failed.json()["error"]["code"] == "InternalError.Algo"
    out_of_limits = generate(relay, parameters={"n": 9, "size": "512*512"})
    assert out_of_limits.status_code == 200
    assert out_of_limits.json()["error"] == {
        "message": out_of_limits.json()["error"]["message"],
        "type": "ali_error",
        "param": None,
        "code": "InvalidParameter",
    }
    assert billed(relay) == 0


def test_relay_drops_b64_items_it_could_not_fetch(relay: EmulatorServer) -> None:
    relay.set_faults(rate_relay_fetch_fail=1.0)
    answer = generate(relay, size="512x512", n=2, response_format="b64_json")
    assert answer.status_code == 200 and answer.json()["data"] == []
    assert billed(relay) == 2
    relay.set_faults(rate_relay_fetch_fail=0.0)
    data = generate(relay, size="512x512", n=2, response_format="b64_json").json()["data"]
    assert len(data) == 2 and base64.b64decode(data[0]["b64_json"]).startswith(b"\x89PNG")


def test_relay_retry_of_an_upstream_5xx_bills_twice(relay: EmulatorServer) -> None:
    relay.set_faults(relay_retries=1, fail_next=["billed_500"])
    answer = generate(relay, size="512x512", n=1)
    assert answer.status_code == 200 and len(answer.json()["data"]) == 1
    assert billed(relay) == 2
    assert [entry["outcome"] for entry in relay.requests_log()] == ["relay_retry"]


def test_openai_dialect_keeps_usage_and_top_level_fields(emu: EmulatorServer) -> None:
    body = generate(emu, size="512x512", seed=1).json()
    assert "usage" in body
    other = generate(emu, size="512x512", seed=2).json()
    assert body["data"][0]["url"].split("?")[0] != other["data"][0]["url"].split("?")[0]
