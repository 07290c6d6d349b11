"""
Destination keys: the ``s3_key`` template parsed once, its placeholders filled with checked values.

Placeholders (``{index}``, ``{seed}``, ``{sha256}``, ``{ext}``, ``{model}``, ``{request_id}``,
``{generation}``, ``{map_index}``) are found in the template as written, before Jinja renders it: they are
swapped for markers only this render knows, and found again in Jinja's output. Nothing Jinja produced is
ever read as a placeholder or a format spec, so a braced value in a DAG run's conf cannot reach
``str.format``; any brace left in the rendered key is an error. Integer placeholders take one spec, zero
padding (``{index:03d}``). Values from the API are restricted to ``[A-Za-z0-9._-]``, never empty, ``.`` or
``..``; a rendered key has no ``.`` or ``..`` segment and fits S3's 1024 bytes.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from airflow_provider_imggen.exceptions import ImageGenerationValidationError

PLACEHOLDERS = ("index", "seed", "sha256", "ext", "model", "request_id", "generation", "map_index")
INTEGER_PLACEHOLDERS = frozenset({"index", "seed", "generation", "map_index"})
# Placeholders whose value is known only once the image is downloaded.
CONTENT_PLACEHOLDERS = frozenset({"sha256", "ext"})
MAX_KEY_BYTES = 1024
_FIELD = re.compile(r"(?<!\{)\{([^{}]*)\}(?!\})")
_JINJA_BLOCK = re.compile(r"(\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\})", re.DOTALL)
_PADDING = re.compile(r"0(\d{1,2})d")
_SAFE_VALUE = re.compile(r"[A-Za-z0-9._-]{1,128}")
_HINT = "literal braces are not allowed in keys; placeholders: " + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)


@dataclass(frozen=True)
class Field:
    name: str
    width: int  # zero padding of an integer; 0 for none

    def __str__(self) -> str:
        return f"{{{self.name}:0{self.width}d}}" if self.width else f"{{{self.name}}}"


@dataclass(frozen=True)
class KeyTemplate:
    """A parsed key template: literal text (Jinja already rendered) and placeholders."""

    parts: tuple[str | Field, ...]
    raw: str  # the template as written, before Jinja

    @property
    def text(self) -> str:
        return "".join(str(part) for part in self.parts)

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(part.name for part in self.parts if isinstance(part, Field))

    def render(self, values: Mapping[str, object], label: str) -> str:
        """The key for one image; ``values`` holds every placeholder's value (None: unknown)."""
        pieces = []
        for part in self.parts:
            if isinstance(part, str):
                pieces.append(part)
                continue
            value = values.get(part.name)
            if value is None:
                raise ImageGenerationValidationError(
                    "s3_key",
                    self.text,
                    f"{label} has no value for {{{part.name}}} (plain URLs and locations carry no seed, "
                    "model or request id)",
                )
            pieces.append(_value(part, value, self.text, label))
        key = "".join(pieces)
        if not key or key.startswith("/"):
            raise ImageGenerationValidationError(
                "s3_key", self.text, f"renders to an empty or absolute key for {label}"
            )
        if any(segment in (".", "..") for segment in key.split("/")):
            raise ImageGenerationValidationError(
                "s3_key", self.text, f"a key segment is '.' or '..' for {label}"
            )
        if len(key.encode()) > MAX_KEY_BYTES:
            raise ImageGenerationValidationError(
                "s3_key", self.text, f"renders longer than S3's {MAX_KEY_BYTES} bytes for {label}"
            )
        return key


def _value(field: Field, value: object, template: str, label: str) -> str:
    if field.name in INTEGER_PLACEHOLDERS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ImageGenerationValidationError(
                f"{{{field.name}}} of {label}", value, "expected an integer from the generation"
            )
        return f"{value:0{field.width}d}"
    text = str(value)
    if not _SAFE_VALUE.fullmatch(text) or text in (".", ".."):
        raise ImageGenerationValidationError(
            f"{{{field.name}}} of {label} in s3_key {template!r}",
            text,
            "a key placeholder takes 1-128 characters of A-Z a-z 0-9 . _ - and never '.' or '..'",
        )
    return text


@dataclass(frozen=True)
class PreparedTemplate:
    """A key template whose placeholders are hidden from Jinja behind markers only this render knows."""

    raw: str
    text: str  # what Jinja renders
    fields: tuple[Field, ...]
    nonce: str

    def parse_rendered(self, rendered: str) -> KeyTemplate:
        """The template after Jinja: markers become placeholders again; braces Jinja produced are errors."""
        marker = re.compile(f"\ue000{self.nonce}:(\\d+)\ue001")
        parts: list[str | Field] = []
        start = 0
        for match in marker.finditer(rendered):
            parts.append(rendered[start : match.start()])
            parts.append(self.fields[int(match.group(1))])
            start = match.end()
        parts.append(rendered[start:])
        literal = "".join(part for part in parts if isinstance(part, str))
        if "{" in literal or "}" in literal or "\ue000" in literal or "\ue001" in literal:
            raise ImageGenerationValidationError(
                "s3_key", _display(parts), f"not a valid key template: a stray brace after rendering; {_HINT}"
            )
        return KeyTemplate(tuple(part for part in parts if part != ""), self.raw)


