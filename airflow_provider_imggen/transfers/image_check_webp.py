"""
WebP: the RIFF container to its length, its chunks in the order the format allows, and the bitstream
headers agreeing with them; a small WebP is also decoded.

Headers: a lossy (VP8) bitstream must be a key frame shown, with its start code, a first partition and DCT
partitions that fit its chunk exactly (the partition count is read from the frame header, boolean-coded);
a lossless (VP8L) one its signature and version 0; either's size must be the canvas's (VP8X) or its
animation frame's. No header proves that the coded pixels are whole, and no cheaper proof exists than
decoding, so a WebP of at most ``DECODE_MAX_BYTES`` whose canvas is at most ``DECODE_MAX_PIXELS`` is also
decoded by Pillow (libwebp), which refuses a lossless bitstream that is not one and a lossy one that ends
early. A larger WebP rests on its headers: decoding one costs its full-size RGBA canvas, several times,
and Pillow has no reduced decode for WebP; animations rest on their frames' headers too.
"""

from __future__ import annotations

import io
import struct

from airflow_provider_imggen.transfers.image_check_reader import ImageCheckError, ImageReader

DECODE_MAX_BYTES = 4 * 1024 * 1024
DECODE_MAX_PIXELS = 1024 * 1024
_START_CODE = b"\x9d\x01\x2a"
_VP8L_SIGNATURE = 0x2F
_FLAG_ANIMATION, _FLAG_ALPHA = 0x02, 0x10
# A VP8 frame header's boolean-coded fields before its partition count need a few dozen bytes at most.
_FRAME_HEADER_BYTES = 64


def check_webp(reader: ImageReader) -> tuple[int, int, bool]:
    """Walk a WebP to its RIFF length; its width, height and whether it declares alpha."""
    header = reader.read(12)
    (riff_length,) = struct.unpack("<I", header[4:8])
    end = riff_length + 8
    walk = _Walk(reader, bytearray(header) if end <= DECODE_MAX_BYTES else None)
    canvas: tuple[int, int] | None = None
    size: tuple[int, int] | None = None
    alpha = animated = False
    first = True
    while reader.position < end:
        kind, length = struct.unpack("<4sI", walk.take(8))
        padded = length + (length & 1)
        if reader.position + padded > end:
            raise ImageCheckError(f"the WebP's last chunk runs past its RIFF length of {end} bytes")
        if kind == b"VP8X":
            if not first or length < 10:
                raise ImageCheckError("malformed WebP: a misplaced or short VP8X header")
            head = walk.take(10)
            walk.skip(padded - 10)
            canvas = (int.from_bytes(head[4:7], "little") + 1, int.from_bytes(head[7:10], "little") + 1)
            alpha |= bool(head[0] & _FLAG_ALPHA)
            animated = bool(head[0] & _FLAG_ANIMATION)
        elif kind in (b"VP8 ", b"VP8L"):
            if size is not None or animated:
                raise ImageCheckError("the WebP has a second or misplaced image bitstream")
            if not first and canvas is None:
                raise ImageCheckError("malformed WebP: chunks before the image of a simple WebP")
            size, has_alpha = _bitstream(walk, kind, length)
            walk.skip(length & 1)
            alpha |= has_alpha
        elif kind == b"ANMF" and animated:
            if length < 16:
                raise ImageCheckError("malformed WebP animation frame")
            _frame(walk, length, canvas)
            walk.skip(length & 1)
        elif first:
            raise ImageCheckError("the WebP has no image header")
        else:
            alpha |= kind == b"ALPH"
            walk.skip(padded)
        first = False
    if reader.position != end:
        raise ImageCheckError(f"the WebP's last chunk runs past its RIFF length of {end} bytes")
    if size is None and not animated:
        raise ImageCheckError("the WebP has no image bitstream")
    if canvas is not None and size is not None and size != canvas:
        raise ImageCheckError("the WebP's image size differs from its canvas")
    width, height = canvas or size  # type: ignore[misc]
    if walk.recorded is not None and not animated and width * height <= DECODE_MAX_PIXELS:
        _decode(bytes(walk.recorded))
    return width, height, alpha


class _Walk:
    """Reads through ``reader``, keeping what it read in ``recorded`` when given (a small file, to decode)."""

    def __init__(self, reader: ImageReader, recorded: bytearray | None) -> None:
        self.reader = reader
        self.recorded = recorded

    def take(self, count: int) -> bytes:
        data = self.reader.read(count)
        if self.recorded is not None:
            self.recorded += data
        return data

    def skip(self, count: int) -> None:
        if self.recorded is not None:
            self.take(count)
        else:
            self.reader.skip(count)


def _frame(walk: _Walk, length: int, canvas: tuple[int, int] | None) -> None:
    """An animation frame (ANMF): its position and size within the canvas, and its bitstream's header."""
    head = walk.take(16)
    x, y = 2 * int.from_bytes(head[0:3], "little"), 2 * int.from_bytes(head[3:6], "little")
    width, height = int.from_bytes(head[6:9], "little") + 1, int.from_bytes(head[9:12], "little") + 1
    if canvas is None or x + width > canvas[0] or y + height > canvas[1]:
        raise ImageCheckError("the WebP's animation frame lies outside its canvas")
    left = length - 16
    seen = False
    while left:
        if left < 8:
            raise ImageCheckError("malformed WebP animation frame")
        kind, size = struct.unpack("<4sI", walk.take(8))
        padded = size + (size & 1)
        if padded > left - 8:
            raise ImageCheckError("malformed WebP animation frame")
        if kind in (b"VP8 ", b"VP8L") and not seen:
            if _bitstream(walk, kind, size)[0] != (width, height):
                raise ImageCheckError("the WebP's frame size differs from its bitstream's")
            walk.skip(size & 1)
            seen = True
        else:
            walk.skip(padded)
        left -= 8 + padded
    if not seen:
        raise ImageCheckError("the WebP's animation frame has no image bitstream")


