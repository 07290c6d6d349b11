"""
Thumbnails made with Pillow, bounded in pixels, bytes and concurrency, and kept in a small LRU cache.

An image is decoded only after its header proves it small enough (``MAX_PIXELS``, well under Pillow's own
decompression-bomb limit, which is checked too), and at most ``DECODE_SLOTS`` images decode at once, so a
page of 50 tiles never holds more than a few decoded images in memory. JPEG sources are decoded at a
reduced scale (``Image.draft``). The result is a JPEG of at most ``size`` pixels on its longer side.
"""

from __future__ import annotations

import hashlib
import io
import threading
import warnings
from collections import OrderedDict
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

THUMBNAIL_SIZES = (128, 256, 512)
DEFAULT_SIZE = 256
# 4096*4096: the largest image the supported models produce is 2048*2048; anything bigger is refused.
MAX_PIXELS = 4096 * 4096
DECODE_SLOTS = 2
JPEG_QUALITY = 82
CACHE_BYTES = 32 * 1024 * 1024

_decoding = threading.BoundedSemaphore(DECODE_SLOTS)


class ThumbnailError(Exception):
    """The source is not an image this view thumbnails (not one, too large, or broken)."""


def make_thumbnail(source: IO[bytes], size: int = DEFAULT_SIZE) -> bytes:
    """
    A JPEG thumbnail of the image in ``source``, at most ``size`` pixels on its longer side.

    :raises ThumbnailError: not a PNG/JPEG/WebP image, more than ``MAX_PIXELS``, or undecodable
    """
    if size not in THUMBNAIL_SIZES:
        raise ValueError(f"size must be one of {THUMBNAIL_SIZES}")
    from PIL import Image

    with _decoding, warnings.catch_warnings():
        # Pillow warns (and past twice the limit raises) on decompression bombs: refuse both.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(source, formats=("PNG", "JPEG", "WEBP")) as image:
                width, height = image.size
                if width <= 0 or height <= 0 or width * height > MAX_PIXELS:
                    raise ThumbnailError(f"{width}x{height} is more than {MAX_PIXELS} pixels")
                image.draft("RGB", (size, size))  # JPEG: decode at 1/2, 1/4 or 1/8 scale
                image.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)
                rgb = _flatten(image)
                out = io.BytesIO()
                rgb.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
                return out.getvalue()
        except ThumbnailError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ThumbnailError(f"refused as a decompression bomb ({error})") from None
        except (OSError, SyntaxError, ValueError, Image.UnidentifiedImageError) as error:
            raise ThumbnailError(f"not a readable PNG, JPEG or WebP image ({type(error).__name__})") from None


def _flatten(image: Image.Image) -> Image.Image:
    """RGB, transparent parts on white (JPEG has no alpha)."""
    from PIL import Image

    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def etag_for(identity: str, size: int) -> str:
    """A strong ETag for one thumbnail: what the image is (content hash and origin) and its size."""
    digest = hashlib.sha256(f"{identity}|{size}|{JPEG_QUALITY}".encode()).hexdigest()[:32]
    return f'"{digest}"'


class ThumbnailCache:
    """An LRU of thumbnails by ETag, bounded in total bytes; thread-safe."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, etag: str) -> bytes | None:
        with self._lock:
            data = self._items.get(etag)
            if data is not None:
                self._items.move_to_end(etag)
            return data

    def put(self, etag: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            previous = self._items.pop(etag, None)
            if previous is not None:
                self._bytes -= len(previous)
            self._items[etag] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= len(evicted)

    @property
    def size_bytes(self) -> int:
        return self._bytes
