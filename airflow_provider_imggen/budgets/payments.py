"""
One ledger entry per billable send that was (or may have been) paid for: who sent it, the model, the images
asked and billed, and its cost (prices.cost_record). The cost report (:mod:`~airflow_provider_imggen.
cost_report`) sums them; they are written once (create-if-absent under the send's key), so a try that reads
a task's results again never records its payment twice.

``outcome`` is ``billed`` (the service said what it billed) or ``unknown`` (it may have billed the images
asked: a crash, a timeout, a 5xx after the send).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_imggen.ledger.entry import LedgerEntry, utc_now
from airflow_provider_imggen.prices import cost_from_xcom, cost_record

if TYPE_CHECKING:
    from airflow_provider_imggen.budgets.guard import TaskInstanceKey
    from airflow_provider_imggen.ledger.store import LedgerStore
    from airflow_provider_imggen.prices import Price

OUTCOMES = ("billed", "unknown")
_FIELDS = {"kind", "dag_id", "run_id", "task_id", "map_index", "model", "outcome", "cost"}


def payment_key(spend_key: str) -> str:
    """The ledger key of the payment of the send ``spend_key``."""
    return hashlib.sha256(f"imggen-payment\0{spend_key}".encode()).hexdigest()


def record_payment(
    store: LedgerStore,
    ti: TaskInstanceKey,
    *,
    spend_key: str,
    at: datetime,
    model: str,
    asked: int,
    billed: int,
    price: Price | None,
    outcome: str,
) -> bool:
    """
    Record a send's payment; False when it was recorded already (another read of the same results). A
    ``billed`` payment replaces an ``unknown`` one of the same send (a task a retry proved its own).
    """
    entry = LedgerEntry(
        fingerprint=payment_key(spend_key),
        state="billed",
        owner=ti.owner,
        claimed_at=at.isoformat(),
        updated_at=utc_now(),
        request={
            "kind": "payment",
            "dag_id": ti.dag_id,
            "run_id": ti.run_id,
            "task_id": ti.task_id,
            "map_index": ti.map_index,
            "model": model,
            "outcome": outcome,
            "cost": cost_record(price, asked=asked, billed_images=billed),
        },
    )
    if store.create(entry) is not None:
        return True
    found = store.read(entry.fingerprint)
    if outcome != "billed" or found is None or found[0].request.get("outcome") != "unknown":
        return False
    return store.replace(entry, found[1]) is not None


@dataclass(frozen=True)
class Payment:
    """A payment read back (strictly: the ledger can be edited)."""

    dag_id: str
    day: str
    model: str
    outcome: str
    cost: dict[str, Any]


def read_payment(entry: LedgerEntry) -> Payment | None:
    """
    The payment an entry records; None when the entry is another kind (a claim, a budget).

    :raises ValueError: a payment entry that does not read as one this provider wrote
    """
    data = entry.request
    if data.get("kind") != "payment":
        return None
    if set(data) != _FIELDS or data["outcome"] not in OUTCOMES:
        raise ValueError("not a payment this provider wrote")
    if not all(isinstance(data[name], str) for name in ("dag_id", "run_id", "task_id", "model")):
        raise ValueError("a payment's names are not text")
    cost = cost_from_xcom("cost", data["cost"])
    if (
        cost is None
        or not isinstance(cost["billed_images"], int)
        or not isinstance(cost["images_asked"], int)
    ):
        raise ValueError("a payment's cost has no image counts")
    if cost["billed"] is not None and cost["per_image"] is not None:
        from decimal import Decimal

        if Decimal(cost["billed"]) != Decimal(cost["per_image"]) * cost["billed_images"]:
            raise ValueError("a payment's amount is not its images × its price")
    return Payment(
        dag_id=data["dag_id"],
        day=entry.claimed_at[:10],
        model=data["model"],
        outcome=data["outcome"],
        cost=cost,
    )
