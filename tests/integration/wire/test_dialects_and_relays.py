"""
What users meet on the wire in 2026, against the emulator over real HTTP: the watermark on every path,
the workspace header, the gateway dialects and the seed check, empty or absent rewritten prompts, and
SUSPENDED tasks.
"""

from __future__ import annotations

import asyncio
import hashlib
import io

import pytest
import requests
from airflow.sdk.exceptions import AirflowFailException
from PIL import Image

from airflow_provider_imggen.emulator import EmulatorConfig, EmulatorServer
from airflow_provider_imggen.exceptions import ImageGenerationRejectedError, ImageGenerationValidationError
from airflow_provider_imggen.hooks.image_generation import ImageGenerationAsyncHook
from airflow_provider_imggen.results import ImageGenerationResult
from airflow_provider_imggen.sealed_urls import unseal
from tests.conftest import API_KEY, set_imggen_connection
from tests.integration.hooks.test_image_generation import fast_hook
from tests.integration.operators.test_image_generation import make_operator, run


def image_digest(result: ImageGenerationResult, index: int = 0) -> str:
    response = requests.get(result.images[index].url or "", timeout=10)
    assert response.status_code == 200
    return hashlib.sha256(response.content).hexdigest()


def generation_bodies_seen(emulator: EmulatorServer) -> list[str | None]:
    return [entry["fingerprint"] for entry in emulator.requests_log() if entry["kind"] == "generate"]


# Watermark -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api_style", "model", "dialect"),
    [
        ("openai", "wan2.2-t2i-flash", "openai"),
        ("openai", "wan2.2-t2i-flash", "nested"),
        ("dashscope", "wan2.2-t2i-flash", None),  # the task API
        ("dashscope", "qwen-image-max", None),  # the synchronous endpoint
    ],
)
def test_watermark_reaches_the_service_on_every_path(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, api_style: str, model: str, dialect: str | None
) -> None:
    """The emulator marks an image only when the service was asked to: the bytes tell."""
    host = emulator.base_url if api_style == "dashscope" else f"{emulator.base_url}/v1"
    extra = {"api_style": api_style} | ({"gateway_dialect": dialect} if dialect else {})
    set_imggen_connection(monkeypatch, host, **extra)
    if dialect:
        emulator.set_faults(gateway_dialect=dialect)
    hook = fast_hook()
    size = "1328*1328" if model == "qwen-image-max" else "512*512"
    plain = image_digest(hook.generate_images("a lighthouse", model=model, size=size, seed=9))
    unmarked = image_digest(
        hook.generate_images("a lighthouse", model=model, size=size, seed=9, watermark=False)
    )
    marked = image_digest(
        hook.generate_images("a lighthouse", model=model, size=size, seed=9, watermark=True)
    )
    assert plain == unmarked != marked


def test_watermark_is_a_templated_operator_parameter(imggen_conn: EmulatorServer) -> None:
    marked = run(make_operator(seed=4, watermark="{{ params.mark }}", params={"mark": "true"}))
    plain = run(make_operator(seed=4, watermark="{{ params.mark }}", params={"mark": "false"}))
    assert "watermark" in make_operator().template_fields
    fingerprints = generation_bodies_seen(imggen_conn)
    assert len(set(fingerprints)) == 2, "the rendered watermark changed the request"
    # Two different images (XCom shows their URLs masked: compared sealed, as the transfer opens them).
    assert unseal(marked["images"][0]["url_sealed"], label="a") != unseal(
        plain["images"][0]["url_sealed"], label="b"
    )


def test_watermark_is_checked_before_anything_is_sent(imggen_conn: EmulatorServer) -> None:
    with pytest.raises(ImageGenerationValidationError, match="watermark"):
        make_operator(watermark="sometimes")
    with pytest.raises(AirflowFailException, match="watermark"):
        run(make_operator(watermark="{{ params.mark }}", params={"mark": "maybe"}))
    with pytest.raises(ImageGenerationValidationError, match="watermark"):
        fast_hook().generate_images("a lighthouse", watermark=True, extra_body={"watermark": False})  # type: ignore[arg-type]
    assert imggen_conn.requests_log() == []