def _bitstream(walk: _Walk, kind: bytes, length: int) -> tuple[tuple[int, int], bool]:
    """Check a VP8 or VP8L chunk's header and read past the chunk; its size and whether it has alpha."""
    if kind == b"VP8L":
        if length < 5:
            raise ImageCheckError("malformed WebP (VP8L) header")
        head = walk.take(5)
        bits = int.from_bytes(head[1:5], "little")
        if head[0] != _VP8L_SIGNATURE or bits >> 29:
            raise ImageCheckError("malformed WebP (VP8L) header")
        walk.skip(length - 5)
        return ((bits & 0x3FFF) + 1, (bits >> 14 & 0x3FFF) + 1), bool(bits >> 28 & 1)
    if length < 10:
        raise ImageCheckError("malformed WebP (VP8) frame header")
    head = walk.take(10)
    tag = int.from_bytes(head[:3], "little")
    first_partition = tag >> 5
    # A key frame (bit 0 clear), version 0 to 3, shown, and a first partition inside the chunk.
    if tag & 1 or tag >> 1 & 7 > 3 or not tag >> 4 & 1 or not 0 < first_partition <= length - 10:
        raise ImageCheckError("malformed WebP (VP8) frame header")
    if head[3:6] != _START_CODE:
        raise ImageCheckError("malformed WebP (VP8) frame header (no start code)")
    width, height = (value & 0x3FFF for value in struct.unpack("<HH", head[6:10]))
    if not width or not height:
        raise ImageCheckError("malformed WebP (VP8) frame header (empty size)")
    frame_header = walk.take(min(first_partition, _FRAME_HEADER_BYTES))
    partitions = _partition_count(frame_header, first_partition)
    walk.skip(first_partition - len(frame_header))
    left = length - 10 - first_partition - 3 * (partitions - 1)
    if left <= 0:
        raise ImageCheckError("the WebP's VP8 partitions do not fit its chunk")
    sizes = walk.take(3 * (partitions - 1))
    for index in range(partitions - 1):
        left -= int.from_bytes(sizes[3 * index : 3 * index + 3], "little")
    if left <= 0:  # the last partition takes what is left, and must have something
        raise ImageCheckError("the WebP's VP8 partitions do not fit its chunk")
    walk.skip(length - 10 - first_partition - len(sizes))
    return (width, height), False


class _BoolDecoder:
    """VP8's boolean entropy decoder (RFC 6386, 7.3), over the start of the first partition."""

    def __init__(self, data: bytes, partition_size: int) -> None:
        self._data = data
        self._available = min(len(data), partition_size)
        self._value = int.from_bytes(data[:2].ljust(2, b"\0"), "big")
        self._position = 2
        self._range = 255
        self._bit_count = 0

    def bit(self, probability: int = 128) -> int:
        split = 1 + (((self._range - 1) * probability) >> 8)
        if self._value >= split << 8:
            self._range -= split
            self._value -= split << 8
            bit = 1
        else:
            self._range = split
            bit = 0
        while self._range < 128:
            self._value <<= 1
            self._range <<= 1
            self._bit_count += 1
            if self._bit_count == 8:
                self._bit_count = 0
                if self._position >= self._available:
                    raise ImageCheckError("the WebP's VP8 frame header is cut short")
                self._value |= self._data[self._position]
                self._position += 1
        return bit

    def literal(self, bits: int) -> int:
        value = 0
        for _ in range(bits):
            value = value << 1 | self.bit()
        return value

    def updates(self, count: int, bits: int, signed: bool) -> None:
        """``count`` optional values: a flag, then the value (and its sign) when set."""
        for _ in range(count):
            if self.bit():
                self.literal(bits + signed)


def _partition_count(data: bytes, partition_size: int) -> int:
    """The number of DCT partitions (1, 2, 4 or 8): a key frame header's last field (RFC 6386, 19.2)."""
    if partition_size < 2:
        raise ImageCheckError("the WebP's VP8 frame header is cut short")
    decoder = _BoolDecoder(data, partition_size)
    decoder.literal(2)  # colour space, clamping type
    if decoder.bit():  # segmentation enabled
        update_map = decoder.bit()
        if decoder.bit():  # segment feature data
            decoder.bit()  # absolute or delta values
            decoder.updates(4, 7, signed=True)  # quantizer
            decoder.updates(4, 6, signed=True)  # loop filter level
        if update_map:
            decoder.updates(3, 8, signed=False)  # segment map probabilities
    decoder.literal(1 + 6 + 3)  # filter type, loop filter level, sharpness
    if decoder.bit() and decoder.bit():  # loop filter deltas enabled, and updated
        decoder.updates(8, 6, signed=True)  # reference frame and mode deltas
    return 1 << decoder.literal(2)


def _decode(data: bytes) -> None:
    """Decode a small WebP with Pillow (libwebp): its coded data must be a whole image."""
    from PIL import Image, features

    if not features.check_module("webp"):  # a Pillow built without libwebp: the headers are the proof
        return
    try:
        with Image.open(io.BytesIO(data), formats=["WEBP"]) as image:
            image.load()
    except Exception:  # whatever libwebp or Pillow raise: the data does not decode
        raise ImageCheckError("the WebP's image data does not decode (corrupt)") from None
