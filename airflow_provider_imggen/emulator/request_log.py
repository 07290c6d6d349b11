"""
The one request log: an entry per API call and download, and the billing read from it. A task submission's
entry is billed once its task ended (settled from the task store by ``task_id`` whenever the log is read).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class RequestLog:
    def __init__(self, task_billing: Callable[[str], int | None]) -> None:
        self._lock = threading.Lock()
        self._entries: list[dict[str, Any]] = []
        self._task_billing = task_billing

    def record(self, entry: dict[str, Any]) -> dict[str, Any]:
        """
        Keep one entry: ``kind`` (generate, submit, task, cancel, list, multimodal, download, models),
        ``method``, ``path``, ``status`` (0: no answer), ``outcome``, ``billed_images``, ``model``, ``n``,
        ``fault``, ``task_id``, ``request_id``, ``fingerprint``, ``workspace``, ``account``, ``time``.
        """
        entry.setdefault("billed_images", 0)
        entry["billed"] = entry["billed_images"] > 0
        with self._lock:
            self._entries.append(entry)
        log.debug(
            "%s %s -> %s outcome=%s billed=%s request_id=%s",
            entry["method"],
            entry["path"],
            entry["status"],
            entry.get("outcome"),
            entry["billed_images"],
            entry["request_id"],
        )
        return entry

    def _settle(self) -> None:
        """Bring submissions up to date: billed once their task ended (caller holds the lock)."""
        for entry in self._entries:
            if entry["kind"] == "submit" and entry.get("task_id"):
                billed = self._task_billing(entry["task_id"])
                if billed is not None:
                    entry["billed_images"] = billed
                    entry["billed"] = billed > 0

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            self._settle()
            return [dict(entry) for entry in self._entries]

    def billed_images(self) -> int:
        with self._lock:
            self._settle()
            return sum(entry["billed_images"] for entry in self._entries)

    def billing(self) -> dict[str, Any]:
        """``{"billed_images", "billed_requests", "by_request_id": {request_id: images}}``."""
        with self._lock:
            self._settle()
            by_request = {
                entry["request_id"]: entry["billed_images"] for entry in self._entries if entry["billed"]
            }
            return {
                "billed_images": sum(by_request.values()),
                "billed_requests": len(by_request),
                "by_request_id": by_request,
            }

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
