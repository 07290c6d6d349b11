"""
The check made while an image downloads: the same verdicts as the check of a file, the sha256 of every byte,
an early stop on a broken image, and a thread that never outlives the download or blocks it.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_provider_imggen.transfers import image_check
from airflow_provider_imggen.transfers.image_check import ImageCheckError, StreamingImageCheck, check_image
from tests.integration.security.test_images import chunk, encoded, png_header
from tests.integration.transfers.test_image_generation_to_s3 import png_bytes

MiB = 1024 * 1024


def pieces(data: bytes, seed: int) -> Iterator[bytes]:
    """``data`` in pieces of random sizes, from 1 byte to 2 MiB, as a network hands them over."""
    rng = random.Random(seed)
    position = 0
    while position < len(data):
        size = rng.choice([1, 7, 4096, 65536, MiB, 2 * MiB])
        yield data[position : position + size]
        position += size


def streamed(data: bytes, seed: int = 0) -> tuple[image_check.ImageInfo, str]:
    with StreamingImageCheck() as check:
        for piece in pieces(data, seed):
            check.feed(piece)
        return check.finish()


def padded_png(width: int, height: int, padding: int) -> bytes:
    whole = png_bytes(width, height)
    return whole[:-12] + chunk(b"prVt", bytes(range(256)) * (padding // 256)) + whole[-12:]


IMAGES = {
    "png": lambda: png_bytes(50, 40),
    "padded png": lambda: padded_png(64, 48, 3 * MiB),
    "jpeg": lambda: encoded("JPEG", quality=80),
    "progressive jpeg": lambda: encoded("JPEG", progressive=True),
    "lossy webp": lambda: encoded("WEBP", quality=70),
    "lossless webp": lambda: encoded("WEBP", lossless=True),
}


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_streamed_verdicts_and_sha256_equal_the_file_check(name: str, tmp_path: Path) -> None:
    data = IMAGES[name]()
    path = tmp_path / "image"
    path.write_bytes(data)
    for seed in range(3):
        info, sha256 = streamed(data, seed)
        assert info == check_image(path)
        assert sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_every_cut_and_every_trailing_byte_is_refused_like_the_file_check(name: str, tmp_path: Path) -> None:
    data = IMAGES[name]()
    path = tmp_path / "image"
    for broken in (data[: len(data) // 3], data[:-1], data + b"\x00", data + data):
        path.write_bytes(broken)
        with pytest.raises(ImageCheckError):
            check_image(path)
        with pytest.raises(ImageCheckError):
            streamed(broken)


def test_a_png_header_alone_is_refused() -> None:
    with pytest.raises(ImageCheckError, match="truncated"):
        streamed(png_header(14000, 12000))


def test_a_broken_chunk_stops_the_download_early() -> None:
    """A CRC error in the first MiB: ``feed`` raises long before the other 63 MiB were handed over."""
    data = bytearray(padded_png(64, 48, 64 * MiB))
    data[40] ^= 0xFF  # inside IHDR/IDAT: the CRC fails
    fed = 0
    with pytest.raises(ImageCheckError, match=r"CRC|malformed"), StreamingImageCheck() as check:
        for piece in pieces(bytes(data), seed=1):
            check.feed(piece)
            fed += len(piece)
        check.finish()
    assert fed < 16 * MiB, f"{fed} bytes fed after the error"


def test_abort_ends_the_thread_at_once_whatever_was_fed() -> None:
    before = threading.active_count()
    data = padded_png(64, 48, 8 * MiB)
    check = StreamingImageCheck()
    for piece in list(pieces(data, seed=2))[:5]:
        check.feed(piece)
    check.abort()
    assert threading.active_count() == before
    # Leaving the block after an error in the download does the same.
    with pytest.raises(RuntimeError), StreamingImageCheck() as check:
        check.feed(data[:MiB])
        raise RuntimeError("the connection dropped")
    assert threading.active_count() == before


def test_a_bug_in_the_check_fails_the_image_and_never_blocks_the_download(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(reader: object) -> tuple[int, int]:
        raise IndexError("a bug")

    monkeypatch.setattr(image_check, "_png", broken)
    outcome: list[BaseException] = []

    def download() -> None:
        try:
            streamed(padded_png(64, 48, 8 * MiB))
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=download, daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), "feed() blocked"
    (error,) = outcome
    assert isinstance(error, ImageCheckError) and "IndexError" in str(error)
