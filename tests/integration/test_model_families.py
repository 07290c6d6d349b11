"""
The 2026 model list per family, against the emulator over real HTTP: sizes, n, prompt limits, and which
endpoint each model goes to (DashScope's asynchronous task API or its synchronous multimodal generation).

Every refusal is checked to happen before a billable request: the emulator's log stays empty.
"""

from __future__ import annotations

import io

import pytest
import requests
from PIL import Image

from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.exceptions import (
    ImageGenerationOutcomeUnknownError,
    ImageGenerationRejectedError,
    ImageGenerationThrottledError,
    ImageGenerationValidationError,
)
from airflow_provider_imggen.model_table import KNOWN_MODELS
from tests.conftest import API_KEY, set_imggen_connection
from tests.integration.hooks.test_image_generation import fast_hook

MULTIMODAL = "/api/v1/services/aigc/multimodal-generation/generation"
SUBMIT = "/api/v1/services/aigc/text2image/image-synthesis"
WAN_V2 = ["wan2.2-t2i-flash", "wan2.2-t2i-plus", "wanx2.1-t2i-turbo", "wanx2.1-t2i-plus", "wanx2.0-t2i-turbo"]
QWEN_SYNC_ONLY = ["qwen-image-max", "qwen-image-2.0", "qwen-image-2.0-pro"]


def png_size(url: str) -> tuple[int, int]:
    response = requests.get(url, timeout=10)
    assert response.status_code == 200
    return Image.open(io.BytesIO(response.content)).size


def billable_paths(emulator: EmulatorServer) -> list[str]:
    """The billable endpoints the emulator was asked, in order (status queries and downloads left out)."""
    return [
        entry["path"]
        for entry in emulator.requests_log()
        if entry["path"] in (MULTIMODAL, SUBMIT, "/v1/images/generations")
    ]


def refused_before_sending(emulator: EmulatorServer, **arguments: object) -> str:
    with pytest.raises(ImageGenerationValidationError) as refused:
        fast_hook().generate_images("a lighthouse at dawn", **arguments)  # type: ignore[arg-type]
    assert emulator.requests_log() == [], "a refused request must not reach the service"
    return str(refused.value)


# qwen-image, qwen-image-plus: both endpoints, the task API by default --------------------------------------


@pytest.mark.parametrize("model", ["qwen-image", "qwen-image-plus"])
@pytest.mark.parametrize("size", ["1664*928", "1472x1104", "1328x1328", "1104*1472", "928x1664"])
def test_qwen_image_sizes_on_the_task_api(dashscope_conn: EmulatorServer, model: str, size: str) -> None:
    result = fast_hook().generate_images("a lighthouse at dawn", model=model, size=size, seed=7)
    width, height = (int(side) for side in size.replace("*", "x").split("x"))
    assert png_size(result.images[0].url or "") == (width, height)
    assert billable_paths(dashscope_conn) == [SUBMIT]
    assert dashscope_conn.billed_images() == 1


@pytest.mark.parametrize("model", ["qwen-image", "qwen-image-plus"])
def test_qwen_image_on_the_synchronous_endpoint_when_asked(
    dashscope_conn: EmulatorServer, model: str
) -> None:
    result = fast_hook().generate_images(
        "a lighthouse at dawn", model=model, size="928*1664", endpoint="sync"
    )
    assert png_size(result.images[0].url or "") == (928, 1664)
    assert billable_paths(dashscope_conn) == [MULTIMODAL]
    assert dashscope_conn.billed_images() == 1
    assert result.usage == {"width": 928, "height": 1664, "image_count": 1}


@pytest.mark.parametrize("model", ["qwen-image", "qwen-image-plus"])
def test_qwen_image_limits(dashscope_conn: EmulatorServer, model: str) -> None:
    assert "accepts exactly one of 1664x928" in refused_before_sending(
        dashscope_conn, model=model, size="1024x1024"
    )
    assert "n=1 only" in refused_before_sending(dashscope_conn, model=model, n=2)
    message = refused_before_sending(dashscope_conn, model=model, negative_prompt="x" * 501)
    assert "at most 500 characters" in message
    with pytest.raises(ImageGenerationValidationError, match="at most 800 characters, got 801"):
        fast_hook().generate_images("x" * 801, model=model)
    fast_hook().generate_images("x" * 800, model=model)
    assert dashscope_conn.billed_images() == 1


