"""
A budget's spending in the ledger's store, against real parts: many sends reserving at once against one
limit (PostgreSQL, whose compare-and-set is atomic; moto's conditional writes are not), settle and release,
and an edited document refused.
"""

from __future__ import annotations

import threading
import uuid
from decimal import Decimal
from typing import Any

import pytest

from airflow_provider_imggen.budgets.book import BudgetBook, BudgetExceeded, Reservation, document_key
from airflow_provider_imggen.budgets.limits import Budget
from airflow_provider_imggen.ledger import LedgerEntry, LedgerEntryUnreadableError, open_ledger_store
from tests.integration.ledger.conftest import PG_CONN_ID, RACERS, pg_conn, postgres_server, racers  # noqa: F401
from tests.s3_fixtures import S3Bucket

OWNER = "dag/manual__1/generate/-1/1"
TEN_IMAGES = Budget("dag_run", Decimal(10), "images", "operator")


def held(images: int = 1, amount: str | None = "0.20") -> Reservation:
    return Reservation(
        images, None if amount is None else Decimal(amount), "CNY", OWNER, "2026-12-07T00:00:00"
    )


def key() -> str:
    return uuid.uuid4().hex


@pytest.fixture(params=["s3", "postgres"])
def book(request: pytest.FixtureRequest, s3: S3Bucket) -> BudgetBook:
    if request.param == "s3":
        return BudgetBook(open_ledger_store(f"s3://aws_default@{s3.name}/budgets"), OWNER)
    request.getfixturevalue("pg_conn")
    return BudgetBook(open_ledger_store(f"postgres://{PG_CONN_ID}/budget_{uuid.uuid4().hex[:12]}"), OWNER)


def test_reserve_settle_release(book: BudgetBook) -> None:
    document = document_key("dag_run", "dag/manual__1")
    first, second, third = key(), key(), key()
    book.reserve(document, "dag/manual__1", TEN_IMAGES, first, held(4))
    book.reserve(document, "dag/manual__1", TEN_IMAGES, first, held(4))  # a retry's: counted once
    book.reserve(document, "dag/manual__1", TEN_IMAGES, second, held(4))
    with pytest.raises(BudgetExceeded) as refused:
        book.reserve(document, "dag/manual__1", TEN_IMAGES, third, held(3))
    assert refused.value.spending.reserved_in("images") == 8 and refused.value.asked == 3

    assert book.settle(document, first, 3, Decimal("0.60"), "CNY")  # billed 3 of the 4 asked
    assert not book.settle(document, first, 3, Decimal("0.60"), "CNY")  # settled once only
    assert book.release(document, second)
    book.reserve(document, "dag/manual__1", TEN_IMAGES, third, held(7))  # 3 spent + 7 = 10: fits
    spending = book.read(document)
    assert spending is not None
    assert (spending.spent_images, spending.spent, list(spending.reservations)) == (
        3,
        {"CNY": Decimal("0.60")},
        [third],
    )


def test_a_currency_budget_counts_amounts_in_its_currency(book: BudgetBook) -> None:
    budget = Budget("dag_per_day", Decimal("1.00"), "CNY", "connection 'c'")
    document = document_key("dag_per_day", "dag/2026-12-07")
    book.reserve(document, "dag/2026-12-07", budget, key(), held(4, "0.80"))
    with pytest.raises(BudgetExceeded):
        book.reserve(document, "dag/2026-12-07", budget, key(), held(1, "0.25"))
    book.reserve(document, "dag/2026-12-07", budget, key(), held(1, "0.20"))


def test_many_sends_at_once_never_reserve_past_the_limit(racers: list[Any]) -> None:  # noqa: F811
    document = document_key("dag_run", "race")
    outcomes: list[str] = []
    start = threading.Barrier(RACERS)

    def send(store: Any) -> None:
        racer = BudgetBook(store, OWNER)
        start.wait()
        for _ in range(3):
            try:
                racer.reserve(document, "race", TEN_IMAGES, key(), held(1))
                outcomes.append("reserved")
            except BudgetExceeded:
                outcomes.append("refused")

    threads = [threading.Thread(target=send, args=(store,)) for store in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert outcomes.count("reserved") == 10 and outcomes.count("refused") == RACERS * 3 - 10
    spending = BudgetBook(racers[0], OWNER).read(document)
    assert spending is not None and len(spending.reservations) == 10


def test_an_edited_budget_is_refused_not_guessed_at(book: BudgetBook) -> None:
    document = document_key("dag_run", "edited")
    book.reserve(document, "edited", TEN_IMAGES, key(), held(2))
    entry, version = book.store.read(document)
    edited = entry.request | {"spent_images": -5}
    tampered = LedgerEntry(**{**entry.__dict__, "request": edited})
    assert book.store.replace(tampered, version) is not None
    with pytest.raises(LedgerEntryUnreadableError, match="spent_images"):
        book.reserve(document, "edited", TEN_IMAGES, key(), held(1))
