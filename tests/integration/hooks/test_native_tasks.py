"""ImageGenerationHook on DashScope's native task API, against the emulator over real HTTP on loopback."""

from __future__ import annotations

import io
import socket

import pytest
import requests
from airflow.sdk.exceptions import AirflowFailException
from PIL import Image

from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.exceptions import (
    ImageGenerationAPIError,
    ImageGenerationRejectedError,
    ImageGenerationSubmissionUnknownError,
    ImageGenerationTaskFailedError,
    ImageGenerationTaskTimeoutError,
    ImageGenerationValidationError,
)
from airflow_provider_imggen.hooks.image_generation import (
    TASK_STATUSES,
    TASK_TERMINAL_STATUSES,
    FailedImage,
    ImageGenerationHook,
    ImageGenerationResult,
    SubmittedTask,
    TaskState,
    next_poll_interval,
)
from airflow_provider_imggen.request import GenerationRequest
from tests.conftest import API_KEY, set_imggen_connection, task_queries, task_submissions
from tests.integration.hooks.test_image_generation import INVALID_REQUESTS, fast_hook


def png_size(url: str) -> tuple[int, int]:
    response = requests.get(url, timeout=10)
    assert response.status_code == 200
    return Image.open(io.BytesIO(response.content)).size


# Success ---------------------------------------------------------------------------------------------------
def test_generate_images_submits_polls_and_returns_the_sync_result_shape(
    dashscope_conn: EmulatorServer, capfd: pytest.CaptureFixture[str]
) -> None:
    result = fast_hook().generate_images(
        "a lighthouse at dawn", n=2, size="768x512", seed=7, prompt_upsampling=False
    )

    assert isinstance(result, ImageGenerationResult)
    assert [image.index for image in result.images] == [0, 1]
    assert result.model == "wan2.2-t2i-flash" and result.request_id
    assert result.failed_images == ()
    assert result.usage == {"image_count": 2}
    assert result.parameters == {
        "model": "wan2.2-t2i-flash",
        "prompt": "a lighthouse at dawn",
        "size": "768*512",
        "n": 2,
        "seed": 7,
        "prompt_extend": False,
    }
    for image in result.images:
        assert image.url and image.url_expires_at is not None and image.revised_prompt is None
        assert png_size(image.url) == (768, 512)
    [submission] = task_submissions(dashscope_conn)
    assert submission["n"] == 2 and submission["billed_images"] == 2
    logged = "".join(capfd.readouterr())
    assert "Submitted task" in logged and "SUCCEEDED with 2 image(s)" in logged


