"""
How a native task is waited for: its statuses, the polling pace, the settings that tune it and
:class:`TaskWait`, the one state of a polling loop, which the blocking loop (the hook's ``wait_for_task``)
and the asyncio loop (the trigger) both step through: they differ only in how they sleep and read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from airflow_provider_imggen.coercion import coerce_seconds
from airflow_provider_imggen.exceptions import ImageGenerationValidationError

# DashScope's native task API (api-notes §3): suggested polling is every 3 s for 30 s, then back off.
DEFAULT_POLL_INTERVAL = 3.0
DEFAULT_MAX_POLL_INTERVAL = 30.0
FAST_POLL_SECONDS = 30.0

# DashScope's native asynchronous task flow (api-notes §3): UNKNOWN is "no such task, or expired".
# SUSPENDED (api-notes §6; the DashScope SDK lists it among the task statuses) is read as "not finished":
# the task still exists and may still run and bill, so it is polled like PENDING/RUNNING until it ends or
# the caller's wait_timeout runs out; failing on it would throw away a task that may be paid for.
TASK_STATUSES = ("PENDING", "RUNNING", "SUSPENDED", "SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN")
TASK_TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"})
TASK_ACTIVE_STATUSES = frozenset({"PENDING", "RUNNING", "SUSPENDED"})


def check_poll_settings(
    poll_interval: object,
    max_poll_interval: object,
    timeout: object = None,
    *,
    poll_interval_name: str = "poll_interval",
    timeout_name: str = "timeout",
    allow_zero_timeout: bool = True,
) -> None:
    """
    Refuse polling settings that would spin, never poll or never end (NaN, infinity, <= 0), naming the
    parameter. The one rule for the hook's ``wait_for_task``, the operator, the sensor and the trigger.

    :param poll_interval_name: how the caller calls ``poll_interval`` (the sensor: ``poke_interval``)
    :param timeout_name: how the caller calls ``timeout`` (the operator: ``wait_timeout``)
    :param allow_zero_timeout: whether a timeout of 0 (one status read, no wait) is accepted
    """
    for name, value in ((poll_interval_name, poll_interval), ("max_poll_interval", max_poll_interval)):
        if not isinstance(value, int | float):
            raise ImageGenerationValidationError(name, value, "expected a finite number of seconds > 0")
        coerce_seconds(name, value)
    assert isinstance(poll_interval, int | float) and isinstance(max_poll_interval, int | float)
    if max_poll_interval < poll_interval:
        raise ImageGenerationValidationError(
            "max_poll_interval",
            max_poll_interval,
            f"expected seconds >= {poll_interval_name} ({poll_interval})",
        )
    if timeout is not None:
        if not isinstance(timeout, int | float):
            raise ImageGenerationValidationError(
                timeout_name, timeout, f"expected seconds {'>= 0' if allow_zero_timeout else '> 0'}, or None"
            )
        coerce_seconds(timeout_name, timeout, allow_zero=allow_zero_timeout)


def next_poll_interval(
    previous: float | None, elapsed: float, poll_interval: float, max_poll_interval: float
) -> float:
    """
    Seconds to wait before the next status query of a native task (shared by the hook and the trigger).

    As DashScope suggests: every ``poll_interval`` for the first 30 s, then doubling up to
    ``max_poll_interval`` (3 s, ..., 3 s, 6, 12, 24, 30, 30... with the defaults).

    :param previous: the previous wait (None before the first)
    :param elapsed: seconds since the task was first polled
    """
    first = min(poll_interval, max_poll_interval)
    if previous is None or elapsed < FAST_POLL_SECONDS:
        return first
    return min(max_poll_interval, max(previous, first) * 2)


@dataclass
class TaskWait:
    """
    One wait for a native task: when it started, the status last seen, the pace and the deadline.

    A loop reads the task's status, tells :meth:`saw` (which says whether the status changed, worth a
    log line), stops when the task is terminal or :meth:`expired`, else sleeps :meth:`next_delay`.

    :param poll_interval: seconds between polls for the first 30 s
    :param max_poll_interval: the longest wait between polls once backing off
    :param deadline: when to stop waiting (epoch seconds, so a trigger can carry it across restarts);
        None to wait as long as the task lives
    """

    poll_interval: float = DEFAULT_POLL_INTERVAL
    max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL
    deadline: float | None = None
    status: str | None = None
    started: float = field(default_factory=time.monotonic)
    _delay: float | None = field(default=None, repr=False)

    def saw(self, status: str) -> bool:
        """Record the status a poll read; True when it differs from the one before."""
        changed = status != self.status
        self.status = status
        return changed

    def expired(self) -> bool:
        return self.deadline is not None and time.time() >= self.deadline

    def next_delay(self) -> float:
        """Seconds to sleep before the next poll: :func:`next_poll_interval`'s pace, cut at the deadline."""
        self._delay = next_poll_interval(
            self._delay, time.monotonic() - self.started, self.poll_interval, self.max_poll_interval
        )
        if self.deadline is None:
            return self._delay
        return max(0.0, min(self._delay, self.deadline - time.time()))
