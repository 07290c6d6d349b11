"""
One entry of the billing ledger: what is known about one generation request (its fingerprint) across runs.

An entry is written by one run and read by others, from a store anyone with access can edit: reading one
(:meth:`LedgerEntry.from_dict`, :meth:`LedgerEntry.from_json`) trusts nothing and refuses whatever is not
exactly the format written here with :class:`LedgerEntryUnreadableError`, whose message names the field and
the rule, never the content (an edited entry could hold anything, secrets included). Building one in code
checks the same rules with :class:`~airflow_provider_imggen.exceptions.ImageGenerationValidationError`, so
that nothing a store accepts from this provider is refused when read back.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar, cast

from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_imggen.exceptions import ImageGenerationError, ImageGenerationValidationError

_T = TypeVar("_T")
LedgerState = Literal["claimed", "billed", "stored", "released", "unknown", "failed"]
# claimed: a run is about to pay; billed: paid (the task or request id may be known); stored: the images
# landed in S3; released: the claim was given up and nothing was billed. A batch's send slots
# (ledger/slots.py) end in two more: unknown (sent, and no task can be proven its own: never sent again) and
# failed (the service refused or failed it for good: not sent again).
STATES: tuple[LedgerState, ...] = ("claimed", "billed", "stored", "released", "unknown", "failed")
# The format written by to_dict(): a reader refuses others rather than guess at them.
FORMAT = 1
# An entry is a few kB; anything far larger was not written by this provider, and parsing it costs memory.
MAX_ENTRY_BYTES = 1024 * 1024
MAX_IMAGES = 1000
_MAX_TEXT = 1024
_MAX_REQUEST_DEPTH = 8
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|\+00:00)")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# Control characters (including newlines) are refused in every text field: they forge log lines.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_FIELDS = (
    "format",
    "fingerprint",
    "state",
    "owner",
    "claimed_at",
    "updated_at",
    "generation_task_id",
    "request_id",
    "images",
    "request",
)
_IMAGE_FIELDS = ("index", "bucket", "key", "sha256", "bytes")


class LedgerEntryUnreadableError(ImageGenerationError, AirflowFailException):
    """
    A ledger entry read from a store is not one this provider wrote: not JSON, a field missing, of the wrong
    type or out of its rules, a field too many. Nothing is guessed from it.

    The message names the entry's location and what is wrong, never its content. Airflow does not retry: the
    entry stays as it is until someone repairs or deletes it.

    :param reason: which field breaks which rule
    :param source: where the entry was read (an S3 URI, a table and fingerprint), when known
    """

    def __init__(self, reason: str, *, source: str | None = None) -> None:
        self.reason = reason
        self.source = source
        where = f" at {source}" if source else ""
        super().__init__(
            f"Ledger entry{where} is unreadable: {reason}. It was not written by this provider as it is; "
            "repair or delete it"
        )


class _Invalid(Exception):
    """One rule broken: ``parameter`` is the field's path, ``allowed`` the rule (no value: see callers)."""

    def __init__(self, parameter: str, allowed: str) -> None:
        super().__init__(parameter, allowed)
        self.parameter = parameter
        self.allowed = allowed


def is_fingerprint(value: object) -> bool:
    """Whether ``value`` is a request fingerprint: a sha256 as 64 lowercase hex digits."""
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def check_fingerprint(value: object, parameter: str = "fingerprint") -> str:
    """
    ``value`` if it is a fingerprint; otherwise :class:`ImageGenerationValidationError`.

    Stores call it before ``value`` becomes part of an S3 key or a query.
    """
    if not is_fingerprint(value):
        raise ImageGenerationValidationError(parameter, value, "a sha256 as 64 lowercase hex digits")
    return cast(str, value)


def utc_now() -> str:
    """The current time as the ISO 8601 UTC string the ledger's timestamps hold."""
    return datetime.now(UTC).isoformat()


def make_owner(dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int) -> str:
    """The ``owner`` of an entry: ``dag_id/run_id/task_id/map_index/try_number`` of the task instance."""
    return f"{dag_id}/{run_id}/{task_id}/{map_index}/{try_number}"


