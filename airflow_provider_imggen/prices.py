"""
What a generation costs: list prices per model and region, the estimate before a billable send (images asked
× unit price) and the cost once the service said how many images it made (only successfully generated images
are billed: Model Studio's pricing page, "request 4 images, 3 succeed, pay for 3").

Prices are per image, independent of size, dated and sourced below; a connection's extra ``prices``
overrides them (negotiated prices, another region, a gateway's own price list). Amounts are ``Decimal``:
money is never a float. Stdlib only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from urllib.parse import urlsplit

from airflow_provider_imggen.exceptions import ImageGenerationValidationError

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


def region_of(base_url: str) -> int | None:
    """0 (Beijing), 1 (Singapore), or None: another region, a workspace endpoint or a gateway."""
    host = (urlsplit(base_url).hostname or "").lower().rstrip(".")
    return _REGION_HOSTS.get(host)


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
        if not amount.is_finite() or amount < 0 or isinstance(entry.get("per_image"), bool):
            raise ImageGenerationValidationError(
                f"{where}['per_image']", entry.get("per_image"), 'expected a non-negative amount, e.g. "0.18"'
            )
        overrides[model] = Price(amount, str(currency), "connection extra prices")
    return overrides


def price_of(
    model: str,
    base_url: str,
    overrides: Mapping[str, Price] | None = None,
    *,
    prompt_extend: bool | None = None,
) -> Price | None:
    """
    The price per image of ``model`` on this connection: its override, else the list price of the base
    URL's region (a dated snapshot has its family's); None when neither is known.

    :param prompt_extend: the request's prompt extension (None: the service's default, on)
    """
    from airflow_provider_imggen.model_table import closest_known_model

    if overrides and model in overrides:
        return overrides[model]
    region = region_of(base_url)
    family = model if model in LIST_PRICES else closest_known_model(model)
    if region is None or family is None or family not in LIST_PRICES or not _is_snapshot_of(model, family):
        return None
    price = LIST_PRICES[family][region]
    if price is not None and family in _EXTENSION_DOUBLES and prompt_extend is not False:
        return Price(price.per_image * 2, price.currency, price.source + ", prompt extension on")
    return price


def _is_snapshot_of(model: str, family: str) -> bool:
    return model == family or (model.startswith(f"{family}-") and model[len(family) + 1 :][:4].isdigit())
