"""
Billed answers the provider cannot read in full, against the emulator over real HTTP: a result URL no URL
parser accepts, an answer nested deeper than a JSON parser goes, more images than were asked for. An answer
that was billed never escapes as an error Airflow retries (a retry pays again), the images that can be read
are delivered, and the signed URLs (credentials) are never echoed.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.exceptions import ImageGenerationAPIError, ImageGenerationMalformedResponseError
from airflow_provider_imggen.hooks.image_generation import ImageGenerationAsyncHook
from airflow_provider_imggen.results import MALFORMED_ITEM
from tests.conftest import set_imggen_connection
from tests.integration.hooks.test_image_generation import fast_hook
from tests.integration.operators.test_image_generation import make_operator, run

if TYPE_CHECKING:
    from tests.s3_fixtures import S3Bucket

DEEP = 5000  # past any JSON parser's recursion limit


def billed_calls(emulator: EmulatorServer, kind: str) -> list[dict]:
    return [entry for entry in emulator.requests_log() if entry["kind"] == kind]


def assert_no_signed_url(text: str) -> None:
    assert "Signature=" not in text.replace("Signature=***", ""), "a signed URL is a credential"
    assert "[127.0.0.1" not in text and "[localhost" not in text, "the unparsable URL is never echoed"


# A result URL no parser accepts -----------------------------------------------------------------------------


def test_gateway_unparsable_url_is_a_failed_image_the_others_delivered(
    imggen_conn: EmulatorServer, capfd: pytest.CaptureFixture[str]
) -> None:
    imggen_conn.set_faults(unparsable_result_urls=1)
    result = fast_hook().generate_images("a cat", size="512x512", n=2)

    assert [image.index for image in result.images] == [1]
    ((index, code, message),) = [(f.index, f.code, f.message) for f in result.failed_images]
    assert (index, code) == (0, MALFORMED_ITEM) and "cannot be parsed" in message
    assert_no_signed_url(message)
    assert_no_signed_url("".join(capfd.readouterr()))
    assert len(billed_calls(imggen_conn, "generate")) == 1 and imggen_conn.billed_images() == 2


def test_gateway_single_unparsable_url_is_not_retried(imggen_conn: EmulatorServer) -> None:
    imggen_conn.set_faults(unparsable_result_urls=1)
    with pytest.raises(ImageGenerationMalformedResponseError) as raised:
        fast_hook().generate_images("a cat", size="512x512", n=1)
    assert isinstance(raised.value, AirflowFailException), "billed: Airflow must not pay again"
    assert_no_signed_url(str(raised.value))
    assert len(billed_calls(imggen_conn, "generate")) == 1


def test_synchronous_unparsable_url_is_a_failed_image(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(unparsable_result_urls=1)
    result = fast_hook().generate_images("a cat", model="qwen-image-2.0", size="1024*1024", n=2)

    assert [image.index for image in result.images] == [1]
    assert [(f.index, f.code) for f in result.failed_images] == [(0, MALFORMED_ITEM)]
    assert_no_signed_url(result.failed_images[0].message)
    assert len(billed_calls(dashscope_conn, "multimodal")) == 1


def test_task_unparsable_url_is_a_failed_image_in_both_hooks(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(unparsable_result_urls=1)
    hook = fast_hook()
    result = hook.generate_images("a cat", size="512*512", n=2)

    assert [image.index for image in result.images] == [1]
    assert [(f.index, f.code) for f in result.failed_images] == [(0, MALFORMED_ITEM)]
    assert_no_signed_url(result.failed_images[0].message)
    (submission,) = billed_calls(dashscope_conn, "submit")

    async def read() -> object:
        async with ImageGenerationAsyncHook() as async_hook:
            return await async_hook.get_task(str(submission["task_id"]))

    state = asyncio.run(read())
    assert [image.index for image in state.images] == [1]  # type: ignore[attr-defined]
    assert [f.code for f in state.failed_images] == [MALFORMED_ITEM]  # type: ignore[attr-defined]


# An answer nested deeper than a JSON parser goes ---------------------------------------------------------


@pytest.mark.parametrize("depth", [DEEP, 300])
def test_gateway_deeply_nested_answer_is_malformed_not_retried(
    imggen_conn: EmulatorServer, depth: int
) -> None:
    imggen_conn.set_faults(answer_nesting_depth=depth)
    with pytest.raises(ImageGenerationMalformedResponseError) as raised:
        fast_hook().generate_images("a cat", size="512x512", n=2)

    error = raised.value
    assert isinstance(error, AirflowFailException), "billed: Airflow must not pay again"
    assert (error.model, error.images_at_risk) == ("wan2.2-t2i-flash", 2)
    (entry,) = billed_calls(imggen_conn, "generate")
    assert error.request_id == entry["request_id"] and imggen_conn.billed_images() == 2


def test_synchronous_deeply_nested_answer_is_malformed_not_retried(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(answer_nesting_depth=DEEP)
    with pytest.raises(ImageGenerationMalformedResponseError) as raised:
        fast_hook().generate_images("a cat", model="qwen-image-2.0", size="1024*1024", n=2)
    assert isinstance(raised.value, AirflowFailException)
    assert raised.value.images_at_risk == 2 and raised.value.request_id
    assert len(billed_calls(dashscope_conn, "multimodal")) == 1


def test_deeply_nested_task_status_is_the_unreadable_answer_error(dashscope_conn: EmulatorServer) -> None:
    hook = fast_hook()
    submitted = hook.submit_task("a cat", size="512*512", n=1)
    hook.wait_for_task(submitted.generation_task_id, poll_interval=0.05)
    dashscope_conn.set_faults(answer_nesting_depth=DEEP)

    with pytest.raises(ImageGenerationAPIError, match="not JSON") as raised:
        hook.get_task(submitted.generation_task_id)
    assert not isinstance(raised.value, ImageGenerationMalformedResponseError), "a status read bills nothing"

    async def read() -> None:
        async with ImageGenerationAsyncHook(retry_wait_initial=0.01, retry_wait_max=0.05) as async_hook:
            await async_hook.get_task(submitted.generation_task_id)

    with pytest.raises(ImageGenerationAPIError, match="not JSON"):
        asyncio.run(read())
    assert len(billed_calls(dashscope_conn, "submit")) == 1


# More images than asked for --------------------------------------------------------------------------------


def test_relay_that_drops_n_delivers_every_billed_image(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """
    new-api replaces its parameters with a ``parameters`` object (api-notes §7): ``n`` is lost and Wan
    bills its default 4 images. The 4 are delivered (paid for), with a warning saying so.
    """
    set_imggen_connection(monkeypatch, f"{emulator.base_url}/v1", default_model="wan2.2-t2i-flash")
    emulator.set_faults(gateway_dialect="nested")
    result = fast_hook().generate_images("a cat", n=1, extra_body={"parameters": {"seed": 5}})

    assert emulator.billed_images() == 4
    assert [image.index for image in result.images] == [0, 1, 2, 3] and result.failed_images == ()
    (warning,) = [w for w in result.warnings if "for n=1" in w]
    assert "returned 4 images for n=1: 4 billed" in warning
    assert "Signature=" not in warning
    assert "returned 4 images for n=1" in "".join(capfd.readouterr())


def test_relay_that_drops_n_reaches_xcom(emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    set_imggen_connection(monkeypatch, f"{emulator.base_url}/v1", default_model="wan2.2-t2i-flash")
    emulator.set_faults(gateway_dialect="nested")
    metadata = run(make_operator(n=1, extra_body={"parameters": {"seed": 5}}))

    assert metadata["n"] == 1 and [image["index"] for image in metadata["images"]] == [0, 1, 2, 3]
    assert all(image["url_sealed"] for image in metadata["images"])
    assert any("returned 4 images for n=1: 4 billed" in warning for warning in metadata["warnings"])


def test_images_beyond_n_reach_s3(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, s3: S3Bucket
) -> None:
    """The transfer stores every delivered image, those beyond n included, each under its own index."""
    from tests.integration.transfers.test_image_generation_to_s3 import make_operator as make_transfer
    from tests.integration.transfers.test_image_generation_to_s3 import run as run_transfer

    set_imggen_connection(monkeypatch, f"{emulator.base_url}/v1", default_model="wan2.2-t2i-flash")
    emulator.set_faults(gateway_dialect="nested")
    generation = run(make_operator(n=1, extra_body={"parameters": {"seed": 5}}))

    entries = run_transfer(
        make_transfer(generation=generation, s3_bucket=s3.name, s3_key="run/{index}.{ext}")
    )
    assert s3.object_keys() == [f"run/{index}.png" for index in range(4)]
    assert [entry["index"] for entry in entries] == [0, 1, 2, 3]