def prepare(raw: str) -> PreparedTemplate:
    """Find the placeholders in ``raw`` (as written) and hide them from Jinja; bad placeholders raise."""
    nonce = secrets.token_hex(8)
    fields: list[Field] = []

    def hide(match: re.Match[str]) -> str:
        name, _, spec = match.group(1).partition(":")
        if name not in PLACEHOLDERS:
            raise ImageGenerationValidationError(
                "s3_key",
                raw,
                f"unknown placeholder {{{match.group(1)}}}; known: "
                + ", ".join(f"{{{known}}}" for known in PLACEHOLDERS),
            )
        width = 0
        if spec:
            padding = _PADDING.fullmatch(spec)
            if padding is None or name not in INTEGER_PLACEHOLDERS or int(padding.group(1)) > 20:
                raise ImageGenerationValidationError(
                    "s3_key",
                    raw,
                    f"not a valid key template: format spec {{{match.group(1)}}}; only zero padding of "
                    "integer placeholders, e.g. {index:03d}, is allowed",
                )
            width = int(padding.group(1))
        fields.append(Field(name, width))
        return f"\ue000{nonce}:{len(fields) - 1}\ue001"

    # Only the text outside Jinja's own {{ }}, {% %} and {# #} blocks holds placeholders.
    pieces = _JINJA_BLOCK.split(raw)
    text = "".join(piece if i % 2 else _FIELD.sub(hide, piece) for i, piece in enumerate(pieces))
    return PreparedTemplate(raw, text, tuple(fields), nonce)


def parse(raw: str) -> KeyTemplate:
    """A template no Jinja rendered (``execute`` called directly)."""
    prepared = prepare(raw)
    return prepared.parse_rendered(prepared.text)


def check_template(s3_key: str) -> None:
    """
    Check an ``s3_key`` template as written, before any Jinja rendering: its placeholders and format specs.

    A key without Jinja is checked whole (a stray brace too); in one with Jinja, the ``{name}``
    placeholders outside Jinja's blocks (what Jinja renders is checked after rendering).

    :raises ImageGenerationValidationError: naming ``s3_key``, the template and the placeholders allowed
    """
    if any(opening in s3_key for opening in ("{{", "{%", "{#")):
        prepare(s3_key)
    else:
        parse(s3_key)


def split_bucket(s3_bucket: object, template: KeyTemplate) -> tuple[str, KeyTemplate]:
    """The bucket and the key template, from ``s3_bucket`` or a full ``s3://bucket/key`` template."""
    bucket = s3_bucket.strip() if isinstance(s3_bucket, str) else None if s3_bucket is not None else ""
    if bucket is None:
        raise ImageGenerationValidationError("s3_bucket", s3_bucket, "expected a bucket name")
    parts = list(template.parts)
    first = parts[0] if parts else ""
    if isinstance(first, str) and first.startswith("s3://"):
        if bucket:
            raise ImageGenerationValidationError(
                "s3_key",
                template.text,
                "give either s3_bucket and a key relative to it, or a full s3://bucket/key in s3_key",
            )
        bucket, slash, rest = first.removeprefix("s3://").partition("/")
        if not slash:
            raise ImageGenerationValidationError(
                "s3_key", template.text, "the bucket cannot hold placeholders"
            )
        parts[0] = rest
        template = KeyTemplate(tuple(part for part in parts if part != ""), template.raw)
    if not bucket:
        raise ImageGenerationValidationError(
            "s3_bucket", s3_bucket, "set s3_bucket, or give s3_key as a full s3://bucket/key"
        )
    if not template.parts:
        raise ImageGenerationValidationError("s3_key", template.text, "the key is empty")
    return bucket, template


def check_collisions(template: KeyTemplate, keyed: Sequence[tuple[str, str]]) -> None:
    """``keyed``: (image label, key) pairs; fail when two images would write one key."""
    by_key: dict[str, list[str]] = {}
    for label, key in keyed:
        by_key.setdefault(key, []).append(label)
    collisions = {key: labels for key, labels in by_key.items() if len(labels) > 1}
    if collisions:
        shown = "; ".join(f"{', '.join(labels)} -> {key!r}" for key, labels in list(collisions.items())[:5])
        raise ImageGenerationValidationError(
            "s3_key",
            template.text,
            f"{len(collisions)} key(s) would be written by more than one image, so nothing was stored: "
            f"{shown}. Make keys unique with placeholders: {{index}} for the images of a generation, "
            "{generation} for several generations, {map_index} in mapped tasks, or {sha256}",
        )


def check_mapped(template: KeyTemplate, *, map_index: int | None, replace: bool) -> None:
    """
    A mapped task overwriting objects needs keys that differ per map index.

    With ``replace=False`` conditional writes already catch a collision across map indexes (the second
    writer fails unless the bytes are the same); with ``replace=True`` one map index would silently
    overwrite another's image, so the template must use ``{map_index}`` (or ``ti.map_index`` in Jinja) or
    ``{sha256}``.
    """
    if map_index is None or map_index < 0 or not replace:
        return
    if {"map_index", "sha256"} & template.fields or "map_index" in template.raw:
        return
    raise ImageGenerationValidationError(
        "s3_key",
        template.text,
        "this task is mapped and replace=True, but its keys do not depend on the map index: each map "
        "index would overwrite the others' images. Add {map_index} (or {sha256}) to the key",
    )


def _display(parts: Sequence[str | Field]) -> str:
    return "".join(str(part) for part in parts)
