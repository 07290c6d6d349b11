"""
The send slots of a batch (:class:`~airflow_provider_imggen.operators.image_generation_batch.
ImageGenerationBatchOperator`): one ledger entry per image request of one task instance, written only by
compare-and-set, so that however many copies of the batch's trigger run at once (a triggerer thought dead
that wakes up, a task retry), each request is sent at most once per claim.

A slot moves::

    (none) --claim--> claimed --answered--> billed (its task id) --task failed, not billed--> released
                         |--provably not processed (429, never connected)--> released --claim--> ...
                         |--refused (4xx)--> failed
                         '--outcome unknown--> billed (a task proven its own) | unknown

Only the copy whose ``create`` (or ``replace`` of a ``released`` entry) wins sends. A claim is permanent, not
a lease: when its copy dies, another copy takes it over once it is older than any send can last
(:meth:`SendSlots.take_for_recovery`), and then only to *prove* from the task list which task the send
created, never to send again. ``unknown`` and ``failed`` are final.

The key of a slot names the task instance (not its try), the request's position and the request itself,
with the account (:func:`~airflow_provider_imggen.ledger.claims.ledger_fingerprint`): a retry finds its
slots; a changed prompt is another slot.

Every call blocks (one store round trip); the trigger runs them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from airflow_provider_imggen.ledger.entry import LedgerEntry, utc_now

if TYPE_CHECKING:
    from airflow_provider_imggen.ledger.store import LedgerStore, Version


def slot_key(task_instance: str, index: int, request_fingerprint: str) -> str:
    """
    The ledger key of request ``index`` of a batch.

    :param task_instance: ``dag_id/run_id/task_id/map_index`` (every try of the task shares its slots)
    :param request_fingerprint: the request's ledger fingerprint (what is sent, to which account)
    """
    canonical = json.dumps(
        {"batch": task_instance, "index": index, "request": request_fingerprint}, sort_keys=True
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Held:
    """A slot's entry as last read or written, with the store's version of it."""

    entry: LedgerEntry
    version: Version

    @property
    def state(self) -> str:
        return self.entry.state

    @property
    def attempt(self) -> int:
        value = self.entry.request.get("attempt")
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    @property
    def copy(self) -> str | None:
        value = self.entry.request.get("copy")
        return value if isinstance(value, str) else None

    @property
    def earlier_tasks(self) -> tuple[str, ...]:
        """Tasks an earlier attempt of the slot created (failed without billing): never adopted again."""
        value = self.entry.request.get("earlier_tasks")
        return tuple(item for item in value if isinstance(item, str)) if isinstance(value, list) else ()


class SendSlots:
    """
    One trigger copy's dealings with its batch's slots.

    :param store: the ledger store (the connection's ``ledger``)
    :param owner: the task instance and try, ``dag_id/run_id/task_id/map_index/try_number``
    :param copy: this copy of the trigger (random per run of it): tells its own claims from another copy's
    """

    def __init__(self, *, store: LedgerStore, owner: str, copy: str) -> None:
        self.store = store
        self.owner = owner
        self.copy = copy

    def read(self, key: str) -> Held | None:
        found = self.store.read(key)
        return Held(*found) if found is not None else None

    def claim(self, key: str, last: Held | None, *, index: int, model: str, images: int) -> Held | None:
        """
        Claim the slot to send its request: from nothing (``last`` None) or from a ``released`` entry at
        its version. None when another copy got there first (read the slot again to see what it holds).
        """
        if last is not None and last.state != "released":
            return None
        now = utc_now()
        request = {
            "index": index,
            "attempt": (last.attempt if last is not None else 0) + 1,
            "copy": self.copy,
            "model": model,
            "n": images,
        }
        if last is not None and last.earlier_tasks:
            request["earlier_tasks"] = list(last.earlier_tasks)
        entry = LedgerEntry(
            fingerprint=key,
            state="claimed",
            owner=self.owner,
            claimed_at=now,
            updated_at=now,
            request=request,
        )
        version = self.store.create(entry) if last is None else self.store.replace(entry, last.version)
        return Held(entry, version) if version is not None else None

    def take_for_recovery(self, held: Held) -> Held | None:
        """
        Take over another copy's ``claimed`` slot (the caller decided it is stale) to recover its send from
        the task list: never to send. Keeps ``claimed_at`` (when the send may have left). None when the
        slot changed meanwhile.
        """
        entry = replace(
            held.entry,
            owner=self.owner,
            updated_at=utc_now(),
            request={**held.entry.request, "copy": self.copy, "recovering": True},
        )
        version = self.store.replace(entry, held.version)
        return Held(entry, version) if version is not None else None

    def settle(
        self,
        held: Held,
        state: str,
        *,
        generation_task_id: str | None = None,
        request_id: str | None = None,
        **note: Any,
    ) -> Held | None:
        """
        Write the slot's next state over ``held`` (compare-and-set): ``billed`` with its task id,
        ``released``, ``failed`` or ``unknown`` with a note (``reason``, ``code``...). None when the slot
        changed meanwhile (another copy took it over).
        """
        request = {**held.entry.request, **note}
        request.pop("recovering", None)
        if state == "released" and held.entry.generation_task_id:
            # A task that failed without billing: its slot sends again, and its task is never adopted.
            request["earlier_tasks"] = [*held.earlier_tasks, held.entry.generation_task_id]
        entry = replace(
            held.entry,
            state=state,  # type: ignore[arg-type]
            owner=self.owner,
            updated_at=utc_now(),
            # A final state keeps the task it is about (a task that failed for good, or ended unknown).
            generation_task_id=generation_task_id if state in ("billed", "failed", "unknown") else None,
            request_id=request_id,
            request=request,
        )
        version = self.store.replace(entry, held.version)
        return Held(entry, version) if version is not None else None

    def record_task(self, task_ledger_key: str, generation_task_id: str, key: str) -> None:
        """Record which slot created a task, so that no other run's recovery adopts it."""
        now = utc_now()
        entry = LedgerEntry(
            fingerprint=task_ledger_key,
            state="billed",
            owner=self.owner,
            claimed_at=now,
            updated_at=now,
            generation_task_id=generation_task_id,
            request={"for": key},
        )
        self.store.create(entry)

    def owns_elsewhere(self, task_ledger_key: str, key: str) -> bool:
        """Whether the ledger records the task behind ``task_ledger_key`` for another request than ``key``."""
        found = self.store.read(task_ledger_key)
        return found is not None and found[0].request.get("for") != key
