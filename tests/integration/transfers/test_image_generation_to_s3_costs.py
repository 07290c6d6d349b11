"""
The price per image in the stored objects' S3 metadata (``cost-per-image``, ``cost-currency``): the price
table's, for the connection's price list, as the generation's XCom recorded it and ``cost_from_xcom``
validated it. The emulator over HTTP and moto_server as S3, as the transfer's other integration tests.

An edited cost (XCom can be edited) fails the transfer before anything is downloaded, as any other invalid
field of a generation record does; a price without its currency writes nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from airflow_provider_imggen.prices import LIST_PRICES, plain
from tests.conftest import set_imggen_connection
from tests.integration.transfers.test_image_generation_to_s3 import downloads, generate, make_operator, run

if TYPE_CHECKING:
    from tests.s3_fixtures import S3Bucket

MODEL = "wan2.2-t2i-flash"  # what generate() asks for
COST_KEYS = {"cost-per-image", "cost-currency"}


def priced_connection(emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, price_list: str) -> None:
    """``imggen_default`` on the emulator's gateway, billing from ``price_list``'s list prices."""
    set_imggen_connection(
        monkeypatch, f"{emulator.base_url}/v1", default_model=MODEL, max_retries=3, price_list=price_list
    )


@pytest.mark.parametrize(
    ("price_list", "column", "currency"), [("beijing", 0, "CNY"), ("singapore", 1, "USD")]
)
def test_each_object_s_metadata_has_the_list_price_per_image(
    emulator: EmulatorServer,
    s3: S3Bucket,
    monkeypatch: pytest.MonkeyPatch,
    price_list: str,
    column: int,
    currency: str,
) -> None:
    priced_connection(emulator, monkeypatch, price_list)
    listed = LIST_PRICES[MODEL][column]
    assert listed is not None
    generation = generate(n=2)

    entries = run(make_operator(generation=generation, s3_bucket=s3.name, s3_key="priced/{index}.{ext}"))

    billed = emulator.billing()["billed_images"]
    assert billed == 2 == len(entries)
    for entry in entries:
        metadata = s3.head(entry["key"])["Metadata"]
        assert metadata["cost-per-image"] == plain(listed.per_image)
        assert Decimal(metadata["cost-per-image"]) == listed.per_image
        assert metadata["cost-currency"] == currency
        # ... and in the transfer's XCom entry for it.
        assert (entry["cost_per_image"], entry["cost_currency"]) == (plain(listed.per_image), currency)
    # The objects' prices add up to what the generation's XCom says it billed.
    total = sum(Decimal(s3.head(entry["key"])["Metadata"]["cost-per-image"]) for entry in entries)
    assert total == listed.per_image * billed == Decimal(generation["cost"]["billed"])


def test_without_a_price_no_cost_metadata_is_written(imggen_conn: EmulatorServer, s3: S3Bucket) -> None:
    generation = generate(n=1)  # imggen_conn: a gateway on loopback, no price list, no prices extra
    assert generation["cost"]["per_image"] is None and generation["cost"]["billed_images"] == 1

    (entry,) = run(make_operator(generation=generation, s3_bucket=s3.name, s3_key="free/{index}.{ext}"))

    assert not COST_KEYS & set(s3.head(entry["key"])["Metadata"])


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        pytest.param({"per_image": "1e999", "currency": "EUR"}, "per_image", id="exponent-and-euro"),
        pytest.param({"currency": "EUR"}, "currency", id="unknown-currency"),
        pytest.param({"per_image": "-0.14"}, "per_image", id="negative"),
        pytest.param({"per_image": 0.14}, "per_image", id="float"),
        pytest.param({"per_image": "0.14\r\nx-amz-meta-evil: 1"}, "per_image", id="header-injection"),
        pytest.param({"billed_images": True}, "billed_images", id="bool-count"),
    ],
)
def test_an_edited_cost_fails_before_anything_is_downloaded(
    emulator: EmulatorServer,
    s3: S3Bucket,
    monkeypatch: pytest.MonkeyPatch,
    edit: dict[str, Any],
    field: str,
) -> None:
    priced_connection(emulator, monkeypatch, "beijing")
    generation = copy.deepcopy(generate(n=1))
    generation["cost"].update(edit)
    emulator.clear_log()

    with pytest.raises(
        ImageGenerationValidationError, match=rf"generation\[0\]\['cost'\]\['{field}'\]"
    ) as error:
        run(make_operator(generation=generation, s3_bucket=s3.name, s3_key="edited/{index}.{ext}"))

    assert "(not shown)" in str(error.value)
    assert not any(str(value) in str(error.value) for value in edit.values() if value is not True)
    assert not downloads(emulator) and s3.object_keys() == []


def test_a_cost_that_is_not_a_dict_fails_too(
    emulator: EmulatorServer, s3: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    priced_connection(emulator, monkeypatch, "beijing")
    generation = {**generate(n=1), "cost": "0.14 CNY"}

    with pytest.raises(ImageGenerationValidationError, match=r"generation\[0\]\['cost'\]"):
        run(make_operator(generation=generation, s3_bucket=s3.name, s3_key="edited/{index}.{ext}"))
    assert s3.object_keys() == []


@pytest.mark.parametrize("missing", ["currency", "per_image"])
def test_a_price_without_its_currency_writes_no_cost_metadata(
    emulator: EmulatorServer, s3: S3Bucket, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    priced_connection(emulator, monkeypatch, "beijing")
    generation = copy.deepcopy(generate(n=1))
    generation["cost"][missing] = None  # each half validates alone; together they say nothing

    (entry,) = run(make_operator(generation=generation, s3_bucket=s3.name, s3_key="half/{index}.{ext}"))

    assert not COST_KEYS & set(s3.head(entry["key"])["Metadata"])


@pytest.fixture(autouse=True)
def _no_real_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield
