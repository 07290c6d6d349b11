"""
What a generation costs: list prices per model and region, the estimate before a billable send (images asked
× unit price) and the cost once the service said how many images it made (only successfully generated images
are billed: Model Studio's pricing page, "request 4 images, 3 succeed, pay for 3").

Prices are per image, independent of size, dated and sourced below; a connection's extra ``prices``
overrides them (negotiated prices, another region, a gateway's own price list). Amounts are ``Decimal``:
money is never a float. Stdlib only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow_provider_imggen.exceptions import ImageGenerationValidationError

if TYPE_CHECKING:
    from airflow_provider_imggen.connection_settings import ConnectionSettings

# Model Studio's model pricing page (help.aliyun.com/zh/model-studio/model-pricing, the snapshot listing
# models up to April 2026): China mainland (Beijing) list prices in CNY per successfully generated image.
SOURCE_BEIJING = "Model Studio: Model pricing (China mainland, as listed in April 2026)"
# The international (Singapore) prices in USD: the English pricing page as LiteLLM's price table cites it
# (qwen-image-2.0 / -pro), the Wan text-to-image V2 reference (wanx2.1), the rest converted from the
# Chinese page's Singapore column at its implied rate (0.220177 CNY = 0.03 USD): marked so.
SOURCE_SINGAPORE = "Model Studio: Model pricing (international, USD)"
SOURCE_SINGAPORE_CONVERTED = "Model Studio: Model pricing (international, converted from CNY)"

CURRENCIES = ("CNY", "USD")


@dataclass(frozen=True)
class Price:
    """
    One model's price per image in one region.

    :param per_image: the amount per successfully generated image
    :param currency: ``CNY`` or ``USD``
    :param source: where it comes from (a page, dated), or ``connection extra prices``
    """

    per_image: Decimal
    currency: str
    source: str

    def times(self, images: int) -> Decimal:
        return self.per_image * images


def _beijing(amount: str) -> Price:
    return Price(Decimal(amount), "CNY", SOURCE_BEIJING)


def _singapore(amount: str, *, converted: bool = True) -> Price:
    return Price(Decimal(amount), "USD", SOURCE_SINGAPORE_CONVERTED if converted else SOURCE_SINGAPORE)


# model → (Beijing, Singapore); None where no source lists one.
LIST_PRICES: dict[str, tuple[Price | None, Price | None]] = {
    "qwen-image": (_beijing("0.25"), _singapore("0.035")),
    "qwen-image-plus": (_beijing("0.20"), _singapore("0.03")),
    "qwen-image-max": (_beijing("0.50"), _singapore("0.075")),
    "qwen-image-2.0": (_beijing("0.20"), _singapore("0.035", converted=False)),
    "qwen-image-2.0-pro": (_beijing("0.50"), _singapore("0.075", converted=False)),
    "qwen-image-edit": (_beijing("0.30"), _singapore("0.045")),
    "qwen-image-edit-plus": (_beijing("0.20"), _singapore("0.03")),
    "qwen-image-edit-max": (_beijing("0.50"), _singapore("0.075")),
    "wan2.5-t2i-preview": (_beijing("0.20"), _singapore("0.03")),
    "wan2.5-i2i-preview": (_beijing("0.20"), _singapore("0.03")),
    "wan2.2-t2i-flash": (_beijing("0.14"), _singapore("0.025")),
    "wan2.2-t2i-plus": (_beijing("0.20"), _singapore("0.05")),
    "wanx2.1-t2i-turbo": (_beijing("0.14"), _singapore("0.025", converted=False)),
    "wanx2.1-t2i-plus": (_beijing("0.20"), _singapore("0.05", converted=False)),
    "wan2.1-t2i-turbo": (None, _singapore("0.025", converted=False)),  # the Singapore name of wanx2.1
    "wan2.1-t2i-plus": (None, _singapore("0.05", converted=False)),
    "wanx2.0-t2i-turbo": (_beijing("0.04"), None),
    "wan2.6-t2i": (_beijing("0.20"), _singapore("0.03")),
    "wan2.6-image": (_beijing("0.20"), _singapore("0.03")),
    "wan2.7-image": (_beijing("0.20"), _singapore("0.03")),
    "wan2.7-image-pro": (_beijing("0.50"), _singapore("0.0766")),
    # z-image-turbo costs twice as much with prompt extension on (see price_of).
    "z-image-turbo": (_beijing("0.10"), _singapore("0.015")),
    "qwen-image-3.0": (None, _singapore("0.03", converted=False)),
}
# Prompt extension doubles z-image-turbo's price (the pricing page's only such case).
_EXTENSION_DOUBLES = frozenset({"z-image-turbo"})
# Which list a base URL's host bills from.
_REGION_HOSTS = {"dashscope.aliyuncs.com": 0, "dashscope-intl.aliyuncs.com": 1}


# The connection extra ``price_list``: which list a connection bills from when its host does not say (a
# private endpoint, a proxy in front of DashScope, the emulator).
PRICE_LISTS = {"beijing": 0, "cn-beijing": 0, "singapore": 1, "ap-southeast-1": 1}


def region_of(base_url: str) -> int | None:
    """0 (Beijing), 1 (Singapore), or None: another region, a workspace endpoint or a gateway."""
    host = (urlsplit(base_url).hostname or "").lower().rstrip(".")
    return _REGION_HOSTS.get(host)


def parse_price_list(value: object) -> int | None:
    """
    A connection's extra ``price_list`` (``beijing`` or ``singapore``): the list prices to bill from.

    :raises ImageGenerationValidationError: naming what is allowed
    """
    if value is None or value == "":
        return None
    key = value.strip().lower() if isinstance(value, str) else None
    if key not in PRICE_LISTS:
        raise ImageGenerationValidationError(
            "price_list", value, "expected beijing (CNY) or singapore (USD), or nothing: from the host"
        )
    return PRICE_LISTS[key]


def parse_price_overrides(value: object) -> dict[str, Price]:
    """
    A connection's extra ``prices``: ``{"<model>": {"per_image": "0.18", "currency": "CNY"}, ...}``.

    :raises ImageGenerationValidationError: naming the model and what is allowed
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ImageGenerationValidationError(
            "prices", value, 'expected {"<model>": {"per_image": "0.18", "currency": "CNY"}}'
        )
    overrides = {}
    for model, entry in value.items():
        where = f"prices[{model!r}]"
        if not isinstance(model, str) or not isinstance(entry, Mapping):
            raise ImageGenerationValidationError(where, entry, 'expected {"per_image": ..., "currency": ...}')
        currency = entry.get("currency")
        if currency not in CURRENCIES:
            raise ImageGenerationValidationError(f"{where}['currency']", currency, "expected CNY or USD")
        try:
            amount = Decimal(str(entry.get("per_image")))
        except InvalidOperation:
            amount = Decimal("NaN")
        # What XCom, S3 metadata and the budgets read back must be what is written (PLAIN_AMOUNT).
        in_range = amount.is_finite() and 0 <= amount < 10**9 and amount == round(amount, 9)
        if not in_range or isinstance(entry.get("per_image"), bool):
            raise ImageGenerationValidationError(
                f"{where}['per_image']",
                entry.get("per_image"),
                'expected an amount from 0 to 999999999 with at most 9 decimals, e.g. "0.18"',
            )
        overrides[model] = Price(amount, str(currency), "connection extra prices")
    return overrides