# qwen-image-max and the 2.0 family: the synchronous endpoint only ------------------------------------------


@pytest.mark.parametrize("model", QWEN_SYNC_ONLY)
def test_sync_only_models_go_to_multimodal_generation(dashscope_conn: EmulatorServer, model: str) -> None:
    result = fast_hook().generate_images("a lighthouse at dawn", model=model, size="1664*928", seed=3)
    assert billable_paths(dashscope_conn) == [MULTIMODAL]
    assert [entry["kind"] for entry in dashscope_conn.requests_log() if entry["path"] == MULTIMODAL] == [
        "multimodal"
    ]
    assert png_size(result.images[0].url or "") == (1664, 928)
    assert result.images[0].url_expires_at is not None
    assert result.parameters["seed"] == 3 and result.parameters["size"] == "1664*928"


@pytest.mark.parametrize("model", QWEN_SYNC_ONLY)
def test_sync_only_models_refuse_the_task_api_before_billing(
    dashscope_conn: EmulatorServer, model: str
) -> None:
    message = refused_before_sending(dashscope_conn, model=model, endpoint="async")
    assert f"{model} is served only by the synchronous endpoint" in message
    hook = fast_hook()
    request = hook.validate_request("a lighthouse", model=model)
    with pytest.raises(ImageGenerationValidationError, match="creates no task to submit"):
        hook.submit(request)
    assert dashscope_conn.requests_log() == []


@pytest.mark.parametrize("model", QWEN_SYNC_ONLY)
def test_the_emulator_refuses_sync_only_models_on_the_task_api(
    dashscope_conn: EmulatorServer, model: str
) -> None:
    """The witness agrees: a raw submission is refused with 403 AccessDenied (§7), no task, nothing billed."""
    response = requests.post(
        f"{dashscope_conn.base_url}{SUBMIT}",
        json={"model": model, "input": {"prompt": "a lighthouse"}, "parameters": {"n": 1}},
        headers={"Authorization": f"Bearer {API_KEY}", "X-DashScope-Async": "enable"},
        timeout=10,
    )
    assert response.status_code == 403
    assert response.json()["code"] == "AccessDenied"
    assert dashscope_conn.billed_images() == 0 and dashscope_conn.tasks() == []


def test_the_emulator_refuses_task_models_on_the_synchronous_endpoint(dashscope_conn: EmulatorServer) -> None:
    body = {
        "model": "wan2.2-t2i-flash",
        "input": {"messages": [{"role": "user", "content": [{"text": "a lighthouse"}]}]},
        "parameters": {"n": 1},
    }
    response = requests.post(
        f"{dashscope_conn.base_url}{MULTIMODAL}",
        json=body,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=10,
    )
    assert response.status_code == 400
    assert dashscope_conn.billed_images() == 0
    dashscope_conn.clear_log()
    message = refused_before_sending(dashscope_conn, model="wan2.2-t2i-flash", endpoint="sync")
    assert "served only by the asynchronous task API" in message


