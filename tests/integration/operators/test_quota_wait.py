"""
ImageGenerationOperator against the service's quota and lost answers, over real HTTP on loopback.

Throttled submissions (HTTP 429, nothing billed) are waited out within ``throttle_timeout``: in the worker,
or deferred to Airflow's DateTimeTrigger and resumed in ``execute``; the deadline holds across deferrals.
A billable request whose outcome is unknown fails without retry and says what may have been billed.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from airflow.providers.standard.triggers.temporal import DateTimeTrigger
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.exceptions import (
    ImageGenerationOutcomeUnknownError,
    ImageGenerationThrottledError,
    ImageGenerationValidationError,
)
from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator
from airflow_provider_imggen.triggers.image_generation import ImageGenerationTaskTrigger
from tests.conftest import set_imggen_connection, task_submissions
from tests.integration.operators.test_image_generation import XCOM_KEYS, make_context, make_operator, run

FAST = {"poll_interval": 0.05, "max_poll_interval": 0.1}


@pytest.fixture
def native(emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    """A dashscope connection whose hook gives up on the first 429: the operator's waits take over."""
    set_imggen_connection(
        monkeypatch, emulator.base_url, default_model="wan2.2-t2i-flash", max_retries=0, api_style="dashscope"
    )
    return emulator