@dataclass(frozen=True)
class StoredImage:
    """
    One image of a request, landed in S3.

    :param index: its place in the generation's results (0-based)
    :param bucket: the S3 bucket
    :param key: the S3 key
    :param sha256: the sha256 of its bytes, 64 lowercase hex digits
    :param bytes: its size in bytes
    """

    index: int
    bucket: str
    key: str
    sha256: str
    bytes: int

    def __post_init__(self) -> None:
        _raise_for_caller(lambda: _check_image(self.to_dict(), "image"), self)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _IMAGE_FIELDS}


@dataclass(frozen=True)
class LedgerEntry:
    """
    What the ledger knows of one generation request, identified by its fingerprint.

    A store keeps the newest entry per fingerprint; each change is a whole new entry written by
    compare-and-set (:class:`~airflow_provider_imggen.ledger.store.LedgerStore`). ``request`` is not part
    of the hash (a dict is not hashable); entries compare equal when every field is.

    :param fingerprint: the request's fingerprint (sha256, 64 lowercase hex digits), computed by the caller
    :param state: ``claimed`` (a run is about to pay), ``billed`` (paid), ``stored`` (the images landed in
        S3; ``images`` names them) or ``released`` (the claim was given up, nothing billed)
    :param owner: the task instance that wrote the entry, ``dag_id/run_id/task_id/map_index/try_number``
        (:func:`make_owner`)
    :param claimed_at: when the request was first claimed, ISO 8601 in UTC (:func:`utc_now`)
    :param updated_at: when this entry was written, ISO 8601 in UTC
    :param generation_task_id: the API's task id, once known
    :param request_id: the API's request id, once known
    :param images: the images landed in S3; present in ``stored`` entries only, and there at least one
    :param request: the request's recorded fields (JSON: text keys; text, numbers, booleans, null, lists
        and objects as values)
    """

    fingerprint: str
    state: LedgerState
    owner: str
    claimed_at: str
    updated_at: str
    generation_task_id: str | None = None
    request_id: str | None = None
    images: tuple[StoredImage, ...] = ()
    request: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.images, tuple):
            raise ImageGenerationValidationError("images", self.images, "a tuple of StoredImage")
        for image in self.images:
            if not isinstance(image, StoredImage):
                raise ImageGenerationValidationError("images", image, "a StoredImage")
        # _parse builds a fresh copy of `request`: the frozen entry holds no dict its caller can still change.
        checked = _raise_for_caller(lambda: _parse(self.to_dict()), self)
        object.__setattr__(self, "request", checked.request)

    def to_dict(self) -> dict[str, Any]:
        """The entry as a JSON object (what stores write)."""
        return {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "state": self.state,
            "owner": self.owner,
            "claimed_at": self.claimed_at,
            "updated_at": self.updated_at,
            "generation_task_id": self.generation_task_id,
            "request_id": self.request_id,
            "images": [image.to_dict() for image in self.images],
            "request": self.request,
        }

    def to_json(self) -> str:
        """The entry as JSON text, keys sorted, ASCII only."""
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: object, *, source: str | None = None) -> LedgerEntry:
        """
        The entry held by a JSON object read from a store; :class:`LedgerEntryUnreadableError` if it is
        not exactly one :meth:`to_dict` writes.

        :param data: the parsed JSON
        :param source: where it was read, for the error message
        """
        try:
            return _parse(data)
        except _Invalid as invalid:
            raise LedgerEntryUnreadableError(
                f"{invalid.parameter}: {invalid.allowed}", source=source
            ) from None

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str | None = None) -> LedgerEntry:
        """
        The entry held by JSON text read from a store; :class:`LedgerEntryUnreadableError` if it is not
        exactly what :meth:`to_json` writes (JSON with duplicate keys, ``NaN`` or over
        :data:`MAX_ENTRY_BYTES` included).

        :param text: the JSON, as text or UTF-8 bytes
        :param source: where it was read, for the error message
        """
        return cls.from_dict(load_json(text, source=source), source=source)


def load_json(text: str | bytes, *, source: str | None = None) -> object:
    """
    Parse JSON read from a store, strictly: no duplicate keys, no ``NaN``/``Infinity``, at most
    :data:`MAX_ENTRY_BYTES`. :class:`LedgerEntryUnreadableError` otherwise, without the content.
    """
    if len(text) > MAX_ENTRY_BYTES:
        raise LedgerEntryUnreadableError(f"larger than {MAX_ENTRY_BYTES} bytes", source=source)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise LedgerEntryUnreadableError("not UTF-8 text", source=source) from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as error:
        # Its message holds the position only, never the document; built anew all the same.
        raise LedgerEntryUnreadableError(
            f"not JSON (line {error.lineno}, column {error.colno})", source=source
        ) from None
    except _Invalid as invalid:
        raise LedgerEntryUnreadableError(f"{invalid.parameter}: {invalid.allowed}", source=source) from None
    except (ValueError, RecursionError):
        # ValueError: an integer of more digits than Python converts; RecursionError: nesting too deep.
        raise LedgerEntryUnreadableError("JSON beyond Python's limits", source=source) from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            # Two readers could take different ones: refuse rather than pick.
            raise _Invalid("JSON", "an object names a key twice")
        result[key] = value
    return result


def _no_constant(name: str) -> object:
    raise _Invalid("JSON", "NaN and Infinity are not JSON")


def _raise_for_caller(check: Callable[[], _T], built: object) -> _T:
    """Run ``check``; a broken rule becomes the validation error a caller building an entry gets."""
    try:
        return check()
    except _Invalid as invalid:
        value = _lookup(built, invalid.parameter)
        raise ImageGenerationValidationError(invalid.parameter, value, invalid.allowed) from None


def _lookup(built: object, path: str) -> object:
    """The value at ``path`` (``images[0].sha256``) of the object being built, for the error message."""
    value: Any = built
    for part in re.split(r"\.|\[", path):
        if part.endswith("]") and part[:-1].isdigit():
            try:
                value = value[int(part[:-1])]
            except (IndexError, KeyError, TypeError):
                return None
        elif part not in ("image", "entry", "JSON"):
            value = value.get(part) if isinstance(value, Mapping) else getattr(value, part, None)
    return value


# --- the rules, for what callers build and what stores read -----------------------------------------------


def _parse(data: object) -> LedgerEntry:
    obj = _object(data, "entry", _FIELDS)
    if not _is_int(obj["format"]) or obj["format"] != FORMAT:
        raise _Invalid("format", f"must be {FORMAT}")
    if not is_fingerprint(obj["fingerprint"]):
        raise _Invalid("fingerprint", "must be a sha256 as 64 lowercase hex digits")
    state = obj["state"]
    if state not in STATES or not isinstance(state, str):
        raise _Invalid("state", f"must be one of {', '.join(STATES)}")
    owner = _text(obj["owner"], "owner")
    _check_owner(owner)
    claimed_at = _timestamp(obj["claimed_at"], "claimed_at")
    updated_at = _timestamp(obj["updated_at"], "updated_at")
    generation_task_id = _optional_text(obj["generation_task_id"], "generation_task_id", 256)
    request_id = _optional_text(obj["request_id"], "request_id", 256)
    raw_images = obj["images"]
    if not isinstance(raw_images, list | tuple) or len(raw_images) > MAX_IMAGES:
        raise _Invalid("images", f"must be a list of at most {MAX_IMAGES} images")
    images = tuple(_check_image(raw, f"images[{position}]") for position, raw in enumerate(raw_images))
    if len({image.index for image in images}) != len(images):
        raise _Invalid("images", "two images have the same index")
    if state == "stored" and not images:
        raise _Invalid("images", "a stored entry names at least one image")
    if state != "stored" and images:
        raise _Invalid("images", "only a stored entry names images")
    if not isinstance(obj["request"], dict):
        raise _Invalid("request", "must be a JSON object")
    request = _json_value(obj["request"], "request", 0)
    entry = LedgerEntry.__new__(LedgerEntry)
    # Bypasses __post_init__ (which calls this function): every field was checked above.
    for name, value in (
        ("fingerprint", obj["fingerprint"]),
        ("state", state),
        ("owner", owner),
        ("claimed_at", claimed_at),
        ("updated_at", updated_at),
        ("generation_task_id", generation_task_id),
        ("request_id", request_id),
        ("images", images),
        ("request", request),
    ):
        object.__setattr__(entry, name, value)
    return entry


