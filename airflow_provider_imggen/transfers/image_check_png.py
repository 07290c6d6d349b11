"""
PNG: every chunk and its CRC to IEND, and the image data proved whole without decoding a pixel.

The IDAT chunks' concatenated data must be one zlib stream that inflates to exactly the bytes the IHDR
header implies (each scanline: a filter-type byte, then its pixels; the seven passes of an Adam7-interlaced
image), that ends (zlib's end, its Adler-32 verified by zlib) with the last IDAT byte, and whose filter-type
bytes are all 0 to 4. Inflating is streamed: zlib is handed at most ``_INFLATE_INPUT`` bytes and returns at
most ``_INFLATE_OUTPUT`` at a time, each piece dropped once its filter bytes were read, so memory stays
constant whatever the image's size; zlib runs in C without the GIL, alongside the download.
"""

from __future__ import annotations

import struct
import zlib

from airflow_provider_imggen.transfers.image_check_reader import ImageCheckError, ImageReader

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Colour type: its channels and the bit depths it may have (PNG spec, 11.2.2).
_COLOUR_TYPES = {
    0: (1, (1, 2, 4, 8, 16)),  # greyscale
    2: (3, (8, 16)),  # RGB
    3: (1, (1, 2, 4, 8)),  # palette
    4: (2, (8, 16)),  # greyscale + alpha
    6: (4, (8, 16)),  # RGB + alpha
}
# Adam7's passes: first column, first row, column step, row step.
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
# Compressed bytes per inflate call: zlib copies what it did not consume (unconsumed_tail), so a small
# input bounds that copy even when a highly compressed piece yields its output in many calls.
_INFLATE_INPUT = 64 * 1024
_INFLATE_OUTPUT = 256 * 1024
_MAX_FILTER_TYPE = 4


def check_png(reader: ImageReader) -> tuple[int, int, bool]:
    """Walk a PNG to its IEND, inflating its image data; its width, height and whether it has alpha."""
    reader.read(len(PNG_SIGNATURE))
    length, kind = struct.unpack(">I4s", reader.read(8))
    if kind != b"IHDR" or length != 13:
        raise ImageCheckError("the PNG does not start with its IHDR header")
    header = reader.read(13)
    if struct.unpack(">I", reader.read(4))[0] != zlib.crc32(header, zlib.crc32(kind)):
        raise ImageCheckError("PNG chunk IHDR fails its CRC")
    width, height, bit_depth, colour_type, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", header
    )
    _check_header(bit_depth, colour_type, compression, filtering, interlace)
    # An image over the pixel limit is refused after the walk: inflating it first would only cost time.
    data: _ImageData | None = None
    if reader.within_pixel_limit(width, height):
        data = _ImageData(scanlines(width, height, bit_depth, colour_type, interlace))
    alpha = _chunks(reader, data, colour_type)
    if data is not None:
        data.finish()
    return width, height, alpha


def _chunks(reader: ImageReader, data: _ImageData | None, colour_type: int) -> bool:
    """Walk the chunks after IHDR to IEND, handing IDAT data to ``data``; whether the image has alpha."""
    alpha = colour_type in (4, 6)
    palette_seen = False
    data_chunks = 0  # 0: none yet, 1: in the IDAT run, 2: after it
    while True:
        length, kind = struct.unpack(">I4s", reader.read(8))
        if length > 0x7FFFFFFF or not kind.isalpha():
            raise ImageCheckError("malformed PNG chunk header")
        if kind == b"IDAT":
            if data_chunks == 2:
                raise ImageCheckError("the PNG's IDAT chunks are not consecutive")
            if colour_type == 3 and not palette_seen:
                raise ImageCheckError("the palette PNG has no PLTE before its image data")
            data_chunks = 1
        elif data_chunks == 1:
            data_chunks = 2
        if kind in (b"IHDR", b"PLTE") and (kind == b"IHDR" or palette_seen or data_chunks):
            raise ImageCheckError(f"the PNG has a misplaced or repeated {kind.decode()} chunk")
        sink = data.feed if data is not None and kind == b"IDAT" else None
        crc = reader.skip(length, zlib.crc32(kind), sink)
        if struct.unpack(">I", reader.read(4))[0] != crc:
            raise ImageCheckError(f"PNG chunk {kind.decode()} fails its CRC")
        palette_seen |= kind == b"PLTE"
        alpha |= kind == b"tRNS"
        if kind == b"IEND":
            break
    if not data_chunks:
        raise ImageCheckError("the PNG has no image data (IDAT)")
    if palette_seen and colour_type in (0, 4):
        raise ImageCheckError("the greyscale PNG has a PLTE chunk")
    return alpha


