"""
Which storage locations a transfer may read: those under the prefixes its DAG lists in ``location_prefixes``.

A location given as a plain string (``generation="s3://bucket/renders/a.png"``, or an upstream task's
output) has no identity to check: the string may come from an XCom, which can be edited, and would then
make the transfer copy any object or file the worker can read into the bucket. So such a location is read
only when it lies under one of the prefixes written in the DAG (not templated: a template can pull an
XCom). A location in a generation record carries the sha256 its generation recorded and is checked by its
content; when prefixes are listed it must lie under them too.

Comparison is by path segment, on the text as written: a location with ``.`` or ``..`` segments, a
backslash, a percent sign, a query or a fragment is refused rather than normalised (the store behind it
would decide what it means, after this check).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from airflow_provider_imggen.exceptions import ImageGenerationValidationError

_REFUSED_CHARACTERS = frozenset("\\%\x00\r\n\t?#")


@dataclass(frozen=True)
class Place:
    """A location as scheme, authority (bucket, ``conn@bucket`` or host) and path segments."""

    scheme: str
    authority: str
    segments: tuple[str, ...]

    def is_under(self, prefix: Place) -> bool:
        return (
            self.scheme == prefix.scheme
            and self.authority == prefix.authority
            and len(self.segments) > len(prefix.segments)
            and self.segments[: len(prefix.segments)] == prefix.segments
        )


def place(location: str, *, prefix: bool = False) -> Place | None:
    """
    ``location`` parsed for comparison; None when it cannot be compared safely.

    Empty segments are refused, not dropped: the store's own parsing gives them meaning (ObjectStoragePath
    reads ``file:////data/x`` as ``data/x`` below the working directory, s3fs ``s3://b//k`` as the key
    ``/k``). Only a prefix may end in ``/``.
    """
    if not location or any(character in _REFUSED_CHARACTERS for character in location):
        return None
    if location.startswith("/"):
        scheme, authority, path = "file", "", location
    else:
        try:
            parts = urlsplit(location)
        except ValueError:  # a bracketed host that is no IPv6 address, a netloc NFKC would change
            return None
        if not parts.scheme or not location[len(parts.scheme) :].startswith("://"):
            return None
        scheme, authority, path = parts.scheme.lower(), parts.netloc, parts.path
        if not authority and scheme != "file":
            return None
    if not path.startswith("/") and (path or scheme == "file"):
        return None
    segments = path.split("/")[1:] if path else []
    if prefix and segments and segments[-1] == "":
        segments.pop()
    if any(segment in ("", ".", "..") for segment in segments):
        return None
    return Place(scheme, authority, tuple(segments))


def parse_prefixes(value: object) -> tuple[Place, ...]:
    """``location_prefixes`` checked: absolute paths or storage URIs, each a directory or key prefix."""
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ImageGenerationValidationError(
            "location_prefixes",
            type(value).__name__,
            "expected a list of storage prefixes, e.g. ['s3://my-bucket/renders/', '/data/images/']",
        )
    prefixes = []
    for position, prefix in enumerate(value):
        parsed = place(prefix, prefix=True) if isinstance(prefix, str) and "{" not in prefix else None
        if parsed is None or (not parsed.segments and parsed.scheme == "file"):
            raise ImageGenerationValidationError(
                f"location_prefixes[{position}]",
                prefix,
                "expected an absolute path or a storage URI (s3://bucket/prefix/), without empty, '.' or "
                "'..' segments, '%', a backslash, a query or a template (prefixes are read as written)",
            )
        prefixes.append(parsed)
    return tuple(prefixes)


def is_allowed(location: str, prefixes: Sequence[Place]) -> bool:
    """Whether ``location`` lies under one of ``prefixes``."""
    parsed = place(location)
    return parsed is not None and any(parsed.is_under(prefix) for prefix in prefixes)
