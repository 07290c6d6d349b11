"""
Native tasks and their store. A task's status is a function of the wall clock (PENDING, maybe SUSPENDED,
RUNNING, then SUCCEEDED or FAILED; CANCELED; UNKNOWN once its id expired), so nothing needs to run in the
background. Tasks belong to an account (every key of it sees them in the task list) and remember the key
that submitted them.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Any

from airflow_provider_imggen.emulator.objects import ImageParams

# Evicted native tasks read as UNKNOWN, like task ids past their 24 h lifetime.
_MAX_REMEMBERED_TASKS = 10_000
# A SUSPENDED task still holds its concurrency slot (it has not ended).
ACTIVE_STATUSES = ("PENDING", "SUSPENDED", "RUNNING")
TASK_STATUSES = ("PENDING", "SUSPENDED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN")


@dataclass
class Task:
    """One native task. Its status is a function of the wall clock (see :meth:`status_at`)."""

    task_id: str
    model: str
    n: int
    images: tuple[ImageParams, ...]
    orig_prompt: str
    actual_prompt: str
    submitted_at: float
    pending_s: float
    duration_s: float
    failure_code: str | None
    failed_images: frozenset[int]
    request_id: str = ""
    key_id: str = ""
    account: str = ""
    failure_message: str | None = None
    canceled_at: float | None = None
    expired: bool = False
    suspended_s: float = 0.0
    # The endpoint that took it (models.ENDPOINT_PATHS): image-generation tasks answer in its messages shape.
    endpoint: str = "task"

    @property
    def scheduled_at(self) -> float:
        return self.submitted_at + self.pending_s + self.suspended_s

    @property
    def ended_at(self) -> float:
        return self.scheduled_at + self.duration_s

    @property
    def succeeded_count(self) -> int:
        return 0 if self.failure_code else len(self.images) - len(self.failed_images)

    def status_at(self, now: float, ttl_s: float) -> str:
        if self.expired or now - self.submitted_at > ttl_s:
            return "UNKNOWN"
        if self.canceled_at is not None:
            return "CANCELED"
        if now < self.submitted_at + self.pending_s:
            return "PENDING"
        if now < self.scheduled_at:
            return "SUSPENDED"
        if now < self.ended_at:
            return "RUNNING"
        return "FAILED" if self.failure_code else "SUCCEEDED"

    def billed_at(self, now: float) -> int:
        """Images billed by ``now``: the successful ones once the task ended (never if canceled)."""
        if self.canceled_at is not None or now < self.ended_at:
            return 0
        return self.succeeded_count


class TaskStore:
    """Every remembered task by id, oldest first. ``ttl_s`` is read at each call (it is a fault setting)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: collections.OrderedDict[str, Task] = collections.OrderedDict()

    def add(self, task: Task) -> None:
        with self._lock:
            self._tasks[task.task_id] = task
            while len(self._tasks) > _MAX_REMEMBERED_TASKS:
                self._tasks.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._tasks.clear()

    def lookup(self, task_id: str, ttl_s: float) -> tuple[Task | None, str]:
        """The task (a snapshot) and its status now; ``(None, "UNKNOWN")`` for an unknown id."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return None, "UNKNOWN"
            return dataclasses.replace(task), task.status_at(time.time(), ttl_s)

    def cancel(self, task_id: str, ttl_s: float) -> str:
        """Cancel a PENDING task (its images are then not billed); returns the status it had."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return "UNKNOWN"
            now = time.time()
            status = task.status_at(now, ttl_s)
            if status == "PENDING":
                task.canceled_at = now
            return status

    def expire(self, task_id: str) -> bool:
        """Make a task read as UNKNOWN from now on, as if its 24 h had passed; False if there is none."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is not None:
                task.expired = True
            return task is not None

    def active_ends(self, account: str, model: str, ttl_s: float) -> list[float]:
        """When each task of (account, model) still holding a concurrency slot ends, earliest first."""
        with self._lock:
            now = time.time()
            return sorted(
                task.ended_at
                for task in self._tasks.values()
                if (task.account, task.model) == (account, model)
                and task.status_at(now, ttl_s) in ACTIVE_STATUSES
            )

    def billed(self, task_id: str) -> int | None:
        """Images the task billed so far, None for a task no longer remembered."""
        with self._lock:
            task = self._tasks.get(task_id)
            return None if task is None else task.billed_at(time.time())

    def of_account(self, account: str, ttl_s: float) -> list[tuple[Task, str]]:
        """The account's tasks (every key's), newest first, with their status now; expired ones left out."""
        with self._lock:
            now = time.time()
            found = []
            for task in reversed(self._tasks.values()):
                status = task.status_at(now, ttl_s)
                if task.account == account and status != "UNKNOWN":
                    found.append((dataclasses.replace(task), status))
            return found

    def summaries(self, ttl_s: float) -> list[dict[str, Any]]:
        """Every remembered task, oldest first: id, status now, model, n, outcome (for tests and humans)."""
        with self._lock:
            now = time.time()
            return [
                {
                    "task_id": task.task_id,
                    "task_status": task.status_at(now, ttl_s),
                    "model": task.model,
                    "n": task.n,
                    "failure_code": task.failure_code,
                    "failed_images": sorted(task.failed_images),
                    "submitted_at": task.submitted_at,
                    "billed_images": task.billed_at(now),
                    "request_id": task.request_id,
                    "account": task.account,
                }
                for task in self._tasks.values()
            ]
