"""
JPEG: every segment by its length, and each scan's entropy-coded data proved to end where it must.

A scan's data is Huffman-decoded, without dequantising or transforming a block: every code must be one of
the scan's tables, every block must end within its 64 coefficients (or its spectral band), and the MCUs the
frame implies must use the data exactly, up to the 1-bits that pad its last byte, before each restart
marker (RST0 to RST7 in turn, every restart interval) and the marker that ends the scan. Inside a scan the
only markers are those restarts and stuffed 0xFF00 bytes; after the last scan comes EOI. Pillow (libjpeg)
is no proof here: it fills what it cannot decode with grey and only warns.

Sequential (SOF0, SOF1) and progressive (SOF2) Huffman JPEGs are checked; arithmetic-coded, lossless and
hierarchical ones (rare, and not what the service or a browser writes) are refused. A progressive image's
refinement scans need to know which coefficients earlier scans made non-zero: 8 bytes a block. Decoding is
Python, in the check's thread: measured at about 2.5 MB of sequential JPEG a second (some 20 megapixels at
quality 92) and 0.5 MB of progressive JPEG (some 5 megapixels), on the machine of the benchmarks.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable
from dataclasses import dataclass

from airflow_provider_imggen.transfers.image_check_jpeg_scan import (
    HuffmanTable,
    ScanBytes,
    dc_table,
    decode_ac_first,
    decode_ac_refine,
    decode_dc_first,
    decode_sequential,
    raw_table,
    sequential_ac_table,
)
from airflow_provider_imggen.transfers.image_check_reader import ImageCheckError, ImageReader

_EOI, _SOS, _DHT, _DQT, _DRI, _COM = 0xD9, 0xDA, 0xC4, 0xDB, 0xDD, 0xFE
_RESTARTS = range(0xD0, 0xD8)
_SEQUENTIAL, _PROGRESSIVE = (0xC0, 0xC1), 0xC2
# Start-of-frame markers: all of C0 to CF but DHT (C4), JPG (C8) and DAC (CC).
_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that may stand between segments besides frames and scans: tables, restart interval, comments,
# application data (APP0 to APP15) and the JPG extensions (JPG0 to JPG13).
_SKIPPED = frozenset({_DQT, _COM, *range(0xE0, 0xF0), *range(0xF0, 0xFE)})
# Progressive encoders write about ten scans; a file of thousands of tiny scans would only make the check
# rebuild decoding tables (libjpeg-turbo's tools stop at 500 by default).
MAX_SCANS = 1000
# Decoding tables kept for reuse (0.5 MB each): those of the last scans, which the next ones mostly share.
_KEPT_TABLES = 16
_Build = Callable[[bytes, bytes], HuffmanTable]


@dataclass(frozen=True)
class _Component:
    id: int
    horizontal: int
    vertical: int
    columns: int  # of its blocks (what a scan of this component alone codes)
    rows: int


@dataclass(frozen=True)
class _Frame:
    marker: int
    width: int
    height: int
    components: tuple[_Component, ...]
    mcu_columns: int  # of an interleaved scan's MCUs
    mcu_rows: int


def check_jpeg(reader: ImageReader) -> tuple[int, int, bool]:
    """Walk a JPEG to its EOI, decoding each scan's entropy-coded data; its width, height and no alpha."""
    reader.read(2)  # SOI
    frame: _Frame | None = None
    tables: dict[int, tuple[bytes, bytes]] = {}  # (class << 4 | id) -> (counts, symbols)
    restart_interval = 0
    scanned: set[int] = set()  # components with a scan (a DC scan, for a progressive frame)
    history: dict[int, array[int]] = {}  # progressive: per component, its blocks' non-zero coefficients
    built: dict[tuple[bytes, _Build], HuffmanTable] = {}
    scans = 0
    marker = _next_marker(reader)
    while marker != _EOI:
        if marker in _RESTARTS or marker in (0x01, 0xD8):
            raise ImageCheckError("malformed JPEG: a restart, TEM or SOI marker outside a scan")
        (length,) = struct.unpack(">H", reader.read(2))
        if length < 2:
            raise ImageCheckError("malformed JPEG segment length")
        if marker in _FRAMES:
            if frame is not None:
                raise ImageCheckError("the JPEG has more than one frame header")
            frame = _frame(marker, reader.read(length - 2))
        elif marker == _DHT:
            _huffman_tables(reader.read(length - 2), tables)
        elif marker == _DRI:
            if length != 4:
                raise ImageCheckError("malformed JPEG restart interval")
            (restart_interval,) = struct.unpack(">H", reader.read(2))
        elif marker == _SOS:
            if frame is None:
                raise ImageCheckError("the JPEG has a scan before its frame header")
            scans += 1
            if scans > MAX_SCANS:
                raise ImageCheckError(f"the JPEG has more than {MAX_SCANS} scans")
            header = reader.read(length - 2)
            decoding = (
                (tables, built, history) if reader.within_pixel_limit(frame.width, frame.height) else None
            )
            marker = _scan(reader, frame, header, restart_interval, scanned, decoding)
            continue
        elif marker in _SKIPPED:
            reader.skip(length - 2)
        else:  # DNL, DHP, EXP, DAC and the reserved ones: nothing a complete baseline/progressive file needs
            raise ImageCheckError("the JPEG has an unsupported marker")
        marker = _next_marker(reader)
    if frame is None:
        raise ImageCheckError("the JPEG has no frame header")
    if scanned != {component.id for component in frame.components}:
        raise ImageCheckError("the JPEG's scans do not cover every component of its frame")
    return frame.width, frame.height, False


