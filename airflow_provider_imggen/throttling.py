"""
Waiting out the service's quota before a billable request is sent again: how long, and until when.

The hook already retried a throttled request (HTTP 429) within its in-process budget; when it gives up
(:class:`~airflow_provider_imggen.exceptions.ImageGenerationThrottledError`: nothing was billed), the
operator waits here (or in the triggerer) and submits again, until its ``throttle_timeout`` passes.
Pure functions, no Airflow import: the operator module imports this when DAG files are parsed.
"""

from __future__ import annotations

import math

from airflow_provider_imggen.exceptions import ImageGenerationValidationError

DEFAULT_THROTTLE_TIMEOUT = 3600.0
# Attempt k waits uniformly in [1, min(2**k, 120)] seconds.
_BACKOFF_MULTIPLIER, _BACKOFF_MIN, _BACKOFF_MAX = 2.0, 1.0, 120.0


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

    "Full jitter" (tenacity's ``wait_random_exponential``): the tasks of a mapped DAG that met the quota
    together spread out instead of coming back together.
    """
    # Imported here: DAG files import this module, and parsing them must stay cheap.
    from tenacity import RetryCallState, wait_random_exponential

    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = max(1, attempt)
    wait = wait_random_exponential(multiplier=_BACKOFF_MULTIPLIER, min=_BACKOFF_MIN, max=_BACKOFF_MAX)
    return float(wait(state))


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
