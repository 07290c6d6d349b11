"""The quota wait: how long a throttled operator waits, when it stops, and the one object doing it."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from airflow_provider_imggen.exceptions import ImageGenerationThrottledError, ImageGenerationValidationError
from airflow_provider_imggen.operators.quota_wait import (
    QuotaWait,
    backoff_seconds,
    next_throttle_wait,
    parse_throttle_timeout,
)


@pytest.mark.parametrize(("value", "seconds"), [(3600, 3600.0), ("90", 90.0), (" 2.5 ", 2.5), (0, 0.0)])
def test_throttle_timeout_accepts_seconds(value: object, seconds: float) -> None:
    assert parse_throttle_timeout(value) == seconds


@pytest.mark.parametrize("value", [-1, "soon", "", None, True, float("inf"), float("nan"), "inf", "٢"])
def test_throttle_timeout_refuses_anything_else(value: object) -> None:
    with pytest.raises(ImageGenerationValidationError) as raised:
        parse_throttle_timeout(value)
    assert raised.value.parameter == "throttle_timeout"


def test_backoff_is_jittered_and_widens_up_to_two_minutes() -> None:
    for attempt, high in ((1, 2.0), (2, 4.0), (3, 8.0), (7, 120.0), (50, 120.0)):
        waits = [backoff_seconds(attempt) for _ in range(200)]
        assert all(1.0 <= wait <= high for wait in waits), (attempt, min(waits), max(waits))
        assert len(set(waits)) > 150, "jittered: tasks throttled together do not come back together"
    assert max(backoff_seconds(7) for _ in range(200)) > 60


def test_retry_after_is_obeyed_when_the_deadline_allows_it() -> None:
    assert next_throttle_wait(30.0, attempt=1, remaining=100.0) == 30.0
    # Beyond the deadline: a try at the deadline would only be throttled again.
    assert next_throttle_wait(86400.0, attempt=1, remaining=3600.0) is None
    assert next_throttle_wait(float("inf"), attempt=1, remaining=3600.0) is None


def test_without_retry_after_the_backoff_is_cut_to_the_deadline() -> None:
    assert 1.0 <= next_throttle_wait(None, attempt=1, remaining=100.0) <= 2.0  # type: ignore[operator]
    assert next_throttle_wait(None, attempt=20, remaining=0.5) == 0.5
    assert next_throttle_wait(0.0, attempt=1, remaining=10.0) is not None, "Retry-After: 0 is no wait named"


@pytest.mark.parametrize("remaining", [0.0, -5.0])
def test_no_wait_past_the_deadline(remaining: float) -> None:
    assert next_throttle_wait(None, attempt=1, remaining=remaining) is None
    assert next_throttle_wait(1.0, attempt=1, remaining=remaining) is None


# -- QuotaWait: one try's waits around the billable request ----------------------------------------------


def throttled(retry_after: float | None = None) -> ImageGenerationThrottledError:
    return ImageGenerationThrottledError("throttled", retry_after=retry_after, status=429, code="Throttling")


def test_the_deadline_runs_from_the_try_s_start_or_is_carried_across_a_deferral() -> None:
    started = datetime.now(tz=UTC) - timedelta(seconds=100)
    assert QuotaWait(300, logging.getLogger("t"), started=started).deadline == pytest.approx(
        started.timestamp() + 300
    )
    carried = QuotaWait(300, logging.getLogger("t"), started=started, deadline=1234.5, throttled=3)
    assert carried.resume_kwargs() == {"throttle_deadline": 1234.5, "throttled_submissions": 3}


def test_send_waits_out_throttling_then_returns_what_was_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr("airflow_provider_imggen.operators.quota_wait.time.sleep", sleeps.append)
    answers: list[object] = [throttled(0.5), throttled(0.25), "sent"]

    def send() -> object:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    quota = QuotaWait(60, logging.getLogger("t"))
    assert quota.send(send) == "sent"
    assert sleeps == [0.5, 0.25] and quota.throttled == 2


def test_send_defers_long_waits_and_re_raises_past_the_deadline() -> None:
    deferred: list[float] = []
    quota = QuotaWait(60, logging.getLogger("t"))

    def defer(wait: float) -> None:
        deferred.append(wait)
        raise RuntimeError("deferred")

    with pytest.raises(RuntimeError, match="deferred"):
        quota.send(lambda: (_ for _ in ()).throw(throttled(30.0)), defer=defer, min_deferral=10.0)
    assert deferred == [30.0]
    # Retry-After beyond the deadline: no further try, the throttling itself fails the try.
    with pytest.raises(ImageGenerationThrottledError):
        QuotaWait(0, logging.getLogger("t")).send(lambda: (_ for _ in ()).throw(throttled(1.0)))