def price_of(
    model: str,
    base_url: str,
    overrides: Mapping[str, Price] | None = None,
    *,
    prompt_extend: bool | None = None,
    price_list: int | None = None,
) -> Price | None:
    """
    The price per image of ``model`` on this connection: its override, else the list price of the base
    URL's region (a dated snapshot has its family's); None when neither is known.

    :param prompt_extend: the request's prompt extension (None: the service's default, on)
    :param price_list: the connection's ``price_list`` (:func:`parse_price_list`): the list to bill from
        when the base URL's host does not name a region
    """
    from airflow_provider_imggen.model_table import closest_known_model

    if overrides and model in overrides:
        return overrides[model]
    region = region_of(base_url)
    region = price_list if region is None else region
    family = model if model in LIST_PRICES else closest_known_model(model)
    if region is None or family is None or family not in LIST_PRICES or not _is_snapshot_of(model, family):
        return None
    price = LIST_PRICES[family][region]
    if price is not None and family in _EXTENSION_DOUBLES and prompt_extend is not False:
        return Price(price.per_image * 2, price.currency, price.source + ", prompt extension on")
    return price


def _is_snapshot_of(model: str, family: str) -> bool:
    return model == family or (model.startswith(f"{family}-") and model[len(family) + 1 :][:4].isdigit())