def _next_marker(reader: ImageReader) -> int:
    if reader.read(1) != b"\xff":
        raise ImageCheckError("malformed JPEG: a segment does not start with a marker")
    marker = reader.read(1)[0]
    while marker == 0xFF:  # fill bytes
        marker = reader.read(1)[0]
    return marker


def _frame(marker: int, data: bytes) -> _Frame:
    if marker not in _SEQUENTIAL and marker != _PROGRESSIVE:
        raise ImageCheckError("the JPEG's coding (arithmetic, lossless or hierarchical) is not supported")
    if len(data) < 6:
        raise ImageCheckError("malformed JPEG frame header")
    precision, height, width, count = struct.unpack(">BHHB", data[:6])
    if precision not in (8, 12) or not 1 <= count <= 4 or len(data) != 6 + 3 * count:
        raise ImageCheckError("malformed JPEG frame header")
    sampling = [(data[6 + 3 * i], data[7 + 3 * i] >> 4, data[7 + 3 * i] & 15) for i in range(count)]
    if (
        any(not (1 <= h <= 4 and 1 <= v <= 4) for _, h, v in sampling)
        or len({c for c, _, _ in sampling}) < count
    ):
        raise ImageCheckError("malformed JPEG frame header")
    max_h, max_v = max(h for _, h, _ in sampling), max(v for _, _, v in sampling)
    components = tuple(
        _Component(ident, h, v, _blocks(width, h, max_h), _blocks(height, v, max_v))
        for ident, h, v in sampling
    )
    return _Frame(marker, width, height, components, _ceil(width, 8 * max_h), _ceil(height, 8 * max_v))


