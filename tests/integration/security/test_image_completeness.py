"""
Images are proven complete before they are stored: beyond a well-formed container, the compressed image
data itself. A PNG's IDAT data must inflate to exactly the size its header implies, a JPEG's scans must
Huffman-decode to exactly the blocks of the frame, a WebP's bitstream headers must agree with their chunks.

The hostile store serves each file through the real transfer (loopback HTTP, moto S3): nothing is stored.
Where Pillow would decode the file anyway (a JPEG with a garbage scan), the test shows it: Pillow is no proof.
"""

from __future__ import annotations

import io
import random
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from airflow_provider_imggen.exceptions import ImageTransferRejectedError
from airflow_provider_imggen.transfers.image_check import ImageCheckError, StreamingImageCheck, check_image
from tests.integration.security.conftest import Server
from tests.integration.security.test_images import chunk, store_from_origin
from tests.s3_fixtures import S3Bucket

MiB = 1024 * 1024
# Adam7's passes: first column, first row, column step, row step.
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


# PNG -------------------------------------------------------------------------------------------------


def png(
    width: int,
    height: int,
    compressed: bytes,
    *,
    colour: int = 2,
    depth: int = 8,
    interlace: int = 0,
    idat_pieces: int = 1,
    after: bytes = b"",
) -> bytes:
    """A PNG whose every chunk and CRC is right, holding ``compressed`` as its IDAT data (split in pieces)."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    step = -(-len(compressed) // idat_pieces)
    idats = b"".join(chunk(b"IDAT", compressed[i : i + step]) for i in range(0, len(compressed), step))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + idats + after + chunk(b"IEND", b"")


def scanlines(width: int, height: int, bytes_per_pixel: int, *, interlace: int = 0, seed: int = 0) -> bytes:
    """Raw image data: each scanline a filter byte (0 to 4) and its pixels; Adam7's passes when interlaced."""
    rng = random.Random(seed)
    passes = ADAM7 if interlace else ((0, 0, 1, 1),)
    lines = []
    for column, row, column_step, row_step in passes:
        columns = len(range(column, width, column_step))
        for _ in range(row, height, row_step):
            if columns:
                lines.append(bytes([rng.randrange(5)]) + rng.randbytes(columns * bytes_per_pixel))
    return b"".join(lines)


