"""
The Images view's cost, without a server: per image (each tile), per task (each generation task instance)
and per run (summed per currency, never CNY with USD), read from validated generation records only.

tests/system/test_ui_images.py checks the same figures in the browser against the emulator's billing.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

from airflow_provider_imggen.prices import cost_record
from airflow_provider_imggen.ui.costs import TaskCost, render_costs, totals
from airflow_provider_imggen.ui.html import render_page
from airflow_provider_imggen.ui.tiles import GENERATION, TRANSFER, RunImages, TaskOutput
from tests.unit.ui.test_tiles import NOW, generation, stored

LATER = NOW + timedelta(hours=20)


def priced(request_id: str, cost: dict[str, Any] | None, *, n: int = 2, failed: int = 0) -> dict[str, Any]:
    return {**generation(request_id, expires=LATER, n=n, failed=failed), "cost": cost}


def cny(asked: int, billed: int) -> dict[str, Any]:
    from airflow_provider_imggen.prices import LIST_PRICES

    return cost_record(LIST_PRICES["wan2.2-t2i-flash"][0], asked=asked, billed_images=billed)


def usd(asked: int, billed: int) -> dict[str, Any]:
    from airflow_provider_imggen.prices import LIST_PRICES

    return cost_record(LIST_PRICES["wan2.2-t2i-flash"][1], asked=asked, billed_images=billed)


def run_images() -> RunImages:
    return RunImages(
        [
            TaskOutput("generate", 0, GENERATION, priced("req-a", cny(3, 2), failed=1), "imggen_default"),
            TaskOutput("generate", 1, GENERATION, priced("req-b", cny(2, 2)), "imggen_default"),
            TaskOutput("generate_usd", -1, GENERATION, priced("req-u", usd(1, 1), n=1), "imggen_usd"),
            TaskOutput(
                "generate_free",
                -1,
                GENERATION,
                priced("req-f", cost_record(None, asked=2, billed_images=2)),
                "x",
            ),
            TaskOutput(
                "store", -1, TRANSFER, [stored("req-a", 0), stored("req-a", 1), stored("req-u", 0)], "aws"
            ),
        ],
        now=NOW,
    )


def test_each_tile_shows_its_generation_s_price_per_image() -> None:
    run = run_images()
    (store,) = run.task_instances("store")
    tiles = run.tiles(store)
    assert [(tile.kind, tile.cost_per_image, tile.cost_currency) for tile in tiles] == [
        ("stored", "0.14", "CNY"),
        ("stored", "0.14", "CNY"),
        ("stored", "0.025", "USD"),
        ("failed", None, None),  # req-a's failed image: not billed
    ]
    (free,) = run.task_instances("generate_free")
    assert {(tile.cost_per_image, tile.cost_currency) for tile in run.tiles(free)} == {(None, None)}

    html = render_page(title="t", dag_id="d", run_id="r", tiles=tiles, show_task=False, empty="")
    cells = re.findall(r'<dd data-field="cost per image">([^<]*)</dd>', html)
    assert cells == ["0.14 CNY", "0.14 CNY", "0.025 USD", "not billed"]


def test_a_task_page_lists_its_generations_and_a_transfer_those_it_stored() -> None:
    run = run_images()
    mapped = run.task_costs(run.task_instances("generate"))
    assert [(cost.task_label, cost.billed_images, cost.images_asked, cost.billed) for cost in mapped] == [
        ("generate [0]", 2, 3, "0.28"),
        ("generate [1]", 2, 2, "0.28"),
    ]
    assert [cost.task_label for cost in run.task_costs(run.task_instances("generate", 1))] == ["generate [1]"]
    # The transfer stored req-a's images and req-u's: those two generations, each once.
    assert [cost.request_id for cost in run.task_costs(run.task_instances("store"))] == ["req-a", "req-u"]


def test_the_run_total_is_summed_per_currency_and_counts_unpriced_images() -> None:
    summed = totals(run_images().run_costs())
    assert summed.amounts == {"CNY": Decimal("0.56"), "USD": Decimal("0.025")}
    assert (summed.billed_images, summed.unpriced_images, summed.unknown) == (7, 2, 0)

    html = render_costs(run_images().run_costs(), total_label="run total")
    total = re.search(r'<tr data-total="run total">(.*?)</tr>', html)
    assert total is not None
    assert re.findall(r'<span data-currency="(\w+)">([^<]*)</span>', total.group(1)) == [
        ("CNY", "0.56 CNY"),
        ("USD", "0.025 USD"),
    ]
    assert "2 image(s) at an unknown price" in total.group(1)


def test_without_a_price_only_the_images_billed_are_shown() -> None:
    run = RunImages(
        [
            TaskOutput(
                "generate", -1, GENERATION, priced("req-f", cost_record(None, asked=2, billed_images=2)), "x"
            )
        ],
        now=NOW,
    )
    html = render_costs(run.run_costs(), total_label="run total")
    assert '<td data-field="images billed">2 of 2 asked</td>' in html
    assert '<td data-field="per image">price unknown</td>' in html
    assert "data-currency" not in html


def test_records_without_a_cost_or_not_billed_yet_add_nothing() -> None:
    pending = cost_record(None, asked=2, billed_images=None)
    run = RunImages(
        [
            TaskOutput("old", -1, GENERATION, priced("req-o", None), "x"),  # an XCom from before costs
            TaskOutput("submitted", -1, GENERATION, priced("req-s", pending), "x"),
        ],
        now=NOW,
    )
    summed = totals(run.run_costs())
    assert (summed.amounts, summed.billed_images, summed.unknown) == ({}, 0, 2)
    assert "not known yet" in render_costs(run.run_costs(), total_label="run total")


def test_an_edited_cost_is_never_shown_nor_added() -> None:
    edited = {**cny(1, 1), "per_image": "1e999", "currency": "EUR"}
    half = {**cny(1, 1), "currency": None}  # validates field by field, but is no price
    run = RunImages(
        [
            TaskOutput("edited", -1, GENERATION, priced("req-e", edited, n=1), "x"),
            TaskOutput("half", -1, GENERATION, priced("req-h", half, n=1), "x"),
        ],
        now=NOW,
    )
    # The edited record does not validate: like any such XCom, the view leaves it out entirely.
    assert [cost.task_id for cost in run.run_costs()] == ["half"]
    (half_cost,) = run.run_costs()
    assert (half_cost.per_image, half_cost.currency, half_cost.billed) == (None, None, None)
    assert totals(run.run_costs()).amounts == {}
    html = render_costs(run.run_costs(), total_label="run total")
    assert "1e999" not in html and "EUR" not in html and "0.14" not in html


def test_the_cost_table_escapes_task_ids_and_sums_large_amounts_exactly() -> None:
    big = "999999999999999.999999999999999"
    costs = [
        TaskCost("<b>x</b>", -1, "r1", 1, 1, "CNY", big, big),
        TaskCost("y", 3, "r2", 1, 1, "CNY", big, big),
    ]
    html = render_costs(costs, total_label="run total")
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html
    # 31 significant digits: Decimal's default context (28) would round the sum.
    exact = "1999999999999999.999999999999998"
    assert totals(costs).amounts["CNY"] == Decimal(exact)
    assert f'<span data-currency="CNY">{exact} CNY</span>' in html
    assert render_costs([], total_label="run total") == ""
