"""
The XCom records the Images view reads, checked field by field before any of them is used.

Whoever may edit a task instance's XCom can write anything into its ``return_value``: the view trusts it
no more than an API answer. Each record (a transfer's stored image; a generation, and each of its images,
failed images and input images) is rebuilt here from the fields the view uses, each checked for its type,
range and characters; the fields the view does not use are not read. A record or entry that fails is a
:class:`Broken`, which the view shows as a broken tile in fixed words naming the part and field that
failed, never their content. Nothing here raises: whatever an XCom holds, callers get records or
:class:`Broken`. Pure functions over plain data, like :mod:`~airflow_provider_imggen.ui.tiles`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from airflow_provider_imggen.prices import CURRENCIES, PLAIN_AMOUNT, cost_from_xcom
from airflow_provider_imggen.records import (
    FailedImageRecord,
    GenerationRecord,
    ImageRecord,
    StoredImageRecord,
)
from airflow_provider_imggen.transfers.keys import MAX_KEY_BYTES
from airflow_provider_imggen.utils import is_sha256, parse_time

# Bounds far above anything the provider writes, far below what costs the view memory or time.
MAX_ENTRIES = 10_000  # records in one XCom value
MAX_IMAGES = 1000  # images (failed images, input images) of one generation; an index is below it
MAX_BYTES = 2**40  # an image's size
MAX_SIDE = 99_999  # an image's width or height
MAX_COUNT = 1_000_000  # a cost's image counts
SEED_RANGE = (-(2**63), 2**63 - 1)
MAX_TEXT = 20_000  # prompts, a failed image's message
MAX_LOCATION = 2_048  # a b64_json image's location (an object-storage URI)
MAX_NAME = 250  # model, request id, error code, size
MAX_SEALED = 16_384  # a sealed result URL (Fernet token)
MAX_TIME = 64  # an ISO 8601 time
CONTENT_TYPES = ("image/png", "image/jpeg", "image/webp")

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# Control characters forge log lines and hide text: refused everywhere, but in prompts tab and newlines.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")
# Fernet tokens are URL-safe base64 (what sealed_urls.seal writes); the seal itself proves the rest.
_SEALED = re.compile(r"[A-Za-z0-9_-]+={0,2}")
# Airflow's connection id alphabet (airflow.models.connection.RE_SANITIZE_CONN_ID), bounded.
_CONN_ID = re.compile(r"[\w#!()\-.:/\\]{1,250}")

Checked = TypeVar("Checked")


@dataclass(frozen=True)
class Broken:
    """
    A record, or one entry of one, that failed its check: shown as a broken tile, never used otherwise.

    :param part: what it is (``stored image``, ``generation``, ``image``, ``failed image``, ``input image``,
        ``XCom value``): fixed words
    :param field: the field that failed (a name of this module's schema, never one from the XCom)
    :param input_image: an input image's entry (shown beside an edit's inputs, not in a run's gallery)
    """

    part: str
    field: str
    input_image: bool = False

    @property
    def message(self) -> str:
        return f"unreadable XCom record ({self.part}: {self.field}): not shown"


@dataclass(frozen=True)
class CheckedGeneration:
    """
    A generation record whose own fields passed its checks.

    :param record: the record with only the images, failed images and input images that passed theirs
    :param images: every image entry in XCom order, a :class:`Broken` in place of each one that failed
        (``failed_images`` and ``input_images`` likewise)
    """

    record: GenerationRecord
    images: tuple[ImageRecord | Broken, ...]
    failed_images: tuple[FailedImageRecord | Broken, ...]
    input_images: tuple[dict[str, Any] | Broken, ...]


class Unreadable:
    """An XCom value that could not even be deserialized (:data:`UNREADABLE` stands in for it)."""


UNREADABLE = Unreadable()


class _Bad(Exception):
    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


def stored_images(value: object) -> list[StoredImageRecord | Broken]:
    """The entries of a transfer's XCom (a list of stored-image records); None: nothing stored yet."""
    if value is None:
        return []
    if isinstance(value, Unreadable):
        return [Broken("XCom value", "unreadable")]
    if not isinstance(value, list | tuple) or len(value) > MAX_ENTRIES:
        return [Broken("XCom value", "not a list of stored images")]
    return [_checked(_stored_image, item, "stored image") for item in value]


def generations(value: object) -> list[CheckedGeneration | Broken]:
    """The generation records of a generation task's XCom (one record; a list of them is tolerated)."""
    if value is None:
        return []
    if isinstance(value, Unreadable):
        return [Broken("XCom value", "unreadable")]
    items = value if isinstance(value, list | tuple) else [value]
    if len(items) > MAX_ENTRIES:
        return [Broken("XCom value", "too many records")]
    return [_checked(_generation, item, "generation") for item in items]


def is_conn_id(value: object) -> bool:
    """Whether ``value`` is a connection id in Airflow's alphabet."""
    return isinstance(value, str) and _CONN_ID.fullmatch(value) is not None


def _checked(check: Callable[..., Checked], item: object, part: str, *args: Any) -> Checked | Broken:
    if not isinstance(item, Mapping):
        return Broken(part, "not a record")
    try:
        return check(item, *args)
    except _Bad as bad:
        return Broken(part, bad.field)
    except Exception:  # whatever else an odd value raises: a broken tile, never an error page
        return Broken(part, "record")


def _stored_image(item: Mapping[str, Any]) -> StoredImageRecord:
    bucket, key = _bucket(item.get("bucket")), _key(item.get("key"))
    s3_uri = item.get("s3_uri")
    if s3_uri is not None and s3_uri != f"s3://{bucket}/{key}":
        raise _Bad("s3_uri")
    # Required: a stored image without the digest its bytes must have is never read ("" included).
    sha256 = _sha256(item.get("sha256"), "sha256")
    if sha256 is None:
        raise _Bad("sha256")
    skipped = item.get("skipped", False)
    if not isinstance(skipped, bool):
        raise _Bad("skipped")
    per_image, currency = _price(item.get("cost_per_image"), item.get("cost_currency"))
    return StoredImageRecord(
        s3_uri=f"s3://{bucket}/{key}",
        bucket=bucket,
        key=key,
        bytes=_int(item.get("bytes"), "bytes", 1, MAX_BYTES, required=True),
        sha256=sha256,
        content_type=_choice(item.get("content_type"), "content_type", CONTENT_TYPES),
        width=_int(item.get("width"), "width", 1, MAX_SIDE),
        height=_int(item.get("height"), "height", 1, MAX_SIDE),
        generation=_int(item.get("generation", 0), "generation", 0, MAX_ENTRIES, required=True),
        index=_int(item.get("index"), "index", 0, MAX_IMAGES - 1, required=True),
        model=_name(item.get("model"), "model"),
        seed=_int(item.get("seed"), "seed", *SEED_RANGE),
        prompt=_text(item.get("prompt"), "prompt", MAX_TEXT, lines=True),
        request_id=_name(item.get("request_id"), "request_id"),
        skipped=skipped,
        cost_per_image=per_image,
        cost_currency=currency,
    )


def _generation(item: Mapping[str, Any]) -> CheckedGeneration:
    images = _entries(item.get("images"), "images", _image)
    failed = _entries(item.get("failed_images"), "failed_images", _failed_image)
    inputs = _entries(item.get("input_images"), "input_images", _input_image)
    record = GenerationRecord(
        model=_name(item.get("model"), "model"),
        prompt=_text(item.get("prompt"), "prompt", MAX_TEXT, lines=True),
        negative_prompt=_text(item.get("negative_prompt"), "negative_prompt", MAX_TEXT, lines=True),
        size=_name(item.get("size"), "size"),
        seed=_int(item.get("seed"), "seed", *SEED_RANGE),
        request_id=_name(item.get("request_id"), "request_id"),
        images=tuple(image for image in images if isinstance(image, ImageRecord)),
        failed_images=tuple(entry for entry in failed if isinstance(entry, FailedImageRecord)),
        input_images=tuple(entry for entry in inputs if not isinstance(entry, Broken)),
        cost=_cost(item.get("cost")),
    )
    return CheckedGeneration(record, tuple(images), tuple(failed), tuple(inputs))


def _entries(
    value: object, field: str, check: Callable[[Mapping[str, Any], int], Checked]
) -> list[Checked | Broken]:
    """A list field of a generation: each entry checked on its own (one bad image breaks only its tile)."""
    if value is None:
        return []
    if not isinstance(value, list | tuple) or len(value) > MAX_IMAGES:
        raise _Bad(field)
    part = {"images": "image", "failed_images": "failed image", "input_images": "input image"}[field]
    checked: list[Checked | Broken] = []
    for offset, entry in enumerate(value):
        result = _checked(check, entry, part, offset)
        if isinstance(result, Broken) and field == "input_images":
            result = Broken(result.part, result.field, input_image=True)
        checked.append(result)
    return checked


def _image(item: Mapping[str, Any], offset: int) -> ImageRecord:
    index = item.get("index")
    return ImageRecord(
        index=offset if index is None else _int(index, "index", 0, MAX_IMAGES - 1, required=True),
        seed=_int(item.get("seed"), "seed", *SEED_RANGE),
        url_sealed=_sealed(item.get("url_sealed")),
        url_expires_at=_time(item.get("url_expires_at"), "url_expires_at"),
        location=_text(item.get("location") or None, "location", MAX_LOCATION),
        bytes=_int(item.get("bytes"), "bytes", 0, MAX_BYTES),
        sha256=_sha256(item.get("sha256") or None, "sha256"),
    )


def _failed_image(item: Mapping[str, Any], offset: int) -> FailedImageRecord:
    index = item.get("index")
    return FailedImageRecord(
        index=0 if index is None else _int(index, "index", 0, MAX_IMAGES - 1, required=True),
        code=_name(item.get("code"), "code"),
        message=_text(item.get("message"), "message", MAX_TEXT, lines=True),  # the API's own words
    )


def _input_image(item: Mapping[str, Any], offset: int) -> dict[str, Any]:
    from airflow_provider_imggen.inputs.references import MAX_URI_CHARS, shown_uri

    uri = _text(item.get("uri"), "uri", MAX_URI_CHARS)
    if not uri:
        raise _Bad("uri")
    conn = item.get("conn_id") or None
    if conn is not None and not is_conn_id(conn):
        raise _Bad("conn_id")
    return {
        "uri": shown_uri(uri),
        **({"conn_id": conn} if conn else {}),
        "sha256": _sha256(item.get("sha256"), "sha256"),
        "bytes": _int(item.get("bytes"), "bytes", 1, MAX_BYTES),
        "content_type": _choice(item.get("content_type"), "content_type", CONTENT_TYPES),
        "width": _int(item.get("width"), "width", 1, MAX_SIDE),
        "height": _int(item.get("height"), "height", 1, MAX_SIDE),
    }


def _cost(value: object) -> dict[str, Any] | None:
    """A generation's cost, read as every reader of a cost XCom reads it, its counts bounded for the page."""
    try:
        cost = cost_from_xcom("cost", value)
    except ImageGenerationValidationError as error:  # names the field: cost['billed'] -> cost.billed
        raise _Bad(error.parameter.replace("['", ".").replace("']", "")) from None
    for name in ("images_asked", "billed_images"):
        if cost is not None and cost[name] is not None and cost[name] > MAX_COUNT:
            raise _Bad(f"cost.{name}")
    return cost


def _price(per_image: object, currency: object) -> tuple[str | None, str | None]:
    """A stored image's price per image and currency: both or neither (one alone is shown as no price)."""
    amount = _amount(per_image, "cost_per_image")
    unit = _choice(currency, "cost_currency", CURRENCIES)
    return (amount, unit) if (amount is None) == (unit is None) else (None, None)


def _int(value: object, field: str, low: int, high: int, *, required: bool = False) -> Any:
    # bool is an int to Python, not to an XCom record; a float (NaN, 1e300) is not an integer at all.
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _Bad(field)
    return value


def _text(value: object, field: str, max_chars: int, *, lines: bool = False) -> str | None:
    if value is None:
        return None
    control = _CONTROL_BUT_LINES if lines else _CONTROL
    if not isinstance(value, str) or len(value) > max_chars or control.search(value):
        raise _Bad(field)
    _utf8(value, field)
    return value


def _name(value: object, field: str) -> str | None:
    return _text(value, field, MAX_NAME)


def _choice(value: object, field: str, allowed: Sequence[str]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value not in allowed:
        raise _Bad(field)
    return value


def _sha256(value: object, field: str) -> str | None:
    if value is None:
        return None
    if not is_sha256(value):
        raise _Bad(field)
    return str(value)


def _amount(value: object, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not PLAIN_AMOUNT.fullmatch(value):
        raise _Bad(field)
    return value


def _sealed(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_SEALED or not _SEALED.fullmatch(value):
        raise _Bad("url_sealed")
    return value


def _time(value: object, field: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_TIME or parse_time(value) is None:
        raise _Bad(field)
    return value


def _bucket(value: object) -> str:
    if not isinstance(value, str) or not _BUCKET.fullmatch(value) or ".." in value:
        raise _Bad("bucket")
    return value


def _key(value: object) -> str:
    if not isinstance(value, str) or not value or _CONTROL.search(value):
        raise _Bad("key")
    if len(_utf8(value, "key")) > MAX_KEY_BYTES:
        raise _Bad("key")
    return value


def _utf8(value: str, field: str) -> bytes:
    # A lone surrogate (\ud800) is a str but no UTF-8: S3, logs and pages could not carry it.
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise _Bad(field) from None