def _check_header(bit_depth: int, colour_type: int, compression: int, filtering: int, interlace: int) -> None:
    depths = _COLOUR_TYPES.get(colour_type, (0, ()))[1]
    if bit_depth not in depths:
        raise ImageCheckError("the PNG's header gives an invalid colour type or bit depth")
    if compression != 0 or filtering != 0 or interlace not in (0, 1):
        raise ImageCheckError("the PNG's header gives an unknown compression, filter or interlace method")


def scanlines(
    width: int, height: int, bit_depth: int, colour_type: int, interlace: int
) -> list[tuple[int, int]]:
    """
    (bytes per scanline with its filter byte, scanlines) of each pass of the image data: one pass, or
    Adam7's seven (an empty pass, fewer columns or rows than its start, has no scanline at all).
    """
    bits_per_pixel = _COLOUR_TYPES[colour_type][0] * bit_depth
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    layout = []
    for column, row, column_step, row_step in passes:
        columns = -(-(width - column) // column_step) if width > column else 0
        rows = -(-(height - row) // row_step) if height > row else 0
        if columns and rows:
            layout.append((1 + -(-(columns * bits_per_pixel) // 8), rows))
    return layout


class _ImageData:
    """The concatenated IDAT data, inflated piece by piece and counted against the size the header implies."""

    def __init__(self, layout: list[tuple[int, int]]) -> None:
        # Each pass as (first byte, end, scanline length) in the inflated data: where its filter bytes are.
        self._passes: list[tuple[int, int, int]] = []
        start = 0
        for line, rows in layout:
            self._passes.append((start, start + line * rows, line))
            start += line * rows
        self.expected = start
        self.inflated = 0
        self._inflater = zlib.decompressobj()

    def feed(self, compressed: bytes | memoryview) -> None:
        for start in range(0, len(compressed), _INFLATE_INPUT):
            if self._inflater.eof:
                raise ImageCheckError("the PNG has image data after the end of its compressed stream")
            self._inflate(compressed[start : start + _INFLATE_INPUT])

    def finish(self) -> None:
        if not self._inflater.eof:
            self._inflate(b"")  # output zlib still holds
        if not self._inflater.eof:
            raise ImageCheckError(
                "the PNG's compressed image data is truncated (its zlib stream does not end)"
            )
        if self._inflater.unused_data:
            raise ImageCheckError("the PNG has image data after the end of its compressed stream")
        if self.inflated != self.expected:
            raise ImageCheckError("the PNG's image data inflates to fewer bytes than its header implies")

    def _inflate(self, piece: bytes | memoryview) -> None:
        try:
            while True:
                out = self._inflater.decompress(piece, _INFLATE_OUTPUT)
                if out:
                    self._took(out)
                piece = self._inflater.unconsumed_tail
                # A full output may leave more inside zlib even once the input is consumed: ask again.
                if not piece and len(out) < _INFLATE_OUTPUT:
                    return
        except zlib.error as error:
            # zlib's own fixed wording ("invalid distance too far back", "incorrect data check", ...).
            raise ImageCheckError(f"the PNG's compressed image data is corrupt ({error})") from None

    def _took(self, out: bytes) -> None:
        first = self.inflated
        self.inflated += len(out)
        if self.inflated > self.expected:
            raise ImageCheckError("the PNG's image data inflates to more bytes than its header implies")
        last = self.inflated
        for start, end, line in self._passes:
            low, high = max(start, first), min(end, last)
            if low >= high:
                continue
            at = start + -(-(low - start) // line) * line  # the first scanline start in [low, high)
            if at < high and max(out[at - first : high - first : line]) > _MAX_FILTER_TYPE:
                raise ImageCheckError("the PNG's image data has an invalid scanline filter type")