def price_for(
    settings: ConnectionSettings, model: str | None, prompt_upsampling: bool | None
) -> Price | None:
    """The price per image of ``model`` on the connection ``settings`` (None: no model or no price known)."""
    if not model:
        return None
    return price_of(
        model,
        settings.base_url,
        settings.prices,
        prompt_extend=prompt_upsampling,
        price_list=settings.price_list,
    )


def billed_image_count(usage: Mapping[str, Any], delivered: int, asked: int | None) -> int:
    """
    How many images the service billed: its ``usage.image_count`` (which counts successes only), never
    fewer than the images it delivered, and believed only up to the larger of the images asked and
    delivered. An answer without a count (a gateway) bills what it delivered. The count comes from the
    service: one out of range is not believed.
    """
    count = usage.get("image_count") if isinstance(usage, Mapping) else None
    ceiling = max(delivered, asked if isinstance(asked, int) else 0)
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= ceiling:
        return delivered
    return max(count, delivered)


def plain(amount: Decimal) -> str:
    """An amount as a plain decimal string (``0.0000001``, never ``1E-7``): what XCom and S3 metadata hold."""
    return format(amount, "f")


def cost_record(price: Price | None, *, asked: int | None, billed_images: int | None) -> dict[str, Any]:
    """
    The ``cost`` of a generation's XCom: images asked and billed, and, when a price is known, the price
    per image, the estimate before the send (asked × price) and the billed cost (billed × price), as
    decimal strings (JSON has no decimals, and money is never a float).

    :param billed_images: None while nothing is known yet (a task submitted without waiting)
    """
    record: dict[str, Any] = {
        "images_asked": asked,
        "billed_images": billed_images,
        "currency": None,
        "per_image": None,
        "estimated": None,
        "billed": None,
        "price_source": None,
    }
    if price is not None:
        record.update(
            currency=price.currency,
            per_image=plain(price.per_image),
            estimated=None if asked is None else plain(price.times(asked)),
            billed=None if billed_images is None else plain(price.times(billed_images)),
            price_source=price.source,
        )
    return record


_COST_AMOUNTS = ("per_image", "estimated", "billed")
_COST_COUNTS = ("images_asked", "billed_images")
# What str(Decimal) writes for an amount this provider computes: no exponent, no sign, bounded digits.
PLAIN_AMOUNT = re.compile(r"\d{1,15}(\.\d{1,15})?")


def cost_from_xcom(where: str, value: object) -> dict[str, Any] | None:
    """
    A ``cost`` read back from XCom (which can be edited): rebuilt from its known fields only, each checked
    (counts non-negative integers, amounts decimal strings, a known currency, a short source), so a
    downstream task or the Images view never shows what it cannot read as money.

    :raises ImageGenerationValidationError: naming the field and what is allowed (never its content)
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ImageGenerationValidationError(where, type(value).__name__, "expected a dict")
    record: dict[str, Any] = {}
    for name in _COST_COUNTS:
        count = value.get(name)
        if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
            raise ImageGenerationValidationError(
                f"{where}['{name}']", "(not shown)", "expected a count or null"
            )
        record[name] = count
    for name in _COST_AMOUNTS:
        amount = value.get(name)
        if amount is not None and (not isinstance(amount, str) or not PLAIN_AMOUNT.fullmatch(amount)):
            raise ImageGenerationValidationError(
                f"{where}['{name}']", "(not shown)", 'expected a plain decimal string, e.g. "0.20"'
            )
        record[name] = amount
    currency, source = value.get("currency"), value.get("price_source")
    if currency is not None and currency not in CURRENCIES:
        raise ImageGenerationValidationError(
            f"{where}['currency']", "(not shown)", "expected CNY, USD or null"
        )
    if source is not None and (not isinstance(source, str) or len(source) > 200 or not source.isprintable()):
        raise ImageGenerationValidationError(
            f"{where}['price_source']", "(not shown)", "expected printable text of at most 200 characters"
        )
    record["currency"], record["price_source"] = currency, source
    return record
