"""
Input images of an edit, taken as the service takes them: each reference is a data URI
(``data:{MIME};base64,{data}``) or a public http(s) URL the service downloads itself; then its bytes are
checked against the model's limits (format by magic bytes and by Pillow opening it, bytes, each side,
alpha channel where refused). Every broken input is a 400 ``InvalidParameter`` naming the image's place in
the request, raised before anything is billed.

Downloads run in a thread (``asyncio.to_thread``) with urllib: no proxy (the service reaches the URL
itself), any host including loopback (tests serve inputs from loopback servers and moto presigned URLs), at
most :data:`MAX_REDIRECTS` redirects, ``input_download_timeout_ms`` to connect, per read and in all, at
most ``max_input_bytes + 1`` bytes read. What an edit keeps of each input (:class:`InputImage`): the
sha256 of the exact bytes received and a small PNG thumbnail (what the output is drawn from).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import re
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Sequence
from http.client import HTTPException
from typing import Any

from PIL import Image

from airflow_provider_imggen.emulator.errors import ServiceError, invalid
from airflow_provider_imggen.emulator.models import limits_of
from airflow_provider_imggen.emulator.objects import InputImage

MAX_REDIRECTS = 3
THUMBNAIL_SIDE = 96
TIMED_OUT = "Download the media resource timed out during the data inspection process."
NOT_DOWNLOADED = "The image URL could not be downloaded"
NO_UPLOADS = (
    "oss:// references are uploads to the service's temporary storage; the emulator does not host uploads: "
    "pass URLs or data URIs"
)
_DATA_URI = re.compile(
    r"^data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*);base64,(?P<data>.*)$", re.DOTALL | re.I
)
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
# How the documentation names the formats (Pillow's names are the table's).
_SHOWN = {"JPEG": "JPG/JPEG", "PNG": "PNG", "BMP": "BMP", "TIFF": "TIFF", "WEBP": "WEBP", "GIF": "GIF"}
Reference = tuple[str, object]  # (where the request put it, e.g. "input.images[0]"; the value)


class _FewRedirects(urllib.request.HTTPRedirectHandler):
    max_redirections = MAX_REDIRECTS


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _FewRedirects())


def sniff(data: bytes) -> str | None:
    """The image format the bytes start with (Pillow's name), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _MAGIC if data.startswith(magic)), None)


def _refused(model: str, where: str, message: str) -> ServiceError:
    return invalid(f"{message} ({where})", where, model)


def _decode_data_uri(model: str, where: str, reference: str, limit: int) -> bytes:
    match = _DATA_URI.match(reference)
    if match is None:
        raise _refused(model, where, "The data URI is not valid: expected data:{MIME};base64,{data}")
    if not match.group("mime").lower().startswith("image/"):
        raise _refused(model, where, f"The data URI's MIME type {match.group('mime')!r} is not an image type")
    payload = match.group("data")
    # Bounded: a payload that cannot decode to at most limit bytes is refused without decoding it.
    if len(payload) > 4 * ((limit + 3) // 3):
        raise _refused(model, where, f"The image is too large: more than {limit} bytes (at most {limit})")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _refused(model, where, "The data URI's data is not valid base64") from None


def _download(url: str, limit: int, timeout_s: float) -> bytes | str:
    """The body of a GET of ``url`` (at most ``limit + 1`` bytes), or the message saying why there is none."""
    deadline = time.monotonic() + timeout_s
    request = urllib.request.Request(url, headers={"User-Agent": "imggen-emulator-inspector/1.0"})
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > limit:
                return f"The image is too large: {int(length)} bytes (at most {limit})"
            chunks: list[bytes] = []
            received = 0
            while received <= limit:
                if time.monotonic() > deadline:
                    return TIMED_OUT
                chunk = response.read(min(65_536, limit + 1 - received))
                if not chunk:
                    break
                chunks.append(chunk)
                received += len(chunk)
            return b"".join(chunks)
    except urllib.error.HTTPError as exc:
        return f"{NOT_DOWNLOADED}: HTTP {exc.code}"
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            return TIMED_OUT
        return f"{NOT_DOWNLOADED}: {exc.reason}"
    except TimeoutError:
        return TIMED_OUT
    except (OSError, HTTPException, ValueError) as exc:
        return f"{NOT_DOWNLOADED}: {exc}"


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def _inspect(data: bytes, limits: dict[str, Any], model: str) -> InputImage | str:
    """The input as kept (sha256, thumbnail), or the message saying why the model refuses these bytes."""
    limit = limits["max_input_bytes"]
    if len(data) > limit:
        return f"The image is too large: more than {limit} bytes (10 MB), the most {model} accepts"
    formats = limits["input_formats"]
    allowed = ", ".join(_SHOWN[name] for name in formats)
    found = sniff(data)
    if found is None:
        return f"The image format is not supported: not an image file; {model} accepts {allowed}"
    if found not in formats:
        return f"The image format is not supported: {_SHOWN[found]}; {model} accepts {allowed}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(io.BytesIO(data)) as image:
                if image.format != found and (found, image.format) != ("JPEG", "MPO"):
                    return f"The image cannot be decoded: it starts like {found}, but is {image.format}"
                width, height = image.size
                low, high = limits["min_input_side"], limits["max_input_side"]
                if not (low <= width <= high and low <= height <= high):
                    return (
                        f"The image resolution is out of range: {width}x{height}; {model} accepts each side "
                        f"{low}-{high} pixels"
                    )
                if limits["refuses_alpha"] and _has_alpha(image):
                    return f"The image has an alpha channel (transparency), which {model} does not accept"
                image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
                thumbnail = image.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            return f"The image cannot be decoded: {exc}"
    buffer = io.BytesIO()
    thumbnail.save(buffer, format="PNG")
    digest = hashlib.sha256(data).hexdigest()
    return InputImage(sha256=digest, thumbnail=buffer.getvalue(), width=width, height=height, format=found)


async def load_input(model: str, where: str, reference: object, timeout_s: float) -> InputImage:
    """One input image of ``model`` (fetched or decoded, then checked), or a 400."""
    limits = limits_of(model)
    limit = limits["max_input_bytes"]
    if not isinstance(reference, str) or not reference.strip():
        raise _refused(model, where, "Invalid image: expected an http(s) URL or a data URI")
    scheme = reference.partition(":")[0].lower()
    if scheme == "data":
        data: bytes | str = _decode_data_uri(model, where, reference, limit)
    elif scheme in ("http", "https"):
        data = await asyncio.to_thread(_download, reference, limit, timeout_s)
    elif scheme == "oss":
        raise _refused(model, where, NO_UPLOADS)
    else:
        raise _refused(
            model, where, "The image URL is not valid: expected http(s) or data:{MIME};base64,{data}"
        )
    if isinstance(data, str):
        raise _refused(model, where, data)
    checked = await asyncio.to_thread(_inspect, data, limits, model)
    if isinstance(checked, str):
        raise _refused(model, where, checked)
    return checked


async def load_inputs(
    model: str, references: Sequence[Reference], timeout_s: float
) -> tuple[InputImage, ...]:
    """Every input image of a request, in order (the first broken one answers 400)."""
    return tuple([await load_input(model, where, reference, timeout_s) for where, reference in references])
