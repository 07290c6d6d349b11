"""
A JPEG scan's entropy-coded data: read between markers (stuffed bytes undone) and Huffman-decoded to prove
that it holds exactly the blocks the frame implies. Coefficient values are never computed: a code and its
extra bits are only counted, which is all the proof needs.

The decoders keep their bit buffer in local variables (the loops run once per Huffman code, in Python):
``acc`` holds ``nbits`` unread bits, topped up 32 at a time from a window of unstuffed bytes that
:meth:`ScanBytes.refill` extends piece by piece, so memory stays bounded however long the scan. The
top-up and the code lookup are written out in each decoder on purpose: a function call per code makes the
decode about 1.7x slower (the top-up alone, about 3 %, more on real scans). Keep the copies identical.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable
from typing import TypeAlias

from airflow_provider_imggen.transfers.image_check_reader import ImageCheckError, ImageReader

_PIECE = 64 * 1024
_WORD = struct.Struct(">I")
_MASKS = [(1 << bits) - 1 for bits in range(65)]
# Bytes of 1-bits allowed past the data's end: a decoder peeks 16 bits ahead of what it consumes.
_MAX_PADDING = 16
# Sequential AC entries: bits to consume (code and extra bits) | coefficients to advance << 6; an EOB
# advances past any position so that the block's loop ends.
_EOB = 128
# 65536 entries, indexed by the next 16 bits; 0 marks no code. A list: its entries are shared int objects,
# which indexing returns without allocating (an array's would be made anew each time).
HuffmanTable: TypeAlias = list[int]


class ScanBytes:
    """One restart interval of a scan (or the whole scan), from the reader, up to the marker ending it."""

    def __init__(self, reader: ImageReader) -> None:
        self._reader = reader
        self.marker: int | None = None
        self._length = 0  # of the unstuffed data, read so far
        self._last = 0  # its last byte
        self._dropped = 0  # bytes a decoder's window moved past
        self._padding = 0
        self._consumed: int | None = None  # bits a decoder used

    def piece(self) -> bytes | None:
        """The next unstuffed bytes (at most about ``_PIECE``); None once the ending marker was read."""
        if self.marker is not None:
            return None
        reader = self._reader
        available = reader.buffered(2)
        if available < 2:
            raise ImageCheckError("truncated: the JPEG ends inside its image data")
        buffer, start = reader.buffer, reader.offset
        limit, last = start + min(available, _PIECE), start + available
        search = start
        while True:
            found = buffer.find(b"\xff", search, limit)
            if found < 0:
                end = limit
                break
            if found + 1 >= last:  # its meaning is in the next read
                end = found
                break
            if buffer[found + 1] != 0:  # a marker (after fill bytes, maybe)
                end = found
                break
            search = found + 2
            if search >= limit:
                end = search
                break
        if end == start:
            reader.advance(1)
            marker = reader.read(1)[0]
            while marker == 0xFF:
                marker = reader.read(1)[0]
            self.marker = marker
            return None
        piece = buffer[start:end]
        reader.advance(end - start)
        if b"\xff" in piece:
            piece = piece.replace(b"\xff\x00", b"\xff")
        self._length += len(piece)
        self._last = piece[-1]
        return piece

    def refill(self, window: bytes, position: int) -> tuple[bytes, int, int]:
        """The window's unread bytes and at least 4 more (1-bits past the data's end): window, 0, its size."""
        rest = window[position:]
        self._dropped += position
        while len(rest) < 4:
            piece = self.piece()
            if piece is None:
                self._padding += 8
                if self._padding > _MAX_PADDING:
                    raise ImageCheckError("the JPEG's scan data ends inside a block (cut or corrupt)")
                piece = b"\xff" * 8
            rest += piece
        return rest, 0, len(rest)

    def used(self, window_position: int, unread_bits: int) -> None:
        """A decoder's end: the bits it used are what its window moved past less what it did not read."""
        self._consumed = (self._dropped + window_position) * 8 - unread_bits

    def skip_bits(self, count: int) -> None:
        self._consumed = count

    def finish(self, *, decoded: bool) -> int:
        """Read to the ending marker; when decoded, the data must have held the blocks exactly."""
        while self.piece() is not None:
            pass
        assert self.marker is not None
        if decoded:
            spare = self._length * 8 - (self._consumed or 0)
            if not 0 <= spare < 8:
                raise ImageCheckError(
                    "the JPEG's scan data does not end with its last block (cut, padded or corrupt)"
                )
            if self._last & _MASKS[spare] != _MASKS[spare]:
                raise ImageCheckError("the JPEG's scan data is not padded with 1-bits (corrupt)")
        return self.marker


