"""
What image generation cost, per DAG, per day and per model, from the billing ledger::

    python -m airflow_provider_imggen.cost_report --conn-id imggen_default --since 2026-12-01
    python -m airflow_provider_imggen.cost_report --ledger postgres://ledger_db/imggen_ledger --json

Every billable send on a connection with a ledger (extra ``ledger``) records its payment there
(:mod:`~airflow_provider_imggen.budgets.payments`): the images billed and, when a price was known, the
amount; a send whose outcome is unknown is listed apart, as images that may have been billed.
Amounts are summed per currency, never across. The ledger can be edited: each entry is read strictly, and
one that does not read as this provider's (or whose cost does not) is counted as unreadable, not guessed at.
Run it where Airflow's connections resolve (a worker, the scheduler's machine): it reads the ledger with
them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from airflow_provider_imggen.ledger.entry import LedgerEntry, LedgerEntryUnreadableError
from airflow_provider_imggen.prices import plain


@dataclass
class Total:
    """What one group (a DAG, a day, a model, or all three) cost."""

    requests: int = 0
    images: int = 0
    unpriced_images: int = 0
    amounts: dict[str, Decimal] = field(default_factory=dict)

    def add(self, images: int, amount: Decimal | None, currency: str | None) -> None:
        self.requests += 1
        self.images += images
        if amount is None or currency is None:
            self.unpriced_images += images
        else:
            self.amounts[currency] = self.amounts.get(currency, Decimal(0)) + amount

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "images": self.images,
            "unpriced_images": self.unpriced_images,
            "cost": {currency: plain(amount) for currency, amount in sorted(self.amounts.items())},
        }

    def shown(self) -> str:
        cost = ", ".join(f"{plain(amount)} {currency}" for currency, amount in sorted(self.amounts.items()))
        unpriced = f" ({self.unpriced_images} at no known price)" if self.unpriced_images else ""
        return f"{self.requests} request(s), {self.images} image(s): {cost or 'no priced images'}{unpriced}"


@dataclass
class Report:
    """The ledger's paid requests, grouped."""

    rows: dict[tuple[str, str, str], Total] = field(default_factory=dict)
    by_dag: dict[str, Total] = field(default_factory=dict)
    by_day: dict[str, Total] = field(default_factory=dict)
    by_model: dict[str, Total] = field(default_factory=dict)
    total: Total = field(default_factory=Total)
    unreadable: int = 0
    # Images of sends whose outcome is unknown (a crash, a timeout, a 5xx after sending): maybe billed.
    at_risk: int = 0

    def add(self, entry: LedgerEntry, *, since: str | None, until: str | None) -> None:
        from airflow_provider_imggen.budgets.payments import read_payment

        try:
            payment = read_payment(entry)
        except ValueError:
            self.unreadable += 1
            return
        if payment is None:
            return  # a request's claim, a budget, a batch slot: not a payment
        if (since is not None and payment.day < since) or (until is not None and payment.day > until):
            return
        cost = payment.cost
        if payment.outcome == "unknown":
            self.at_risk += cost["images_asked"]  # may have been billed: never answered
            return
        amount = None if cost["billed"] is None else Decimal(cost["billed"])
        groups: tuple[tuple[dict[Any, Total], Any], ...] = (
            (self.rows, (payment.dag_id, payment.day, payment.model)),
            (self.by_dag, payment.dag_id),
            (self.by_day, payment.day),
            (self.by_model, payment.model),
        )
        for group, key in groups:
            group.setdefault(key, Total()).add(cost["billed_images"], amount, cost["currency"])
        self.total.add(cost["billed_images"], amount, cost["currency"])

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": [
                {"dag_id": dag_id, "day": day, "model": model, **total.to_json()}
                for (dag_id, day, model), total in sorted(self.rows.items())
            ],
            "by_dag": {key: total.to_json() for key, total in sorted(self.by_dag.items())},
            "by_day": {key: total.to_json() for key, total in sorted(self.by_day.items())},
            "by_model": {key: total.to_json() for key, total in sorted(self.by_model.items())},
            "total": self.total.to_json(),
            "images_outcome_unknown": self.at_risk,
            "unreadable_entries": self.unreadable,
        }

    def lines(self) -> Iterable[str]:
        for title, group in (("DAG", self.by_dag), ("day (UTC)", self.by_day), ("model", self.by_model)):
            yield f"Per {title}:"
            for key, total in sorted(group.items()):
                yield f"  {key}: {total.shown()}"
        yield f"Total: {self.total.shown()}"
        if self.at_risk:
            yield f"{self.at_risk} more image(s) of sends whose outcome is unknown may have been billed"
        if self.unreadable:
            yield f"{self.unreadable} ledger entries could not be read as this provider's: left out"


def build_report(store: Any, *, since: str | None = None, until: str | None = None) -> Report:
    """The report of a ledger store (:func:`~airflow_provider_imggen.ledger.open_ledger_store`)."""
    report = Report()
    for fingerprint in store.fingerprints():
        try:
            found = store.read(fingerprint)
        except LedgerEntryUnreadableError:
            report.unreadable += 1
            continue
        if found is not None:
            report.add(found[0], since=since, until=until)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_imggen.cost_report",
        description="What image generation cost, per DAG, per day and per model, from the billing ledger.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--conn-id", default="imggen_default", help="the imggen connection whose ledger to read"
    )
    where.add_argument("--ledger", help="a ledger setting (s3://conn@bucket/prefix, postgres://conn/table)")
    parser.add_argument("--since", help="first day (UTC), YYYY-MM-DD")
    parser.add_argument("--until", help="last day (UTC), YYYY-MM-DD")
    parser.add_argument("--json", action="store_true", help="print JSON")
    options = parser.parse_args(argv)
    for name in ("since", "until"):
        value = getattr(options, name)
        if value is not None and not _is_day(value):
            parser.error(f"--{name} {value!r}: expected a day, YYYY-MM-DD")

    from airflow_provider_imggen.ledger import open_ledger_store

    setting = options.ledger
    if setting is None:
        from airflow_provider_imggen.hooks.image_generation import ImageGenerationHook

        setting = ImageGenerationHook(imggen_conn_id=options.conn_id).settings.ledger
        if setting is None:
            parser.error(f"connection {options.conn_id!r} has no extra ledger: nothing records what was paid")
    with _logs_to_stderr(), open_ledger_store(setting) as store:
        report = build_report(store, since=options.since, until=options.until)
    if options.json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write("\n".join(report.lines()) + "\n")
    return 0


@contextlib.contextmanager
def _logs_to_stderr() -> Iterator[None]:
    """
    Whatever the hooks log goes to stderr while the ledger is read (Airflow's loggers print to stdout):
    stdout holds the report alone, for a pipe (``--json | jq``).
    """
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _is_day(value: str) -> bool:
    from datetime import date

    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return len(value) == 10


if __name__ == "__main__":
    sys.exit(main())
