"""
A budget's spending, kept in the billing ledger's store and changed only by its compare-and-set, so every
worker and the triggerer see one count however many send at once.

One ledger entry per scope and period (:func:`document_key`): what was spent (images, and amounts per
currency) and the open reservations, each keyed by the send that made it. A send moves::

    (none) --reserve--> reserved --settle (what was billed)--> spent
                           '--release (provably not processed)--> (none)

A reservation is never freed for lack of news: a send whose outcome is unknown keeps it, counted as spent.
Every operation is idempotent by reservation key (a retry reserving again finds its own; settling twice
finds nothing the second time). The entry is read back strictly: an edited one is refused (fail closed),
never guessed at.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow_provider_imggen.ledger.entry import LedgerEntry, LedgerEntryUnreadableError, utc_now
from airflow_provider_imggen.ledger.store import LedgerStoreError
from airflow_provider_imggen.prices import PLAIN_AMOUNT

if TYPE_CHECKING:
    from airflow_provider_imggen.budgets.limits import Budget
    from airflow_provider_imggen.ledger.store import LedgerStore, Version

# Compare-and-set rounds before giving up (each lost round means another send changed the budget).
MAX_ROUNDS = 200
# Open reservations a document may hold (each ~200 bytes; an entry is read up to 1 MiB): beyond it a send is
# refused rather than make the budget unreadable for every later send.
MAX_OPEN = 2000
_KEY = re.compile(r"[0-9a-f]{32}")
_CURRENCIES = ("CNY", "USD")


def document_key(scope: str, identity: str) -> str:
    """The ledger key of a scope's budget for one period (``dag_id/run_id``, ``dag_id/2026-12-07``...)."""
    return hashlib.sha256(f"imggen-budget\0{scope}\0{identity}".encode()).hexdigest()


@dataclass(frozen=True)
class Reservation:
    """What one send set aside: images, and an amount when its price is known."""

    images: int
    amount: Decimal | None
    currency: str | None
    owner: str
    at: str

    def in_unit(self, unit: str) -> Decimal:
        if unit == "images":
            return Decimal(self.images)
        return self.amount if self.amount is not None and self.currency == unit else Decimal(0)

    def to_json(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "amount": None if self.amount is None else format(self.amount, "f"),
            "currency": self.currency,
            "owner": self.owner,
            "at": self.at,
        }


@dataclass(frozen=True)
class Spending:
    """A budget document: spent so far and what is reserved, for one scope and period."""

    scope: str
    name: str
    spent_images: int = 0
    spent: dict[str, Decimal] = field(default_factory=dict)
    reservations: dict[str, Reservation] = field(default_factory=dict)

    def spent_in(self, unit: str) -> Decimal:
        return Decimal(self.spent_images) if unit == "images" else self.spent.get(unit, Decimal(0))

    def reserved_in(self, unit: str, *, besides: str | None = None) -> Decimal:
        return sum(
            (held.in_unit(unit) for key, held in self.reservations.items() if key != besides), Decimal(0)
        )

    def to_request(self) -> dict[str, Any]:
        return {
            "kind": "budget",
            "scope": self.scope,
            "name": self.name,
            "spent_images": self.spent_images,
            "spent": {currency: format(amount, "f") for currency, amount in self.spent.items()},
            "reservations": {key: held.to_json() for key, held in self.reservations.items()},
        }


class BudgetExceeded(Exception):
    """A reservation that does not fit (the guard turns it into the user's error)."""

    def __init__(self, budget: Budget, spending: Spending, asked: Decimal) -> None:
        super().__init__(budget.describe())
        self.budget, self.spending, self.asked = budget, spending, asked


