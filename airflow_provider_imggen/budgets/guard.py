"""
What one task instance's billable sends spend: their budgets' reservations (reserve before the send, settle
after, release only what provably was not processed: :mod:`~airflow_provider_imggen.budgets.book`) and one
payment record per send in the ledger (:mod:`~airflow_provider_imggen.budgets.payments`, what the cost
report sums).

Each send has a key of its own, recorded with its intent in the billing journal (``spend_key``), and a
moment (the intent's time, which names the day of the per-day budgets): a retry, a reconnecting try or a
resumed deferral finds exactly the send's reservation there, and two sends never share one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow_provider_imggen.budgets.book import BudgetBook, BudgetExceeded, Reservation, document_key
from airflow_provider_imggen.budgets.limits import Budget, parse_budgets
from airflow_provider_imggen.exceptions import (
    ImageGenerationBudgetExceededError,
    ImageGenerationValidationError,
)
from airflow_provider_imggen.ledger.claims import account_digest
from airflow_provider_imggen.ledger.entry import make_owner

if TYPE_CHECKING:
    from airflow_provider_imggen.connection_settings import ConnectionSettings
    from airflow_provider_imggen.prices import Price
    from airflow_provider_imggen.request import GenerationRequest


@dataclass(frozen=True)
class TaskInstanceKey:
    """Which task instance sends."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    try_number: int

    @property
    def owner(self) -> str:
        return make_owner(self.dag_id, self.run_id, self.task_id, self.map_index, self.try_number)

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
    The budgets that apply to one task instance (the operator's and its connection's) and its payments.

    :param budgets: the limits (none: only payments are recorded)
    :param settings: the connection (its ledger holds both; its account names the account's day)
    :param ti: the task instance
    :param log: the task's logger
    """

    def __init__(
        self, budgets: tuple[Budget, ...], settings: ConnectionSettings, ti: TaskInstanceKey, log: Any
    ) -> None:
        from airflow_provider_imggen.ledger import open_ledger_store

        assert settings.ledger, "BudgetGuard.open() checks the ledger first"
        self.budgets, self.settings, self.ti, self.log = budgets, settings, ti, log
        self.book = BudgetBook(open_ledger_store(settings.ledger), ti.owner)

    @classmethod
    def open(
        cls, *, operator_budget: object, settings: ConnectionSettings, ti: Any, log: Any
    ) -> BudgetGuard | None:
        """
        The guard of a task instance; None without a ledger (then no budget may apply).

        :raises ImageGenerationValidationError: a budget and no ledger to keep it in (nothing was sent)
        """
        budgets = parse_budgets("budget", operator_budget, origin="operator") + settings.budgets
        if not settings.ledger:
            if budgets:
                raise ImageGenerationValidationError(
                    "budget",
                    ", ".join(budget.describe() for budget in budgets),
                    "a budget needs the connection extra ledger: it is kept in the ledger's store, where "
                    "every worker and the triggerer see the same spending (nothing was sent)",
                )
            return None
        return cls(budgets, settings, TaskInstanceKey.of(ti), log)

    def reserve(self, request: GenerationRequest, price: Price | None, *, key: str, at: datetime) -> None:
        """
        Set the send's estimate aside in every budget under ``key``, or refuse it before anything leaves.
        Refused or failed, what this call reserved is given back (nothing was sent).

        :raises ImageGenerationBudgetExceededError: a budget would be exceeded
        :raises ImageGenerationValidationError: a budget in a currency with no price for the model
        """
        for budget in self.budgets:
            if budget.unit != "images" and (price is None or price.currency != budget.unit):
                raise ImageGenerationValidationError(
                    "budget",
                    budget.describe(),
                    f"a budget in {budget.unit} needs a price of {request.model} in {budget.unit} on this "
                    "connection (connection extra prices, or price_list); nothing was sent",
                )
        held = Reservation(
            images=request.n,
            amount=None if price is None else price.times(request.n),
            currency=None if price is None else price.currency,
            owner=self.ti.owner,
            at=at.isoformat(),
        )
        reserved: list[str] = []
        try:
            for budget in self.budgets:
                document, name = self._document(budget.scope, at)
                self.book.reserve(document, name, budget, key, held)
                reserved.append(document)
        except BudgetExceeded as exceeded:
            self._give_back(reserved, key)
            from airflow_provider_imggen import metrics

            metrics.budget_refused(exceeded.budget.scope)
            raise self._refusal(exceeded, request, key) from None
        except BaseException:
            self._give_back(reserved, key)
            raise
        if self.budgets:
            self.log.info(
                "Budget: reserved %d image(s)%s in %s",
                request.n,
                "" if held.amount is None else f" ({format(held.amount, 'f')} {held.currency})",
                ", ".join(budget.describe() for budget in self.budgets),
            )

    def settle(self, *, key: str, at: datetime, images: int, price: Price | None) -> None:
        """Count what the send ``key`` billed (``images`` × ``price``) as spent; its reservation goes."""
        amount = None if price is None else price.times(images)
        currency = None if price is None else price.currency
        for document in self._documents(at):
            self.book.settle(document, key, images, amount, currency)

    def record_payment(
        self,
        request: GenerationRequest,
        price: Price | None,
        *,
        key: str,
        at: datetime,
        billed: int,
        outcome: str,
    ) -> bool:
        """Record the send's payment (once: False when it was already); best effort, never raises."""
        from airflow_provider_imggen.budgets.payments import record_payment

        try:
            return record_payment(
                self.book.store,
                self.ti,
                spend_key=key,
                at=at,
                model=request.model,
                asked=request.n,
                billed=billed,
                price=price,
                outcome=outcome,
            )
        except Exception as error:
            self.log.warning("Could not record this send's payment in the ledger: %s", error)
            return True

    def release(self, *, key: str, at: datetime) -> None:
        """Give the send's reservation back: the service provably did nothing with it."""
        self._give_back(self._documents(at), key)

    def _documents(self, at: datetime) -> list[str]:
        return list(dict.fromkeys(self._document(budget.scope, at)[0] for budget in self.budgets))

    def _give_back(self, documents: list[str], key: str) -> None:
        for document in dict.fromkeys(documents):
            try:
                self.book.release(document, key)
            except Exception as error:  # still counted: a reservation left open only ever over-counts
                self.log.warning("Could not give back a budget reservation: %s", error)

    def _document(self, scope: str, moment: datetime) -> tuple[str, str]:
        day = moment.astimezone(UTC).date().isoformat()
        if scope == "dag_run":
            name = f"{self.ti.dag_id}/{self.ti.run_id}"
        elif scope == "dag_per_day":
            name = f"{self.ti.dag_id}/{day}"
        else:
            name = f"account {account_digest(self.settings)[:16]}/{day}"
        return document_key(scope, name), name

    def _refusal(
        self, exceeded: BudgetExceeded, request: GenerationRequest, key: str
    ) -> ImageGenerationBudgetExceededError:
        budget, spending = exceeded.budget, exceeded.spending
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
