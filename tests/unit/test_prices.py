"""The price table: per model and region, overrides from the connection, money as Decimal."""

from __future__ import annotations

from decimal import Decimal

import pytest

from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from airflow_provider_imggen.model_table import KNOWN_MODELS
from airflow_provider_imggen.prices import (
    LIST_PRICES,
    billed_image_count,
    cost_from_xcom,
    cost_record,
    parse_price_list,
    parse_price_overrides,
    price_of,
    region_of,
)

BEIJING = "https://dashscope.aliyuncs.com/api/v1"
SINGAPORE = "https://dashscope-intl.aliyuncs.com/api/v1"


def test_every_known_model_has_a_row() -> None:
    assert set(KNOWN_MODELS) - set(LIST_PRICES) == {"qwen-image-3.0-pro", "qwen-image-2.1-pro"}  # no source


@pytest.mark.parametrize(
    ("model", "base_url", "expected"),
    [
        ("qwen-image", BEIJING, (Decimal("0.25"), "CNY")),
        ("wan2.2-t2i-flash", SINGAPORE, (Decimal("0.025"), "USD")),
        ("qwen-image-max-2025-12-30", BEIJING, (Decimal("0.50"), "CNY")),
        ("z-image-turbo", BEIJING, (Decimal("0.20"), "CNY")),  # prompt extension on by default: doubled
    ],
)
def test_list_prices_by_region(model: str, base_url: str, expected: tuple[Decimal, str]) -> None:
    price = price_of(model, base_url)
    assert price is not None and (price.per_image, price.currency) == expected


def test_unknown_region_model_or_gateway_has_no_price() -> None:
    assert region_of("https://my-gateway.example.com/v1") is None
    assert price_of("qwen-image", "https://my-gateway.example.com/v1") is None
    assert price_of("qwen-image-2", BEIJING) is None  # a typo is not a snapshot
    assert price_of("wanx2.0-t2i-turbo", SINGAPORE) is None
    z = price_of("z-image-turbo", BEIJING, prompt_extend=False)
    assert z is not None and z.per_image == Decimal("0.10")


def test_overrides_win_and_are_checked() -> None:
    overrides = parse_price_overrides({"qwen-image": {"per_image": "0.18", "currency": "CNY"}})
    price = price_of("qwen-image", "https://my-gateway.example.com/v1", overrides)
    assert price is not None and price.per_image == Decimal("0.18") and price.times(3) == Decimal("0.54")
    for bad in (
        {"qwen-image": {"per_image": "-1", "currency": "CNY"}},
        {"qwen-image": {"per_image": "x", "currency": "CNY"}},
        {"qwen-image": {"per_image": "1", "currency": "EUR"}},
        {"qwen-image": {"per_image": True, "currency": "CNY"}},
        ["x"],
    ):
        with pytest.raises(ImageGenerationValidationError):
            parse_price_overrides(bad)


def test_the_connection_extra_prices_is_read_with_the_connection() -> None:
    import json

    from airflow.sdk import Connection

    from airflow_provider_imggen.connection_settings import parse_connection

    extra = {"api_style": "dashscope", "prices": {"qwen-image": {"per_image": "0.18", "currency": "CNY"}}}
    conn = Connection(conn_id="c", conn_type="imggen", host="https://dashscope.aliyuncs.com", password="sk-x")
    conn.extra = json.dumps(extra)
    settings = parse_connection(conn)
    price = price_of("qwen-image", settings.base_url, settings.prices)
    assert (
        price is not None and price.per_image == Decimal("0.18") and price.source == "connection extra prices"
    )
    conn.extra = json.dumps({"prices": {"qwen-image": {"per_image": "-1", "currency": "CNY"}}})
    with pytest.raises(ImageGenerationValidationError, match="connection 'c' extra prices"):
        parse_connection(conn)


def test_a_price_list_names_the_region_when_the_host_does_not() -> None:
    assert (
        price_of("qwen-image", "http://127.0.0.1:9", price_list=parse_price_list("Beijing"))
        == LIST_PRICES["qwen-image"][0]
    )
    assert (
        price_of("qwen-image", "http://127.0.0.1:9", price_list=parse_price_list("ap-southeast-1"))
        == (LIST_PRICES["qwen-image"][1])
    )
    # The host wins over the list: a Singapore URL bills in USD whatever the extra says.
    assert price_of("qwen-image", SINGAPORE, price_list=0) == LIST_PRICES["qwen-image"][1]
    with pytest.raises(ImageGenerationValidationError, match="beijing"):
        parse_price_list("mars")


def test_the_billed_count_believes_the_service_only_within_what_was_asked() -> None:
    assert billed_image_count({"image_count": 2}, 2, 4) == 2
    assert billed_image_count({"image_count": 3}, 2, 4) == 3  # billed an image it could not deliver
    assert billed_image_count({"image_count": 1}, 2, 4) == 2  # never fewer than delivered
    assert billed_image_count({"image_count": 99}, 2, 4) == 2  # more than asked: not believed
    assert billed_image_count({"image_count": True}, 1, 4) == 1
    assert billed_image_count({}, 3, None) == 3  # a gateway: what it delivered


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("billed", "1e999999"),
        ("billed", "-1"),
        ("billed", 0.2),
        ("estimated", "NaN"),
        ("per_image", "x" * 50),
        ("billed_images", -1),
        ("images_asked", True),
        ("currency", "EUR"),
        ("price_source", "a\nforged log line"),
    ],
)
def test_an_edited_xcom_cost_is_refused_without_echoing_it(field: str, value: object) -> None:
    cost = cost_record(LIST_PRICES["qwen-image"][0], asked=2, billed_images=2)
    assert cost_from_xcom("cost", cost) == cost
    with pytest.raises(ImageGenerationValidationError) as refused:
        cost_from_xcom("cost", {**cost, field: value})
    assert field in str(refused.value) and "forged" not in str(refused.value)


def test_a_tiny_or_round_override_is_written_as_a_plain_amount_that_reads_back() -> None:
    for amount in ("1e-7", "1E2", "0.0000001"):
        price = parse_price_overrides({"m": {"per_image": amount, "currency": "USD"}})["m"]
        cost = cost_record(price, asked=3, billed_images=3)
        assert "E" not in cost["billed"] and cost_from_xcom("cost", cost) == cost


def test_a_hostile_count_is_capped_and_an_override_must_read_back() -> None:
    assert billed_image_count({"image_count": 10**9}, 2, 1) == 2  # more delivered than asked: still capped
    assert billed_image_count({"image_count": 10**9}, 2, None) == 2
    assert billed_image_count({"image_count": 3}, 3, 1) == 3
    for amount in ("0.1234567890123456", "1e16", "1000000000"):
        with pytest.raises(ImageGenerationValidationError, match="at most 9 decimals"):
            parse_price_overrides({"m": {"per_image": amount, "currency": "USD"}})
