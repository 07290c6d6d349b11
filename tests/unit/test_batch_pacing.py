"""The batch's pace: submissions per second, tasks at once, the over-quota probe, predicted ends."""

from __future__ import annotations

from airflow_provider_imggen.batch.pacing import FAST_POLL_SECONDS, Pacer


def pacer(**overrides: object) -> Pacer:
    settings: dict = {"submissions_per_second": 2.0, "concurrent": 2, "status_queries_per_second": 10.0}
    settings.update(overrides)
    return Pacer(**settings)


def test_submissions_keep_to_the_rate_without_a_burst() -> None:
    pace = pacer()
    now = 100.0
    assert pace.submit_wait(now) == 0
    pace.submitting(now, 0)
    # Capacity 1: the next one waits half a second at 2/s, even after an idle spell.
    assert abs(pace.submit_wait(now) - 0.5) < 1e-9
    assert pace.submit_wait(now + 0.5) == 0


def test_the_probe_learns_a_refusing_service_and_keeps_to_the_quota() -> None:
    pace = pacer()
    assert pace.in_flight_limit() == 3  # the quota and the one probe
    assert pace.would_probe(2)
    pace.submitting(0.0, 2)
    assert pace.throttled(0.1, None) == "refuse"
    assert pace.in_flight_limit() == 2
    # The probe's 429 was expected: no hold-off beyond the rate.
    assert pace.submit_wait(0.5) == 0


def test_the_probe_learns_a_queueing_service_and_feeds_its_queue() -> None:
    pace = pacer()
    pace.submitting(0.0, 2)
    assert pace.accepted() == "queue"
    assert pace.in_flight_limit() == 4
    # Refused later on concurrency after all: back to the quota.
    pace.submitting(1.0, 3)
    assert pace.throttled(1.1, None) == "refuse"
    assert pace.in_flight_limit() == 2


def test_a_rate_429_teaches_nothing_about_the_quota_and_holds_off() -> None:
    pace = pacer()
    pace.submitting(0.0, 2)
    assert pace.throttled(0.0, None, rate=True) is None
    assert pace.over_quota == "probe"
    assert pace.submit_wait(0.5) > 0


def test_a_retry_after_is_honoured() -> None:
    pace = pacer(over_quota="refuse")
    pace.submitting(0.0, 0)
    pace.throttled(0.0, 3.0)
    assert pace.submit_wait(2.9) > 0
    assert pace.submit_wait(3.6) == 0


def test_ends_are_predicted_from_a_low_quantile_and_behind_the_queue() -> None:
    pace = pacer(over_quota="queue")
    assert pace.expected_end(0.0, []) == (None, True)
    for seconds in (4.0, 4.1, 4.2, 6.0):
        pace.observe(seconds)
    assert pace.expected_duration() == 4.1
    # Two running (ending at 3 and 5): a third starts when the first slot frees.
    assert pace.expected_end(1.0, [3.0, 5.0]) == (3.0 + 4.1, False)
    assert pace.expected_end(1.0, [3.0]) == (1.0 + 4.1, True)


def test_polls_start_at_the_predicted_end_then_back_off_to_the_poll_interval() -> None:
    pace = pacer(poll_interval=1.0)
    # Nothing learned yet: read often, to learn.
    assert pace.next_poll(0.0, None, 0) == 0.25
    assert pace.next_poll(0.0, 4.0, 0) == 4.0 + FAST_POLL_SECONDS
    delays = [pace.next_poll(5.0, 4.0, polls) - 5.0 for polls in range(8)]
    assert (
        abs(delays[0] - FAST_POLL_SECONDS) < 1e-9
        and delays == sorted(delays)
        and abs(delays[-1] - 1.0) < 1e-9
    )
    pace.observe(4.0)
    assert pace.next_poll(0.0, None, 0) == 1.0