def _ceil(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _blocks(samples: int, sampling: int, max_sampling: int) -> int:
    """A component's blocks along one side: its samples (the side scaled by its sampling), by 8."""
    return _ceil(_ceil(samples * sampling, max_sampling), 8)


def _huffman_tables(data: bytes, tables: dict[int, tuple[bytes, bytes]]) -> None:
    position = 0
    while position < len(data):
        if position + 17 > len(data):
            raise ImageCheckError("malformed JPEG Huffman table")
        kind = data[position]
        counts = data[position + 1 : position + 17]
        total = sum(counts)
        symbols = data[position + 17 : position + 17 + total]
        if kind >> 4 > 1 or kind & 15 > 3 or total > 256 or len(symbols) < total:
            raise ImageCheckError("malformed JPEG Huffman table")
        code = 0
        for length, count in enumerate(counts, 1):  # canonical codes: each length holds what fits in it
            code += count
            if code > 1 << length:
                raise ImageCheckError("malformed JPEG Huffman table (more codes than its lengths hold)")
            code <<= 1
        tables[kind] = (counts, symbols)
        position += 17 + total


def _scan(
    reader: ImageReader,
    frame: _Frame,
    header: bytes,
    restart_interval: int,
    scanned: set[int],
    decoding: _Decoding | None,
) -> int:
    """
    Check one scan's header and entropy-coded data (decoded, unless ``decoding`` is None: its restart
    markers only); the marker that follows it.
    """
    count = header[0] if header else 0
    if not 1 <= count <= 4 or len(header) != 4 + 2 * count:
        raise ImageCheckError("malformed JPEG scan header")
    by_id = {component.id: component for component in frame.components}
    chosen = [(by_id.get(header[1 + 2 * i]), header[2 + 2 * i]) for i in range(count)]
    start, end, approximation = header[-3], header[-2], header[-1]
    high, low = approximation >> 4, approximation & 15
    if any(component is None for component, _ in chosen):
        raise ImageCheckError("the JPEG's scan names a component its frame does not have")
    components = [(component, selector) for component, selector in chosen if component is not None]
    progressive = frame.marker == _PROGRESSIVE
    if progressive:
        valid = (start == end == 0 or (count == 1 and 1 <= start <= end <= 63)) and high <= 13 and low <= 13
    else:
        valid = start == 0 and end == 63 and approximation == 0
    if not valid:
        raise ImageCheckError("the JPEG's scan header gives an invalid spectral band or approximation")
    if not progressive and any(component.id in scanned for component, _ in components):
        raise ImageCheckError("the JPEG scans a component twice")
    if start == 0 and high == 0:
        scanned.update(component.id for component, _ in components)

    if count == 1:
        units = components[0][0].columns * components[0][0].rows
        blocks = components
    else:
        units = frame.mcu_columns * frame.mcu_rows
        blocks = [(c, s) for c, s in components for _ in range(c.horizontal * c.vertical)]
        if len(blocks) > 10:
            raise ImageCheckError("the JPEG's scan has more than 10 blocks an MCU")
    decode = _decoder(frame, blocks, units, decoding, start, end, high) if decoding else None
    interval = restart_interval or units
    done, expected_restart = 0, 0
    while True:
        segment = min(interval, units - done)
        source = ScanBytes(reader)
        if decode is not None:
            decode(source, segment, done)
        marker = source.finish(decoded=decode is not None)
        done += segment
        if done >= units:
            if marker in _RESTARTS:
                raise ImageCheckError("the JPEG has a restart marker after its scan's last MCU")
            return marker
        if marker != 0xD0 + expected_restart:
            raise ImageCheckError("the JPEG's scan data does not end at its restart marker (corrupt or cut)")
        expected_restart = (expected_restart + 1) % 8


_Decode = Callable[[ScanBytes, int, int], None]
# The Huffman tables defined so far, decoding tables built from them, the progressive history.
_Decoding = tuple[
    dict[int, tuple[bytes, bytes]], dict[tuple[bytes, _Build], HuffmanTable], dict[int, "array[int]"]
]


def _decoder(
    frame: _Frame,
    blocks: list[tuple[_Component, int]],
    units: int,
    decoding: _Decoding,
    start: int,
    end: int,
    high: int,
) -> _Decode:
    """What decodes ``count`` MCUs (a scan of one component: blocks) of the scan from MCU ``first``."""
    tables, built, history = decoding

    def table(kind: int, build: _Build) -> HuffmanTable:
        if kind not in tables:
            raise ImageCheckError("the JPEG's scan uses a Huffman table it never defined")
        counts, symbols = tables[kind]
        key = (counts + symbols, build)
        if key not in built:
            if len(built) >= _KEPT_TABLES:
                built.clear()
            built[key] = build(counts, symbols)
        return built[key]

    if frame.marker != _PROGRESSIVE:
        plan = [(table(s >> 4, dc_table), table(0x10 | s & 15, sequential_ac_table)) for _, s in blocks]
        return lambda source, count, first: decode_sequential(source, plan, count)
    if start == 0 and high == 0:
        dc_plan = [table(s >> 4, dc_table) for _, s in blocks]
        return lambda source, count, first: decode_dc_first(source, dc_plan, count)
    if start == 0:  # a DC refinement: one bit a block
        return lambda source, count, first: source.skip_bits(count * len(blocks))
    component, selector = blocks[0]
    ac = table(0x10 | selector & 15, raw_table)
    if component.id not in history:  # 8 bytes a block, kept for the component's later scans
        history[component.id] = array("Q", [0]) * units
    marks = history[component.id]
    step = decode_ac_refine if high else decode_ac_first
    return lambda source, count, first: step(source, ac, marks, first, count, start, end)
