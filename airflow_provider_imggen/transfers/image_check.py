"""
Structural checks of PNG, JPEG and WebP files, without decoding a pixel.

The check walks the file's container structure to its end and accounts for every byte: PNG chunks to IEND
with their CRCs, JPEG segments by their lengths and entropy-coded data to the EOI marker, WebP's RIFF length
and chunks. The dimensions come from the header the walk proved to be part of a complete file, and must
stay within Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``). Memory stays bounded: the
file is read in 1 MiB pieces.

:func:`check_image` checks a file; :class:`StreamingImageCheck` checks (and hashes) the bytes while they are
being downloaded, in a thread of its own, so that a download needs no second pass over the file and the
check's CRC and hashing overlap the network instead of following it.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHUNK = 1024 * 1024
# JPEG markers that carry the frame size (start of frame), all but DHT (C4), JPG (C8) and DAC (CC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_KINDS = {
    "png": ("image/png", "png"),
    "jpeg": ("image/jpeg", "jpg"),
    "webp": ("image/webp", "webp"),
}


class ImageCheckError(Exception):
    """The file is not a complete, well-formed image; the message says what is wrong (never its bytes)."""


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
        return _check(_Reader(file.read), max_pixels)


def _check(reader: _Reader, max_pixels: int | None) -> ImageInfo:
    if max_pixels is None:
        from PIL import Image

        max_pixels = Image.MAX_IMAGE_PIXELS
    kind = sniff(reader.peek(12))
    if kind is None:
        raise ImageCheckError("not a PNG, JPEG or WebP image")
    width, height, alpha = {"png": _png, "jpeg": _jpeg, "webp": _webp}[kind](reader)
    trailing = reader.count_rest()
    if trailing:
        raise ImageCheckError(f"{trailing} unexpected byte(s) after the image's end")
    if width < 1 or height < 1:
        raise ImageCheckError(f"its header gives an empty size ({width}x{height})")
    if max_pixels and width * height > max_pixels:
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
            self._info = _check(_Reader(self._next), max_pixels)
        except ImageCheckError as error:
            self._error = error
        except Exception as error:  # a bug here must fail the download, never leave feed() blocked
            self._error = ImageCheckError(f"the check itself failed ({type(error).__name__})")
        if self._error is not None:
            # Keep taking chunks until the end, so that a feed in progress never blocks.
            while not self._at_end:
                self._next(_CHUNK)


class _Reader:
    """
    Sequential reads through a bounded buffer over ``read(n)`` (empty at the end), a file's or a download's:
    reading past the end means truncated.
    """

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self.buffer = b""
        self.offset = 0  # in buffer
        self.position = 0  # in the input
        self._ended = False

    def _fill(self, wanted: int) -> None:
        while len(self.buffer) - self.offset < wanted and not self._ended:
            more = self._read(max(_CHUNK, wanted))
            if not more:
                self._ended = True
                return
            self.buffer = self.buffer[self.offset :] + more
            self.offset = 0

    def peek(self, count: int) -> bytes:
        self._fill(count)
        return self.buffer[self.offset : self.offset + count]

    def read(self, count: int) -> bytes:
        self._fill(count)
        data = self.buffer[self.offset : self.offset + count]
        if len(data) < count:
            raise ImageCheckError("truncated: the file ends inside the image")
        self.offset += count
        self.position += count
        return data

    def skip(self, count: int, crc: int | None = None) -> int:
        """Skip ``count`` bytes (updating ``crc`` over them when given); the CRC, or 0."""
        while count:
            if self.offset >= len(self.buffer):
                self.buffer, self.offset = b"", 0
                self._fill(1)
                if not self.buffer:
                    raise ImageCheckError("truncated: the file ends inside the image")
            # A view of what is buffered, not a copy: large chunks cost one CRC pass and no allocation.
            with memoryview(self.buffer)[self.offset : self.offset + count] as piece:
                if crc is not None:
                    crc = zlib.crc32(piece, crc)
                taken = len(piece)
            self.offset += taken
            self.position += taken
            count -= taken
        return crc or 0

    def find(self, byte: bytes) -> bool:
        """Advance to the next ``byte`` (not consuming it); False at the end of the file."""
        while True:
            found = self.buffer.find(byte, self.offset)
            if found >= 0:
                self.position += found - self.offset
                self.offset = found
                return True
            self.position += len(self.buffer) - self.offset
            self.buffer, self.offset = b"", 0
            self._fill(1)
            if not self.buffer:
                return False

    def count_rest(self) -> int:
        """Read to the end; how many bytes were left."""
        rest = len(self.buffer) - self.offset
        self.buffer, self.offset = b"", 0
        while not self._ended:
            self._fill(1)
            rest += len(self.buffer)
            self.buffer = b""
        self.position += rest
        return rest


def _png(reader: _Reader) -> tuple[int, int, bool]:
    reader.read(len(PNG_SIGNATURE))
    width = height = 0
    first, data_seen, alpha = True, False, False
    while True:
        length, kind = struct.unpack(">I4s", reader.read(8))
        if length > 0x7FFFFFFF or not kind.isalpha():
            raise ImageCheckError("malformed PNG chunk header")
        if first:
            if kind != b"IHDR" or length != 13:
                raise ImageCheckError("the PNG does not start with its IHDR header")
            header = reader.read(13)
            width, height = struct.unpack(">II", header[:8])
            alpha = header[9] in (4, 6)  # grey + alpha, RGB + alpha
            crc = zlib.crc32(header, zlib.crc32(kind))
            first = False
        else:
            crc = reader.skip(length, zlib.crc32(kind))
        if struct.unpack(">I", reader.read(4))[0] != crc:
            raise ImageCheckError(f"PNG chunk {kind.decode()} fails its CRC")
        data_seen |= kind == b"IDAT"
        alpha |= kind == b"tRNS"
        if kind == b"IEND":
            break
    if not data_seen:
        raise ImageCheckError("the PNG has no image data (IDAT)")
    return width, height, alpha


def _jpeg(reader: _Reader) -> tuple[int, int, bool]:
    reader.read(2)  # SOI
    size: tuple[int, int] | None = None
    marker = _next_marker(reader)
    while marker != 0xD9:  # EOI
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            marker = _next_marker(reader)
            continue
        (length,) = struct.unpack(">H", reader.read(2))
        if length < 2:
            raise ImageCheckError("malformed JPEG segment length")
        if marker in _SOF_MARKERS:
            frame = reader.read(length - 2)
            if len(frame) < 5:
                raise ImageCheckError("malformed JPEG frame header")
            height, width = struct.unpack(">HH", frame[1:5])
            size = (width, height)
        else:
            reader.skip(length - 2)
        marker = _entropy_coded(reader) if marker == 0xDA else _next_marker(reader)
    if size is None:
        raise ImageCheckError("the JPEG has no frame header")
    return size[0], size[1], False


def _next_marker(reader: _Reader) -> int:
    if reader.read(1) != b"\xff":
        raise ImageCheckError("malformed JPEG: a segment does not start with a marker")
    marker = reader.read(1)[0]
    while marker == 0xFF:  # fill bytes
        marker = reader.read(1)[0]
    return marker


def _entropy_coded(reader: _Reader) -> int:
    """Skip a scan's entropy-coded data; the marker that ends it."""
    while True:
        if not reader.find(b"\xff"):
            raise ImageCheckError("truncated: the JPEG ends inside its image data")
        reader.read(1)
        marker = reader.read(1)[0]
        while marker == 0xFF:
            marker = reader.read(1)[0]
        if marker != 0x00 and not 0xD0 <= marker <= 0xD7:
            return marker


