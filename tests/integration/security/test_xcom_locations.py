"""
A storage location in an XCom is trusted no more than a URL: an edited record cannot make the transfer copy
an object or a file the worker can read into the bucket. It must carry the sha256 and size its generation
recorded, checked before anything is read, and the content read must match them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.exceptions import ImageGenerationValidationError, ImageTransferError
from airflow_provider_imggen.records import ImageRecord
from airflow_provider_imggen.transfers.download import Downloader
from tests.integration.transfers.test_image_generation_to_s3 import generate, make_operator, png_bytes
from tests.integration.transfers.test_image_generation_to_s3 import run as run_transfer
from tests.s3_fixtures import S3Bucket


def b64_generation(tmp_path: Path) -> dict[str, Any]:
    generation = generate(n=1, response_format="b64_json", output_dir=tmp_path / "out")
    assert generation["images"][0]["location"] and generation["images"][0]["sha256"]
    return generation


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A valid image the worker can read that no generation wrote: what an edited XCom points at."""
    path = tmp_path / "private" / "other.png"
    path.parent.mkdir()
    path.write_bytes(png_bytes(40, 30))
    return path


@pytest.mark.parametrize(
    ("field", "value", "shown"),
    [
        pytest.param("sha256", None, "(missing)", id="sha256-removed"),
        pytest.param("sha256", "", "(missing)", id="sha256-emptied"),
        pytest.param("sha256", "abc", "(not 64 hex digits)", id="sha256-short"),
        pytest.param("sha256", "A" * 64, "(not 64 hex digits)", id="sha256-uppercase"),
        pytest.param("bytes", None, "(missing)", id="bytes-removed"),
        pytest.param("bytes", 0, "(not a positive size)", id="bytes-zero"),
    ],
)
def test_an_edited_location_without_its_identity_is_refused_before_any_read(
    imggen_conn: EmulatorServer,
    s3: S3Bucket,
    tmp_path: Path,
    elsewhere: Path,
    monkeypatch: pytest.MonkeyPatch,
    field: str,
    value: object,
    shown: str,
) -> None:
    generation = b64_generation(tmp_path)
    generation["images"][0]["location"] = f"file://{elsewhere}"
    generation["images"][0][field] = value
    reads: list[object] = []
    real_read = Downloader._read_location

    def watching_read(self: Downloader, source: Any, *args: Any) -> Any:
        reads.append(source)
        return real_read(self, source, *args)

    monkeypatch.setattr(Downloader, "_read_location", watching_read)
    operator = make_operator(generation=generation, s3_bucket=s3.name, s3_key="x/{index}.png")

    with pytest.raises(ImageGenerationValidationError) as raised:
        run_transfer(operator)

    assert f"['images'][0]['{field}']" in str(raised.value) and shown in str(raised.value)
    assert str(elsewhere) not in str(raised.value), "the XCom's location is not echoed"
    assert not reads, "refused before anything was read"
    assert s3.object_keys() == []


def test_a_location_pointed_at_another_image_is_not_stored(
    imggen_conn: EmulatorServer, s3: S3Bucket, tmp_path: Path, elsewhere: Path
) -> None:
    """The record's sha256 kept, its location changed: the content read is not the image generated."""
    generation = b64_generation(tmp_path)
    generation["images"][0]["location"] = f"file://{elsewhere}"
    operator = make_operator(
        generation=generation, s3_bucket=s3.name, s3_key="x/{index}.png", download_retries=1
    )

    with pytest.raises(ImageTransferError):
        run_transfer(operator)
    assert s3.object_keys() == []


def test_a_location_with_the_identity_of_its_content_is_stored(
    imggen_conn: EmulatorServer, s3: S3Bucket, tmp_path: Path
) -> None:
    """The positive control: the record as the generation wrote it."""
    generation = b64_generation(tmp_path)
    image = generation["images"][0]
    operator = make_operator(generation=generation, s3_bucket=s3.name, s3_key="x/{index}.png")

    (entry,) = run_transfer(operator)

    stored = s3.read(entry["key"])
    assert hashlib.sha256(stored).hexdigest() == image["sha256"] and len(stored) == image["bytes"]


def test_an_edited_location_cannot_copy_another_image_into_the_bucket(
    imggen_conn: EmulatorServer, s3: S3Bucket, tmp_path: Path, elsewhere: Path
) -> None:
    """
    What the edit was for: the location changed, its sha256 dropped, its size set to the other file's. Before
    this check the transfer read that file (a complete image, of the recorded size) and stored it.
    """
    generation = b64_generation(tmp_path)
    image = generation["images"][0]
    image.update(location=f"file://{elsewhere}", sha256=None, bytes=elsewhere.stat().st_size)
    operator = make_operator(generation=generation, s3_bucket=s3.name, s3_key="x/{index}.png")

    with pytest.raises(ImageGenerationValidationError, match=r"\['sha256'\]"):
        run_transfer(operator)
    assert s3.object_keys() == []


