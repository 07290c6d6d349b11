"""
The pace of a batch at the account's limits: submissions per second, tasks at once, status queries per
second, and when each task is expected to finish.

The service's own limits count per account and model (api-notes §7); a batch keeps within them rather
than learning them from 429s. One thing it cannot know beforehand is what the service does with a task
submitted beyond the concurrency quota: refuse it (429) or queue it (PENDING until a slot frees). The
pacer asks once, with one submission beyond the quota (``over_quota="probe"``): accepted, the service
queues, and one task per concurrent slot waits in its queue from then on, so that the next generation
starts the moment one ends; refused (nothing billed, the slot sends again), the pacer keeps to the quota.

A finished task is noticed by polling it from the moment it is expected to end: the expected duration is
learned from this batch's own tasks (a low quantile of those that started at once), the start from the
tasks ahead of it when the service queues.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

OVER_QUOTA_MODES = ("probe", "queue", "refuse")
# After the expected end, a task is read this soon (then twice as late each time, up to the batch's poll
# interval); before any duration is known, this often.
FAST_POLL_SECONDS = 0.025
LEARNING_POLL_SECONDS = 0.25
# Durations kept to predict the next one.
_OBSERVED = 20


@dataclass
class _Bucket:
    """A token bucket: ``rate`` per second, at most ``capacity`` saved up (full until first used)."""

    rate: float
    capacity: float
    tokens: float = 0.0
    updated: float | None = None

    def _tokens(self, now: float) -> float:
        if self.updated is None:
            return self.capacity
        return min(self.capacity, self.tokens + (now - self.updated) * self.rate)

    def wait(self, now: float) -> float:
        """Seconds until a token is there (0: now)."""
        tokens = self._tokens(now)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def take(self, now: float) -> None:
        self.tokens, self.updated = self._tokens(now) - 1.0, now

    def hold_off(self, now: float, seconds: float) -> None:
        """No token for ``seconds`` (a 429's Retry-After, or a back-off)."""
        self.tokens, self.updated = min(self._tokens(now), -seconds * self.rate), now


class Pacer:
    """
    :param submissions_per_second: the account's submission rate for the model
    :param concurrent: the account's concurrent tasks for the model (None: not limited)
    :param status_queries_per_second: the share of the account's 20 status queries per second this batch
        uses (other pipelines on the account need theirs)
    :param over_quota: ``probe``, ``queue`` (the service is known to queue) or ``refuse``
    :param poll_interval: the slowest pace of status reads before the first duration is learned
    """

    def __init__(
        self,
        *,
        submissions_per_second: float,
        concurrent: int | None,
        status_queries_per_second: float,
        over_quota: str = "probe",
        poll_interval: float = 1.0,
    ) -> None:
        # Capacity 1: the service's bucket may hold less than a second's worth; bursts earn 429s.
        self._submissions = _Bucket(rate=submissions_per_second, capacity=1.0)
        self._queries = _Bucket(
            rate=status_queries_per_second, capacity=max(1.0, status_queries_per_second / 4)
        )
        self.concurrent = concurrent
        self.over_quota = over_quota
        self.poll_interval = poll_interval
        self._durations: deque[float] = deque(maxlen=_OBSERVED)
        self.probing = False

    # -- submissions ----------------------------------------------------------------------------------

    def in_flight_limit(self) -> int | None:
        """Tasks this batch keeps at the service at once (None: no limit)."""
        if self.concurrent is None:
            return None
        if self.over_quota == "queue":
            return 2 * self.concurrent
        if self.over_quota == "probe":
            return self.concurrent + 1  # the one probe
        return self.concurrent

    def submit_wait(self, now: float) -> float:
        return self._submissions.wait(now)

    def submitting(self, now: float, in_flight: int) -> None:
        """A submission leaves now, with ``in_flight`` tasks already at the service."""
        self._submissions.take(now)
        self.probing = self.would_probe(in_flight)

    def spend(self, now: float) -> None:
        """Another copy of the batch sent one (its claim was won first): it counts against the rate."""
        self._submissions.take(now)

    def hold_off(self, now: float, seconds: float) -> None:
        """No submission for ``seconds`` (the service could not be reached)."""
        self._submissions.hold_off(now, seconds)

    def accepted(self) -> str | None:
        """The submission was accepted; the over-quota mode learned from it, if it was the probe."""
        if self.probing:
            self.probing = False
            self.over_quota = "queue"
            return "queue"
        return None

    def throttled(self, now: float, retry_after: float | None, *, rate: bool = False) -> str | None:
        """
        The submission got a 429 (nothing billed); the mode learned from it, if it was the probe and the
        429 was not the rate's (``rate``: its code says so; the rate is another pipeline's doing then).
        """
        if retry_after is not None or rate or not self.probing:
            self._submissions.hold_off(now, retry_after if retry_after is not None else 1.0)
        if self.probing and not rate:
            self.probing = False
            self.over_quota = "refuse"
            return "refuse"
        if self.over_quota == "queue" and not rate:
            # Refused within what it was taken to queue: it refuses after all (the probe was accepted into
            # a slot that had just freed).
            self.over_quota = "refuse"
            return "refuse"
        return None

    def would_probe(self, in_flight: int) -> bool:
        """Whether the next submission is the probe beyond the quota."""
        return self.over_quota == "probe" and self.concurrent is not None and in_flight >= self.concurrent

    # -- status queries ---------------------------------------------------------------------------------

    def query_wait(self, now: float) -> float:
        return self._queries.wait(now)

    def querying(self, now: float) -> None:
        self._queries.take(now)

    # -- when a task ends -------------------------------------------------------------------------------

    def observe(self, seconds: float) -> None:
        """A task ran ``seconds`` (as the service's times say, else as seen from its submission)."""
        self._durations.append(seconds)

    def expected_duration(self) -> float | None:
        if not self._durations:
            return None
        ordered = sorted(self._durations)
        # A low quantile: polling a little early costs a read, a little late costs every image the wait.
        return ordered[len(ordered) // 4]

    def expected_end(self, now: float, ends_ahead: list[float]) -> tuple[float | None, bool]:
        """
        When a task submitted now should end, given the expected ends of the tasks already at the
        service; and whether it starts at once (its duration then teaches the next prediction).
        """
        duration = self.expected_duration()
        ahead = sorted(ends_ahead)
        starts_now = self.concurrent is None or len(ahead) < self.concurrent
        if duration is None:
            return None, starts_now
        start = now if starts_now else max(now, ahead[len(ahead) - self.concurrent])  # type: ignore[operator]
        return start + duration, starts_now

    def next_poll(self, now: float, expected_end: float | None, polls_since_end: int) -> float:
        """When to read a task next: at its expected end, then often, then at the batch's poll interval."""
        if expected_end is None:
            learning = self.expected_duration() is None
            return now + (min(self.poll_interval, LEARNING_POLL_SECONDS) if learning else self.poll_interval)
        if now < expected_end:
            return expected_end + FAST_POLL_SECONDS
        late = FAST_POLL_SECONDS * (2 ** min(polls_since_end, 10))
        return now + min(late, self.poll_interval)
