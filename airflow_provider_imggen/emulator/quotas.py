"""
Quotas per account and model (§7), as token buckets: submissions per second (or per minute, with a burst)
and, on the task API only, concurrent tasks; plus the account's status-query limit (20/s). The concurrency
count itself (tasks still PENDING/RUNNING) comes from the task store; gateway generations in flight are
counted here.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass

from airflow_provider_imggen.emulator.faults import FaultConfig
from airflow_provider_imggen.emulator.models import limits_of

Scope = tuple[str, str]  # (account, model)


@dataclass
class _Bucket:
    tokens: float
    updated: float

    def take(self, rate: float, capacity: float, now: float) -> bool:
        """Refill at ``rate`` up to ``capacity``, then take one token if there is one."""
        self.tokens = min(capacity, self.tokens + (now - self.updated) * rate)
        self.updated = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


def submission_limits(faults: FaultConfig, model: str) -> tuple[float | None, int | None, float]:
    """(submissions per second, concurrent tasks, burst) for ``model``, overrides applied."""
    limits = limits_of(model)
    rate = faults.quota_submissions_per_second or limits["submissions_per_second"]
    concurrent = faults.quota_concurrent_tasks or limits["concurrent_tasks"]
    burst = limits.get("burst") if not faults.quota_submissions_per_second else None
    return rate, concurrent, float(burst or max(1.0, rate or 1.0))


class Quotas:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[Scope, _Bucket] = {}
        self._status_buckets: dict[str, _Bucket] = {}
        self._in_flight: collections.Counter[Scope] = collections.Counter()

    def clear(self) -> None:
        with self._lock:
            self._buckets.clear()
            self._status_buckets.clear()
            self._in_flight.clear()

    def in_flight(self, scope: Scope) -> int:
        with self._lock:
            return self._in_flight[scope]

    def acquire(
        self, faults: FaultConfig, scope: Scope, *, active: int | None, in_flight: bool
    ) -> str | None:
        """
        Count one submission of ``scope``; ``None`` when allowed, else the limit that refused it (``"rate"``
        or ``"concurrency"``). ``active``: tasks of the scope holding a slot (None: no concurrency quota
        applies, as on the synchronous endpoint). ``in_flight``: a generation answered in the same request,
        which holds a slot (when ``active`` is counted) until :meth:`release`.
        """
        with self._lock:
            if faults.quotas:
                rate, concurrent, capacity = submission_limits(faults, scope[1])
                now = time.monotonic()
                bucket = None
                if rate is not None:
                    bucket = self._buckets.setdefault(scope, _Bucket(tokens=capacity, updated=now))
                    bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * rate)
                    bucket.updated = now
                    if bucket.tokens < 1.0:
                        return "rate"
                busy = None if active is None else active + self._in_flight[scope]
                if busy is not None and concurrent is not None and busy >= concurrent:
                    return "concurrency"
                if bucket is not None:
                    bucket.tokens -= 1.0
            if in_flight:
                self._in_flight[scope] += 1
            return None

    def release(self, scope: Scope) -> None:
        with self._lock:
            self._in_flight[scope] -= 1
            if self._in_flight[scope] <= 0:
                del self._in_flight[scope]

    def acquire_status_query(self, faults: FaultConfig, account: str) -> bool:
        """One status query (task status or task list) of ``account``; False beyond its rate."""
        if not faults.quotas:
            return True
        rate = faults.quota_status_queries_per_second
        with self._lock:
            now = time.monotonic()
            bucket = self._status_buckets.setdefault(account, _Bucket(tokens=max(1.0, rate), updated=now))
            return bucket.take(rate, max(1.0, rate), now)