@pytest.mark.parametrize("text", ["--5", "\u00b2", "\u0661\u0660", "1e3", ""])
def test_a_number_as_text_must_be_ascii_digits_and_is_not_echoed(text: str) -> None:
    """str.isdigit() takes '²' (int() then raised a bare ValueError quoting it) and Arabic-Indic digits."""
    with pytest.raises(ImageGenerationValidationError) as raised:
        ImageRecord.from_dict({"index": 0, "bytes": text}, where="generation[0]['images'][0]")
    assert "['bytes']" in str(raised.value) and "(text)" in str(raised.value)
    if text:
        assert text not in str(raised.value)
    assert ImageRecord.from_dict({"index": " 12 ", "bytes": "-3"}, where="x").index == 12


# -- plain locations: no identity, so only under the DAG's location_prefixes -----------------------------


def test_an_xcom_replaced_by_a_plain_location_is_refused(
    imggen_conn: EmulatorServer,
    s3: S3Bucket,
    tmp_path: Path,
    elsewhere: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The record swapped for a string, or a string slipped into the list: no sha256 to check it by."""
    reads: list[object] = []
    monkeypatch.setattr(Downloader, "_read_location", lambda self, source, *args: reads.append(source))
    for generation in (f"file://{elsewhere}", [b64_generation(tmp_path), str(elsewhere)]):
        operator = make_operator(
            generation=generation, s3_bucket=s3.name, s3_key="x/{generation}-{index}.png"
        )
        with pytest.raises(ImageGenerationValidationError, match="location_prefixes") as raised:
            run_transfer(operator)
        assert str(elsewhere) not in str(raised.value)
    assert not reads and s3.object_keys() == []


@pytest.mark.parametrize(
    "relative",
    [
        pytest.param("../private/other.png", id="dot-dot"),
        pytest.param("./../private/other.png", id="dot-then-dot-dot"),
        pytest.param("%2e%2e/private/other.png", id="percent-encoded"),
        pytest.param("..\\private\\other.png", id="backslashes"),
    ],
)
def test_a_plain_location_cannot_climb_out_of_its_prefix(
    imggen_conn: EmulatorServer, s3: S3Bucket, tmp_path: Path, elsewhere: Path, relative: str
) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    operator = make_operator(
        generation=f"file://{allowed}/{relative}",
        s3_bucket=s3.name,
        s3_key="x.png",
        location_prefixes=[f"{allowed}/"],
    )
    with pytest.raises(ImageGenerationValidationError, match="location_prefixes"):
        run_transfer(operator)
    assert s3.object_keys() == []


def test_plain_locations_under_the_prefixes_are_stored_and_a_sibling_prefix_is_not(
    imggen_conn: EmulatorServer, s3: S3Bucket, tmp_path: Path
) -> None:
    allowed, sibling = tmp_path / "renders", tmp_path / "renders-private"
    for directory in (allowed, sibling):
        directory.mkdir()
        (directory / "a.png").write_bytes(png_bytes(32, 16))
    prefixes = [str(allowed)]  # no trailing slash: still a whole segment, "renders-private" is not under it

    (entry,) = run_transfer(
        make_operator(
            generation=str(allowed / "a.png"), s3_bucket=s3.name, s3_key="ok.png", location_prefixes=prefixes
        )
    )
    assert s3.read(entry["key"]) == (allowed / "a.png").read_bytes()
    with pytest.raises(ImageGenerationValidationError, match="location_prefixes"):
        run_transfer(
            make_operator(
                generation=f"file://{sibling}/a.png",
                s3_bucket=s3.name,
                s3_key="no.png",
                location_prefixes=prefixes,
            )
        )
    assert s3.object_keys() == ["ok.png"]


def test_with_prefixes_a_record_location_must_lie_under_them_too(
    imggen_conn: EmulatorServer, s3: S3Bucket, tmp_path: Path
) -> None:
    generation = b64_generation(tmp_path)
    inside = make_operator(
        generation=generation,
        s3_bucket=s3.name,
        s3_key="in/{index}.png",
        location_prefixes=[str(tmp_path / "out")],
    )
    assert len(run_transfer(inside)) == 1
    outside = make_operator(
        generation=generation, s3_bucket=s3.name, s3_key="out/{index}.png", location_prefixes=["s3://other/"]
    )
    with pytest.raises(ImageGenerationValidationError, match="location_prefixes"):
        run_transfer(outside)
    assert s3.object_keys() == ["in/0.png"]


@pytest.mark.parametrize(
    "prefixes",
    [
        pytest.param("s3://bucket/renders/", id="a-string-not-a-list"),
        pytest.param(["renders/"], id="relative"),
        pytest.param(["/"], id="the-whole-filesystem"),
        pytest.param(["s3://bucket/{{ var.value.prefix }}/"], id="a-template"),
        pytest.param(["/data/../etc/"], id="dot-dot"),
        pytest.param([3], id="not-text"),
    ],
)
def test_bad_location_prefixes_fail_when_the_dag_is_parsed(prefixes: object) -> None:
    with pytest.raises(ImageGenerationValidationError, match="location_prefixes"):
        make_operator(
            generation="s3://bucket/renders/a.png", s3_bucket="b", s3_key="k", location_prefixes=prefixes
        )
