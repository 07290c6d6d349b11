"""
Never pay twice: the hooks against the hostile emulator over real HTTP on loopback.

Each test counts the requests the emulator logged and the images it billed, exactly.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.exceptions import (
    ImageGenerationMalformedResponseError,
    ImageGenerationOutcomeUnknownError,
    ImageGenerationSubmissionUnknownError,
    ImageGenerationThrottledError,
)
from airflow_provider_imggen.hooks.image_generation import ImageGenerationAsyncHook, ImageGenerationHook
from airflow_provider_imggen.results import EMPTY_RESULT
from tests.conftest import API_KEY, set_imggen_connection, task_submissions
from tests.integration.hooks.test_image_generation import fast_hook, generation_requests


def billed_entries(emulator: EmulatorServer) -> list[dict]:
    return [entry for entry in emulator.requests_log() if entry["billed"]]


def task_lists(emulator: EmulatorServer) -> list[dict]:
    return [entry for entry in emulator.requests_log() if entry["kind"] == "list"]


# Gateway: billed, then failed ---------------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["billed_500", "billed_502", "billed_504", "billed_drop"])
def test_gateway_billed_then_failed_is_paid_once(imggen_conn: EmulatorServer, fault: str) -> None:
    imggen_conn.set_faults(fail_next=[fault])
    with pytest.raises(ImageGenerationOutcomeUnknownError) as raised:
        fast_hook().generate_images("a cat", size="512x512", n=3)

    error = raised.value
    assert isinstance(error, AirflowFailException)
    assert (error.model, error.images_at_risk) == ("wan2.2-t2i-flash", 3)
    assert "billed up to 3 image(s)" in str(error) and "not sent again" in str(error)
    [entry] = generation_requests(imggen_conn)
    assert (entry["outcome"], entry["billed"], entry["billed_images"]) == (fault, True, 3)
    assert imggen_conn.billed_images() == 3
    if fault != "billed_drop":
        assert error.request_id == entry["request_id"]


def test_unknown_outcome_after_throttling_counts_the_sends_truthfully(imggen_conn: EmulatorServer) -> None:
    # Found by benchmarks/bench_billing_safety.py: a 429, then a billed drop, said "it was sent 2 time(s)
    # (retry_unknown_outcome is set)" on a connection without that extra. The 429 was not billed and the
    # billable send was not repeated.
    imggen_conn.set_faults(fail_next=["throttle", "billed_drop"])
    with pytest.raises(ImageGenerationOutcomeUnknownError) as raised:
        fast_hook().generate_images("a cat", size="512x512", n=2)

    message = str(raised.value)
    assert "retry_unknown_outcome is set" not in message and "sent 2 time(s)" not in message
    assert "it was not sent again" in message
    assert "the 1 earlier attempt(s) were throttled or never processed: not billed" in message
    assert [entry["outcome"] for entry in generation_requests(imggen_conn)] == ["throttle", "billed_drop"]
    assert imggen_conn.billed_images() == 2


def test_lost_submission_after_throttling_counts_the_sends_truthfully(dashscope_conn: EmulatorServer) -> None:
    hook = fast_hook()
    hook.submit_task("a lighthouse", size="512x512", n=2)
    dashscope_conn.set_faults(fail_next=["throttle", "billed_drop"])
    with pytest.raises(ImageGenerationSubmissionUnknownError) as raised:
        hook.submit_task("a lighthouse", size="512x512", n=2)

    message = str(raised.value)
    assert "retry_unknown_outcome is set" not in message and "it was not sent again" in message
    outcomes = [entry["outcome"] for entry in task_submissions(dashscope_conn)]
    assert outcomes == ["ok", "throttle", "billed_drop"]


def test_gateway_stall_past_the_read_timeout_is_paid_once(imggen_conn: EmulatorServer) -> None:
    imggen_conn.set_faults(fail_next=["billed_stall"], stall_ms=3000)
    started = time.monotonic()
    with pytest.raises(ImageGenerationOutcomeUnknownError) as raised:
        fast_hook(request_timeout=0.5).generate_images("a cat", size="512x512", n=2)

    assert time.monotonic() - started < 2.5
    assert "read timeout" in str(raised.value) and "0.5s" in str(raised.value)
    assert len(generation_requests(imggen_conn)) == 1
    assert imggen_conn.billed_images() == 2


def test_retry_unknown_outcome_pays_again_and_says_so(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    set_imggen_connection(
        monkeypatch, f"{emulator.base_url}/v1", default_model="qwen-image", retry_unknown_outcome=True
    )
    emulator.set_faults(fail_next=["billed_502"])
    result = fast_hook().generate_images("a cat")

    assert len(result.images) == 1
    assert [entry["outcome"] for entry in generation_requests(emulator)] == ["billed_502", "ok"]
    assert emulator.billed_images() == 2, "the user opted into paying twice"
    assert "this may bill twice" in "".join(capfd.readouterr())


# Gateway: partial and malformed answers (billed: delivered or named, never retried) ---------------------
def test_partial_answer_delivers_the_images_and_names_the_rest(
    imggen_conn: EmulatorServer, capfd: pytest.CaptureFixture[str]
) -> None:
    imggen_conn.set_faults(fail_next=["partial"], seed=3)
    result = fast_hook().generate_images("four cats", size="512x512", n=4)

    assert result.images and result.failed_images
    assert len(result.images) + len(result.failed_images) == 4
    assert {failed.code for failed in result.failed_images} == {EMPTY_RESULT}
    assert (
        sorted(image.index for image in result.images) + sorted(f.index for f in result.failed_images) != []
    )
    [entry] = generation_requests(imggen_conn)
    assert entry["billed_images"] == len(result.images) == imggen_conn.billed_images()
    assert f"({len(result.failed_images)} failed)" in "".join(capfd.readouterr())


@pytest.mark.parametrize(
    ("kind", "response_format"),
    [("url_not_string", "url"), ("data_strings", "url"), ("bad_base64", "b64_json"), ("not_json", "url")],
)
def test_unreadable_answer_is_one_final_error_keeping_the_request_id(
    imggen_conn: EmulatorServer, kind: str, response_format: str, capfd: pytest.CaptureFixture[str]
) -> None:
    imggen_conn.set_faults(fail_next=[f"malformed:{kind}"])
    with pytest.raises(ImageGenerationMalformedResponseError) as raised:
        fast_hook().generate_images("a cat", size="512x512", n=2, response_format=response_format)

    error = raised.value
    assert isinstance(error, AirflowFailException), "billed: Airflow must not pay again"
    [entry] = generation_requests(imggen_conn)
    assert error.request_id == entry["request_id"] and entry["billed_images"] == 2
    assert imggen_conn.billed_images() == 2
    # What a user needs to find the charge (benchmarks/bench_billing_safety.py counted these images as
    # unaccounted: the message said "they may have been billed", not what or how many).
    assert (error.model, error.images_at_risk) == ("wan2.2-t2i-flash", 2)
    assert "up to 2 image(s) of wan2.2-t2i-flash" in str(error) and entry["request_id"] in str(error)
    logged = "".join(capfd.readouterr())
    assert "Signature=" not in str(error), "never echo API content (signed URLs are credentials)"
    assert "Signature=" not in logged.replace("Signature=***", "")


def test_created_yesterday_still_delivers(imggen_conn: EmulatorServer) -> None:
    imggen_conn.set_faults(fail_next=["malformed:created_string"])
    before = time.time()
    result = fast_hook().generate_images("a cat", size="512x512", n=2)
    assert len(result.images) == 2 and before - 1 <= result.created <= time.time() + 1
    assert len(generation_requests(imggen_conn)) == 1 and imggen_conn.billed_images() == 2


def test_fifty_images_for_one_are_delivered_with_a_warning(
    imggen_conn: EmulatorServer, capfd: pytest.CaptureFixture[str]
) -> None:
    """Images beyond n may well be billed (a relay that drops n): delivered, never silently dropped."""
    imggen_conn.set_faults(fail_next=["malformed:too_many_images"])
    result = fast_hook().generate_images("a cat", size="512x512", n=1)

    assert [image.index for image in result.images] == list(range(50))
    assert any("returned 50 images for n=1: 50 billed" in warning for warning in result.warnings)
    logged = "".join(capfd.readouterr())
    assert "returned 50 images for n=1" in logged
    assert "Signature=" not in logged.replace("Signature=***", ""), "URLs are logged masked only"
    assert len(generation_requests(imggen_conn)) == 1


# Gateway: throttling ----------------------------------------------------------------------------------
def test_throttle_then_success_bills_once(imggen_conn: EmulatorServer) -> None:
    imggen_conn.set_faults(fail_next=["throttle", "throttle"])
    result = fast_hook().generate_images("a cat", size="512x512", n=2)
    assert len(result.images) == 2
    assert [(entry["outcome"], entry["billed"]) for entry in generation_requests(imggen_conn)] == [
        ("throttle", False),
        ("throttle", False),
        ("ok", True),
    ]
    assert imggen_conn.billed_images() == 2


def test_quota_storm_is_absorbed_without_paying_twice(imggen_conn: EmulatorServer) -> None:
    imggen_conn.set_faults(quotas=True, quota_submissions_per_second=2)
    hook = ImageGenerationHook(max_retries=20, retry_wait_initial=0.1, retry_wait_max=0.5)
    results = [hook.generate_images(f"cat {i}", size="512x512") for i in range(6)]

    assert all(len(result.images) == 1 for result in results)
    entries = generation_requests(imggen_conn)
    throttled = [entry for entry in entries if entry["outcome"] == "throttled"]
    assert throttled, "six submissions in a row must meet the 2/s quota"
    assert not any(entry["billed"] for entry in throttled)
    assert len(entries) == 6 + len(throttled)
    assert imggen_conn.billed_images() == 6


def test_quota_retry_after_beyond_the_budget_is_handed_over(imggen_conn: EmulatorServer) -> None:
    imggen_conn.set_faults(quotas=True, quota_submissions_per_second=1, quota_retry_after_seconds=86400)
    hook = fast_hook(max_retry_after=60)
    hook.generate_images("first", size="512x512")
    started = time.monotonic()
    with pytest.raises(ImageGenerationThrottledError) as raised:
        hook.generate_images("second", size="512x512")

    assert time.monotonic() - started < 5 and raised.value.retry_after == pytest.approx(86400)
    assert raised.value.code == "Throttling.RateQuota" and not isinstance(raised.value, AirflowFailException)
    assert [entry["outcome"] for entry in generation_requests(imggen_conn)] == ["ok", "throttled"]
    assert imggen_conn.billed_images() == 1


def test_relayed_upstream_failure_is_resent_because_nothing_was_billed(imggen_conn: EmulatorServer) -> None:
    imggen_conn.set_faults(fail_next=["200_error"], error_200_type="ali_error")
    assert len(fast_hook().generate_images("a cat", size="512x512").images) == 1
    assert [entry["billed"] for entry in generation_requests(imggen_conn)] == [False, True]
    assert imggen_conn.billed_images() == 1


# Native: a lost submission is found in the task list ----------------------------------------------------
@pytest.mark.parametrize("fault", ["billed_500", "billed_502", "billed_504", "billed_drop"])
def test_lost_submission_reconnects_to_its_task(
    dashscope_conn: EmulatorServer, fault: str, capfd: pytest.CaptureFixture[str]
) -> None:
    dashscope_conn.set_faults(fail_next=[fault])
    result = fast_hook().generate_images("a lighthouse", size="512x512", n=2)

    assert len(result.images) == 2
    [submission] = task_submissions(dashscope_conn)
    assert submission["outcome"] == fault
    assert len(dashscope_conn.tasks()) == 1 and len(task_lists(dashscope_conn)) == 1
    assert dashscope_conn.billed_images() == 2, "one task, paid once"
    logged = "".join(capfd.readouterr())
    assert "reconnected to task" in logged and "nothing submitted again" in logged


def test_lost_submission_after_a_read_timeout_reconnects(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(fail_next=["billed_stall"], stall_ms=3000)
    hook = fast_hook(request_timeout=0.5)
    request = hook.validate_request("a lighthouse", size="512x512")
    submitted = hook.submit(request)

    [task] = dashscope_conn.tasks()
    assert submitted.generation_task_id == task["task_id"]
    assert len(task_submissions(dashscope_conn)) == 1


def test_lost_submission_among_other_tasks_is_found_by_its_prompt(dashscope_conn: EmulatorServer) -> None:
    """The task list shows every task of the account: ours is the one whose status names our prompt."""
    hook = fast_hook()
    hook.submit_task("an earlier task of the same model", size="512x512")
    dashscope_conn.set_faults(fail_next=["billed_drop"])
    submitted = hook.submit_task("a lighthouse", size="512x512", n=3)

    lost = task_submissions(dashscope_conn)[1]
    assert lost["outcome"] == "billed_drop" and lost["task_id"] == submitted.generation_task_id
    assert len(task_submissions(dashscope_conn)) == 2 and len(dashscope_conn.tasks()) == 2


def test_lost_submission_among_tasks_of_the_same_prompt_is_an_unknown_outcome(
    dashscope_conn: EmulatorServer,
) -> None:
    """Another pipeline sent the same prompt and n: neither task can be proven ours, so nothing is adopted."""
    hook = fast_hook()
    hook.submit_task("a lighthouse", size="512x512", n=3)
    dashscope_conn.set_faults(fail_next=["billed_drop"])
    with pytest.raises(ImageGenerationSubmissionUnknownError) as raised:
        hook.submit_task("a lighthouse", size="512x512", n=3)

    error = raised.value
    assert isinstance(error, ImageGenerationOutcomeUnknownError) and isinstance(error, AirflowFailException)
    assert (error.model, error.images_at_risk) == ("wan2.2-t2i-flash", 3)
    assert "no single task" in str(error) and "GET /api/v1/tasks" in str(error)
    assert len(task_submissions(dashscope_conn)) == 2 and len(dashscope_conn.tasks()) == 2
    assert len(task_lists(dashscope_conn)) == 1


def test_lost_submission_is_not_confused_with_another_prompt_or_image_count(
    dashscope_conn: EmulatorServer,
) -> None:
    """The service created nothing (a 500 before the task): the other tasks listed are not adopted."""
    hook = fast_hook()
    hook.submit_task("a lighthouse", size="512x512", n=2)
    hook.submit_task("a harbour", size="512x512", n=3)
    dashscope_conn.set_faults(fail_next=["500"])
    with pytest.raises(ImageGenerationOutcomeUnknownError, match="no single task"):
        hook.submit_task("a lighthouse", size="512x512", n=3)
    assert len(dashscope_conn.tasks()) == 2 and dashscope_conn.billed_images() == 5


def test_lost_submission_with_a_request_id_is_matched_among_other_tasks(
    dashscope_conn: EmulatorServer,
) -> None:
    hook = fast_hook()
    earlier = hook.submit_task("an earlier task of the same model", size="512x512")
    dashscope_conn.set_faults(fail_next=["billed_500"])
    submitted = hook.submit_task("a lighthouse", size="512x512")

    assert submitted.generation_task_id != earlier.generation_task_id
    lost = task_submissions(dashscope_conn)[1]
    assert lost["outcome"] == "billed_500" and lost["task_id"] == submitted.generation_task_id
    assert len(dashscope_conn.tasks()) == 2


def test_find_submitted_task_window(dashscope_conn: EmulatorServer) -> None:
    from datetime import UTC, datetime, timedelta

    hook = fast_hook()
    request = hook.validate_request("x", size="512x512")
    assert hook.find_submitted_task(request, submitted_at=datetime.now(tz=UTC)) is None
    submitted = hook.submit(request)
    now = datetime.now(tz=UTC)
    assert hook.find_submitted_task(request, submitted_at=now) == submitted.generation_task_id
    other_model = hook.validate_request("x", model="qwen-image")
    assert hook.find_submitted_task(other_model, submitted_at=now) is None
    long_ago = now - timedelta(hours=2)
    assert hook.find_submitted_task(request, submitted_at=long_ago, until=long_ago) is None
    assert dashscope_conn.billed_images() == 1 and len(task_submissions(dashscope_conn)) == 1


def test_native_throttling_on_submission_is_retried(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(quotas=True, quota_submissions_per_second=1)
    hook = ImageGenerationHook(max_retries=20, retry_wait_initial=0.2, retry_wait_max=0.6)
    ids = [hook.submit_task(f"cat {i}", size="512x512").generation_task_id for i in range(3)]
    assert len(set(ids)) == 3 and len(dashscope_conn.tasks()) == 3
    outcomes = [entry["outcome"] for entry in task_submissions(dashscope_conn)]
    assert outcomes.count("ok") == 3 and "throttled" in outcomes


# Status queries: idempotent, retried on read timeouts too -------------------------------------------------
class _SlowThenFine(BaseHTTPRequestHandler):
    """A task endpoint whose first answers come too late (a read timeout), then answer normally."""

    slow_answers = 1
    seen = 0

    def do_GET(self) -> None:
        type(self).seen += 1
        if type(self).seen <= type(self).slow_answers:
            time.sleep(1.5)
        body = json.dumps(
            {"request_id": "r", "output": {"task_id": "t-1", "task_status": "RUNNING"}}
        ).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def slow_task_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_SlowThenFine]]:
    handler = type("Handler", (_SlowThenFine,), {"seen": 0, "slow_answers": 1})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    set_imggen_connection(
        monkeypatch, f"http://127.0.0.1:{server.server_address[1]}", api_style="dashscope", password=API_KEY
    )
    yield handler
    server.shutdown()
    server.server_close()


def test_status_query_is_retried_after_a_read_timeout(slow_task_api: type[_SlowThenFine]) -> None:
    state = fast_hook(request_timeout=0.3).get_task("t-1")
    assert state.status == "RUNNING" and slow_task_api.seen == 2


def test_async_status_query_is_retried_after_a_read_timeout(slow_task_api: type[_SlowThenFine]) -> None:
    async def query() -> str:
        async with ImageGenerationAsyncHook(request_timeout=0.3, retry_wait_initial=0.01) as hook:
            return (await hook.get_task("t-1")).status

    assert asyncio.run(query()) == "RUNNING" and slow_task_api.seen == 2


def test_status_query_read_timeouts_count_attempts_truthfully(slow_task_api: type[_SlowThenFine]) -> None:
    slow_task_api.slow_answers = 10
    with pytest.raises(
        Exception, match=r"failed after 2 attempt\(s\): no answer within the read timeout"
    ) as raised:
        fast_hook(request_timeout=0.3, max_retries=1).get_task("t-1")
    assert not isinstance(raised.value, AirflowFailException)
    assert slow_task_api.seen == 2