def _check_image(data: object, path: str) -> StoredImage:
    obj = _object(data, path, _IMAGE_FIELDS)
    index, size = obj["index"], obj["bytes"]
    if not _is_int(index) or not 0 <= index < MAX_IMAGES:
        raise _Invalid(f"{path}.index", f"must be an integer from 0 to {MAX_IMAGES - 1}")
    bucket = obj["bucket"]
    if not isinstance(bucket, str) or _BUCKET.fullmatch(bucket) is None:
        raise _Invalid(f"{path}.bucket", "must be an S3 bucket name (3 to 63 of a-z 0-9 . -)")
    key = _text(obj["key"], f"{path}.key")
    if len(key.encode("utf-8")) > 1024:
        raise _Invalid(f"{path}.key", "must fit S3's 1024 bytes")
    if not is_fingerprint(obj["sha256"]):
        raise _Invalid(f"{path}.sha256", "must be a sha256 as 64 lowercase hex digits")
    if not _is_int(size) or not 0 <= size < 2**63:
        raise _Invalid(f"{path}.bytes", "must be a non-negative integer")
    image = StoredImage.__new__(StoredImage)
    for name in _IMAGE_FIELDS:
        object.__setattr__(image, name, obj[name])
    return image


def _object(data: object, path: str, fields: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise _Invalid(path, "must be a JSON object")
    missing = [name for name in fields if name not in data]
    if missing:
        raise _Invalid(path, f"misses {', '.join(missing)}")
    if len(data) != len(fields):
        # The names of unknown keys are content too: counted, not shown.
        raise _Invalid(path, f"has {len(data) - len(fields)} key(s) besides {', '.join(fields)}")
    return data


def _is_int(value: object) -> bool:
    # bool is an int to Python, not to the ledger.
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: object, path: str, limit: int = _MAX_TEXT) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or _CONTROL.search(value):
        raise _Invalid(path, f"must be text of 1 to {limit} characters, without control characters")
    return value


def _optional_text(value: object, path: str, limit: int) -> str | None:
    return None if value is None else _text(value, path, limit)


def _check_owner(owner: str) -> None:
    parts = owner.split("/")
    # dag_id and task_id cannot hold "/"; a run_id given at trigger time might, so it takes the middle.
    if (
        len(parts) < 5
        or not all(parts)
        or not re.fullmatch(r"-?\d{1,9}", parts[-2])
        or not (parts[-1].isascii() and parts[-1].isdigit() and len(parts[-1]) < 10)
    ):
        raise _Invalid("owner", "must be dag_id/run_id/task_id/map_index/try_number")


def _timestamp(value: object, path: str) -> str:
    rule = "must be an ISO 8601 time in UTC, YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00 (or Z)"
    # The extended form only: Python reads more (basic forms, week dates) than PostgreSQL's timestamptz.
    if not isinstance(value, str) or not _TIMESTAMP.fullmatch(value):
        raise _Invalid(path, rule)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _Invalid(path, rule) from None
    if moment.utcoffset() != timedelta(0):
        raise _Invalid(path, rule)
    return value


def _json_value(value: object, path: str, depth: int) -> Any:
    """A fresh copy of a JSON value, checked: text keys, finite numbers, bounded nesting."""
    if depth > _MAX_REQUEST_DEPTH:
        raise _Invalid(path, f"nests deeper than {_MAX_REQUEST_DEPTH} levels")
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Invalid(path, "holds a number that is not finite")
        return value
    if isinstance(value, list | tuple):
        return [_json_value(item, path, depth + 1) for item in value]
    if isinstance(value, dict):
        copy = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Invalid(path, "has a key that is not text")
            copy[key] = _json_value(item, path, depth + 1)
        return copy
    raise _Invalid(path, "holds a value that is not JSON (text, number, boolean, null, list, object)")
