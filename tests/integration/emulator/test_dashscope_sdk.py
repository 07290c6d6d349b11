"""
The official DashScope Python SDK against the emulator's routes: its image-synthesis call (the task API's
image2image surface, which the SDK picks for wan2.5-i2i-preview, then its own polling of
``/api/v1/tasks/{id}``) and its multimodal call (the synchronous endpoint), both with input images. A second
client, written by the service's owners, that the emulator must answer as the service does: the provider's
reading of the documentation is not the only one it is checked against.
"""

from __future__ import annotations

import base64
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_provider_imggen.emulator import EmulatorServer
from tests.conftest import API_KEY
from tests.input_images import inputs_chunk, jpeg, png, sha256

dashscope = pytest.importorskip("dashscope")


@pytest.fixture
def sdk(emulator: EmulatorServer) -> Iterator[EmulatorServer]:
    """The SDK pointed at the emulator (its module-level base URL, read at every call)."""
    previous = dashscope.base_http_api_url
    dashscope.base_http_api_url = f"{emulator.base_url}/api/v1"
    try:
        yield emulator
    finally:
        dashscope.base_http_api_url = previous


def _data_uri(data: bytes, content_type: str) -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


def _download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return bytes(answer.read())


def test_image_synthesis_with_input_images_runs_the_image2image_task(sdk: EmulatorServer) -> None:
    from dashscope import ImageSynthesis

    first, second = png(640, 640, seed=21), jpeg(512, 768, seed=22)
    answer = ImageSynthesis.call(
        api_key=API_KEY,
        model="wan2.5-i2i-preview",
        prompt="put the vase from image 1 on the table of image 2",
        images=[_data_uri(first, "image/png"), _data_uri(second, "image/jpeg")],
        n=2,
        size="1024*1024",
    )
    assert answer.status_code == 200, (answer.code, answer.message)
    assert answer.output.task_status == "SUCCEEDED"
    submits = [entry for entry in sdk.requests_log() if entry["path"].endswith("/image-synthesis")]
    assert [entry["path"] for entry in submits] == ["/api/v1/services/aigc/image2image/image-synthesis"]
    results = answer.output.results
    assert len(results) == 2
    for result in results:
        assert inputs_chunk(_download(result.url)) == [sha256(first), sha256(second)]
    assert sdk.billed_images() == 2


def test_multimodal_conversation_edits_on_the_synchronous_endpoint(sdk: EmulatorServer) -> None:
    from dashscope import MultiModalConversation

    product = png(800, 600, seed=23)
    answer = MultiModalConversation.call(
        api_key=API_KEY,
        model="qwen-image-edit-plus",
        messages=[
            {
                "role": "user",
                "content": [{"image": _data_uri(product, "image/png")}, {"text": "the product on snow"}],
            }
        ],
        n=2,
        watermark=False,
    )
    assert answer.status_code == 200, (answer.code, answer.message)
    content = answer.output.choices[0].message.content
    images = [item["image"] for item in content if "image" in item]
    assert len(images) == 2
    assert all(inputs_chunk(_download(url)) == [sha256(product)] for url in images)


def test_the_sdks_refused_input_is_not_billed(sdk: EmulatorServer) -> None:
    from dashscope import MultiModalConversation

    tiny = png(64, 64, seed=24)  # qwen-image-edit takes sides of 384-3072 px
    answer = MultiModalConversation.call(
        api_key=API_KEY,
        model="qwen-image-edit",
        messages=[
            {"role": "user", "content": [{"image": _data_uri(tiny, "image/png")}, {"text": "restyle"}]}
        ],
    )
    assert (answer.status_code, answer.code) == (400, "InvalidParameter")
    assert sdk.billed_images() == 0


def test_a_local_file_the_sdk_would_upload_is_refused_by_the_emulator(
    sdk: EmulatorServer, tmp_path: Path
) -> None:
    """The SDK uploads a file:// input to the service's OSS first: the emulator hosts no uploads."""
    from dashscope import MultiModalConversation

    local = tmp_path / "product.png"
    local.write_bytes(png(512, 512, seed=25))
    with pytest.raises(Exception, match=r"(?i)upload"):
        MultiModalConversation.call(
            api_key=API_KEY,
            model="qwen-image-edit-plus",
            messages=[{"role": "user", "content": [{"image": f"file://{local}"}, {"text": "restyle"}]}],
        )
    assert sdk.billed_images() == 0
