"""
The budgets of one task instance's billable sends: reserve before the send, settle after, release only what
provably was not processed (:mod:`~airflow_provider_imggen.budgets.book`).

The hook's one billable send (:meth:`~airflow_provider_imggen.hooks.billable.BillableSendHook._send_billable`)
calls it; the operator builds it (it knows the DAG run) and settles a native task's reservation when the
task's results are read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow_provider_imggen.budgets.book import BudgetBook, BudgetExceeded, Reservation, document_key
from airflow_provider_imggen.budgets.limits import Budget, parse_budgets
from airflow_provider_imggen.exceptions import (
    ImageGenerationBudgetExceededError,
    ImageGenerationValidationError,
)

if TYPE_CHECKING:
    from airflow_provider_imggen.connection_settings import ConnectionSettings
    from airflow_provider_imggen.prices import Price
    from airflow_provider_imggen.request import GenerationRequest


@dataclass(frozen=True)
class TaskInstanceKey:
    """Which task instance sends (every try shares its reservations)."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    try_number: int

    @property
    def owner(self) -> str:
        return f"{self.dag_id}/{self.run_id}/{self.task_id}/{self.map_index}/{self.try_number}"

    @classmethod
    def of(cls, ti: Any) -> TaskInstanceKey:
        map_index = getattr(ti, "map_index", -1)
        try_number = getattr(ti, "try_number", 1)
        return cls(
            dag_id=str(ti.dag_id),
            run_id=str(ti.run_id),
            task_id=str(ti.task_id),
            map_index=map_index if isinstance(map_index, int) else -1,
            try_number=try_number if isinstance(try_number, int) and try_number > 0 else 1,
        )