def _build(counts: bytes, symbols: bytes, entry: Callable[[int, int], int]) -> HuffmanTable:
    table = [0] * 65536
    code = index = 0
    for length in range(1, 17):
        span = 1 << (16 - length)
        for _ in range(counts[length - 1]):
            table[code * span : code * span + span] = [entry(length, symbols[index])] * span
            code += 1
            index += 1
        code <<= 1
    return table


def dc_table(counts: bytes, symbols: bytes) -> HuffmanTable:
    """Entries: bits of the code and its extra bits (a DC difference of up to 15 bits)."""
    return _build(counts, symbols, lambda length, size: length + size if size <= 15 else 0)


def _sequential_ac_entry(length: int, symbol: int) -> int:
    run, size = symbol >> 4, symbol & 15
    if size:
        return (length + size) | (run + 1) << 6
    if run == 15:  # sixteen zeros
        return length | 16 << 6
    return length | _EOB << 6 if run == 0 else 0


def sequential_ac_table(counts: bytes, symbols: bytes) -> HuffmanTable:
    return _build(counts, symbols, _sequential_ac_entry)


def raw_table(counts: bytes, symbols: bytes) -> HuffmanTable:
    """Entries: the code's length | its symbol << 5."""
    return _build(counts, symbols, lambda length, symbol: length | symbol << 5)


def _bad_code() -> ImageCheckError:
    return ImageCheckError("the JPEG's scan data has an invalid Huffman code (corrupt)")


def _overrun() -> ImageCheckError:
    return ImageCheckError("the JPEG's scan data codes past the end of a block (corrupt)")


def decode_sequential(source: ScanBytes, plan: list[tuple[HuffmanTable, HuffmanTable]], mcus: int) -> None:
    """``mcus`` MCUs of a sequential scan: per block, its DC and AC tables."""
    window, position, size, acc, nbits = b"", 0, 0, 0, 0
    unpack, masks = _WORD.unpack_from, _MASKS
    for _ in range(mcus):
        for dc, ac in plan:
            if nbits < 32:
                if position + 4 > size:
                    window, position, size = source.refill(window, position)
                acc = (acc & masks[nbits]) << 32 | unpack(window, position)[0]
                position += 4
                nbits += 32
            entry = dc[acc >> (nbits - 16) & 0xFFFF]
            if not entry:
                raise _bad_code()
            nbits -= entry
            k = 1
            while k < 64:
                if nbits < 32:
                    if position + 4 > size:
                        window, position, size = source.refill(window, position)
                    acc = (acc & masks[nbits]) << 32 | unpack(window, position)[0]
                    position += 4
                    nbits += 32
                entry = ac[acc >> (nbits - 16) & 0xFFFF]
                if not entry:
                    raise _bad_code()
                nbits -= entry & 63
                k += entry >> 6
            if k != 64 and k < _EOB:
                raise _overrun()
    source.used(position, nbits)


def decode_dc_first(source: ScanBytes, plan: list[HuffmanTable], mcus: int) -> None:
    """``mcus`` MCUs of a progressive scan's first DC pass."""
    window, position, size, acc, nbits = b"", 0, 0, 0, 0
    unpack, masks = _WORD.unpack_from, _MASKS
    for _ in range(mcus):
        for dc in plan:
            if nbits < 32:
                if position + 4 > size:
                    window, position, size = source.refill(window, position)
                acc = (acc & masks[nbits]) << 32 | unpack(window, position)[0]
                position += 4
                nbits += 32
            entry = dc[acc >> (nbits - 16) & 0xFFFF]
            if not entry:
                raise _bad_code()
            nbits -= entry
    source.used(position, nbits)


