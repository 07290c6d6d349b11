"""ImageGenerationHook against the emulator over real HTTP on loopback."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException
from PIL import Image

from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.exceptions import (
    ImageGenerationAPIError,
    ImageGenerationError,
    ImageGenerationOutcomeUnknownError,
    ImageGenerationRejectedError,
    ImageGenerationThrottledError,
    ImageGenerationValidationError,
)
from airflow_provider_imggen.hooks.image_generation import ImageGenerationHook
from airflow_provider_imggen.utils import mask_url
from tests.conftest import API_KEY, set_imggen_connection


def fast_hook(**kwargs: object) -> ImageGenerationHook:
    """A hook whose backoff is short enough for tests (Retry-After is still honoured)."""
    return ImageGenerationHook(retry_wait_initial=0.01, retry_wait_max=0.05, **kwargs)  # type: ignore[arg-type]


def generation_requests(emulator: EmulatorServer) -> list[dict]:
    return [entry for entry in emulator.requests_log() if entry["path"] == "/v1/images/generations"]


def test_url_result_downloads_real_png(imggen_conn: EmulatorServer) -> None:
    import requests

    result = fast_hook().generate_images(
        "a lighthouse at dawn, watercolour", model="wan2.2-t2i-flash", n=2, size="768*512", seed=7
    )

    assert [image.index for image in result.images] == [0, 1]
    assert result.model == "wan2.2-t2i-flash"
    assert result.request_id
    assert result.parameters["size"] == "768x512"
    assert result.parameters["seed"] == "7"
    assert set(result.usage) >= {"total_tokens", "input_tokens", "output_tokens"}
    assert abs(result.created - time.time()) < 60
    for image in result.images:
        assert image.url and image.data is None
        assert image.url_expires_at is not None and image.url_expires_at > datetime.now(tz=UTC)
        assert "Signature=***" in repr(image) and image.url.split("Signature=")[1] not in repr(image)
        png = requests.get(image.url, timeout=10)
        assert png.status_code == 200
        assert Image.open(io.BytesIO(png.content)).size == (768, 512)
    assert imggen_conn.billed_images() == 2


def test_b64_json_result_is_decoded(imggen_conn: EmulatorServer) -> None:
    result = fast_hook().generate_images(
        "a red bicycle", model="qwen-image", size="1664x928", response_format="b64_json", seed="123456"
    )

    (image,) = result.images
    assert image.url is None and image.data is not None
    assert image.data.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(image.data)).size == (1664, 928)
    assert f"data=<{len(image.data)} bytes>" in repr(image)


def test_same_request_gives_same_bytes(imggen_conn: EmulatorServer) -> None:
    hook = fast_hook()
    first = hook.generate_images("a teapot", n=1, size="512x512", seed=42, response_format="b64_json")
    second = hook.generate_images("a teapot", n=1, size="512x512", seed=42, response_format="b64_json")
    other = hook.generate_images("a kettle", n=1, size="512x512", seed=42, response_format="b64_json")
    assert first.images[0].data == second.images[0].data
    assert first.images[0].data != other.images[0].data


def test_model_falls_back_to_connection_default(imggen_conn: EmulatorServer) -> None:
    result = fast_hook().generate_images("a fox", size="512x512")
    assert result.model == "wan2.2-t2i-flash"
    assert generation_requests(imggen_conn)[0]["model"] == "wan2.2-t2i-flash"


# One row per rule of the model table (../shared/api-notes.md §2) and the generic checks.
INVALID_REQUESTS = [
    pytest.param({"model": "qwen-image", "n": 2}, "n", "qwen-image accepts n=1 only", id="qwen-n-2"),
    pytest.param(
        {"model": "qwen-image", "size": "1024x1024"}, "size", "exactly one of", id="qwen-size-off-list"
    ),
    pytest.param({"model": "wan2.2-t2i-flash", "n": 5}, "n", "1-4", id="wan-n-5"),
    pytest.param({"model": "wan2.2-t2i-plus", "n": 0}, "n", "1-4", id="wan-n-0"),
    pytest.param(
        {"model": "wan2.2-t2i-flash", "size": "511x800"}, "size", "512-1440", id="wan-side-too-small"
    ),
    pytest.param(
        {"model": "wan2.2-t2i-plus", "size": "1441*800"}, "size", "512-1440", id="wan-side-too-large"
    ),
    pytest.param({"model": "wan2.2-t2i-flash", "size": "big"}, "size", "WIDTHxHEIGHT", id="size-not-wxh"),
    pytest.param({"model": "wan2.2-t2i-flash", "size": 1024}, "size", "WIDTHxHEIGHT", id="size-not-string"),
    pytest.param({"prompt": "x" * 801}, "prompt", "at most 800 characters", id="prompt-801"),
    pytest.param({"prompt": "   "}, "prompt", "must not be empty", id="prompt-blank"),
    pytest.param({"prompt": 42}, "prompt", "expected a string", id="prompt-not-string"),
    pytest.param({"negative_prompt": "y" * 501}, "negative_prompt", "at most 500", id="negative-501"),
    pytest.param({"seed": -1}, "seed", "0-2147483647", id="seed-negative"),
    pytest.param({"seed": 2147483648}, "seed", "0-2147483647", id="seed-too-large"),
    pytest.param({"seed": "12ab"}, "seed", "0-2147483647", id="seed-not-numeric"),
    pytest.param({"seed": 1.5}, "seed", "0-2147483647", id="seed-float"),
    pytest.param({"seed": True}, "seed", "0-2147483647", id="seed-bool"),
    pytest.param({"response_format": "png"}, "response_format", "'url' or 'b64_json'", id="response-format"),
    pytest.param({"prompt_upsampling": "maybe"}, "prompt_upsampling", "boolean", id="upsampling-not-bool"),
    pytest.param({"n": "two"}, "n", "1-4", id="n-not-numeric"),
    pytest.param(
        {"extra_body": {"seed": 1}}, "extra_body", "seed must be passed as the parameter", id="extra-clash"
    ),
    pytest.param({"extra_body": ["watermark"]}, "extra_body", "expected a dict", id="extra-not-dict"),
    pytest.param({"n": "\u0662"}, "n", "1-4", id="n-arabic-indic-digit"),
    pytest.param({"seed": "\u0664\u0662"}, "seed", "0-2147483647", id="seed-arabic-indic-digits"),
    pytest.param({"prompt": "None"}, "prompt", "rendered a missing value", id="prompt-rendered-none"),
    pytest.param({"extra_body": {"strength": float("nan")}}, "extra_body", "JSON values", id="extra-nan"),
    pytest.param({"extra_body": {"strength": float("inf")}}, "extra_body", "JSON values", id="extra-inf"),
    pytest.param({"extra_body": {"when": object()}}, "extra_body", "JSON values", id="extra-not-json"),
    pytest.param({"model": "gpt-image-x", "n": 11}, "n", "1-10", id="unknown-model-n"),
    pytest.param({"model": "gpt-image-x", "size": "0x10"}, "size", "positive", id="unknown-model-size"),
    pytest.param({"model": ""}, "model", "expected a model name", id="model-empty"),
]


@pytest.mark.parametrize(("overrides", "parameter", "allowed"), INVALID_REQUESTS)
def test_invalid_request_is_refused_before_any_request(
    imggen_conn: EmulatorServer, overrides: dict, parameter: str, allowed: str
) -> None:
    kwargs = {"prompt": "a lighthouse", "model": "wan2.2-t2i-flash", **overrides}
    prompt = kwargs.pop("prompt")
    with pytest.raises(ImageGenerationValidationError) as raised:
        fast_hook().generate_images(prompt, **kwargs)

    error = raised.value
    assert isinstance(error, AirflowFailException), "bad input must not be retried by Airflow"
    assert isinstance(error, ImageGenerationError), "every provider error derives from the base class"
    assert error.parameter == parameter
    assert allowed in str(error)
    assert parameter in str(error)
    assert imggen_conn.requests_log() == [], "no request may reach the API for invalid input"


def test_accepts_qwen_sizes_and_numeric_strings(imggen_conn: EmulatorServer) -> None:
    hook = fast_hook()
    for size in ("1664x928", "1472*1104", "928*1664"):
        request = hook.validate_request("a cat", model="qwen-image", size=size, seed="99", n="1")
        assert request.size == size.replace("*", "x") and request.seed == 99 and request.n == 1
    # The older list's 1472*1140 is refused by the service (api-notes §7): refused before sending.
    with pytest.raises(ImageGenerationValidationError, match="accepts exactly one of 1664x928"):
        hook.validate_request("a cat", model="qwen-image", size="1472x1140")
    # Unset, the size is the service's to choose: nothing is sent for it.
    assert hook.validate_request("a cat", model="qwen-image").size is None
    assert hook.validate_request("a", model="wan2.2-t2i-flash", size="1440x1440").size == "1440x1440"
    assert hook.validate_request("a", model="brand-new-model", size="3000x100").model == "brand-new-model"
    assert (
        hook.validate_request("a", model="qwen-image", prompt_upsampling="false").prompt_upsampling is False
    )


def test_missing_model_without_connection_default(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_imggen_connection(monkeypatch, emulator.base_url)
    with pytest.raises(ImageGenerationValidationError, match="default_model"):
        fast_hook().generate_images("a cat")
    assert emulator.requests_log() == []


def test_wrong_key_is_rejected_without_retry_and_never_shown(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    wrong_key = "sk-wrong-0123456789abcdef"
    set_imggen_connection(monkeypatch, emulator.base_url, password=wrong_key, default_model="qwen-image")
    hook = fast_hook()
    with pytest.raises(ImageGenerationRejectedError) as raised:
        hook.generate_images("a cat")
    logged = "".join(capfd.readouterr())

    error = raised.value
    assert isinstance(error, AirflowFailException)
    assert error.status == 401 and error.code == "invalid_api_key"
    assert error.request_id
    # The emulator echoes the key it was sent, as some gateways do; the hook must redact it.
    assert "Incorrect API key provided" in str(error)
    for text in (str(error), repr(error), repr(hook), repr(hook.settings), logged):
        assert wrong_key not in text
    assert len(generation_requests(emulator)) == 1


def test_throttling_is_retried_then_succeeds(imggen_conn: EmulatorServer) -> None:
    # A 429 is answered before any work: the service provably did nothing, re-sending is free.
    imggen_conn.set_faults(fail_next=["429", "429"], retry_after_seconds=0.05)
    result = fast_hook().generate_images("a cat", size="512x512", seed=1)

    assert len(result.images) == 1
    assert [entry.get("fault") for entry in generation_requests(imggen_conn)] == ["429", "429", None]
    assert imggen_conn.billed_images() == 1


@pytest.mark.parametrize("fault", ["500", "503", "drop"])
def test_billable_post_is_never_resent_when_the_outcome_is_unknown(
    imggen_conn: EmulatorServer, fault: str
) -> None:
    # After sending, a 5xx or a dropped connection may hide a generation that ran and was billed.
    imggen_conn.set_faults(fail_next=[fault])
    before = datetime.now(tz=UTC)
    with pytest.raises(ImageGenerationOutcomeUnknownError) as raised:
        fast_hook().generate_images("a cat", size="512x512", n=3)

    error = raised.value
    assert isinstance(error, AirflowFailException), "Airflow must not pay again either"
    assert (error.model, error.images_at_risk) == ("wan2.2-t2i-flash", 3)
    assert error.submitted_at is not None and before <= error.submitted_at <= datetime.now(tz=UTC)
    assert "billed up to 3 image(s) of wan2.2-t2i-flash" in str(error)
    assert "usage" in str(error) and "retry_unknown_outcome" in str(error)
    if fault != "drop":
        assert error.status == int(fault) and error.request_id and error.request_id in str(error)
    assert len(generation_requests(imggen_conn)) == 1


def test_retry_unknown_outcome_opts_back_into_retries(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    set_imggen_connection(
        monkeypatch, emulator.base_url, default_model="qwen-image", retry_unknown_outcome="true"
    )
    emulator.set_faults(fail_next=["500", "drop"])
    assert len(fast_hook().generate_images("a cat").images) == 1
    assert len(generation_requests(emulator)) == 3
    logged = "".join(capfd.readouterr())
    assert logged.count("retry_unknown_outcome is set, so this may bill twice") == 2


def test_throttling_runs_out_with_a_retryable_throttled_error(imggen_conn: EmulatorServer) -> None:
    imggen_conn.set_faults(rate_429=1.0, retry_after_seconds=0.01)
    with pytest.raises(ImageGenerationThrottledError) as raised:
        fast_hook(max_retries=2).generate_images("a cat", size="512x512")

    error = raised.value
    assert not isinstance(error, AirflowFailException), "nothing was billed: Airflow may retry"
    assert error.status == 429 and error.retry_after == pytest.approx(0.01)
    assert "after 3 attempt(s)" in str(error) and "nothing was billed" in str(error)
    assert len(generation_requests(imggen_conn)) == 3
    assert imggen_conn.billed_images() == 0


def test_retry_after_beyond_the_budget_is_handed_over_at_once(imggen_conn: EmulatorServer) -> None:
    # A day-long Retry-After must neither be slept in the worker nor replaced by a short backoff.
    imggen_conn.set_faults(fail_next=["429"], retry_after_seconds=86400)
    started = time.monotonic()
    with pytest.raises(ImageGenerationThrottledError) as raised:
        fast_hook(max_retry_after=30).generate_images("a cat", size="512x512")

    assert time.monotonic() - started < 5
    assert raised.value.retry_after == pytest.approx(86400)
    assert "longer than max_retry_after" in str(raised.value)
    assert len(generation_requests(imggen_conn)) == 1


def test_connection_max_retries_is_used(emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    set_imggen_connection(monkeypatch, emulator.base_url, default_model="qwen-image", max_retries="1")
    emulator.set_faults(rate_429=1.0, retry_after_seconds=0.01)
    with pytest.raises(ImageGenerationThrottledError):
        fast_hook().generate_images("a cat")
    assert len(generation_requests(emulator)) == 2


def test_no_retry_on_400(imggen_conn: EmulatorServer) -> None:
    # Content moderation can't be checked client-side: the API's 400 must fail at once, without retries.
    imggen_conn.set_faults(fail_next=["moderation"])
    with pytest.raises(ImageGenerationRejectedError) as raised:
        fast_hook().generate_images("a cat", size="512x512")

    assert raised.value.status == 400 and raised.value.code == "DataInspectionFailed"
    assert len(generation_requests(imggen_conn)) == 1


def test_retry_after_is_honoured(imggen_conn: EmulatorServer, capfd: pytest.CaptureFixture[str]) -> None:
    imggen_conn.set_faults(fail_next=["429"], retry_after_seconds=1.2)
    started = time.monotonic()
    fast_hook().generate_images("a cat", size="512x512")
    elapsed = time.monotonic() - started

    # The hook's own backoff is at most 0.05 s here, so only Retry-After explains a wait this long.
    assert elapsed >= 1.2
    assert "retrying in 1.20s" in "".join(capfd.readouterr())


def test_dashscope_error_shape(emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    set_imggen_connection(monkeypatch, emulator.base_url, password="sk-bad", default_model="qwen-image")
    emulator.set_faults(error_style="dashscope")
    with pytest.raises(ImageGenerationRejectedError) as raised:
        fast_hook().generate_images("a cat")
    assert raised.value.status == 401
    assert raised.value.code == "InvalidApiKey"
    assert raised.value.request_id
    assert "sk-bad" not in str(raised.value)


def test_dashscope_shaped_server_error_is_an_unknown_outcome(imggen_conn: EmulatorServer) -> None:
    imggen_conn.set_faults(error_style="dashscope", fail_next=["500"])
    with pytest.raises(ImageGenerationOutcomeUnknownError) as raised:
        fast_hook().generate_images("a cat", size="512x512")
    assert (raised.value.status, raised.value.code) == (500, "InternalError")
    assert len(generation_requests(imggen_conn)) == 1


def test_dashscope_shaped_throttling_is_retried(imggen_conn: EmulatorServer) -> None:
    imggen_conn.set_faults(error_style="dashscope", fail_next=["429"], retry_after_seconds=0.01)
    assert len(fast_hook().generate_images("a cat", size="512x512").images) == 1
    assert len(generation_requests(imggen_conn)) == 2


def test_http_200_with_error_body_is_an_error(imggen_conn: EmulatorServer) -> None:
    imggen_conn.set_faults(rate_200_error=1.0)
    with pytest.raises(ImageGenerationAPIError) as raised:
        fast_hook(max_retries=1).generate_images("a cat", size="512x512")
    assert raised.value.status == 200
    assert raised.value.code == "InternalError.Algo"
    assert "upstream task failed" in str(raised.value)
    assert "gave up after 2 attempt(s)" in str(raised.value)
    # The relay says the upstream task failed: a failed generation bills nothing, re-sending is free.
    assert len(generation_requests(imggen_conn)) == 2
    assert imggen_conn.billed_images() == 0


def test_key_never_in_logs(imggen_conn: EmulatorServer, capfd: pytest.CaptureFixture[str]) -> None:
    hook = fast_hook()
    imggen_conn.set_faults(fail_next=["429", "429"], retry_after_seconds=0.01)
    result = hook.generate_images("a cat", size="512x512", n=2)
    imggen_conn.set_faults(rate_500=1.0)
    with pytest.raises(ImageGenerationAPIError) as raised:
        hook.generate_images("a cat", size="512x512")
    assert hook.test_connection()[0] is False

    logged = "".join(capfd.readouterr())
    assert "Generated 2 image(s)" in logged and "retrying in" in logged
    for text in (logged, str(raised.value), repr(hook), repr(result), repr(hook.settings)):
        assert API_KEY not in text
    # Result URLs are logged, but never with their signature.
    for image in result.images:
        assert image.masked_url in logged
        assert image.url not in logged


def test_test_connection(imggen_conn: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    ok, message = fast_hook().test_connection()
    assert ok, message
    assert "3 model(s) available" in message
    assert imggen_conn.billed_images() == 0

    set_imggen_connection(monkeypatch, imggen_conn.base_url, password="sk-nope-123456")
    ok, message = fast_hook().test_connection()
    assert not ok
    assert "Incorrect API key provided" in message and "sk-nope-123456" not in message


def test_test_connection_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    set_imggen_connection(monkeypatch, f"http://127.0.0.1:{port}", password="sk-secret-unreachable")
    ok, message = fast_hook(max_retries=0).test_connection()
    assert not ok and "ConnectionError" in message and "sk-secret-unreachable" not in message


def test_mask_url() -> None:
    url = (
        "https://bucket.oss.example.com/a/b.png?Expires=1757861427&OSSAccessKeyId=LTAI5&Signature=mCw%2FU%3D"
    )
    assert (
        mask_url(url) == "https://bucket.oss.example.com/a/b.png?Expires=***&OSSAccessKeyId=***&Signature=***"
    )
    assert mask_url("https://example.com/x.png") == "https://example.com/x.png"


def test_proxy_variables_are_honoured(imggen_conn: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_proxy = f"http://127.0.0.1:{sock.getsockname()[1]}"
    for name in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", dead_proxy)
    with pytest.raises(ImageGenerationAPIError, match="ProxyError"):
        fast_hook(max_retries=0).generate_images("a cat", size="512x512")
    assert imggen_conn.requests_log() == []

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert len(fast_hook().generate_images("a cat", size="512x512").images) == 1


def test_netrc_never_replaces_the_bearer_key(
    imggen_conn: EmulatorServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # requests applies ~/.netrc credentials over a session's Authorization header unless told not to.
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login someone password sk-from-netrc\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert len(fast_hook().generate_images("a cat", size="512x512").images) == 1