@pytest.fixture
def gateway(emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    set_imggen_connection(
        monkeypatch, f"{emulator.base_url}/v1", default_model="wan2.2-t2i-flash", max_retries=0
    )
    return emulator


def outcomes(emulator: EmulatorServer, kind: str = "submit") -> list[tuple[int, bool]]:
    """(HTTP status, billed) of each billable request, in order."""
    return [
        (entry["status"], bool(entry["billed"])) for entry in emulator.requests_log() if entry["kind"] == kind
    ]


def run_trigger(trigger: Any) -> Any:
    async def first_event() -> Any:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("the trigger ended without an event")

    return asyncio.run(first_event())


def test_sync_operator_waits_out_throttling_in_the_worker_and_submits_again(
    native: EmulatorServer, capfd: pytest.CaptureFixture[str]
) -> None:
    native.set_faults(fail_next=["throttle"])
    started = time.monotonic()

    metadata = run(make_operator(n=2, size="512x512", seed=4, deferrable=False, **FAST))

    assert len(metadata["images"]) == 2 and metadata["generation_task_id"]
    assert outcomes(native) == [(429, False), (200, True)], "one 429 (free), then one billed submission"
    assert native.billed_images() == 2
    assert time.monotonic() - started >= 1.0, "it waited (jittered backoff, at least 1 s) before again"
    logged = "".join(capfd.readouterr())
    assert "throttled submission 1" in logged and "nothing was billed" in logged


def test_deferrable_operator_waits_out_throttling_in_the_triggerer_then_resumes_in_execute(
    native: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every wait deferred, however short (10 s and more by default), so the test runs in seconds.
    monkeypatch.setattr(ImageGenerationOperator, "min_throttle_deferral", 0.0)
    native.set_faults(fail_next=["throttle", "throttle"], task_duration_ms=100)
    operator = make_operator(n=1, size="512x512", seed=8, deferrable=True, throttle_timeout=120, **FAST)
    context = make_context(operator)
    operator.render_template_fields(context)  # type: ignore[arg-type]

    with pytest.raises(TaskDeferred) as waiting:
        operator.execute(context)  # type: ignore[arg-type]
    # A quota wait: Airflow's own DateTimeTrigger, resuming in execute with the deadline carried along.
    assert isinstance(waiting.value.trigger, DateTimeTrigger)
    assert waiting.value.method_name == "execute"
    kwargs = dict(waiting.value.kwargs or {})
    assert kwargs["throttled_submissions"] == 1
    assert 110 < kwargs["throttle_deadline"] - time.time() <= 120
    assert outcomes(native) == [(429, False)]

    for attempt in (2, 3):
        event = run_trigger(waiting.value.trigger)
        resumed = make_operator(n=1, size="512x512", seed=8, deferrable=True, throttle_timeout=120, **FAST)
        resumed.render_template_fields(context)  # type: ignore[arg-type]
        with pytest.raises(TaskDeferred) as waiting:
            resumed.execute(context, event=event, **kwargs)  # type: ignore[arg-type]
        if attempt == 2:
            # Throttled again: a wider backoff, the same deadline.
            assert isinstance(waiting.value.trigger, DateTimeTrigger)
            assert waiting.value.kwargs["throttle_deadline"] == kwargs["throttle_deadline"]
            assert waiting.value.kwargs["throttled_submissions"] == 2
            kwargs = dict(waiting.value.kwargs)

    # Submitted: now deferred on the task itself, as usual.
    assert isinstance(waiting.value.trigger, ImageGenerationTaskTrigger)
    assert waiting.value.method_name == "execute_complete"
    event = run_trigger(waiting.value.trigger)
    metadata = resumed.execute_complete(context, event=event, **(waiting.value.kwargs or {}))  # type: ignore[arg-type]
    assert set(metadata) == XCOM_KEYS and len(metadata["images"]) == 1
    assert outcomes(native) == [(429, False), (429, False), (200, True)]
    assert native.billed_images() == 1


def test_a_short_quota_wait_of_a_deferrable_operator_happens_in_the_worker(native: EmulatorServer) -> None:
    """Under min_throttle_deferral (10 s) a deferral costs more than it saves, and meets an Airflow race."""
    native.set_faults(fail_next=["throttle"], task_duration_ms=100)
    operator = make_operator(deferrable=True, **FAST)
    context = make_context(operator)
    operator.render_template_fields(context)  # type: ignore[arg-type]

    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)  # type: ignore[arg-type]

    assert isinstance(deferred.value.trigger, ImageGenerationTaskTrigger), "deferred on the task only"
    # The task was created; the emulator bills it once it has run.
    assert [status for status, _ in outcomes(native)] == [429, 200]


def test_past_the_deadline_the_throttled_error_fails_the_try_and_airflow_may_retry(
    native: EmulatorServer,
) -> None:
    native.set_faults(fail_next=["throttle"])

    with pytest.raises(ImageGenerationThrottledError) as raised:
        run(make_operator(deferrable=True, throttle_timeout=0, **FAST))

    assert not isinstance(raised.value, AirflowFailException), "nothing was billed: a retry is safe"
    assert outcomes(native) == [(429, False)]


def test_the_deadline_counts_from_the_start_of_the_try_when_a_resume_lost_the_deferral_kwargs(
    native: EmulatorServer,
) -> None:
    """`airflow dags test` resumes a task with the event only: the try's start date still bounds it."""
    native.set_faults(fail_next=["throttle"])
    operator = make_operator(deferrable=True, throttle_timeout=600, **FAST)
    context = make_context(operator)
    context["ti"].start_date = datetime.now(tz=UTC) - timedelta(seconds=601)
    operator.render_template_fields(context)  # type: ignore[arg-type]

    with pytest.raises(ImageGenerationThrottledError):
        operator.execute(context, event=datetime.now(tz=UTC))  # type: ignore[arg-type]
    assert outcomes(native) == [(429, False)]


def test_a_retry_after_beyond_the_deadline_fails_at_once_instead_of_hammering(native: EmulatorServer) -> None:
    native.set_faults(fail_next=["throttle"], quota_retry_after_seconds=86400)
    started = time.monotonic()

    with pytest.raises(ImageGenerationThrottledError) as raised:
        run(make_operator(deferrable=False, throttle_timeout=3600, **FAST))

    assert raised.value.retry_after is not None and raised.value.retry_after >= 3600
    assert time.monotonic() - started < 5
    assert outcomes(native) == [(429, False)]


def test_gateway_waits_out_throttling_in_the_worker_even_when_deferrable(gateway: EmulatorServer) -> None:
    gateway.set_faults(fail_next=["throttle"])

    metadata = run(make_operator(size="512x512", deferrable=True))  # a TaskDeferred would fail the test

    assert len(metadata["images"]) == 1
    assert outcomes(gateway, "generate") == [(429, False), (200, True)]
    assert gateway.billed_images() == 1


@pytest.mark.parametrize("value", ["soon", -1, "inf"])
def test_a_bad_throttle_timeout_is_refused_before_anything_is_sent(
    native: EmulatorServer, value: object
) -> None:
    with pytest.raises(ImageGenerationValidationError) as raised:
        make_operator(throttle_timeout=value)
    assert raised.value.parameter == "throttle_timeout"
    templated = make_operator(throttle_timeout="{{ params.wait }}", params={"wait": value})
    with pytest.raises(ImageGenerationValidationError):
        run(templated)
    assert native.requests_log() == []


def test_an_unknown_gateway_outcome_fails_without_retry_and_says_what_may_have_been_billed(
    gateway: EmulatorServer, capfd: pytest.CaptureFixture[str]
) -> None:
    gateway.set_faults(fail_next=["billed_500"])

    with pytest.raises(ImageGenerationOutcomeUnknownError) as raised:
        run(make_operator(n=3, size="512x512"))

    assert isinstance(raised.value, AirflowFailException), "Airflow must not send it again"
    assert outcomes(gateway, "generate") == [(500, True)], "sent once, billed once"
    logged = "".join(capfd.readouterr())
    assert "up to 3 image(s) of wan2.2-t2i-flash may have been billed" in logged


def test_a_native_submission_with_a_lost_answer_is_found_and_waited_for(native: EmulatorServer) -> None:
    native.set_faults(fail_next=["billed_502"], task_duration_ms=100)

    metadata = run(make_operator(n=2, size="512x512", seed=3, **FAST))

    assert len(task_submissions(native)) == 1, "never sent again"
    (task,) = native.tasks()
    assert metadata["generation_task_id"] == task["task_id"], "the hook found the task and reconnected"
    assert len(metadata["images"]) == 2 and native.billed_images() == 2, "paid once"
