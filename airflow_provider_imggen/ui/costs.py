"""
What the Images view shows of money: each generation task instance's cost, and their totals per currency.

Read only from generation records that :meth:`~airflow_provider_imggen.records.GenerationRecord.from_dict`
validated (its ``cost`` through :func:`~airflow_provider_imggen.prices.cost_from_xcom`: counts are
non-negative integers, amounts plain decimal strings, the currency CNY or USD), and rendered escaped. Pure
functions over plain data, like :mod:`~airflow_provider_imggen.ui.tiles`.
"""

from __future__ import annotations

import decimal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from html import escape
from typing import Any

from airflow_provider_imggen.prices import plain

# Amounts are at most 15 + 15 digits (cost_from_xcom): a sum of many of them needs more than Decimal's
# default 28 significant digits to stay exact.
_SUM_PRECISION = 80


@dataclass(frozen=True)
class TaskCost:
    """
    The cost of one generation, as its task instance's XCom recorded it.

    :param per_image: the price per image (plain decimal string), None when no price is known
    :param billed: what the billed images cost (plain decimal string), None when the price or the billed
        count is unknown
    """

    task_id: str
    map_index: int
    request_id: str | None
    images_asked: int | None
    billed_images: int | None
    currency: str | None
    per_image: str | None
    billed: str | None

    @classmethod
    def of(
        cls, task_id: str, map_index: int, request_id: str | None, cost: Mapping[str, Any] | None
    ) -> TaskCost:
        """From a validated ``cost`` (None: an XCom written before costs were recorded)."""
        cost = cost or {}
        # An amount means money only with its currency and price: one without the other (an edited XCom
        # that still validates field by field) is shown as no price rather than added to a total.
        known = cost.get("currency") is not None and cost.get("per_image") is not None
        return cls(
            task_id=task_id,
            map_index=map_index,
            request_id=request_id,
            images_asked=cost.get("images_asked"),
            billed_images=cost.get("billed_images"),
            currency=cost.get("currency") if known else None,
            per_image=cost.get("per_image") if known else None,
            billed=cost.get("billed") if known else None,
        )

    @property
    def task_label(self) -> str:
        return self.task_id + (f" [{self.map_index}]" if self.map_index >= 0 else "")


@dataclass(frozen=True)
class CostTotals:
    """
    Totals over some generations: billed amounts summed per currency (CNY is never added to USD), and the
    images billed, with how many of them have no known price.
    """

    amounts: dict[str, Decimal]
    billed_images: int
    unpriced_images: int
    unknown: int  # generations whose billed count is not known (submitted without waiting)


def totals(costs: Sequence[TaskCost]) -> CostTotals:
    amounts: dict[str, Decimal] = {}
    billed_images = unpriced = unknown = 0
    with decimal.localcontext() as context:
        context.prec = _SUM_PRECISION
        for cost in costs:
            if cost.billed_images is None:
                unknown += 1
                continue
            billed_images += cost.billed_images
            if cost.currency is None or cost.billed is None:
                unpriced += cost.billed_images
                continue
            amounts[cost.currency] = amounts.get(cost.currency, Decimal(0)) + Decimal(cost.billed)
    return CostTotals(dict(sorted(amounts.items())), billed_images, unpriced, unknown)


def per_image_text(per_image: str | None, currency: str | None) -> str:
    """A tile's price: ``0.14 CNY``, or ``price unknown``."""
    return f"{per_image} {currency}" if per_image is not None and currency is not None else "price unknown"


def _images_text(cost: TaskCost) -> str:
    if cost.billed_images is None:
        return "not known yet"
    asked = f" of {cost.images_asked} asked" if cost.images_asked is not None else ""
    return f"{cost.billed_images}{asked}"


def _amount(amount: str | Decimal | None, currency: str | None) -> str:
    if amount is None or currency is None:
        return "price unknown"
    shown = plain(amount) if isinstance(amount, Decimal) else amount
    return f'<span data-currency="{escape(currency)}">{escape(shown)} {escape(currency)}</span>'


def _total_amounts(summed: CostTotals) -> str:
    parts = [_amount(amount, currency) for currency, amount in summed.amounts.items()]
    if summed.unpriced_images:
        parts.append(f"{summed.unpriced_images} image(s) at an unknown price")
    if summed.unknown:
        parts.append(f"{summed.unknown} generation(s) not billed yet")
    # Listed side by side, never summed: CNY and USD are not added up.
    return ", ".join(parts) if parts else "—"


def render_costs(costs: Sequence[TaskCost], *, total_label: str) -> str:
    """
    The cost table: one row per generation task instance (images billed of those asked, the price per
    image, the billed amount), then the total per currency. Empty when no generation is known.
    """
    if not costs:
        return ""
    rows = "".join(
        f'<tr data-task="{escape(cost.task_id)}" data-map-index="{cost.map_index}">'
        f"<td>{escape(cost.task_label)}</td>"
        f'<td data-field="images billed">{escape(_images_text(cost))}</td>'
        f'<td data-field="per image">{escape(per_image_text(cost.per_image, cost.currency))}</td>'
        f'<td data-field="billed">{_amount(cost.billed, cost.currency)}</td></tr>'
        for cost in costs
    )
    summed = totals(costs)
    total = (
        f'<tr data-total="{escape(total_label)}"><th scope="row">{escape(total_label)}</th>'
        f'<td data-field="images billed">{summed.billed_images}</td><td></td>'
        f'<td data-field="billed">{_total_amounts(summed)}</td></tr>'
    )
    return (
        '<table class="costs"><caption>Cost</caption><thead><tr><th scope="col">generation task</th>'
        '<th scope="col">images billed</th><th scope="col">per image</th><th scope="col">billed</th>'
        f"</tr></thead><tbody>{rows}</tbody><tfoot>{total}</tfoot></table>"
    )
