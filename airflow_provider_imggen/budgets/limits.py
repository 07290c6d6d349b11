"""
What a budget is: a limit on one scope (a DAG run, a DAG's day, an account's day) in images or in a currency,
set on the operator (``budget=``) or the connection (extra ``budget``), read and checked once, before
anything is billed. Stdlib only: DAG files import the operator, which checks a literal budget at parse time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from airflow_provider_imggen.exceptions import ImageGenerationValidationError

Scope = Literal["dag_run", "dag_per_day", "connection_per_day"]
# dag_run: every generation of one DAG run; dag_per_day: of one DAG, per UTC day of sending;
# connection_per_day: of one account (base URL, workspace, API key), per UTC day of sending, whichever
# connection, DAG or task sends it.
SCOPES: tuple[Scope, ...] = ("dag_run", "dag_per_day", "connection_per_day")
UNITS = ("images", "CNY", "USD")
ALLOWED = (
    'expected {"<scope>": "<limit>"} with scope dag_run, dag_per_day or connection_per_day and limit a '
    'count of images (10, "10 images") or an amount ("5.00 CNY", "2 USD")'
)
_LIMIT = re.compile(r"(?P<amount>\d{1,12}(?:\.\d{1,6})?)\s*(?P<unit>images?|CNY|USD)", re.IGNORECASE)


@dataclass(frozen=True)
class Budget:
    """
    One limit.

    :param scope: what it limits (:data:`SCOPES`)
    :param limit: how much (a whole number of images, or an amount)
    :param unit: ``images``, ``CNY`` or ``USD``
    :param origin: where it was set, for error messages (``operator``, ``connection 'imggen_default'``)
    """

    scope: Scope
    limit: Decimal
    unit: str
    origin: str

    def describe(self) -> str:
        return f"the {self.scope} budget of {self.limit} {self.unit} set on the {self.origin}"


def parse_budgets(parameter: str, value: object, *, origin: str) -> tuple[Budget, ...]:
    """
    The budgets of an operator's ``budget`` or a connection's extra ``budget`` (a dict, or its JSON text).

    :param parameter: the name errors give (``budget``, ``connection 'x' extra budget``)
    :raises ImageGenerationValidationError: naming the scope, the value and what is allowed
    """
    if value is None or value == "" or value == {}:
        return ()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ImageGenerationValidationError(parameter, value, ALLOWED) from None
    if not isinstance(value, Mapping):
        raise ImageGenerationValidationError(parameter, value, ALLOWED)
    budgets = []
    for scope, limit in value.items():
        if scope not in SCOPES:
            raise ImageGenerationValidationError(f"{parameter} scope", scope, ALLOWED)
        budgets.append(_budget(f"{parameter}[{scope!r}]", scope, limit, origin))
    return tuple(budgets)


def _budget(parameter: str, scope: Scope, limit: object, origin: str) -> Budget:
    if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0:
        return Budget(scope, Decimal(limit), "images", origin)
    match = _LIMIT.fullmatch(limit.strip()) if isinstance(limit, str) else None
    if match is None:
        raise ImageGenerationValidationError(parameter, limit, ALLOWED)
    unit = match["unit"].upper() if match["unit"].upper() in ("CNY", "USD") else "images"
    amount = Decimal(match["amount"])
    if unit == "images" and amount != amount.to_integral_value():
        raise ImageGenerationValidationError(
            parameter, limit, f"a count of images is a whole number; {ALLOWED}"
        )
    return Budget(scope, amount, unit, origin)
