"""
What a generation cost, in its XCom: the price table's price per image × the images the emulator billed,
for each model family, on both endpoints and the gateway; an estimate before (images asked × price).

The emulator bills only the images it made (a task whose image failed bills one fewer), and its billing log,
not the provider's answer parsing, is what the cost is checked against.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.prices import LIST_PRICES
from tests.conftest import set_imggen_connection
from tests.integration.operators.test_deferrable import fast
from tests.integration.operators.test_image_generation import make_operator, run

# One model per family, with what it is asked: (model, operator arguments).
FAMILIES = [
    pytest.param("qwen-image", {"size": "1328x1328"}, id="qwen-image-task-api"),
    pytest.param("qwen-image-plus", {"size": "1328x1328", "endpoint": "sync"}, id="qwen-image-plus-sync"),
    pytest.param("qwen-image-2.0", {"n": 2}, id="qwen-image-2.0"),
    pytest.param("qwen-image-2.0-pro", {}, id="qwen-image-2.0-pro"),
    pytest.param("wan2.2-t2i-flash", {"n": 3}, id="wan2.2"),
    pytest.param("wanx2.1-t2i-plus", {"n": 2}, id="wanx2.1"),
    pytest.param("wanx2.0-t2i-turbo", {}, id="wanx2.0"),
    pytest.param("wan2.5-t2i-preview", {"n": 2}, id="wan2.5"),
    pytest.param("wan2.6-t2i", {"n": 2}, id="wan2.6"),
    pytest.param("wan2.7-image", {"n": 2}, id="wan2.7"),
    pytest.param("wan2.7-image-pro", {}, id="wan2.7-pro"),
    pytest.param("z-image-turbo", {"prompt_upsampling": False}, id="z-image"),
]


def dashscope(emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, **extra: Any) -> None:
    set_imggen_connection(monkeypatch, emulator.base_url, api_style="dashscope", max_retries=3, **extra)


def check_cost(cost: dict[str, Any], per_image: Decimal, currency: str, asked: int, billed: int) -> None:
    assert cost["currency"] == currency
    assert Decimal(cost["per_image"]) == per_image
    assert cost["images_asked"] == asked and cost["billed_images"] == billed
    assert Decimal(cost["estimated"]) == per_image * asked
    assert Decimal(cost["billed"]) == per_image * billed


@pytest.mark.parametrize(
    ("price_list", "column", "currency"), [("beijing", 0, "CNY"), ("singapore", 1, "USD")]
)
@pytest.mark.parametrize(("model", "arguments"), FAMILIES)
def test_the_xcom_cost_is_the_list_price_times_what_the_emulator_billed(
    emulator: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    model: str,
    arguments: dict[str, Any],
    price_list: str,
    column: int,
    currency: str,
) -> None:
    listed = LIST_PRICES[model][column]
    if listed is None:
        pytest.skip(f"{model} has no {price_list} list price")
    dashscope(emulator, monkeypatch, price_list=price_list)
    metadata = run(make_operator(model=model, **fast(**arguments)))

    billed = emulator.billing()["billed_images"]
    assert billed == arguments.get("n", 1)
    check_cost(metadata["cost"], listed.per_image, currency, arguments.get("n", 1), billed)
    check_images_view(metadata, listed.per_image, currency, billed)


def check_images_view(metadata: dict[str, Any], per_image: Decimal, currency: str, billed: int) -> None:
    """The Images view's cost table of this XCom (read back as the view reads it): price × billed."""
    from airflow_provider_imggen.records import GenerationRecord
    from airflow_provider_imggen.ui.costs import TaskCost, render_costs

    record = GenerationRecord.from_dict(metadata)
    html = render_costs([TaskCost.of("generate", -1, record.request_id, record.cost)], total_label="run")
    amount = f'<span data-currency="{currency}">{per_image * billed} {currency}</span>'
    assert f'<td data-field="per image">{per_image} {currency}</td>' in html
    assert f'<td data-field="billed">{amount}</td>' in html
    assert f'<td data-field="images billed">{billed}</td>' in html  # the run's total row


def test_a_task_that_lost_an_image_costs_the_images_it_billed(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    dashscope(emulator, monkeypatch, price_list="beijing")
    emulator.set_faults(fail_next_task_images=((1,),))
    metadata = run(make_operator(model="wan2.2-t2i-flash", **fast(n=3)))

    assert emulator.billing()["billed_images"] == 2 and len(metadata["images"]) == 2
    check_cost(metadata["cost"], Decimal("0.14"), "CNY", 3, 2)


def test_z_image_costs_twice_as_much_with_prompt_extension(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    dashscope(emulator, monkeypatch, price_list="beijing")
    metadata = run(make_operator(model="z-image-turbo", **fast(prompt_upsampling=True)))

    check_cost(metadata["cost"], Decimal("0.20"), "CNY", 1, emulator.billing()["billed_images"])


def test_the_connection_prices_override_the_list_on_a_gateway(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    prices = {"wan2.2-t2i-flash": {"per_image": "0.125", "currency": "USD"}}
    set_imggen_connection(monkeypatch, f"{emulator.base_url}/v1", max_retries=3, prices=prices)
    metadata = run(make_operator(model="wan2.2-t2i-flash", n=2))

    check_cost(metadata["cost"], Decimal("0.125"), "USD", 2, emulator.billing()["billed_images"])
    assert metadata["cost"]["price_source"] == "connection extra prices"


def test_without_a_price_the_cost_counts_images_only(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_imggen_connection(monkeypatch, f"{emulator.base_url}/v1", max_retries=3)
    metadata = run(make_operator(model="wan2.2-t2i-flash", n=2))

    assert metadata["cost"] == {
        "images_asked": 2,
        "billed_images": emulator.billing()["billed_images"],
        "currency": None,
        "per_image": None,
        "estimated": None,
        "billed": None,
        "price_source": None,
    }
