"""Budgets as written on an operator or a connection: read once, bad ones refused naming what is allowed."""

from __future__ import annotations

from decimal import Decimal

import pytest

from airflow_provider_imggen.budgets.limits import Budget, parse_budgets
from airflow_provider_imggen.exceptions import ImageGenerationValidationError


def test_limits_in_images_or_a_currency() -> None:
    budgets = parse_budgets(
        "budget",
        {"dag_run": 10, "dag_per_day": "50.5 CNY", "connection_per_day": "200 usd"},
        origin="operator",
    )
    assert budgets == (
        Budget("dag_run", Decimal(10), "images", "operator"),
        Budget("dag_per_day", Decimal("50.5"), "CNY", "operator"),
        Budget("connection_per_day", Decimal(200), "USD", "operator"),
    )
    assert parse_budgets("b", '{"dag_run": "3 images"}', origin="connection 'c'")[0].limit == 3
    assert parse_budgets("b", None, origin="operator") == ()


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ({"per_week": 10}, "budget scope"),
        ({"dag_run": -1}, "budget['dag_run']"),
        ({"dag_run": "2.5 images"}, "budget['dag_run']"),
        ({"dag_run": "5 EUR"}, "budget['dag_run']"),
        ({"dag_run": True}, "budget['dag_run']"),
        ({"dag_run": "1e3 CNY"}, "budget['dag_run']"),
        ("not json", "budget"),
        ([10], "budget"),
    ],
)
def test_a_bad_budget_is_refused_naming_the_parameter(value: object, named: str) -> None:
    with pytest.raises(ImageGenerationValidationError) as refused:
        parse_budgets("budget", value, origin="operator")
    assert refused.value.parameter == named and "dag_run" in refused.value.allowed


def test_the_operator_refuses_a_bad_budget_when_the_dag_is_parsed() -> None:
    from tests.integration.operators.test_image_generation import make_operator

    with pytest.raises(ImageGenerationValidationError, match="budget"):
        make_operator(budget={"dag_run": "ten"})
