"""Complete, valid images only: structural checks before anything is uploaded, no pixel decoded."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import pytest
from PIL import Image

from airflow_provider_imggen.exceptions import ImageTransferRejectedError
from airflow_provider_imggen.transfers.image_check import ImageCheckError, check_image
from tests.integration.security.conftest import Server, gateway_answer, image, use_gateway
from tests.integration.transfers.test_image_generation_to_s3 import generate, make_operator, png_bytes, run
from tests.s3_fixtures import S3Bucket


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))


def encoded(format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((96, 64), 50).convert("RGB").save(buffer, format=format, **options)
    return buffer.getvalue()


def store_from_origin(
    monkeypatch: pytest.MonkeyPatch,
    servers: Callable[..., Server],
    s3: S3Bucket,
    body: bytes,
    **route: object,
) -> list[dict[str, object]]:
    api = servers({"/results/a.png": image(body, **route)})  # type: ignore[arg-type]
    api.post = gateway_answer([api.url("/results/a.png")])
    use_gateway(monkeypatch, api)
    operator = make_operator(generation=generate(n=1), s3_bucket=s3.name, s3_key="i/{index}.{ext}")
    return run(operator)


def test_a_png_cut_to_a_third_with_no_content_length_and_a_clean_close_is_refused(
    monkeypatch: pytest.MonkeyPatch, servers: Callable[..., Server], s3: S3Bucket
) -> None:
    whole = png_bytes(64, 64)
    with pytest.raises(ImageTransferRejectedError, match=r"not a complete image \(truncated"):
        store_from_origin(monkeypatch, servers, s3, whole[: len(whole) // 3], content_length=False)
    assert s3.object_keys() == []


def test_a_69_byte_png_header_claiming_14000x12000_is_refused(
    monkeypatch: pytest.MonkeyPatch, servers: Callable[..., Server], s3: S3Bucket
) -> None:
    body = png_header(14000, 12000)
    body += b"\x00" * (69 - len(body))
    assert len(body) == 69
    with pytest.raises(ImageTransferRejectedError, match="not a complete image") as raised:
        store_from_origin(monkeypatch, servers, s3, body)
    assert "14000" not in str(raised.value)
    assert s3.object_keys() == []


def test_a_complete_png_over_the_decompression_bomb_limit_is_refused(
    monkeypatch: pytest.MonkeyPatch, servers: Callable[..., Server], s3: S3Bucket
) -> None:
    # Structurally whole (every CRC right), tiny, but 20000x20000 pixels: more than Image.MAX_IMAGE_PIXELS.
    body = png_header(20000, 20000) + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b"")
    with pytest.raises(ImageTransferRejectedError, match="decompression-bomb limit"):
        store_from_origin(monkeypatch, servers, s3, body)
    assert s3.object_keys() == []


@pytest.mark.parametrize(
    ("name", "mangle", "reason"),
    [
        ("png-bad-crc", lambda data: data[:40] + bytes([data[40] ^ 1]) + data[41:], "fails its CRC"),
        ("png-trailing", lambda data: data + b"<html>", "unexpected byte"),
        ("png-no-iend", lambda data: data[:-12], "truncated"),
    ],
)
def test_damaged_pngs_are_refused(
    monkeypatch: pytest.MonkeyPatch,
    servers: Callable[..., Server],
    s3: S3Bucket,
    name: str,
    mangle: Callable[[bytes], bytes],
    reason: str,
) -> None:
    with pytest.raises(ImageTransferRejectedError, match=reason):
        store_from_origin(monkeypatch, servers, s3, mangle(png_bytes(40, 30)))
    assert s3.object_keys() == []


@pytest.mark.parametrize(
    ("format", "options", "content_type"),
    [
        ("JPEG", {}, "image/jpeg"),
        ("JPEG", {"progressive": True}, "image/jpeg"),
        ("WEBP", {}, "image/webp"),
        ("WEBP", {"lossless": True}, "image/webp"),
    ],
)
def test_jpeg_and_webp_are_stored_whole_and_refused_cut(
    monkeypatch: pytest.MonkeyPatch,
    servers: Callable[..., Server],
    s3: S3Bucket,
    format: str,
    options: dict[str, object],
    content_type: str,
) -> None:
    data = encoded(format, **options)
    (entry,) = store_from_origin(monkeypatch, servers, s3, data)
    assert (entry["content_type"], entry["width"], entry["height"]) == (content_type, 96, 64)
    assert s3.read(str(entry["key"])) == data
    key = str(entry["key"])
    s3.client.delete_object(Bucket=s3.name, Key=key)

    # Cut, with a Content-Length that matches the cut body: only the structure can tell.
    with pytest.raises(ImageTransferRejectedError, match="not a complete image"):
        store_from_origin(monkeypatch, servers, s3, data[: len(data) * 2 // 3])
    assert s3.object_keys() == []


def test_the_check_reads_in_bounded_pieces(tmp_path: object) -> None:
    """Dimensions come from the header of a file proved complete; 1 MiB reads, however large the file."""
    from pathlib import Path

    path = Path(str(tmp_path)) / "big.png"
    filler = chunk(b"prVt", b"\x07" * (5 * 1024 * 1024))
    whole = png_bytes(50, 40)
    path.write_bytes(whole[:-12] + filler + whole[-12:])
    info = check_image(path)
    assert (info.width, info.height, info.ext) == (50, 40, "png")
    path.write_bytes(whole[:-12] + filler[:-1])
    with pytest.raises(ImageCheckError, match="truncated"):
        check_image(path)


@pytest.mark.parametrize(
    ("mode", "fmt", "options", "alpha"),
    [
        ("RGB", "PNG", {}, False),
        ("RGBA", "PNG", {}, True),
        ("LA", "PNG", {}, True),
        ("P", "PNG", {"transparency": 0}, True),  # a palette with a transparent entry: tRNS
        ("RGB", "JPEG", {}, False),
        ("RGB", "WEBP", {"lossless": True}, False),
        ("RGBA", "WEBP", {"lossless": True}, True),
        ("RGBA", "WEBP", {"quality": 80}, True),
    ],
)
def test_the_check_says_whether_an_image_declares_transparency(
    tmp_path: object, mode: str, fmt: str, options: dict[str, object], alpha: bool
) -> None:
    """What the editing models that refuse an alpha channel are checked against, before billing."""
    from pathlib import Path

    buffer = io.BytesIO()
    Image.new(mode, (64, 48)).save(buffer, format=fmt, **options)
    path = Path(str(tmp_path)) / f"image.{fmt.lower()}"
    path.write_bytes(buffer.getvalue())
    info = check_image(path)
    assert (info.width, info.height, info.alpha) == (64, 48, alpha)