def pillow_decodes(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception:
        return False
    return True


def checked(tmp_path: Path, data: bytes) -> tuple[int, int]:
    """check_image's verdict, and the streamed check's, which must agree; the size."""
    path = tmp_path / "image"
    path.write_bytes(data)
    try:
        info = check_image(path)
    except ImageCheckError as error:
        with pytest.raises(ImageCheckError) as streamed:
            stream(data)
        assert str(streamed.value) == str(error)
        raise
    assert stream(data) == (info.width, info.height)
    return info.width, info.height


def stream(data: bytes) -> tuple[int, int]:
    rng = random.Random(len(data))
    with StreamingImageCheck() as check:
        position = 0
        while position < len(data):
            size = rng.choice([1, 5, 4096, 65536, MiB])
            check.feed(data[position : position + size])
            position += size
        info, _ = check.finish()
    return info.width, info.height


def test_a_png_with_valid_crcs_and_garbage_image_data_is_never_stored(
    monkeypatch: pytest.MonkeyPatch, servers: Callable[..., Server], s3: S3Bucket
) -> None:
    """The issue's case: every chunk and CRC right, the compressed data garbage; Pillow cannot decode it."""
    good = zlib.compress(scanlines(64, 48, 3))
    garbage = png(64, 48, bytes([0x78, 0x9C]) + random.Random(1).randbytes(len(good) - 2))
    assert not pillow_decodes(garbage)
    with pytest.raises(ImageTransferRejectedError, match=r"not a complete image \(the PNG's compressed"):
        store_from_origin(monkeypatch, servers, s3, garbage)
    assert s3.object_keys() == []


def test_a_png_whose_image_data_ends_early_is_never_stored(
    monkeypatch: pytest.MonkeyPatch, servers: Callable[..., Server], s3: S3Bucket
) -> None:
    """A whole zlib stream (Adler-32 right) of two thirds of the scanlines: short by a third of the image."""
    raw = scanlines(64, 48, 3)
    short = png(64, 48, zlib.compress(raw[: len(raw) * 2 // 3]))
    with pytest.raises(ImageTransferRejectedError, match="inflates to fewer bytes than its header implies"):
        store_from_origin(monkeypatch, servers, s3, short)
    assert s3.object_keys() == []


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("cut zlib stream", lambda raw: zlib.compress(raw)[:-30], "truncated|does not end"),
        ("bad adler32", lambda raw: zlib.compress(raw)[:-1] + bytes([zlib.compress(raw)[-1] ^ 1]), "corrupt"),
        ("data after the stream", lambda raw: zlib.compress(raw) + b"\x00\x00", "after the end of its"),
        ("a stream that inflates to more", lambda raw: zlib.compress(raw + b"\x00" * 97), "more bytes"),
        ("a stream that inflates to less", lambda raw: zlib.compress(raw[:-1]), "fewer bytes"),
        ("bad filter type", lambda raw: zlib.compress(b"\x05" + raw[1:]), "filter type"),
        ("not zlib", lambda raw: raw, "corrupt"),
    ],
)
def test_png_image_data_must_inflate_to_exactly_its_header_size(
    tmp_path: Path, name: str, make: Callable[[bytes], bytes], reason: str
) -> None:
    raw = scanlines(33, 21, 3, seed=2)
    assert checked(tmp_path, png(33, 21, zlib.compress(raw), idat_pieces=3)) == (33, 21)
    with pytest.raises(ImageCheckError, match=reason):
        checked(tmp_path, png(33, 21, make(raw), idat_pieces=3))


def test_a_second_zlib_stream_in_a_later_idat_chunk_is_refused(tmp_path: Path) -> None:
    data = png(16, 8, zlib.compress(scanlines(16, 8, 3)))
    with pytest.raises(ImageCheckError, match="after the end of its compressed stream"):
        checked(tmp_path, data[:-12] + chunk(b"IDAT", zlib.compress(b"")) + data[-12:])


def blank_scanlines(width: int, height: int, bytes_per_pixel: int, *, interlace: int) -> bytes:
    """Scanlines of filter type 0 and zero pixels: a filter byte anywhere would be valid, only sizes count."""
    passes = ADAM7 if interlace else ((0, 0, 1, 1),)
    return b"".join(
        bytes(1 + len(range(column, width, column_step)) * bytes_per_pixel)
        for column, row, column_step, row_step in passes
        for _ in range(row, height, row_step)
        if column < width
    )


@pytest.mark.parametrize(("width", "height"), [(2, 2), (3, 2), (9, 9), (31, 17)])
def test_interlaced_pngs_count_the_seven_passes(tmp_path: Path, width: int, height: int) -> None:
    interlaced = scanlines(width, height, 3, interlace=1)
    assert checked(tmp_path, png(width, height, zlib.compress(interlaced), interlace=1)) == (width, height)
    # Data the size of one pass, or of seven for an image that says it has one: refused.
    flat = blank_scanlines(width, height, 3, interlace=0)
    seven = blank_scanlines(width, height, 3, interlace=1)
    assert len(flat) != len(seven)
    with pytest.raises(ImageCheckError, match="bytes than its header implies"):
        checked(tmp_path, png(width, height, zlib.compress(flat), interlace=1))
    with pytest.raises(ImageCheckError, match="bytes than its header implies"):
        checked(tmp_path, png(width, height, zlib.compress(seven), interlace=0))


@pytest.mark.parametrize(
    ("colour", "depth", "bits_per_pixel"),
    [(0, 1, 1), (0, 2, 2), (0, 4, 4), (0, 16, 16), (3, 1, 1), (3, 4, 4), (4, 16, 32), (6, 16, 64)],
)
def test_every_bit_depth_counts_its_scanline_bytes(
    tmp_path: Path, colour: int, depth: int, bits_per_pixel: int
) -> None:
    width, height = 13, 5
    line = 1 + -(-width * bits_per_pixel // 8)
    raw = b"".join(b"\x01" + bytes(line - 1) for _ in range(height))
    palette = chunk(b"PLTE", bytes(range(48))) if colour == 3 else b""
    good = png(width, height, zlib.compress(raw), colour=colour, depth=depth)
    if palette:
        at = good.index(b"IDAT") - 4
        good = good[:at] + palette + good[at:]
    assert checked(tmp_path, good) == (width, height)
    # One byte short in the last scanline.
    short = good.replace(chunk(b"IDAT", zlib.compress(raw)), chunk(b"IDAT", zlib.compress(raw[:-1])))
    with pytest.raises(ImageCheckError, match="fewer bytes"):
        checked(tmp_path, short)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ({"colour": 2, "depth": 4}, "invalid colour type or bit depth"),
        ({"colour": 5, "depth": 8}, "invalid colour type or bit depth"),
        ({"colour": 3, "depth": 8}, "no PLTE"),
    ],
)
def test_png_headers_that_name_no_valid_image_are_refused(
    tmp_path: Path, header: dict[str, int], reason: str
) -> None:
    with pytest.raises(ImageCheckError, match=reason):
        checked(tmp_path, png(8, 8, zlib.compress(bytes(8 * 25)), **header))


def test_a_png_that_inflates_past_its_size_stops_at_once_in_constant_memory(tmp_path: Path) -> None:
    """A 16x16 image whose 1 MiB of IDAT would inflate to 1 GiB: refused after its first pieces."""
    deflater = zlib.compressobj(9)
    zeros = bytes(MiB)
    compressed = b"".join(deflater.compress(zeros) for _ in range(1024)) + deflater.flush()
    path = tmp_path / "bomb.png"
    path.write_bytes(png(16, 16, compressed))
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(ImageCheckError, match="more bytes than its header implies"):
            check_image(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 5
    assert peak < 8 * MiB, f"{peak} bytes held"


def test_a_large_real_png_inflates_in_constant_memory_and_its_cut_copy_is_refused(tmp_path: Path) -> None:
    """16 MB of pixels in 64 KiB IDAT chunks: checked whole, never held; one byte short, refused."""
    width, height = 2048, 2731  # RGB: 16.8 MB of scanlines
    raw = scanlines(width, height, 3, seed=3)
    compressed = zlib.compress(raw, 1)
    path = tmp_path / "big.png"
    path.write_bytes(png(width, height, compressed, idat_pieces=len(compressed) // 65536 + 1))
    del raw
    tracemalloc.start()
    try:
        info = check_image(path)
        _, peak = tracemalloc.get_traced_memory()
        assert (info.width, info.height) == (width, height)
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB, f"{peak} bytes held while checking a {len(compressed)}-byte PNG"
    deflater = zlib.compressobj(1)
    cut = deflater.compress(scanlines(width, height, 3, seed=3)[:-1]) + deflater.flush()
    path.write_bytes(png(width, height, cut, idat_pieces=8))
    with pytest.raises(ImageCheckError, match="fewer bytes"):
        check_image(path)


# JPEG ------------------------------------------------------------------------------------------------


def jpeg(size: tuple[int, int] = (96, 64), mode: str = "RGB", **options: object) -> bytes:
    rng = random.Random(size[0] * size[1])
    image = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    image = Image.blend(image, Image.linear_gradient("L").resize(size).convert("RGB"), 0.5).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def scans(data: bytes, *, refinements_of_dc: bool = True) -> list[tuple[int, int]]:
    """
    (start, end) of each scan's entropy-coded data (restart markers included). A progressive JPEG's DC
    refinement scans hold one raw bit a block, any value valid: ``refinements_of_dc=False`` leaves them out.
    """
    found, position = [], 2
    while data[position + 1] != 0xD9:
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        position += 2 + length
        if data[position - length - 1] == 0xDA:
            end = position
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
            start_of_band, approximation = data[position - 3], data[position - 1]
            if refinements_of_dc or start_of_band or not approximation >> 4:
                found.append((position, end))
            position = end
    return found


def test_a_jpeg_whose_scan_is_garbage_is_never_stored_though_pillow_decodes_it(
    monkeypatch: pytest.MonkeyPatch, servers: Callable[..., Server], s3: S3Bucket
) -> None:
    data = jpeg()
    ((start, end),) = scans(data)
    garbage = random.Random(4).randbytes(end - start).replace(b"\xff", b"\xfe")
    hostile = data[:start] + garbage + data[end:]
    assert pillow_decodes(hostile)  # libjpeg fills what it cannot decode with grey, and only warns
    with pytest.raises(ImageTransferRejectedError, match=r"not a complete image \(the JPEG's scan data"):
        store_from_origin(monkeypatch, servers, s3, hostile)
    assert s3.object_keys() == []


def _garbage(data: bytes, start: int, end: int) -> bytes:
    return data[:start] + random.Random(5).randbytes(end - start).replace(b"\xff", b"\x7f") + data[end:]


def _zeros(data: bytes, start: int, end: int) -> bytes:
    return data[:start] + bytes(end - start) + data[end:]


def _cut(data: bytes, start: int, end: int) -> bytes:
    return data[: (start + end) // 2] + data[end:]


def _padded(data: bytes, start: int, end: int) -> bytes:
    return data[:end] + b"\x00" * 16 + data[end:]


def _restarts_swapped(data: bytes, start: int, end: int) -> bytes:
    scan = bytearray(data[start:end])
    first, second = scan.index(b"\xff\xd0"), scan.index(b"\xff\xd1")
    scan[first + 1], scan[second + 1] = 0xD1, 0xD0
    return data[:start] + bytes(scan) + data[end:]


def _restart_dropped(data: bytes, start: int, end: int) -> bytes:
    scan = data[start:end]
    at = scan.index(b"\xff\xd1")
    return data[:start] + scan[:at] + scan[at + 2 :] + data[end:]


def _stray_restart(data: bytes, start: int, end: int) -> bytes:
    middle = (start + end) // 2
    if data[middle - 1] == 0xFF:
        middle += 1
    return data[:middle] + b"\xff\xd0" + data[middle:]


@pytest.mark.parametrize(
    "damage", [_garbage, _zeros, _cut, _padded, _stray_restart], ids=lambda damage: damage.__name__
)
@pytest.mark.parametrize(
    "options",
    [{}, {"progressive": True}, {"subsampling": 0}, {"restart_marker_blocks": 2}, {"quality": 95}],
    ids=["baseline", "progressive", "444", "restarts", "q95"],
)
def test_a_damaged_jpeg_scan_is_refused(
    tmp_path: Path, damage: Callable[[bytes, int, int], bytes], options: dict[str, object]
) -> None:
    data = jpeg(**options)  # type: ignore[arg-type]
    assert checked(tmp_path, data) == (96, 64)
    for start, end in scans(data, refinements_of_dc=False):
        with pytest.raises(ImageCheckError):
            checked(tmp_path, damage(data, start, end))


@pytest.mark.parametrize("damage", [_restarts_swapped, _restart_dropped], ids=lambda damage: damage.__name__)
def test_restart_markers_must_come_in_order_every_interval(
    tmp_path: Path, damage: Callable[[bytes, int, int], bytes]
) -> None:
    data = jpeg((128, 64), restart_marker_blocks=1)
    assert checked(tmp_path, data) == (128, 64)
    ((start, end),) = scans(data)
    # Swapped: the wrong marker; dropped: two intervals' data where one ends.
    with pytest.raises(ImageCheckError, match=r"restart marker|does not end with its last block"):
        checked(tmp_path, damage(data, start, end))


@pytest.mark.parametrize(
    ("mode", "options"),
    [("L", {}), ("L", {"progressive": True}), ("CMYK", {}), ("RGB", {"subsampling": 1, "progressive": True})],
)
def test_odd_sizes_and_modes_decode_to_exactly_their_blocks(
    tmp_path: Path, mode: str, options: dict[str, object]
) -> None:
    for size in ((1, 1), (17, 9), (33, 65)):
        data = jpeg(size, mode, **options)
        assert checked(tmp_path, data) == size
        start, end = scans(data)[-1]
        with pytest.raises(ImageCheckError):
            checked(tmp_path, _padded(data, start, end))


def test_a_jpeg_of_a_thousand_scans_is_refused(tmp_path: Path) -> None:
    """Each scan costs the check its decoding tables: a file of endless tiny scans is not an image."""
    data = jpeg((8, 8), "L", progressive=True)
    # A DC refinement scan of the one component: a bit for its one block, padded with 1-bits.
    refinement = b"\xff\xda\x00\x08\x01\x01\x00\x00\x00\x10\x7f"
    assert checked(tmp_path, data[:-2] + refinement * 10 + data[-2:]) == (8, 8)
    with pytest.raises(ImageCheckError, match="more than 1000 scans"):
        checked(tmp_path, data[:-2] + refinement * 1000 + data[-2:])


def test_a_sequential_jpeg_that_scans_a_component_twice_is_refused(tmp_path: Path) -> None:
    data = jpeg((8, 8), "L")
    ((start, end),) = scans(data)
    sos = data.rindex(b"\xff\xda", 0, start)
    with pytest.raises(ImageCheckError, match="scans a component twice"):
        checked(tmp_path, data[:end] + data[sos:end] + data[end:])


def test_arithmetic_coded_and_lossless_jpegs_are_refused(tmp_path: Path) -> None:
    data = bytearray(jpeg())
    at = data.index(b"\xff\xc0")
    for marker in (0xC3, 0xC9, 0xCA):
        data[at + 1] = marker
        with pytest.raises(ImageCheckError, match="not supported"):
            checked(tmp_path, bytes(data))


# WebP ------------------------------------------------------------------------------------------------


def webp(size: tuple[int, int] = (96, 64), **options: object) -> bytes:
    rng = random.Random(7)
    image = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", **options)
    return buffer.getvalue()


def riff(*chunks: tuple[bytes, bytes]) -> bytes:
    body = b"WEBP" + b"".join(
        kind + struct.pack("<I", len(data)) + data + b"\x00" * (len(data) & 1) for kind, data in chunks
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


def bitstream(data: bytes) -> tuple[bytes, bytes]:
    kind, length = struct.unpack("<4sI", data[12:20])
    return kind, data[20 : 20 + length]


def _mangled(payload: bytes, offset: int, value: int) -> bytes:
    return payload[:offset] + bytes([value]) + payload[offset + 1 :]


def test_a_webp_with_a_broken_vp8_header_is_never_stored(
    monkeypatch: pytest.MonkeyPatch, servers: Callable[..., Server], s3: S3Bucket
) -> None:
    kind, payload = bitstream(webp(quality=70))
    assert kind == b"VP8 "
    hostile = riff((kind, payload[: 10 + _first_partition(payload)]))  # its DCT partitions cut off
    with pytest.raises(ImageTransferRejectedError, match=r"not a complete image \(the WebP's VP8 partitions"):
        store_from_origin(monkeypatch, servers, s3, hostile)
    assert s3.object_keys() == []


def _first_partition(payload: bytes) -> int:
    return int.from_bytes(payload[:3], "little") >> 5


@pytest.mark.parametrize(
    ("name", "damage", "reason"),
    [
        ("inter frame", lambda p: _mangled(p, 0, p[0] | 1), "VP8"),
        ("hidden frame", lambda p: _mangled(p, 0, p[0] & ~0x10), "VP8"),
        ("version 5", lambda p: _mangled(p, 0, p[0] & ~0x0E | 0x0A), "VP8"),
        ("first partition past the chunk", lambda p: p[:20], "VP8"),
        ("partitions cut short", lambda p: p[: 10 + _first_partition(p)], "partitions"),
    ],
)
def test_vp8_headers_must_agree_with_their_chunk(
    tmp_path: Path, name: str, damage: Callable[[bytes], bytes], reason: str
) -> None:
    kind, payload = bitstream(webp(quality=70))
    assert checked(tmp_path, riff((kind, payload))) == (96, 64)
    with pytest.raises(ImageCheckError, match=reason):
        checked(tmp_path, riff((kind, damage(payload))))


def test_vp8l_headers_and_a_garbage_lossless_bitstream_are_refused(tmp_path: Path) -> None:
    kind, payload = bitstream(webp(lossless=True))
    assert kind == b"VP8L"
    assert checked(tmp_path, riff((kind, payload))) == (96, 64)
    with pytest.raises(ImageCheckError, match="VP8L"):
        checked(tmp_path, riff((kind, _mangled(payload, 0, 0x2E))))  # signature
    with pytest.raises(ImageCheckError, match="VP8L"):
        checked(tmp_path, riff((kind, _mangled(payload, 4, payload[4] | 0x20))))  # version 1
    garbage = payload[:5] + random.Random(8).randbytes(len(payload) - 5)
    with pytest.raises(ImageCheckError, match="does not decode"):
        checked(tmp_path, riff((kind, garbage)))


def test_a_webp_canvas_must_match_its_bitstream(tmp_path: Path) -> None:
    kind, payload = bitstream(webp(quality=70))
    canvas = bytes([0, 0, 0, 0]) + (96 - 1).to_bytes(3, "little") + (64 - 1).to_bytes(3, "little")
    assert checked(tmp_path, riff((b"VP8X", canvas), (kind, payload))) == (96, 64)
    wrong = canvas[:4] + (200 - 1).to_bytes(3, "little") + canvas[7:]
    with pytest.raises(ImageCheckError, match="differs from its canvas"):
        checked(tmp_path, riff((b"VP8X", wrong), (kind, payload)))