def test_watermark_in_extra_body_still_works(dashscope_conn: EmulatorServer) -> None:
    """Before it was a parameter it could only travel in extra_body: that keeps working."""
    hook = fast_hook()
    via_extra = image_digest(
        hook.generate_images("a fox", seed=2, size="512*512", extra_body={"watermark": True})
    )
    named = image_digest(hook.generate_images("a fox", seed=2, size="512*512", watermark=True))
    assert via_extra == named


# Workspace -------------------------------------------------------------------------------------------------


def test_workspace_header_on_every_request_of_both_hooks(
    dashscope_conn: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_imggen_connection(monkeypatch, dashscope_conn.base_url, api_style="dashscope", workspace="ws-7f3a9c")
    hook = fast_hook()
    hook.generate_images("a lighthouse", model="wan2.2-t2i-flash")  # submit + status queries
    hook.generate_images("a lighthouse", model="qwen-image-max")  # synchronous endpoint
    task_id = dashscope_conn.tasks()[0]["task_id"]

    async def read_in_the_triggerer() -> str:
        async with ImageGenerationAsyncHook() as async_hook:
            return (await async_hook.get_task(task_id)).status

    assert asyncio.run(read_in_the_triggerer()) == "SUCCEEDED"
    api_calls = [entry for entry in dashscope_conn.requests_log() if entry["path"].startswith("/api/")]
    assert {entry["kind"] for entry in api_calls} == {"submit", "task", "multimodal"}
    assert {entry["workspace"] for entry in api_calls} == {"ws-7f3a9c"}


def test_no_workspace_no_header(dashscope_conn: EmulatorServer) -> None:
    fast_hook().generate_images("a lighthouse")
    assert {entry["workspace"] for entry in dashscope_conn.requests_log()} == {None}


def test_a_workspace_the_key_cannot_use_is_refused_without_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    config = EmulatorConfig(api_key=API_KEY, workspaces=("ws-mine",))
    with EmulatorServer(config) as emulator:
        set_imggen_connection(monkeypatch, emulator.base_url, api_style="dashscope", workspace="ws-other")
        with pytest.raises(ImageGenerationRejectedError, match="no access to workspace") as refused:
            fast_hook().generate_images("a lighthouse", model="qwen-image-max")
        assert refused.value.status == 403
        (entry,) = emulator.requests_log()
        assert (entry["status"], entry["workspace"], emulator.billed_images()) == (403, "ws-other", 0)
        set_imggen_connection(monkeypatch, emulator.base_url, api_style="dashscope", workspace="ws-mine")
        assert len(fast_hook().generate_images("a lighthouse", model="qwen-image-max").images) == 1


@pytest.mark.parametrize("workspace", ["ws 1", "ws-1\r\nX-Injected: 1", 12, "-leading-dash"])
def test_a_malformed_workspace_is_refused_before_any_request(
    dashscope_conn: EmulatorServer, monkeypatch: pytest.MonkeyPatch, workspace: object
) -> None:
    set_imggen_connection(monkeypatch, dashscope_conn.base_url, api_style="dashscope", workspace=workspace)
    with pytest.raises(ImageGenerationValidationError, match="extra workspace"):
        fast_hook().generate_images("a lighthouse")
    assert dashscope_conn.requests_log() == []


# Gateway dialects and the seed check -----------------------------------------------------------------------


@pytest.mark.parametrize("gateway", ["openai", "nested"])
@pytest.mark.parametrize("ours", ["openai", "nested"])
def test_dialects_and_the_ignored_seed_check(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, gateway: str, ours: str
) -> None:
    """
    A gateway of one dialect, a connection of either: matching, the seed is honoured (the same image as
    the native API draws for it) and nothing is flagged; mismatched, the gateway drops the seed with the
    prompt-extension flag. A top-level gateway's rewritten prompt gives it away; the nested relay (new-api)
    answers revised_prompt "" always (api-notes §7), so against it the drop cannot be seen: only the images
    differ, and the fix is the connection's gateway_dialect, said in the docs.
    """
    set_imggen_connection(monkeypatch, emulator.base_url, api_style="dashscope")
    reference = image_digest(
        fast_hook().generate_images(
            "a red kite", model="wan2.2-t2i-flash", size="512*512", seed=1234, prompt_upsampling=False
        )
    )
    set_imggen_connection(monkeypatch, f"{emulator.base_url}/v1", gateway_dialect=ours)
    emulator.set_faults(gateway_dialect=gateway)
    result = fast_hook().generate_images(
        "a red kite",
        model="wan2.2-t2i-flash",
        size="512x512",
        seed=1234,
        prompt_upsampling=False,
        negative_prompt="blur",
    )
    if gateway == ours:
        assert result.warnings == ()
        # negative_prompt reached it too, so the image is not the reference (drawn without it).
        plain = fast_hook().generate_images(
            "a red kite", model="wan2.2-t2i-flash", size="512x512", seed=1234, prompt_upsampling=False
        )
        assert image_digest(plain) == reference
        assert plain.warnings == ()
    elif gateway == "openai":
        (warning,) = result.warnings
        assert "ignored fields" in warning and "seed (1234)" in warning
        assert f"gateway_dialect to {gateway!r}" in warning
        assert image_digest(result) != reference
    else:
        assert result.warnings == () and image_digest(result) != reference


def test_the_ignored_seed_reaches_xcom(emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    set_imggen_connection(monkeypatch, f"{emulator.base_url}/v1", gateway_dialect="nested")
    emulator.set_faults(gateway_dialect="openai")
    metadata = run(make_operator(seed=77, prompt_upsampling=False))
    (warning,) = metadata["warnings"]
    assert "seed (77)" in warning and "gateway_dialect to 'openai'" in warning


def test_the_nested_dialect_keeps_n_size_and_prompt_through_a_replacing_relay(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The most used relay replaces its own parameters and input with the nested objects (api-notes §7): a
    partial ``parameters`` lost n and size (Wan then billed its default 4 images at 1024*1024) and an
    ``input`` with only the negative prompt lost the prompt. The nested dialect sends both objects whole.
    """
    set_imggen_connection(monkeypatch, f"{emulator.base_url}/v1", gateway_dialect="nested")
    emulator.set_faults(gateway_dialect="nested")
    result = fast_hook().generate_images(
        "a red kite", model="wan2.2-t2i-flash", n=2, size="512x512", seed=5, negative_prompt="blur"
    )
    assert len(result.images) == 2 and emulator.billed_images() == 2
    for image in result.images:
        with Image.open(io.BytesIO(requests.get(image.url or "", timeout=10).content)) as drawn:
            assert drawn.size == (512, 512)
    (entry,) = [entry for entry in emulator.requests_log() if entry["path"] == "/v1/images/generations"]
    assert result.warnings == () and entry["status"] == 200


def test_nested_dialect_keeps_extra_body_out_of_its_own_objects(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_imggen_connection(monkeypatch, f"{emulator.base_url}/v1", gateway_dialect="nested")
    with pytest.raises(ImageGenerationValidationError, match="parameters"):
        fast_hook().generate_images(
            "a lighthouse", model="qwen-image", extra_body={"parameters": {"seed": 1}}
        )
    set_imggen_connection(monkeypatch, f"{emulator.base_url}/v1", gateway_dialect="sideways")
    with pytest.raises(ImageGenerationValidationError, match="gateway_dialect"):
        fast_hook().generate_images("a lighthouse", model="qwen-image")
    assert emulator.requests_log() == []


# Rewritten prompts: "" and absent mean none ----------------------------------------------------------------


@pytest.mark.parametrize("shape", ["empty", "absent"])
def test_empty_or_absent_revised_prompt_is_none(imggen_conn: EmulatorServer, shape: str) -> None:
    imggen_conn.set_faults(gateway_revised_prompt=shape)
    result = fast_hook().generate_images("a lighthouse", n=2)
    assert [image.revised_prompt for image in result.images] == [None, None]
    metadata = run(make_operator())
    assert metadata["images"][0]["revised_prompt"] is None


def test_revised_prompt_text_is_kept(imggen_conn: EmulatorServer) -> None:
    result = fast_hook().generate_images("a lighthouse")
    assert result.images[0].revised_prompt == "a lighthouse, highly detailed"


def test_absent_actual_prompt_is_fine(dashscope_conn: EmulatorServer) -> None:
    result = fast_hook().generate_images("a lighthouse", prompt_upsampling=False, n=2)
    assert [image.revised_prompt for image in result.images] == [None, None]
    extended = fast_hook().generate_images("a lighthouse", prompt_upsampling=True)
    assert extended.images[0].revised_prompt == "a lighthouse, highly detailed"


# SUSPENDED tasks -------------------------------------------------------------------------------------------


def test_a_suspended_task_is_waited_for_not_failed(
    dashscope_conn: EmulatorServer, capfd: pytest.CaptureFixture[str]
) -> None:
    dashscope_conn.set_faults(task_suspended_ms=1500, task_duration_ms=100)
    hook = fast_hook()
    submitted = hook.submit_task("a lighthouse", model="wan2.2-t2i-flash")
    state = hook.get_task(submitted.generation_task_id)
    assert state.status == "SUSPENDED" and not state.is_terminal
    state.raise_for_status()  # not an error while it may still run
    final = hook.wait_for_task(submitted.generation_task_id, poll_interval=0.2, max_poll_interval=0.2)
    assert final.status == "SUCCEEDED" and len(final.images) == 1
    assert f"Task {submitted.generation_task_id} is SUSPENDED" in "".join(capfd.readouterr())
    assert dashscope_conn.billed_images() == 1


def test_an_operator_waits_through_suspension(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(task_suspended_ms=700)
    metadata = run(make_operator(poll_interval=0.2, max_poll_interval=0.2))
    assert metadata["task_status"] == "SUCCEEDED" and len(metadata["images"]) == 1


# The operator on the synchronous endpoint ------------------------------------------------------------------


def test_operator_on_a_sync_only_model(dashscope_conn: EmulatorServer) -> None:
    metadata = run(make_operator(model="qwen-image-2.0", n=3, size="1024*768", deferrable=True))
    assert len(metadata["images"]) == 3 and metadata["generation_task_id"] is None
    assert [entry["kind"] for entry in dashscope_conn.requests_log() if entry["method"] == "POST"] == [
        "multimodal"
    ]
    with pytest.raises(AirflowFailException, match="no task to come back to"):
        run(make_operator(model="qwen-image-max", wait_for_completion=False))
    with pytest.raises(ImageGenerationValidationError, match="served only by the synchronous endpoint"):
        make_operator(model="qwen-image-max", endpoint="async")
    with pytest.raises(AirflowFailException, match="served only by the synchronous endpoint"):
        run(make_operator(model="{{ params.model }}", endpoint="async", params={"model": "qwen-image-max"}))
    assert dashscope_conn.billed_images() == 3


def test_sync_endpoint_without_a_fernet_key_refuses_before_billing(
    dashscope_conn: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No task to read the URLs from again: as on the gateway, refuse before paying for unusable images."""
    from airflow.sdk.crypto import get_fernet

    from airflow_provider_imggen.exceptions import ResultUrlSealError

    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", "")
    get_fernet.cache_clear()
    try:
        with pytest.raises(ResultUrlSealError, match=r"synchronous endpoint.*Nothing was sent or billed"):
            run(make_operator(model="qwen-image-max"))
    finally:
        monkeypatch.undo()
        get_fernet.cache_clear()
    assert dashscope_conn.requests_log() == []


def test_an_item_the_relay_dropped_is_named_not_lost(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    new-api fetches each result for b64_json and silently drops one it could not fetch (api-notes §7):
    the image was billed; the answer carries one item for n=2. The missing one is named in failed_images.
    """
    set_imggen_connection(monkeypatch, f"{emulator.base_url}/v1", gateway_dialect="nested", max_retries=0)
    # Seed 1 of the fault dice: exactly one of the two fetches fails.
    emulator.set_faults(gateway_dialect="nested", rate_relay_fetch_fail=0.5, seed=1)
    result = fast_hook().generate_images("a kite", model="wan2.2-t2i-flash", n=2, response_format="b64_json")
    assert [image.index for image in result.images] == [0] and result.images[0].data
    (missing,) = result.failed_images
    assert (missing.index, missing.code) == (
        1,
        "MissingFromAnswer",
    ) and "may have been billed" in missing.message
    assert emulator.billed_images() == 2