class BudgetBook:
    """
    The budget documents of one ledger store.

    :param store: the ledger store (connection extra ``ledger``)
    :param owner: the task instance writing (``dag_id/run_id/task_id/map_index/try_number``)
    """

    def __init__(self, store: LedgerStore, owner: str) -> None:
        self.store, self.owner = store, owner

    def read(self, key: str) -> Spending | None:
        found = self.store.read(key)
        return None if found is None else _spending(found[0])

    def reserve(self, key: str, name: str, budget: Budget, reservation_key: str, held: Reservation) -> None:
        """
        Set ``held`` aside in the document ``key`` if it fits ``budget`` (spent + reserved by other sends +
        asked ≤ limit); a reservation already under ``reservation_key`` (this send's, from an earlier try)
        is counted once.

        :raises BudgetExceeded: it does not fit; nothing was written
        """

        def change(spending: Spending) -> Spending:
            asked = held.in_unit(budget.unit)
            used = spending.spent_in(budget.unit) + spending.reserved_in(budget.unit, besides=reservation_key)
            if used + asked > budget.limit:
                raise BudgetExceeded(budget, spending, asked)
            if reservation_key in spending.reservations:
                return spending
            if len(spending.reservations) >= MAX_OPEN:
                raise LedgerStoreError(
                    f"The budget {spending.name} holds {MAX_OPEN} open reservations (sends whose results "
                    "were never read): nothing was sent. Settle them (read the tasks' results) or start a "
                    "new period"
                )
            return replace(spending, reservations={**spending.reservations, reservation_key: held})

        self._change(key, Spending(scope=budget.scope, name=name), change)

    def settle(
        self, key: str, reservation_key: str, images: int, amount: Decimal | None, currency: str | None
    ) -> bool:
        """Move a reservation to spent, at what was billed; False if there was none (settled already)."""
        settled = False

        def change(spending: Spending) -> Spending:
            nonlocal settled
            if reservation_key not in spending.reservations:
                settled = False
                return spending
            settled = True
            remaining = {k: v for k, v in spending.reservations.items() if k != reservation_key}
            spent = dict(spending.spent)
            if amount is not None and currency is not None:
                spent[currency] = spent.get(currency, Decimal(0)) + amount
            return replace(
                spending, spent_images=spending.spent_images + images, spent=spent, reservations=remaining
            )

        self._change(key, None, change)
        return settled

    def release(self, key: str, reservation_key: str) -> bool:
        """Drop a reservation whose send provably billed nothing; False if there was none."""
        return self.settle(key, reservation_key, 0, None, None)

    def _change(self, key: str, new: Spending | None, change: Any) -> None:
        """Read, change, compare-and-set, until a write wins (``new``: the document when there is none)."""
        for _ in range(MAX_ROUNDS):
            found = self.store.read(key)
            if found is None:
                if new is None:
                    return
                changed = change(new)
                if changed is new:
                    return
                version: Version | None = self.store.create(self._entry(key, changed, None))
            else:
                entry, current = found
                spending = _spending(entry)
                changed = change(spending)
                if changed is spending:
                    return
                version = self.store.replace(self._entry(key, changed, entry), current)
            if version is not None:
                return
            time.sleep(random.uniform(0.005, 0.05))  # another send changed it first: read it again
        raise LedgerStoreError(
            f"The budget {key[:12]} changed under {MAX_ROUNDS} compare-and-set rounds in a row; "
            "nothing was sent"
        )

    def _entry(self, key: str, spending: Spending, last: LedgerEntry | None) -> LedgerEntry:
        now = utc_now()
        return LedgerEntry(
            fingerprint=key,
            state="billed",
            owner=self.owner,
            claimed_at=last.claimed_at if last is not None else now,
            updated_at=now,
            request=spending.to_request(),
        )


def _spending(entry: LedgerEntry) -> Spending:
    """The document of a ledger entry, read strictly (an edited entry is refused, not guessed at)."""
    data = entry.request
    source = f"budget {entry.fingerprint[:12]}"

    def fail(reason: str) -> LedgerEntryUnreadableError:
        return LedgerEntryUnreadableError(f"request.{reason}", source=source)

    if data.get("kind") != "budget" or set(data) != {
        "kind",
        "scope",
        "name",
        "spent_images",
        "spent",
        "reservations",
    }:
        raise fail("kind: not a budget document")
    images, spent, reservations = data["spent_images"], data["spent"], data["reservations"]
    if not _count(images):
        raise fail("spent_images must be a count")
    if not isinstance(spent, dict) or not all(c in _CURRENCIES and _amount(a) for c, a in spent.items()):
        raise fail("spent must map CNY/USD to plain decimal amounts")
    if not isinstance(reservations, dict) or not all(_KEY.fullmatch(key) for key in reservations):
        raise fail("reservations must be keyed by 32 hex digits")
    held = {}
    for key, item in reservations.items():
        if (
            not isinstance(item, dict)
            or set(item) != {"images", "amount", "currency", "owner", "at"}
            or not _count(item["images"])
            or not (item["amount"] is None or _amount(item["amount"]))
            or item["currency"] not in (None, *_CURRENCIES)
            or not isinstance(item["owner"], str)
            or not isinstance(item["at"], str)
        ):
            raise fail(f"reservations[{key}] is not a reservation")
        held[key] = Reservation(
            images=item["images"],
            amount=None if item["amount"] is None else Decimal(item["amount"]),
            currency=item["currency"],
            owner=item["owner"],
            at=item["at"],
        )
    if not isinstance(data["scope"], str) or not isinstance(data["name"], str):
        raise fail("scope and name must be text")
    return Spending(
        scope=data["scope"],
        name=data["name"],
        spent_images=images,
        spent={currency: Decimal(amount) for currency, amount in spent.items()},
        reservations=held,
    )


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _amount(value: object) -> bool:
    return isinstance(value, str) and PLAIN_AMOUNT.fullmatch(value) is not None
