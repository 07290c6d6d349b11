"""
Waiting out the service's quota before the billable request is sent again: how long, and until when.

The hook already retried a throttled request (HTTP 429) within its in-process budget; when it gives up
(:class:`~airflow_provider_imggen.exceptions.ImageGenerationThrottledError`: nothing was billed), the
operator's :class:`QuotaWait` waits (in the worker, or deferred to the triggerer) and sends again, until
``throttle_timeout`` has passed since the try started. A billable request whose answer was lost is never
sent again: :func:`log_unknown_outcome` says what may have been billed. No Airflow import at module level:
the operator module imports this when DAG files are parsed.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from airflow_provider_imggen.exceptions import (
    ImageGenerationOutcomeUnknownError,
    ImageGenerationThrottledError,
    ImageGenerationValidationError,
)

if TYPE_CHECKING:
    from airflow_provider_imggen.request import GenerationRequest

DEFAULT_THROTTLE_TIMEOUT = 3600.0
# Attempt k waits uniformly in [1, min(2 * 2**(k-1), 120)] seconds.
_BACKOFF_MULTIPLIER, _BACKOFF_MIN, _BACKOFF_MAX = 2.0, 1.0, 120.0
_T = TypeVar("_T")


def parse_throttle_timeout(value: object) -> float:
    """
    The rendered ``throttle_timeout``: seconds >= 0 (0: never wait, fail at the first throttling).

    :raises ImageGenerationValidationError: not a finite number of seconds >= 0
    """
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value.strip().isascii():
        try:
            seconds = float(value.strip())
        except ValueError:
            seconds = None
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        raise ImageGenerationValidationError(
            "throttle_timeout",
            value,
            "expected a finite number of seconds >= 0 (0 fails at the first throttling without waiting)",
        )
    return seconds


def backoff_seconds(attempt: int) -> float:
    """
    The jittered wait after the ``attempt``-th throttled submission (1-based), when no wait was named.

    "Full jitter", the rule of tenacity's ``wait_random_exponential`` written out: the tasks of a mapped
    DAG that met the quota together spread out instead of coming back together.
    """
    exponent = min(max(1, attempt), 64) - 1
    high = min(max(_BACKOFF_MIN, _BACKOFF_MULTIPLIER * 2.0**exponent), _BACKOFF_MAX)
    return random.uniform(_BACKOFF_MIN, high)


def next_throttle_wait(retry_after: float | None, attempt: int, remaining: float) -> float | None:
    """
    Seconds to wait before submitting again, or ``None`` when the deadline allows no further submission.

    The service's ``Retry-After`` is obeyed as given: when it lies beyond the deadline, submitting at the
    deadline would only be throttled again, so there is no further try. Without one, the jittered
    exponential backoff applies, cut short so that the last try happens at the deadline.

    :param retry_after: the wait the service asked for, in seconds, or ``None``
    :param attempt: how many throttled submissions this wait follows (1 after the first)
    :param remaining: seconds left until the deadline
    """
    if remaining <= 0:
        return None
    if retry_after is not None and math.isfinite(retry_after) and retry_after > 0:
        return retry_after if retry_after <= remaining else None
    if retry_after is not None and not math.isfinite(retry_after):
        return None
    return min(backoff_seconds(attempt), remaining)


class QuotaWait:
    """
    One try's waits out of the service's quota around the billable request.

    The deadline is ``throttle_timeout`` after the try's start date (which survives deferrals: ``airflow
    dags test`` hands a resumed task only the event, not the deferral's kwargs), or the deadline carried
    across a deferred wait (:meth:`resume_kwargs`).

    :param throttle_timeout: the operator's rendered ``throttle_timeout``
    :param log: the operator's logger
    :param started: the try's start date; None: now
    :param deadline: the deadline carried across a deferred wait (epoch seconds), if any
    :param throttled: throttled submissions so far in this try (it widens the backoff)
    """

    def __init__(
        self,
        throttle_timeout: object,
        log: Any,
        *,
        started: object = None,
        deadline: object = None,
        throttled: object = 0,
    ) -> None:
        self.throttle_timeout = throttle_timeout
        self.log = log
        timeout = parse_throttle_timeout(throttle_timeout)
        self.throttled = throttled if isinstance(throttled, int) and not isinstance(throttled, bool) else 0
        if isinstance(deadline, int | float) and not isinstance(deadline, bool):
            self.deadline = float(deadline)
        else:
            start = started.timestamp() if isinstance(started, datetime) else time.time()
            self.deadline = start + timeout

    def send(
        self,
        send: Callable[[], _T],
        *,
        defer: Callable[[float], None] | None = None,
        min_deferral: float = 0.0,
    ) -> _T:
        """
        Send until it is not throttled, waiting in between; re-raise the throttling past the deadline.

        :param send: sends the billable request
        :param defer: defers a wait to the triggerer (raises ``TaskDeferred``); None: every wait sleeps
        :param min_deferral: a shorter wait sleeps in the worker even with ``defer``
        """
        while True:
            try:
                return send()
            except ImageGenerationThrottledError as error:
                self.throttled += 1
                wait = self.next_wait(error)
            from airflow_provider_imggen import metrics

            # Counted when the wait starts: a deferred wait ends in another process.
            metrics.throttled_wait(wait)
            if defer is not None and wait >= min_deferral:
                defer(wait)
            time.sleep(wait)

    def next_wait(self, error: ImageGenerationThrottledError) -> float:
        """The wait before submitting again; re-raises ``error`` when the deadline allows none."""
        remaining = self.deadline - time.time()
        wait = next_throttle_wait(error.retry_after, self.throttled, remaining)
        if wait is None:
            self.log.error(
                "The service throttled submission %d (code=%s, retry_after=%s s) and throttle_timeout=%ss "
                "leaves no time for another (%.0f s left): failing this try. Nothing was billed, so an "
                "Airflow retry is safe",
                self.throttled,
                error.code,
                error.retry_after,
                self.throttle_timeout,
                max(remaining, 0.0),
            )
            raise error
        self.log.warning(
            "The service throttled submission %d (code=%s): nothing was billed. Submitting again in %.1f s "
            "(%s); %.0f s left of throttle_timeout=%ss",
            self.throttled,
            error.code,
            wait,
            "as its Retry-After asks" if error.retry_after else "jittered backoff",
            remaining,
            self.throttle_timeout,
        )
        return wait

    def resume_kwargs(self) -> dict[str, Any]:
        """What ``execute`` takes back after a deferred wait to carry this try's deadline and count on."""
        return {"throttle_deadline": self.deadline, "throttled_submissions": self.throttled}

    def defer_in_triggerer(self, operator: Any, wait: float) -> None:
        """Defer ``operator`` to a ``DateTimeTrigger`` for ``wait`` seconds; it resumes in ``execute``."""
        from datetime import UTC, datetime, timedelta

        from airflow.providers.standard.triggers.temporal import DateTimeTrigger

        operator.log.info("Waiting out the quota in the triggerer (the worker slot is free meanwhile)")
        operator.defer(
            trigger=DateTimeTrigger(moment=datetime.now(tz=UTC) + timedelta(seconds=wait)),
            method_name="execute",
            kwargs=self.resume_kwargs(),
        )


def log_unknown_outcome(
    log: Any, error: ImageGenerationOutcomeUnknownError, request: GenerationRequest
) -> None:
    """Say what may have been billed by a billable request whose answer was lost (it is not sent again)."""
    log.error(
        "The outcome of the billable request is unknown (request_id=%s, sent at %s): up to %s image(s) of %s "
        "may have been billed. Neither the hook nor Airflow sends it again; check the account's usage (and, "
        "on the native API, its task list) before running this task again",
        error.request_id,
        error.submitted_at.isoformat() if error.submitted_at else "an unknown time",
        error.images_at_risk if error.images_at_risk is not None else request.n,
        error.model or request.model,
    )