def test_qwen_image_max_limits_and_its_two_requests_a_minute(
    dashscope_conn: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only qwen-image's size list (the older 1472*1140 is refused by the service), n=1.
    assert "accepts exactly one of" in refused_before_sending(
        dashscope_conn, model="qwen-image-max", size="1472x1140"
    )
    assert "n=1 only" in refused_before_sending(dashscope_conn, model="qwen-image-max", n=2)
    # The quota: 2 requests back to back pass, the third is throttled (429, not billed, not retried here).
    set_imggen_connection(
        monkeypatch,
        dashscope_conn.base_url,
        api_style="dashscope",
        max_retries=0,
        default_model="qwen-image-max",
    )
    dashscope_conn.set_faults(quotas=True)
    hook = fast_hook()
    hook.generate_images("first")
    hook.generate_images("second")
    with pytest.raises(ImageGenerationThrottledError, match="nothing was billed"):
        hook.generate_images("third")
    assert dashscope_conn.billed_images() == 2
    assert [entry["outcome"] for entry in dashscope_conn.requests_log() if entry["path"] == MULTIMODAL] == [
        "ok",
        "ok",
        "throttled",
    ]


@pytest.mark.parametrize("model", ["qwen-image-2.0", "qwen-image-2.0-pro"])
def test_qwen_image_2_sizes_by_pixel_count_and_six_images(dashscope_conn: EmulatorServer, model: str) -> None:
    result = fast_hook().generate_images("a lighthouse", model=model, n=6, size="2048x2048", seed=10)
    assert len(result.images) == 6 and dashscope_conn.billed_images() == 6
    assert png_size(result.images[5].url or "") == (2048, 2048)
    fast_hook().generate_images("a lighthouse", model=model, size="512*512")
    fast_hook().generate_images("a lighthouse", model=model, size="1000x300")  # any shape in the range
    dashscope_conn.clear_log()
    assert "at most 10 images" not in refused_before_sending(dashscope_conn, model=model, n=7)
    assert "1-6" in refused_before_sending(dashscope_conn, model=model, n=7)
    assert "262144 to 4194304 pixels" in refused_before_sending(dashscope_conn, model=model, size="2049x2048")
    assert "512x512 to 2048x2048" in refused_before_sending(dashscope_conn, model=model, size="511x512")


# wan2.5-t2i-preview ----------------------------------------------------------------------------------------


def test_wan25_prompt_limit_and_aspect_ratios(dashscope_conn: EmulatorServer) -> None:
    model = "wan2.5-t2i-preview"
    result = fast_hook().generate_images("y" * 2000, model=model, size="1760*440", n=2)
    assert billable_paths(dashscope_conn) == [SUBMIT]
    assert [png_size(image.url or "") for image in result.images] == [(1760, 440)] * 2
    fast_hook().generate_images("a lighthouse", model=model)  # its default size, 1280*1280
    dashscope_conn.clear_log()
    with pytest.raises(ImageGenerationValidationError, match="at most 2000 characters, got 2001"):
        fast_hook().generate_images("y" * 2001, model=model)
    assert "between 1:4 and 4:1" in refused_before_sending(dashscope_conn, model=model, size="1800x440")
    assert "768x768" in refused_before_sending(dashscope_conn, model=model, size="700x700")
    assert "asynchronous task API" in refused_before_sending(dashscope_conn, model=model, endpoint="sync")


# wan2.2 and the wanx2.1 / wanx2.0 models that share its endpoint -------------------------------------------


@pytest.mark.parametrize("model", WAN_V2)
def test_wan_v2_models(dashscope_conn: EmulatorServer, model: str) -> None:
    result = fast_hook().generate_images("z" * 800, model=model, n=4, size="1440*512")
    assert len(result.images) == 4 and billable_paths(dashscope_conn) == [SUBMIT]
    assert png_size(result.images[0].url or "") == (1440, 512)
    dashscope_conn.clear_log()
    assert "1-4" in refused_before_sending(dashscope_conn, model=model, n=5)
    assert "each side 512-1440" in refused_before_sending(dashscope_conn, model=model, size="1441x512")
    with pytest.raises(ImageGenerationValidationError, match="at most 800 characters"):
        fast_hook().generate_images("z" * 801, model=model)
    assert "asynchronous task API" in refused_before_sending(dashscope_conn, model=model, endpoint="sync")


@pytest.mark.parametrize(
    "model", sorted(name for name, spec in KNOWN_MODELS.items() if spec.min_input_images == 0)
)
def test_every_model_through_the_gateway(imggen_conn: EmulatorServer, model: str) -> None:
    """
    A gateway serves every text-to-image model on its one endpoint; the same limits apply before sending.
    (The editing-only models need input images, which only DashScope's native endpoints take.)
    """
    result = fast_hook().generate_images("a lighthouse", model=model, seed=5)
    assert billable_paths(imggen_conn) == ["/v1/images/generations"]
    assert len(result.images) == 1
    with pytest.raises(ImageGenerationValidationError, match="endpoint"):
        fast_hook().generate_images("a lighthouse", model=model, endpoint="sync")


# Unknown models, snapshots ---------------------------------------------------------------------------------


def test_unknown_model_passes_generic_checks_with_a_warning_naming_the_closest(
    imggen_conn: EmulatorServer, capfd: pytest.CaptureFixture[str]
) -> None:
    # A gateway that does not serve the name answers model_not_found: refused, nothing billed, not retried.
    with pytest.raises(ImageGenerationRejectedError) as refused:
        fast_hook().generate_images("a lighthouse", model="qwen-image-2")
    assert refused.value.code == "model_not_found" and imggen_conn.billed_images() == 0
    imggen_conn.set_faults(gateway_models=["qwen-image-2"])
    result = fast_hook().generate_images("a lighthouse", model="qwen-image-2", n=10, size="3000x200")
    assert len(result.images) == 10
    logged = "".join(capfd.readouterr())
    assert "Model 'qwen-image-2' is not in the provider's model table" in logged
    assert "closest known model is 'qwen-image-2.0'" in logged
    with pytest.raises(ImageGenerationValidationError):
        fast_hook().generate_images("a lighthouse", model="qwen-image-2", n=11)
    fast_hook().generate_images("a lighthouse", model="wan2.2-t2i-flash")
    assert "not in the provider's model table" not in "".join(capfd.readouterr())


def test_a_dated_snapshot_goes_to_its_base_models_endpoint(dashscope_conn: EmulatorServer) -> None:
    fast_hook().generate_images("a lighthouse", model="qwen-image-max-2025-12-30", size="1664*928")
    assert billable_paths(dashscope_conn) == [MULTIMODAL]
    dashscope_conn.clear_log()
    message = refused_before_sending(dashscope_conn, model="qwen-image-max-2025-12-30", endpoint="async")
    assert "served only by the synchronous endpoint" in message


def test_an_unknown_model_goes_where_new_models_live_unless_told(dashscope_conn: EmulatorServer) -> None:
    """api-notes §7: every family since qwen-image-max is synchronous only: unknown models go there first."""
    with pytest.raises(ImageGenerationRejectedError):  # the emulator does not know it: 404, not billed
        fast_hook().generate_images("a lighthouse", model="qwen-image-4.0")
    assert billable_paths(dashscope_conn) == [MULTIMODAL] and dashscope_conn.billed_images() == 0
    with pytest.raises(ImageGenerationValidationError, match="expected 'async'"):
        fast_hook().generate_images("a lighthouse", model="qwen-image-4.0", endpoint="multimodal")


def test_a_synchronous_only_model_sent_to_the_task_api_is_refused_and_not_billed(
    dashscope_conn: EmulatorServer,
) -> None:
    """
    The table knows the 2026 families are synchronous only: refused before sending (the service would
    answer 403 AccessDenied, which the emulator's own tests show).
    """
    message = refused_before_sending(dashscope_conn, model="qwen-image-3.0", endpoint="async")
    assert "served only by the synchronous endpoint" in message
    assert dashscope_conn.billed_images() == 0


# The money rule on the synchronous endpoint ----------------------------------------------------------------


@pytest.mark.parametrize("fault", ["billed_500", "billed_502", "billed_drop", "500"])
def test_sync_endpoint_answer_lost_after_sending_is_never_resent(
    dashscope_conn: EmulatorServer, fault: str
) -> None:
    dashscope_conn.set_faults(fail_next=[fault])
    with pytest.raises(ImageGenerationOutcomeUnknownError) as unknown:
        fast_hook().generate_images("a lighthouse", model="qwen-image-max")
    assert billable_paths(dashscope_conn) == [MULTIMODAL], "sent exactly once"
    assert unknown.value.images_at_risk == 1 and unknown.value.model == "qwen-image-max"
    assert "qwen-image-max" in str(unknown.value) and "not sent again" in str(unknown.value)
    assert dashscope_conn.billed_images() == (0 if fault == "500" else 1)


def test_sync_endpoint_throttled_is_retried_and_billed_once(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(fail_next=["429", "throttle"])
    result = fast_hook(max_retry_after=5).generate_images("a lighthouse", model="qwen-image-2.0", n=2)
    assert len(result.images) == 2
    assert billable_paths(dashscope_conn) == [MULTIMODAL] * 3
    assert dashscope_conn.billed_images() == 2