def test_submit_task_then_wait_for_task(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(task_pending_ms=150, task_duration_ms=150)
    hook = fast_hook()
    submitted = hook.submit_task(
        "a red bicycle", model="qwen-image", negative_prompt="blurry", extra_body={"watermark": False}
    )

    assert isinstance(submitted, SubmittedTask)
    assert submitted.task_status == "PENDING" and submitted.request_id
    assert submitted.model == "qwen-image"
    # n is always sent: the native default for wan2.2-t2i-* would be 4 images (and 4 billed).
    # size is sent only when set: the service's default applies.
    assert submitted.parameters["n"] == 1 and "size" not in submitted.parameters
    assert submitted.parameters["negative_prompt"] == "blurry" and submitted.parameters["watermark"] is False

    state = hook.wait_for_task(submitted.generation_task_id, poll_interval=0.02, max_poll_interval=0.05)
    assert state.status == "SUCCEEDED" and state.is_terminal and state.succeeded
    assert state.generation_task_id == submitted.generation_task_id
    assert [image.revised_prompt for image in state.images] == ["a red bicycle, highly detailed"]
    assert state.task_metrics == {"TOTAL": 1, "SUCCEEDED": 1, "FAILED": 0}
    assert state.submit_time and state.end_time
    assert png_size(state.images[0].url or "") == (1664, 928)
    assert len(task_submissions(dashscope_conn)) == 1


def test_get_task_reads_each_status(dashscope_conn: EmulatorServer) -> None:
    hook = fast_hook()
    dashscope_conn.set_faults(task_pending_ms=600_000)
    assert hook.get_task(hook.submit_task("x").generation_task_id).status == "PENDING"
    dashscope_conn.set_faults(task_pending_ms=0, task_duration_ms=600_000)
    running = hook.get_task(hook.submit_task("x").generation_task_id)
    assert running.status == "RUNNING" and not running.is_terminal and running.images == ()
    running.raise_for_status()  # not terminal: nothing to raise yet


def test_statuses_constants() -> None:
    assert set(TASK_TERMINAL_STATUSES) < set(TASK_STATUSES)
    assert set(TASK_STATUSES) - TASK_TERMINAL_STATUSES == {"PENDING", "RUNNING", "SUSPENDED"}


def test_poll_interval_follows_dashscope_advice() -> None:
    waits, elapsed, previous = [], 0.0, None
    while elapsed < 200:
        previous = next_poll_interval(previous, elapsed, 3.0, 30.0)
        waits.append(previous)
        elapsed += previous
    assert waits[:10] == [3.0] * 10  # every 3 s for the first 30 s
    assert waits[10:15] == [6.0, 12.0, 24.0, 30.0, 30.0]  # then doubling, capped
    assert next_poll_interval(None, 0, 5.0, 2.0) == 2.0


# Failures --------------------------------------------------------------------------------------------------
def test_failed_task_raises_without_resubmitting(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(fail_next_tasks=["DataInspectionFailed"])
    with pytest.raises(ImageGenerationTaskFailedError) as raised:
        fast_hook().generate_images("a cat", n=2, size="512x512")

    error = raised.value
    assert isinstance(error, ImageGenerationRejectedError) and isinstance(error, AirflowFailException)
    assert (error.task_status, error.code) == ("FAILED", "DataInspectionFailed")
    assert error.message == "Output data may contain inappropriate content."
    assert error.generation_task_id in str(error) and "FAILED" in str(error)
    assert len(task_submissions(dashscope_conn)) == 1
    assert dashscope_conn.billed_images() == 0


def test_partial_failure_returns_the_successes_and_logs_each_failure(
    dashscope_conn: EmulatorServer, capfd: pytest.CaptureFixture[str]
) -> None:
    dashscope_conn.set_faults(fail_next_task_images=[[1]])
    result = fast_hook().generate_images("three cats", n=3, size="512x512", seed=11)

    assert [image.index for image in result.images] == [0, 2]
    assert result.failed_images == (
        FailedImage(
            index=1, code="DataInspectionFailed", message="Output data may contain inappropriate content."
        ),
    )
    assert result.usage == {"image_count": 2}
    logged = "".join(capfd.readouterr())
    assert "image 1 failed: DataInspectionFailed" in logged
    assert "SUCCEEDED with 2 image(s) (1 failed)" in logged
    assert dashscope_conn.billed_images() == 2


def test_task_where_every_image_failed_is_a_failure(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(fail_next_task_images=[[0]])
    with pytest.raises(ImageGenerationTaskFailedError, match="all 1 image"):
        fast_hook().generate_images("a cat", size="512x512")


def test_unknown_and_expired_tasks(dashscope_conn: EmulatorServer) -> None:
    hook = fast_hook()
    unknown = hook.get_task("no-such-task")
    assert unknown.status == "UNKNOWN" and unknown.is_terminal and not unknown.succeeded
    with pytest.raises(ImageGenerationTaskFailedError, match="expired") as raised:
        unknown.raise_for_status()
    assert raised.value.task_status == "UNKNOWN"

    submitted = hook.submit_task("x")
    assert dashscope_conn.expire_task(submitted.generation_task_id)
    with pytest.raises(ImageGenerationTaskFailedError, match="UNKNOWN"):
        hook.result_from_task(hook.wait_for_task(submitted.generation_task_id))


def test_cancel_task(dashscope_conn: EmulatorServer) -> None:
    hook = fast_hook()
    dashscope_conn.set_faults(task_pending_ms=600_000)
    submitted = hook.submit_task("x", n=2)
    assert hook.cancel_task(submitted.generation_task_id) is True
    canceled = hook.get_task(submitted.generation_task_id)
    assert canceled.status == "CANCELED" and canceled.is_terminal
    with pytest.raises(ImageGenerationTaskFailedError, match="canceled"):
        canceled.raise_for_status()
    assert hook.cancel_task(submitted.generation_task_id) is False  # no longer pending
    assert hook.cancel_task("no-such-task") is False
    assert dashscope_conn.billed_images() == 0


def test_wait_for_task_times_out_with_a_retryable_error(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(task_duration_ms=600_000)
    hook = fast_hook()
    task_id = hook.submit_task("x").generation_task_id
    with pytest.raises(ImageGenerationTaskTimeoutError) as raised:
        hook.wait_for_task(task_id, poll_interval=0.05, timeout=0.2)
    assert not isinstance(raised.value, AirflowFailException)  # a retry may reconnect to the same task
    assert (raised.value.generation_task_id, raised.value.task_status) == (task_id, "RUNNING")
    assert len(task_queries(dashscope_conn)) >= 2  # polled, then one last look at the deadline


# Validation ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "parameter", "allowed"),
    [row for row in INVALID_REQUESTS if "response_format" not in row.values[0]],
)
def test_submit_task_validates_before_any_request(
    dashscope_conn: EmulatorServer, overrides: dict, parameter: str, allowed: str
) -> None:
    kwargs = {"prompt": "a lighthouse", "model": "wan2.2-t2i-flash", **overrides}
    prompt = kwargs.pop("prompt")
    with pytest.raises(ImageGenerationValidationError) as raised:
        fast_hook().submit_task(prompt, **kwargs)
    assert raised.value.parameter == parameter and allowed in str(raised.value)
    assert dashscope_conn.requests_log() == []


@pytest.mark.parametrize(
    ("call", "parameter"),
    [
        (lambda hook: hook.generate_images("x", response_format="b64_json"), "response_format"),
        (lambda hook: hook.get_task(""), "generation_task_id"),
        (lambda hook: hook.cancel_task("a/b"), "generation_task_id"),
        (lambda hook: hook.wait_for_task("t", poll_interval=0), "poll_interval"),
        (lambda hook: hook.wait_for_task("t", poll_interval=float("nan")), "poll_interval"),
        (lambda hook: hook.wait_for_task("t", max_poll_interval=float("inf")), "max_poll_interval"),
        (lambda hook: hook.wait_for_task("t", timeout=float("inf")), "timeout"),
        (lambda hook: hook.generate_images("x", timeout=float("inf")), "timeout"),
        (lambda hook: hook.submit_task("x", timeout=float("nan")), "timeout"),
        (lambda hook: hook.submit_task("x", extra_body={"prompt_extend": False}), "extra_body"),
        (lambda hook: hook.generate_images("x", extra_body={"parameters": {"n": 4}}), "extra_body"),
        (
            lambda hook: hook.submit(
                GenerationRequest(
                    model="qwen-image",
                    prompt="x",
                    n=1,
                    size="1328x1328",
                    response_format="url",
                    extra_body={"prompt_extend": True},
                )
            ),
            "extra_body",
        ),
        (lambda hook: hook.wait_for_task("t", poll_interval=5, max_poll_interval=1), "max_poll_interval"),
        (lambda hook: hook.wait_for_task("t", timeout=-1), "timeout"),
    ],
)
def test_native_arguments_are_checked_before_any_request(
    dashscope_conn: EmulatorServer, call: object, parameter: str
) -> None:
    with pytest.raises(ImageGenerationValidationError) as raised:
        call(fast_hook())  # type: ignore[operator]
    assert raised.value.parameter == parameter
    assert dashscope_conn.requests_log() == []


def test_task_api_needs_api_style_dashscope(imggen_conn: EmulatorServer) -> None:
    hook = fast_hook()
    for call in (lambda: hook.submit_task("x"), lambda: hook.get_task("t"), lambda: hook.cancel_task("t")):
        with pytest.raises(ImageGenerationValidationError, match="api_style") as raised:
            call()
        assert raised.value.parameter == "api_style" and raised.value.value == "openai"
    assert imggen_conn.requests_log() == []


# Retries: never pay twice ----------------------------------------------------------------------------------
def test_submission_is_retried_when_no_task_was_created(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(fail_next=["429", "429"], retry_after_seconds=0.01)
    submitted = fast_hook().submit_task("x")
    assert [(entry["fault"], entry["task_id"]) for entry in task_submissions(dashscope_conn)] == [
        ("429", None),
        ("429", None),
        (None, submitted.generation_task_id),
    ]
    assert len(dashscope_conn.tasks()) == 1


def test_submission_lost_after_sending_is_never_resent(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(fail_next=["drop"])
    with pytest.raises(ImageGenerationSubmissionUnknownError) as raised:
        fast_hook().submit_task("x")
    assert isinstance(raised.value, AirflowFailException)  # Airflow must not re-submit either
    assert "not sent again" in str(raised.value)
    assert len(task_submissions(dashscope_conn)) == 1


def test_submission_retried_when_the_connection_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    set_imggen_connection(
        monkeypatch, f"http://127.0.0.1:{port}", default_model="qwen-image", api_style="dashscope"
    )
    with pytest.raises(ImageGenerationAPIError, match="failed after 3 attempt") as raised:
        fast_hook(max_retries=2).submit_task("x")
    assert not isinstance(raised.value, AirflowFailException)  # nothing was created: Airflow may retry


def test_status_queries_are_retried_on_every_transient_failure(dashscope_conn: EmulatorServer) -> None:
    hook = fast_hook()
    task_id = hook.submit_task("x").generation_task_id
    dashscope_conn.set_faults(fail_next=["drop", "500", "200_error"], retry_after_seconds=0.01)
    assert hook.get_task(task_id).status == "SUCCEEDED"
    assert [entry["fault"] for entry in task_queries(dashscope_conn)] == ["drop", "500", "200_error", None]


# Secrets ---------------------------------------------------------------------------------------------------
def test_urls_masked_in_logs_and_key_never_shown(
    dashscope_conn: EmulatorServer, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    dashscope_conn.set_faults(fail_next=["429"], fail_next_task_images=[[1]], retry_after_seconds=0.01)
    hook = fast_hook()
    result = hook.generate_images("a cat", n=2, size="512x512")
    state = hook.get_task(hook.submit_task("a dog").generation_task_id)

    logged = "".join(capfd.readouterr())
    assert all(image.masked_url and image.masked_url in logged for image in result.images)
    for image in (*result.images, *state.images):
        assert image.url and image.url not in logged
        assert image.url.split("Signature=")[1] not in repr(state) + repr(result)
    assert API_KEY not in logged + repr(state) + repr(result) + repr(hook)

    wrong_key = "sk-wrong-9f8e7d6c5b4a"
    set_imggen_connection(monkeypatch, dashscope_conn.base_url, password=wrong_key, api_style="dashscope")
    for call in (lambda h: h.submit_task("x", model="qwen-image"), lambda h: h.get_task("t")):
        with pytest.raises(ImageGenerationRejectedError) as raised:
            call(fast_hook())
        assert raised.value.status == 401 and raised.value.code == "InvalidApiKey"
        assert "Incorrect API key provided" in str(raised.value) and wrong_key not in str(raised.value)
    assert wrong_key not in "".join(capfd.readouterr())


def test_test_connection_on_the_task_api(dashscope_conn: EmulatorServer) -> None:
    ok, message = fast_hook().test_connection()
    assert ok, message
    assert dashscope_conn.billed_images() == 0 and dashscope_conn.tasks() == []


def test_task_state_to_result_builds_the_sync_result() -> None:
    state = TaskState(generation_task_id="t", status="SUCCEEDED", usage={"image_count": 0}, request_id="r")
    result = state.to_result(model="qwen-image", parameters={"n": 1})
    assert (result.model, result.parameters, result.request_id, result.images) == (
        "qwen-image",
        {"n": 1},
        "r",
        (),
    )


def test_status_queries_beyond_the_accounts_limit_are_waited_out(dashscope_conn: EmulatorServer) -> None:
    """
    Status queries are limited per account (20/s in §7; 2/s here): a throttled read is retried after a
    backoff, never failing the wait, and never re-sending the billable submission.
    """
    hook = ImageGenerationHook(max_retries=10, retry_wait_initial=0.2, retry_wait_max=0.6)
    submitted = hook.submit_task("a red bicycle", size="512x512")
    dashscope_conn.set_faults(quotas=True, quota_status_queries_per_second=2)
    states = [hook.get_task(submitted.generation_task_id) for _ in range(5)]
    assert {state.status for state in states} == {"SUCCEEDED"}
    reads = [entry for entry in dashscope_conn.requests_log() if entry.get("kind") == "task"]
    assert any(entry["status"] == 429 for entry in reads), "five reads at once must meet a 2/s limit"
    assert sum(entry["status"] == 200 for entry in reads) == 5
    assert dashscope_conn.billed_images() == 1 and len(dashscope_conn.tasks()) == 1
