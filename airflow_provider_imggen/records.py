"""
The XCom records the provider's operators and sensor exchange, defined once.

- :class:`GenerationRecord` (with :class:`ImageRecord` and :class:`FailedImageRecord` entries): what
  ``ImageGenerationOperator`` and ``ImageGenerationTaskSensor`` push, and ``ImageGenerationToS3Operator``
  reads;
- :class:`StoredImageRecord`: one entry of ``ImageGenerationToS3Operator``'s output.

XCom holds their :meth:`to_dict` form (plain JSON); code reads an XCom through :meth:`from_dict`, which
checks types and names the offending field. Older XComs stay readable (``task_id`` before it was renamed
``generation_task_id``; no ``url_sealed``). Stdlib only: DAG files import the modules that import this one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from airflow_provider_imggen.prices import cost_from_xcom
from airflow_provider_imggen.request import RECORDED_PARAMETERS

_ASCII_INTEGER = re.compile(r"-?[0-9]+")


def _optional(where: str, value: object, kind: type | tuple[type, ...], expected: str) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ImageGenerationValidationError(where, value, expected)
    if not isinstance(value, kind):
        raise ImageGenerationValidationError(where, type(value).__name__, expected)
    return value


def _optional_str(where: str, value: object) -> str | None:
    return _optional(where, value, str, "expected a string")


def _optional_int(where: str, value: object) -> int | None:
    # A template rendered to text: ASCII digits only (str.isdigit() also takes '²' and other scripts'
    # digits, which int() refuses or reads as another number).
    if isinstance(value, str):
        if _ASCII_INTEGER.fullmatch(value.strip()) is None:
            raise ImageGenerationValidationError(where, "(text)", "expected an integer")
        return int(value.strip())
    return _optional(where, value, int, "expected an integer")


def _optional_bool(where: str, value: object) -> bool | None:
    return _optional(where, value, bool, "expected true or false")


@dataclass(frozen=True)
class ImageRecord:
    """
    One generated image: where to get it, never its bytes.

    :param index: its index within the generation
    :param seed: the seed it was drawn with
    :param url: its result URL as shown: every query value masked (never usable to download)
    :param url_sealed: the full signed URL, encrypted with Airflow's Fernet key (see
        :mod:`~airflow_provider_imggen.sealed_urls`); None when no key was configured
    :param url_expires_at: when the signed URL stops working (ISO 8601), if known
    :param revised_prompt: the prompt as the API rewrote it
    :param location: where a ``b64_json`` image was written (object-storage URI)
    :param bytes: its size, when written to ``location``
    :param sha256: its sha256, when written to ``location``
    """

    index: int
    seed: int | None = None
    url: str | None = None
    url_sealed: str | None = None
    url_expires_at: str | None = None
    revised_prompt: str | None = None
    location: str | None = None
    bytes: int | None = None
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: object, *, where: str, default_index: int = 0) -> ImageRecord:
        if not isinstance(value, Mapping):
            raise ImageGenerationValidationError(where, type(value).__name__, "expected a dict")
        index = _optional_int(f"{where}['index']", value.get("index", default_index))
        return cls(
            index=default_index if index is None else index,
            seed=_optional_int(f"{where}['seed']", value.get("seed")),
            url=_optional_str(f"{where}['url']", value.get("url") or None),
            url_sealed=_optional_str(f"{where}['url_sealed']", value.get("url_sealed") or None),
            url_expires_at=_optional_str(f"{where}['url_expires_at']", value.get("url_expires_at") or None),
            revised_prompt=_optional_str(f"{where}['revised_prompt']", value.get("revised_prompt")),
            location=_optional_str(f"{where}['location']", value.get("location") or None),
            bytes=_optional_int(f"{where}['bytes']", value.get("bytes")),
            sha256=_optional_str(f"{where}['sha256']", value.get("sha256") or None),
        )


@dataclass(frozen=True)
class FailedImageRecord:
    """An image that failed while the others of its native task succeeded (a per-image content check)."""

    index: int
    code: str | None
    message: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: object, *, where: str) -> FailedImageRecord:
        if not isinstance(value, Mapping):
            raise ImageGenerationValidationError(where, type(value).__name__, "expected a dict")
        return cls(
            index=_optional_int(f"{where}['index']", value.get("index")) or 0,
            code=_optional_str(f"{where}['code']", value.get("code")),
            message=_optional_str(f"{where}['message']", value.get("message")),
        )


# Request fields a generation record carries (what a sensor copies from the submitting operator's XCom):
# the request's own list.
# The request's recorded parameters, and its input images' records (``images`` names the outputs here).
REQUEST_FIELDS = (*RECORDED_PARAMETERS, "input_images")


@dataclass(frozen=True)
class GenerationRecord:
    """
    The XCom of one generation, whoever produced it (operator, either API style, sync or deferred; sensor).

    Values the producer does not know (a sensor only knows a task id) are None.

    :param generation_task_id: the native API's task id (None for the OpenAI-compatible API); never to be
        confused with the Airflow task's ``task_id``
    :param task_status: the task's status when the record was built (``SUCCEEDED``; ``PENDING`` or
        ``RUNNING`` when the operator submitted without waiting)
    :param warnings: what the answer showed that the user must know, e.g. that a gateway ignored the seed
        (the images then cannot be reproduced from ``seed``)
    """

    model: str | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    size: str | None = None
    n: int | None = None
    seed: int | None = None
    response_format: str | None = "url"
    prompt_upsampling: bool | None = None
    created: int | None = None
    created_at: str | None = None
    request_id: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    images: tuple[ImageRecord, ...] = ()
    failed_images: tuple[FailedImageRecord, ...] = ()
    generation_task_id: str | None = None
    task_status: str | None = None
    warnings: tuple[str, ...] = ()
    # The billing ledger's key of the request (connection extra ``ledger``): the transfer records there
    # what it stored. ``reused``: the images came from the ledger, nothing was billed.
    ledger_fingerprint: str | None = None
    reused: bool = False
    # The request's input images (editing models): each one's masked URI, sha256, bytes, content type and
    # dimensions, in order; never their bytes nor a usable signed URL.
    input_images: tuple[dict[str, Any], ...] = ()
    # What it cost (prices.cost_record): images asked and billed, the price per image, the estimate and the
    # billed amount as decimal strings; None in XComs written before prices were known.
    cost: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        values["warnings"] = list(self.warnings)
        values["input_images"] = [dict(item) for item in self.input_images]
        values["usage"] = dict(self.usage)
        values["cost"] = None if self.cost is None else dict(self.cost)
        values["images"] = [image.to_dict() for image in self.images]
        values["failed_images"] = [failed.to_dict() for failed in self.failed_images]
        return values

    def request_fields(self) -> dict[str, Any]:
        """The request parameters recorded (for a sensor waiting on the task this record submitted)."""
        return {name: getattr(self, name) for name in REQUEST_FIELDS}

    @classmethod
    def from_dict(cls, value: object, *, where: str = "generation") -> GenerationRecord:
        if not isinstance(value, Mapping):
            raise ImageGenerationValidationError(where, type(value).__name__, "expected a dict")
        images = value.get("images") or []
        failed = value.get("failed_images") or []
        for name, items in (("images", images), ("failed_images", failed)):
            if not isinstance(items, list | tuple):
                raise ImageGenerationValidationError(
                    f"{where}['{name}']", type(items).__name__, "expected a list"
                )
        warnings = value.get("warnings") or []
        if not isinstance(warnings, list | tuple) or not all(isinstance(item, str) for item in warnings):
            raise ImageGenerationValidationError(
                f"{where}['warnings']", type(warnings).__name__, "expected a list of strings"
            )
        usage = value.get("usage") or {}
        if not isinstance(usage, Mapping):
            raise ImageGenerationValidationError(f"{where}['usage']", type(usage).__name__, "expected a dict")
        generation_task_id = value.get("generation_task_id", value.get("task_id"))
        return cls(
            model=_optional_str(f"{where}['model']", value.get("model")),
            prompt=_optional_str(f"{where}['prompt']", value.get("prompt")),
            negative_prompt=_optional_str(f"{where}['negative_prompt']", value.get("negative_prompt")),
            size=_optional_str(f"{where}['size']", value.get("size")),
            n=_optional_int(f"{where}['n']", value.get("n")),
            seed=_optional_int(f"{where}['seed']", value.get("seed")),
            response_format=_optional_str(f"{where}['response_format']", value.get("response_format")),
            prompt_upsampling=_optional_bool(f"{where}['prompt_upsampling']", value.get("prompt_upsampling")),
            created=_optional_int(f"{where}['created']", value.get("created")),
            created_at=_optional_str(f"{where}['created_at']", value.get("created_at")),
            request_id=_optional_str(f"{where}['request_id']", value.get("request_id")),
            usage=dict(usage),
            images=tuple(
                ImageRecord.from_dict(image, where=f"{where}['images'][{offset}]", default_index=offset)
                for offset, image in enumerate(images)
            ),
            failed_images=tuple(
                FailedImageRecord.from_dict(item, where=f"{where}['failed_images'][{offset}]")
                for offset, item in enumerate(failed)
            ),
            generation_task_id=_optional_str(f"{where}['generation_task_id']", generation_task_id),
            task_status=_optional_str(f"{where}['task_status']", value.get("task_status")),
            warnings=tuple(warnings),
            ledger_fingerprint=_fingerprint(
                f"{where}['ledger_fingerprint']", value.get("ledger_fingerprint")
            ),
            reused=bool(_optional_bool(f"{where}['reused']", value.get("reused"))),
            input_images=_input_images(f"{where}['input_images']", value.get("input_images")),
            cost=cost_from_xcom(f"{where}['cost']", value.get("cost")),
        )


@dataclass(frozen=True)
class StoredImageRecord:
    """
    One image ``ImageGenerationToS3Operator`` stored (or found already stored): never bytes or signed URLs.

    :param generation: position of its generation in the transfer's input list
    :param index: its index within that generation
    :param skipped: the object already held these bytes: nothing was written
    """

    s3_uri: str
    bucket: str
    key: str
    bytes: int
    sha256: str
    content_type: str | None
    width: int | None
    height: int | None
    generation: int
    index: int
    model: str | None
    seed: int | None
    prompt: str | None
    request_id: str | None
    skipped: bool
    # What the image cost (its generation's price per image, prices.cost_record); None: no price known.
    cost_per_image: str | None = None
    cost_currency: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: object, *, where: str = "stored image") -> StoredImageRecord:
        if not isinstance(value, Mapping):
            raise ImageGenerationValidationError(where, type(value).__name__, "expected a dict")
        missing = [name for name in ("bucket", "key", "bytes", "sha256") if value.get(name) is None]
        if missing:
            raise ImageGenerationValidationError(where, sorted(value), f"missing {', '.join(missing)}")
        return cls(
            s3_uri=str(value.get("s3_uri") or f"s3://{value['bucket']}/{value['key']}"),
            bucket=str(value["bucket"]),
            key=str(value["key"]),
            bytes=_optional_int(f"{where}['bytes']", value["bytes"]) or 0,
            sha256=str(value["sha256"]),
            content_type=_optional_str(f"{where}['content_type']", value.get("content_type")),
            width=_optional_int(f"{where}['width']", value.get("width")),
            height=_optional_int(f"{where}['height']", value.get("height")),
            generation=_optional_int(f"{where}['generation']", value.get("generation")) or 0,
            index=_optional_int(f"{where}['index']", value.get("index")) or 0,
            model=_optional_str(f"{where}['model']", value.get("model")),
            seed=_optional_int(f"{where}['seed']", value.get("seed")),
            prompt=_optional_str(f"{where}['prompt']", value.get("prompt")),
            request_id=_optional_str(f"{where}['request_id']", value.get("request_id")),
            skipped=bool(value.get("skipped", False)),
            **_image_cost(where, value),
        )


def _image_cost(where: str, value: Mapping[str, Any]) -> dict[str, Any]:
    """A stored image's cost from XCom (editable), checked as a generation's is; both or neither."""
    cost = cost_from_xcom(
        where, {"per_image": value.get("cost_per_image"), "currency": value.get("cost_currency")}
    )
    assert cost is not None
    if (cost["per_image"] is None) != (cost["currency"] is None):
        return {"cost_per_image": None, "cost_currency": None}
    return {"cost_per_image": cost["per_image"], "cost_currency": cost["currency"]}


def _input_images(where: str, value: object) -> tuple[dict[str, Any], ...]:
    """
    Input images' records from XCom, which can be edited: each rebuilt from its known fields only, with its
    URI shown masked and its sha256 well formed, so nothing else (bytes, a usable signed URL) is carried on.
    """
    from airflow_provider_imggen.inputs.references import MAX_URI_CHARS, shown_uri

    if value is None:
        return ()
    if not isinstance(value, list | tuple) or not all(isinstance(item, Mapping) for item in value):
        raise ImageGenerationValidationError(where, type(value).__name__, "expected a list of dicts")
    records = []
    for offset, item in enumerate(value):
        uri, sha256 = item.get("uri"), item.get("sha256")
        if not isinstance(uri, str) or len(uri) > MAX_URI_CHARS:
            raise ImageGenerationValidationError(
                f"{where}[{offset}]['uri']",
                "(not shown)",
                f"expected a URI of at most {MAX_URI_CHARS} characters",
            )
        conn_id = item.get("conn_id")
        records.append(
            {
                "uri": shown_uri(uri),
                **({"conn_id": conn_id[:250]} if isinstance(conn_id, str) and conn_id else {}),
                "sha256": _fingerprint(f"{where}[{offset}]['sha256']", sha256),
                "bytes": _optional_int(f"{where}[{offset}]['bytes']", item.get("bytes")),
                "content_type": _optional_str(f"{where}[{offset}]['content_type']", item.get("content_type")),
                "width": _optional_int(f"{where}[{offset}]['width']", item.get("width")),
                "height": _optional_int(f"{where}[{offset}]['height']", item.get("height")),
            }
        )
    return tuple(records)


def _fingerprint(where: str, value: object) -> str | None:
    """A ledger fingerprint from XCom (editable): 64 lowercase hex digits, or None."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 64 or not all(c in "0123456789abcdef" for c in value):
        raise ImageGenerationValidationError(
            where, "(not shown)", "expected a sha256 (64 lowercase hex digits)"
        )
    return value
