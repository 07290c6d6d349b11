"""
Input images as the request names them (:class:`InputImage`), parsed once from what users pass as
``images=``: ``s3://`` URIs, ``ObjectStoragePath`` objects, https URLs, and the XCom of
``ImageGenerationToS3Operator`` (a stored image's record, or a list of them).

Stdlib only: operators check literal ``images=`` when a DAG file is parsed. Reading the images (their bytes,
sha256 and dimensions) happens on the worker, in :mod:`~airflow_provider_imggen.inputs.resolve`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from airflow_provider_imggen.utils import is_sha256, mask_url

# Where an input image may come from: an S3 object, another object store through ObjectStoragePath (its
# URI with the protocol fsspec knows), or a URL fetched under the connection's result-URL policy.
URL_SCHEMES = ("https", "http")
# Characters no S3 key, bucket or URL of an input needs: they would reach logs and S3 metadata.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_URI_CHARS = 2048
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class InputImage:
    """
    One input image of a request.

    :param uri: where it is: ``s3://bucket/key``, an fsspec URI (``file:///...``, ``gs://...``) or an https
        URL. Shown and recorded masked (:func:`shown_uri`): a signed URL's query is a credential
    :param conn_id: the connection of an ``ObjectStoragePath`` (None: the operator's ``aws_conn_id`` for S3,
        fsspec's defaults otherwise)
    :param sha256: the digest of its bytes: expected (from a stored image's XCom record) until the worker
        has read them, then what was read
    :param bytes: its size, once read
    :param content_type: ``image/png``, ``image/jpeg`` or ``image/webp``, once read
    :param width: its width in pixels, once read
    :param height: its height in pixels, once read
    :param wire: what the service is sent for it (a presigned or given URL, or a ``data:`` URI); set on the
        worker just before the send, never recorded, compared, shown or fingerprinted
    """

    uri: str
    conn_id: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    content_type: str | None = None
    width: int | None = None
    height: int | None = None
    wire: str | None = field(default=None, compare=False, repr=False)

    def __repr__(self) -> str:
        # A URL input's query may be a credential: tracebacks and logs of a request show it masked.
        shown = ", ".join(f"{name}={value!r}" for name, value in self.record().items() if value is not None)
        return f"InputImage({shown})"

    @property
    def kind(self) -> str:
        """``s3``, ``url`` or ``fsspec``."""
        scheme = urlsplit(self.uri).scheme.lower()
        if scheme == "s3":
            return "s3"
        return "url" if scheme in URL_SCHEMES else "fsspec"

    @property
    def resolved(self) -> bool:
        return self.wire is not None and self.sha256 is not None

    def record(self) -> dict[str, Any]:
        """What XCom, the ledger and the task record keep of it: never its bytes, nor a usable signed URL."""
        return {
            "uri": shown_uri(self.uri),
            **({"conn_id": self.conn_id} if self.conn_id else {}),
            "sha256": self.sha256,
            "bytes": self.bytes,
            "content_type": self.content_type,
            "width": self.width,
            "height": self.height,
        }

    def without_wire(self) -> InputImage:
        return dataclasses.replace(self, wire=None)


def shown_uri(uri: str) -> str:
    """
    The URI as logs, errors and XCom may show it: a URL's query values masked, and any scheme's user
    credentials removed (``sftp://user:password@host/...``).
    """
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "(not shown)"
    if parts.scheme.lower() in URL_SCHEMES:
        return mask_url(uri)
    if "@" in parts.netloc and parts.scheme.lower() != "s3":
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return uri


def lineage_dataset(image: InputImage) -> tuple[str, str]:
    """
    The input as an OpenLineage dataset, ``(namespace, name)`` by OpenLineage's naming: ``s3://bucket`` and
    the key; ``https://host:port`` and the path (never the query, which may be a credential); ``file`` and
    the path.
    """
    parts = urlsplit(image.uri)
    scheme = parts.scheme.lower()
    host = parts.netloc.rpartition("@")[2]
    if scheme == "file":
        return "file", parts.path
    if scheme in URL_SCHEMES:
        return f"{scheme}://{host}", parts.path or "/"
    return f"{scheme}://{host}", parts.path.lstrip("/")


def parse_input_images(value: object, parameter: str = "images") -> tuple[InputImage, ...]:
    """
    ``images=`` as given or rendered, as input images, in order.

    Accepts None or an empty list (no input), one reference or a list of them: an ``s3://bucket/key`` or
    https URL string, an ``ObjectStoragePath``, a stored image's XCom record (a dict with ``bucket``,
    ``key`` and ``sha256``, which must still match), a list of those records (a transfer's whole XCom), an
    :class:`InputImage`, its record (``uri``, ``sha256``), or a JSON list of any of these as a string (what
    a Jinja template renders).

    :raises ImageGenerationValidationError: naming ``parameter``, the (masked) value and what is allowed
    """
    if value is None:
        return ()
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except ValueError:
            raise ImageGenerationValidationError(
                parameter, "(a string starting with '[')", "expected a JSON list of image references"
            ) from None
    items: Sequence[object] = list(value) if _is_list(value) else [value]  # type: ignore[call-overload]
    images: list[InputImage] = []
    for position, item in enumerate(items):
        where = f"{parameter}[{position}]"
        if _is_list(item):  # a transfer's XCom inside a list: its stored images, in order
            images.extend(parse_input_images(list(item), where))  # type: ignore[call-overload]
        else:
            images.append(_one(item, where))
    return tuple(images)


def _is_list(value: object) -> bool:
    """
    A list of references: a list, a tuple, or a lazy XCom sequence (a mapped transfer's output); not a
    string, a record, an input image or an ObjectStoragePath (which are one reference each).
    """
    if isinstance(value, str | bytes | Mapping | InputImage) or hasattr(value, "protocol"):
        return False
    return isinstance(value, Iterable)


def _one(item: object, where: str) -> InputImage:
    if isinstance(item, InputImage):
        return item.without_wire()
    if isinstance(item, str):
        return InputImage(uri=_checked_uri(item.strip(), where))
    if isinstance(item, Mapping):
        return _from_record(item, where)
    protocol = getattr(item, "protocol", None)
    if protocol is not None and hasattr(item, "open"):  # an ObjectStoragePath (not imported: parse time)
        conn_id = getattr(item, "conn_id", None)
        # Its URI without the connection id (str() gives s3://conn_id@bucket/key): the id travels apart.
        path = str(getattr(item, "path", ""))
        uri = f"{protocol}://{path}" if path else str(item)
        return InputImage(uri=_checked_uri(uri, where, from_path=True), conn_id=conn_id or None)
    raise ImageGenerationValidationError(
        where,
        type(item).__name__,
        "expected an s3:// URI, an https URL, an ObjectStoragePath or a stored image's XCom record "
        "(ImageGenerationToS3Operator's output)",
    )


def _from_record(record: Mapping[str, Any], where: str) -> InputImage:
    """A stored image's record (the transfer's XCom) or an input image's own record (``uri``)."""
    sha256 = record.get("sha256")
    if sha256 is not None and not is_sha256(sha256):
        raise ImageGenerationValidationError(
            f"{where}['sha256']", "(not shown)", "expected a sha256 (64 lowercase hex digits)"
        )
    if isinstance(record.get("bucket"), str) and isinstance(record.get("key"), str):
        if sha256 is None:
            raise ImageGenerationValidationError(
                where, sorted(record), "a stored image's record carries the sha256 its bytes must still have"
            )
        uri = f"s3://{record['bucket']}/{record['key']}"
        return InputImage(uri=_checked_uri(uri, where), sha256=sha256)
    if isinstance(record.get("uri"), str):
        return InputImage(uri=_checked_uri(record["uri"], where), sha256=sha256)
    raise ImageGenerationValidationError(
        where, sorted(map(str, record)), "a record needs 'bucket', 'key' and 'sha256', or 'uri'"
    )


def _checked_uri(uri: str, where: str, *, from_path: bool = False) -> str:
    """
    A URI an input may be read from: ``s3://bucket/key`` or an http(s) URL as a string (what templates
    render); other object stores only from an ``ObjectStoragePath`` the DAG's author wrote (``from_path``),
    so that a DAG run's conf cannot point the worker at its own files.
    """
    if not uri or len(uri) > MAX_URI_CHARS or _CONTROL.search(uri):
        raise ImageGenerationValidationError(
            where,
            shown_uri(uri[:200]) if uri else uri,
            f"expected a URI of 1-{MAX_URI_CHARS} characters without control characters",
        )
    try:
        parts = urlsplit(uri)
    except ValueError:
        raise ImageGenerationValidationError(where, "(not shown)", "not a valid URI") from None
    scheme = parts.scheme.lower()
    if scheme == "s3":
        if uri[:5].lower() != "s3://":  # s3:/bucket would read another bucket than the one meant
            raise ImageGenerationValidationError(where, shown_uri(uri), "expected s3://bucket/key")
        uri = "s3://" + uri[5:]
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not _BUCKET.fullmatch(bucket) or not key:
            raise ImageGenerationValidationError(
                where,
                shown_uri(uri),
                "expected s3://bucket/key (a bucket name of 3-63 lowercase letters, digits, dots and "
                "hyphens; for another aws connection, ObjectStoragePath('s3://conn_id@bucket/key'))",
            )
        return uri
    if scheme in URL_SCHEMES:
        if not parts.hostname:
            raise ImageGenerationValidationError(where, shown_uri(uri), "expected a URL with a host")
        return uri
    if from_path and scheme:
        return uri  # fsspec's protocols (file, gs, az, ...), chosen by the DAG's author
    raise ImageGenerationValidationError(
        where,
        shown_uri(uri[:60]),
        "expected an s3:// URI or an https URL (other stores: an ObjectStoragePath); image bytes and data: "
        "URIs do not belong in task arguments or XCom",
    )


def s3_input_location(uri: str) -> tuple[str, str] | None:
    """(bucket, key) of an ``s3://`` input URI that is well formed, else None (an XCom may be edited)."""
    if not uri.startswith("s3://") or len(uri) > MAX_URI_CHARS or _CONTROL.search(uri):
        return None
    bucket, key = s3_location(uri)
    return (bucket, key) if _BUCKET.fullmatch(bucket) and key else None


def s3_location(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` as (bucket, key): the key as written, ``#`` and ``?`` included."""
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key
