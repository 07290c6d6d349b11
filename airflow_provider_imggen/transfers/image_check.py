"""
Proof that a PNG, JPEG or WebP file is one complete image, without decoding it to pixels.

The check walks the file's container structure to its end and accounts for every byte (PNG chunks to IEND
with their CRCs, JPEG segments by their lengths, WebP's RIFF length and chunks), and proves the compressed
image data whole: a PNG's inflates to exactly the size its header implies (image_check_png.py), a JPEG's
scans Huffman-decode to exactly the blocks of its frame (image_check_jpeg.py), a WebP's bitstream headers
agree with its chunks, and a small one decodes (image_check_webp.py). The dimensions come from the header
the walk proved to be part of a complete file, and must stay within Pillow's decompression-bomb limit
(``PIL.Image.MAX_IMAGE_PIXELS``). Memory stays bounded: the file is read in 256 KiB pieces.

:func:`check_image` checks a file; :class:`StreamingImageCheck` checks (and hashes) the bytes while they are
being downloaded, in a thread of its own, so that a download needs no second pass over the file and the
check's CRC, inflating and hashing overlap the network instead of following it.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from airflow_provider_imggen.transfers.image_check_jpeg import check_jpeg as _jpeg
from airflow_provider_imggen.transfers.image_check_png import PNG_SIGNATURE
from airflow_provider_imggen.transfers.image_check_png import check_png as _png
from airflow_provider_imggen.transfers.image_check_reader import (
    PILLOW_MAX_IMAGE_PIXELS,
    READ_BYTES,
    ImageCheckError,
)
from airflow_provider_imggen.transfers.image_check_reader import ImageReader as _Reader
from airflow_provider_imggen.transfers.image_check_webp import check_webp as _webp

__all__ = ["PNG_SIGNATURE", "ImageCheckError", "ImageInfo", "StreamingImageCheck", "check_image", "sniff"]
_KINDS = {
    "png": ("image/png", "png"),
    "jpeg": ("image/jpeg", "jpg"),
    "webp": ("image/webp", "webp"),
}


@dataclass(frozen=True)
class ImageInfo:
    content_type: str
    ext: str
    width: int
    height: int
    # Whether the file declares transparency (PNG colour types 4 and 6 or a tRNS chunk, WebP's alpha
    # flags): some editing models refuse inputs with an alpha channel.
    alpha: bool = False


def sniff(head: bytes) -> str | None:
    """``png``, ``jpeg`` or ``webp`` from a file's first 12 bytes; None for anything else."""
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def check_image(path: Path, *, max_pixels: int | None = None) -> ImageInfo:
    """
    Check the file at ``path`` is one complete PNG, JPEG or WebP image; its type and dimensions.

    :param max_pixels: largest width x height accepted; default Pillow's ``Image.MAX_IMAGE_PIXELS``
    """
    with open(path, "rb") as file:
        return _check(file.read, max_pixels)


def _pixel_limit(max_pixels: int | None) -> int:
    """The limit given, else Pillow's (as the user may have set it), without importing Pillow for it."""
    if max_pixels is not None:
        return max_pixels
    limit = getattr(sys.modules.get("PIL.Image"), "MAX_IMAGE_PIXELS", PILLOW_MAX_IMAGE_PIXELS)
    return int(limit or 0)  # Pillow's None: no limit


def _check(read: Callable[[int], bytes], max_pixels: int | None) -> ImageInfo:
    max_pixels = _pixel_limit(max_pixels)
    reader = _Reader(read, max_pixels)
    kind = sniff(reader.peek(12))
    if kind is None:
        raise ImageCheckError("not a PNG, JPEG or WebP image")
    width, height, alpha = {"png": _png, "jpeg": _jpeg, "webp": _webp}[kind](reader)
    trailing = reader.count_rest()
    if trailing:
        raise ImageCheckError(f"{trailing} unexpected byte(s) after the image's end")
    if width < 1 or height < 1:
        raise ImageCheckError(f"its header gives an empty size ({width}x{height})")
    if not reader.within_pixel_limit(width, height):
        raise ImageCheckError(
            f"{width}x{height} is more than the decompression-bomb limit of {max_pixels} pixels"
        )
    content_type, ext = _KINDS[kind]
    return ImageInfo(content_type, ext, width, height, alpha)


class StreamingImageCheck:
    """
    The check of :func:`check_image` and a sha256, over bytes fed as they arrive, in a thread of its own.

    ``feed`` hands each chunk over (at most ``_QUEUED_CHUNKS`` wait, bounding memory) and raises
    :class:`ImageCheckError` as soon as the check has failed, so that a download stops early; ``finish``
    waits for the verdict: the image's type, dimensions and sha256. ``abort`` ends the thread when the
    download fails. Use it as a context manager: leaving the block aborts a check that did not finish.

    :param max_pixels: largest width x height accepted; default Pillow's ``Image.MAX_IMAGE_PIXELS``
    """

    _QUEUED_CHUNKS = 2
    _END = b""

    def __init__(self, *, max_pixels: int | None = None) -> None:
        self._chunks: queue.Queue[bytes] = queue.Queue(maxsize=self._QUEUED_CHUNKS)
        self._digest = hashlib.sha256()
        self._info: ImageInfo | None = None
        self._error: ImageCheckError | None = None
        self._aborted = threading.Event()
        self._at_end = False  # the thread took the end marker (or was aborted)
        self._thread = threading.Thread(
            target=self._run, args=(max_pixels,), name="imggen-image-check", daemon=True
        )
        self._thread.start()

    def __enter__(self) -> StreamingImageCheck:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._thread.is_alive():
            self.abort()

    def feed(self, chunk: bytes) -> None:
        """Hand over the next bytes (non-empty); raises the check's error once it has failed."""
        if self._error is not None:
            raise self._error
        self._chunks.put(chunk)

    def finish(self) -> tuple[ImageInfo, str]:
        """The end of the bytes: the image's type and dimensions, and the sha256 of every byte fed."""
        self._chunks.put(self._END)
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._info is not None
        return self._info, self._digest.hexdigest()

    def abort(self) -> None:
        """Stop checking (the download failed); returns once the thread has ended."""
        self._aborted.set()
        with contextlib.suppress(queue.Full):  # then the thread sees the flag at its next chunk
            self._chunks.put_nowait(self._END)
        self._thread.join()

    def _next(self, _wanted: int) -> bytes:
        chunk = self._chunks.get()
        if chunk == self._END or self._aborted.is_set():
            self._at_end = True
            return self._END
        self._digest.update(chunk)  # hashlib and zlib release the GIL on chunks this size
        return chunk

    def _run(self, max_pixels: int | None) -> None:
        try:
            self._info = _check(self._next, max_pixels)
        except ImageCheckError as error:
            self._error = error
        except Exception as error:  # a bug here must fail the download, never leave feed() blocked
            self._error = ImageCheckError(f"the check itself failed ({type(error).__name__})")
        if self._error is not None:
            # Keep taking chunks until the end, so that a feed in progress never blocks.
            while not self._at_end:
                self._next(READ_BYTES)