def decode_ac_first(
    source: ScanBytes, table: HuffmanTable, marks: array[int], first: int, blocks: int, start: int, end: int
) -> None:
    """
    ``blocks`` blocks (from ``first``) of a progressive scan's first pass over the band ``start..end``;
    ``marks`` records each block's coefficients coded non-zero, for the refinement passes.
    """
    window, position, size, acc, nbits = b"", 0, 0, 0, 0
    unpack, masks = _WORD.unpack_from, _MASKS
    eob_run = 0
    for block in range(first, first + blocks):
        if eob_run:
            eob_run -= 1
            continue
        k, coded = start, 0
        while k <= end:
            if nbits < 32:
                if position + 4 > size:
                    window, position, size = source.refill(window, position)
                acc = (acc & masks[nbits]) << 32 | unpack(window, position)[0]
                position += 4
                nbits += 32
            entry = table[acc >> (nbits - 16) & 0xFFFF]
            if not entry:
                raise _bad_code()
            nbits -= entry & 31
            run, bits = entry >> 9, entry >> 5 & 15
            if bits:
                k += run
                if k > end:
                    raise _overrun()
                coded |= 1 << k
                nbits -= bits
                k += 1
            elif run == 15:
                k += 16
                if k > end + 1:
                    raise _overrun()
            else:  # end of band, here and in the next (1 << run) - 1 + extra bits blocks
                eob_run = (1 << run) - 1
                if run:
                    eob_run += acc >> (nbits - run) & masks[run]
                    nbits -= run
                break
        if coded:
            marks[block] |= coded
    if eob_run:
        raise ImageCheckError("the JPEG's scan data runs past its last block (corrupt)")
    source.used(position, nbits)


def decode_ac_refine(
    source: ScanBytes, table: HuffmanTable, marks: array[int], first: int, blocks: int, start: int, end: int
) -> None:
    """
    ``blocks`` blocks of a progressive refinement pass over ``start..end``: each new coefficient (one bit of
    sign), a correction bit for each coefficient an earlier pass made non-zero, EOB runs.
    """
    window, position, size, acc, nbits = b"", 0, 0, 0, 0
    unpack, masks = _WORD.unpack_from, _MASKS
    band = masks[end + 1] ^ masks[start]
    eob_run = 0
    for block in range(first, first + blocks):
        nonzero, k, passed = marks[block], start, 0
        while not eob_run and k <= end:
            if nbits < 32:
                if position + 4 > size:
                    window, position, size = source.refill(window, position)
                acc = (acc & masks[nbits]) << 32 | unpack(window, position)[0]
                position += 4
                nbits += 32
            entry = table[acc >> (nbits - 16) & 0xFFFF]
            if not entry:
                raise _bad_code()
            nbits -= entry & 31
            run, bits = entry >> 9, entry >> 5 & 15
            if bits:
                if bits != 1:
                    raise _bad_code()
                nbits -= 1  # its sign
            elif run != 15:  # end of band here, and in the next (1 << run) - 1 + extra bits blocks
                eob_run = 1 << run
                if run:
                    eob_run += acc >> (nbits - run) & masks[run]
                    nbits -= run
                break
            # The (run + 1)th coefficient still zero from k: the new one's place (or the 16th zero passed).
            zeros = band & ~nonzero & ~masks[k]
            for _ in range(run):
                zeros &= zeros - 1
            if not zeros:
                raise _overrun()
            place = zeros & -zeros
            passed = (nonzero & (place - 1) & ~masks[k]).bit_count()  # a correction bit each
            while passed > nbits:  # rarely more than the buffer holds
                passed -= nbits
                if position + 4 > size:
                    window, position, size = source.refill(window, position)
                acc, nbits = unpack(window, position)[0], 32
                position += 4
            nbits -= passed
            if bits:
                nonzero |= place
            k = place.bit_length()
        if eob_run:
            passed = (nonzero & band & ~masks[k]).bit_count()
            while passed > nbits:
                passed -= nbits
                if position + 4 > size:
                    window, position, size = source.refill(window, position)
                acc, nbits = unpack(window, position)[0], 32
                position += 4
            nbits -= passed
            eob_run -= 1
        marks[block] = nonzero
    if eob_run:
        raise ImageCheckError("the JPEG's scan data runs past its last block (corrupt)")
    source.used(position, nbits)
