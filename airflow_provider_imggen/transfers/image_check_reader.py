"""
The bounded sequential reader the image checks walk a file with, and the error they raise.

A file's or a download's bytes are read through :class:`ImageReader` in pieces of at most ``READ_BYTES``
(plus what one read asks for), whatever the size of the file: the checks never hold the whole image.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

READ_BYTES = 256 * 1024
# Pillow's default PIL.Image.MAX_IMAGE_PIXELS, used when Pillow is not imported yet (importing it only to
# read a constant costs the task its memory); once imported, a value the user set there applies.
PILLOW_MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3


class ImageCheckError(Exception):
    """The file is not a complete, well-formed image; the message says what is wrong (never its bytes)."""


class ImageReader:
    """
    Sequential reads through a bounded buffer over ``read(n)`` (empty at the end), a file's or a download's:
    reading past the end means truncated.

    :param read: returns up to (or more than) ``n`` further bytes; empty at the end
    :param max_pixels: largest width x height accepted (0: no limit); a format's decoding proof is not run
        for an image over it, which is refused once its structure was walked
    """

    def __init__(self, read: Callable[[int], bytes], max_pixels: int = 0) -> None:
        self._read = read
        self.max_pixels = max_pixels
        self.buffer = b""
        self.offset = 0  # in buffer
        self.position = 0  # in the input
        self._ended = False

    def within_pixel_limit(self, width: int, height: int) -> bool:
        return not self.max_pixels or width * height <= self.max_pixels

    def _fill(self, wanted: int) -> None:
        while len(self.buffer) - self.offset < wanted and not self._ended:
            more = self._read(max(READ_BYTES, wanted))
            if not more:
                self._ended = True
                return
            self.buffer = self.buffer[self.offset :] + more
            self.offset = 0

    def peek(self, count: int) -> bytes:
        self._fill(count)
        return self.buffer[self.offset : self.offset + count]

    def buffered(self, count: int) -> int:
        """Make at least ``count`` bytes available at ``offset`` (fewer at the end); how many are."""
        self._fill(count)
        return len(self.buffer) - self.offset

    def advance(self, count: int) -> None:
        """Move past ``count`` buffered bytes."""
        self.offset += count
        self.position += count

    def read(self, count: int) -> bytes:
        self._fill(count)
        data = self.buffer[self.offset : self.offset + count]
        if len(data) < count:
            raise ImageCheckError("truncated: the file ends inside the image")
        self.advance(count)
        return data

    def skip(
        self, count: int, crc: int | None = None, sink: Callable[[memoryview], object] | None = None
    ) -> int:
        """
        Skip ``count`` bytes, updating ``crc`` over them when given and handing them to ``sink`` (in pieces,
        views valid during the call only); the CRC, or 0.
        """
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
                if sink is not None:
                    sink(piece)
                taken = len(piece)
            self.advance(taken)
            count -= taken
        return crc or 0

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