class BudgetGuard:
    """
    The budgets that apply to one task instance: the operator's and its connection's.

    :param budgets: the limits
    :param settings: the connection (its ledger holds the budgets; its account names the day's budget)
    :param ti: the task instance
    :param log: the task's logger
    """

    def __init__(
        self, budgets: tuple[Budget, ...], settings: ConnectionSettings, ti: TaskInstanceKey, log: Any
    ) -> None:
        from airflow_provider_imggen.ledger import open_ledger_store

        if not settings.ledger:
            raise ImageGenerationValidationError(
                "budget",
                ", ".join(budget.describe() for budget in budgets),
                "a budget needs the connection extra ledger: it is kept in the ledger's store, where every "
                "worker and the triggerer see the same spending (nothing was sent)",
            )
        self.budgets, self.settings, self.ti, self.log = budgets, settings, ti, log
        self.book = BudgetBook(open_ledger_store(settings.ledger), ti.owner)

    @classmethod
    def open(
        cls, *, operator_budget: object, settings: ConnectionSettings, conn_id: str, ti: Any, log: Any
    ) -> BudgetGuard | None:
        """The guard of a task instance, or None when no budget applies."""
        budgets = parse_budgets("budget", operator_budget, origin="operator") + settings.budgets
        if not budgets:
            return None
        del conn_id  # named by the connection's budgets' origin already
        return cls(budgets, settings, TaskInstanceKey.of(ti), log)

    def reservation_key(self, fingerprint: str) -> str:
        """The key of this task instance's reservation for the send ``fingerprint`` (any try's)."""
        ti = self.ti
        identity = [ti.dag_id, ti.run_id, ti.task_id, ti.map_index, fingerprint]
        return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]

    def reserve(self, request: GenerationRequest, fingerprint: str, price: Price | None) -> datetime:
        """
        Set the send's estimate aside in every budget, or refuse it before anything leaves.

        :raises ImageGenerationBudgetExceededError: a budget would be exceeded (nothing reserved remains)
        :raises ImageGenerationValidationError: a budget in a currency with no price for the model
        :return: when it was reserved (what :meth:`settle` and :meth:`release` look it up by)
        """
        for budget in self.budgets:
            if budget.unit != "images" and (price is None or price.currency != budget.unit):
                raise ImageGenerationValidationError(
                    "budget",
                    budget.describe(),
                    f"a budget in {budget.unit} needs a price of {request.model} in {budget.unit} on this "
                    "connection (connection extra prices, or price_list); nothing was sent",
                )
        now = datetime.now(UTC)
        held = Reservation(
            images=request.n,
            amount=None if price is None else price.times(request.n),
            currency=None if price is None else price.currency,
            owner=self.ti.owner,
            at=now.isoformat(),
        )
        key = self.reservation_key(fingerprint)
        reserved: list[str] = []
        try:
            for budget in self.budgets:
                document, name = self._document(budget.scope, now)
                self.book.reserve(document, name, budget, key, held)
                reserved.append(document)
        except BudgetExceeded as exceeded:
            self._release_all(reserved, key)
            from airflow_provider_imggen import metrics

            metrics.budget_refused(exceeded.budget.scope)
            raise self._refusal(exceeded, request, fingerprint) from None
        except BaseException:
            self._release_all(reserved, key)  # nothing was sent: what this call reserved is given back
            raise
        self.log.info(
            "Budget: reserved %d image(s)%s of %s for this send",
            request.n,
            "" if held.amount is None else f" ({format(held.amount, 'f')} {held.currency})",
            ", ".join(budget.describe() for budget in self.budgets),
        )
        return now

    def settle(self, fingerprint: str, images: int, price: Price | None, *, since: datetime) -> None:
        """Count what the send billed (``images`` × ``price``) as spent; its reservation goes."""
        amount = None if price is None else price.times(images)
        currency = None if price is None else price.currency
        self._each_document(
            fingerprint,
            since,
            lambda document, key: self.book.settle(document, key, images, amount, currency),
        )

    def release(self, fingerprint: str, *, since: datetime) -> None:
        """Give the send's reservation back: the service provably did nothing with it."""
        self._each_document(fingerprint, since, self.book.release)

    def _each_document(self, fingerprint: str, since: datetime, act: Any) -> None:
        key = self.reservation_key(fingerprint)
        for scope in sorted({budget.scope for budget in self.budgets}):
            # A per-day reservation lives in the day it was made: the send's day, or the day before when the
            # send's record is from after midnight (the reservation comes first).
            days = (since, since - timedelta(days=1)) if scope != "dag_run" else (since,)
            for day in days:
                document, _ = self._document(scope, day)
                if act(document, key):
                    break

    def _release_all(self, documents: list[str], key: str) -> None:
        for document in documents:
            try:
                self.book.release(document, key)
            except Exception as error:  # still counted: a leaked reservation only ever over-counts
                self.log.warning("Could not give back a budget reservation: %s", error)

    def _document(self, scope: str, moment: datetime) -> tuple[str, str]:
        day = moment.astimezone(UTC).date().isoformat()
        if scope == "dag_run":
            name = f"{self.ti.dag_id}/{self.ti.run_id}"
        elif scope == "dag_per_day":
            name = f"{self.ti.dag_id}/{day}"
        else:
            account = hashlib.sha256(self.settings.api_key.encode()).hexdigest()
            identity = json.dumps([self.settings.base_url, self.settings.workspace, account])
            name = f"account {hashlib.sha256(identity.encode()).hexdigest()[:16]}/{day}"
        return document_key(scope, name), name

    def _refusal(
        self, exceeded: BudgetExceeded, request: GenerationRequest, fingerprint: str
    ) -> ImageGenerationBudgetExceededError:
        budget, spending = exceeded.budget, exceeded.spending
        key = self.reservation_key(fingerprint)
        reserved = spending.reserved_in(budget.unit, besides=key)
        spent = spending.spent_in(budget.unit)
        return ImageGenerationBudgetExceededError(
            f"Refused before sending: {budget.describe()} ({spending.name}) has {_shown(spent)} "
            f"{budget.unit} spent and {_shown(reserved)} reserved by sends in flight; this send asked "
            f"{_shown(exceeded.asked)} ({request.n} image(s) of {request.model}). Nothing was sent or billed",
            scope=budget.scope,
            limit=budget.limit,
            unit=budget.unit,
            spent=spent,
            reserved=reserved,
            asked=exceeded.asked,
        )


def _shown(amount: Decimal) -> str:
    return format(amount.normalize(), "f") if amount else "0"