def _webp(reader: _Reader) -> tuple[int, int, bool]:
    header = reader.read(12)
    (riff_length,) = struct.unpack("<I", header[4:8])
    size: tuple[int, int] | None = None
    canvas: tuple[int, int] | None = None
    alpha = False
    while reader.position < riff_length + 8:
        kind, length = struct.unpack("<4sI", reader.read(8))
        head = reader.read(min(length, 10))
        reader.skip(length - len(head) + (length & 1))
        alpha |= kind == b"ALPH"
        if kind == b"VP8X" and len(head) >= 10:
            canvas = (int.from_bytes(head[4:7], "little") + 1, int.from_bytes(head[7:10], "little") + 1)
            alpha |= bool(head[0] & 0x10)
        elif kind == b"VP8 " and size is None:
            if len(head) < 10 or head[3:6] != b"\x9d\x01\x2a":
                raise ImageCheckError("malformed WebP (VP8) frame header")
            width, height = struct.unpack("<HH", head[6:10])
            size = (width & 0x3FFF, height & 0x3FFF)
        elif kind == b"VP8L" and size is None:
            if len(head) < 5 or head[0] != 0x2F:
                raise ImageCheckError("malformed WebP (VP8L) header")
            bits = int.from_bytes(head[1:5], "little")
            size = ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
            alpha |= bool((bits >> 28) & 1)
    if reader.position != riff_length + 8:
        raise ImageCheckError(f"the WebP's last chunk runs past its RIFF length of {riff_length + 8} bytes")
    if canvas is None and size is None:
        raise ImageCheckError("the WebP has no image header")
    width, height = canvas or size  # type: ignore[misc]
    return width, height, alpha
