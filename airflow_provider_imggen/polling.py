"""
The rules for waiting on a native task, in one place: the operator, the sensor and the trigger check their
polling settings here (stdlib only: DAG files import the modules that import this one).
"""

from __future__ import annotations

import math

from airflow_provider_imggen.exceptions import ImageGenerationValidationError


def _is_seconds(value: object) -> bool:
    """A finite positive number of seconds (``bool`` is not a number here, ``inf`` is no deadline)."""
    return (
        not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value) and value > 0
    )


def check_wait_settings(
    *,
    poll_interval: object,
    max_poll_interval: object,
    timeout: object = None,
    poll_interval_name: str = "poll_interval",
    timeout_name: str = "wait_timeout",
) -> None:
    """
    Refuse polling settings that would spin, never poll or never end, naming the parameter.

    :param poll_interval: seconds between status reads at first; finite and > 0
    :param max_poll_interval: the longest wait between status reads; finite and >= ``poll_interval``
    :param timeout: give up after this many seconds: finite and > 0, or ``None`` (no deadline)
    :param poll_interval_name: how the caller calls ``poll_interval`` (the sensor: ``poke_interval``)
    :param timeout_name: how the caller calls ``timeout`` (``wait_timeout``, ``timeout``...)
    :raises ImageGenerationValidationError: a value is out of range (an ``AirflowFailException``)
    """
    for name, value in ((poll_interval_name, poll_interval), ("max_poll_interval", max_poll_interval)):
        if not _is_seconds(value):
            raise ImageGenerationValidationError(name, value, "expected a finite number of seconds > 0")
    assert isinstance(poll_interval, int | float) and isinstance(max_poll_interval, int | float)
    if max_poll_interval < poll_interval:
        raise ImageGenerationValidationError(
            "max_poll_interval",
            max_poll_interval,
            f"expected seconds >= {poll_interval_name} ({poll_interval:g})",
        )
    if timeout is not None and not _is_seconds(timeout):
        raise ImageGenerationValidationError(
            timeout_name,
            timeout,
            "expected a finite number of seconds > 0 (or a timedelta), or None to wait until the task ends",
        )


def check_flag(name: str, value: object) -> bool:
    """A boolean argument (``deferrable``, ``wait_for_completion``): anything else is refused."""
    if not isinstance(value, bool):
        raise ImageGenerationValidationError(name, value, "expected True or False")
    return value
