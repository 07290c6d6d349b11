"""
The Images view's rules without a server: which tiles a task instance shows, input checks, thumbnails.

The routes, the auth checks and the pixels' sources are exercised for real by tests/system/test_ui_images.py.
"""

from __future__ import annotations

import io
import struct
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from PIL import Image

from airflow_provider_imggen.ui import params
from airflow_provider_imggen.ui.html import render_page
from airflow_provider_imggen.ui.pixels import MAX_SOURCE_BYTES, PixelsUnavailableError, _spool
from airflow_provider_imggen.ui.thumbnails import (
    MAX_PIXELS,
    ThumbnailCache,
    ThumbnailError,
    etag_for,
    make_thumbnail,
)
from airflow_provider_imggen.ui.tiles import (
    GENERATION,
    MISSING,
    TRANSFER,
    UNKNOWN_CONN,
    RunImages,
    TaskOutput,
    conn_id_of,
)

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def generation(request_id: str, *, expires: datetime, n: int = 2, failed: int = 0) -> dict[str, object]:
    return {
        "model": "wan2.2-t2i-flash",
        "prompt": f"prompt of {request_id}",
        "negative_prompt": "watermark",
        "size": "1024*768",
        "seed": 7,
        "request_id": request_id,
        "images": [
            {
                "index": index,
                "seed": 7 + index,
                "url": "https://h/x.png?Expires=***&Signature=***",
                "url_sealed": f"sealed-{request_id}-{index}",
                "url_expires_at": expires.isoformat(),
            }
            for index in range(n)
        ],
        "failed_images": [
            {"index": n + offset, "code": "DataInspectionFailed", "message": "refused"}
            for offset in range(failed)
        ],
    }


def stored(request_id: str, index: int) -> dict[str, object]:
    return {
        "s3_uri": f"s3://bucket/{request_id}-{index}.png",
        "bucket": "bucket",
        "key": f"{request_id}-{index}.png",
        "bytes": 1000 + index,
        "sha256": "ab" * 32,
        "content_type": "image/png",
        "width": 1024,
        "height": 768,
        "generation": 0,
        "index": index,
        "model": "wan2.2-t2i-flash",
        "seed": 7 + index,
        "prompt": f"prompt of {request_id}",
        "request_id": request_id,
        "skipped": False,
    }


def run_images() -> RunImages:
    later = NOW + timedelta(hours=20)
    earlier = NOW - timedelta(minutes=1)
    return RunImages(
        [
            TaskOutput(
                "generate", 0, GENERATION, generation("req-a", expires=later, failed=1), "imggen_default"
            ),
            TaskOutput("generate", 1, GENERATION, generation("req-b", expires=later), "imggen_default"),
            TaskOutput(
                "generate", 2, GENERATION, generation("req-c", expires=earlier, n=1), "imggen_default"
            ),
            # The transfer stored req-a's two images and req-b's first one.
            TaskOutput(
                "store", -1, TRANSFER, [stored("req-a", 0), stored("req-a", 1), stored("req-b", 0)], "aws_s3"
            ),
        ],
        now=NOW,
    )


def test_transfer_tiles_name_only_the_xcom_s_objects_with_the_generation_s_metadata() -> None:
    run = run_images()
    (store,) = run.task_instances("store")
    tiles = run.tiles(store)
    assert [(tile.kind, tile.position, tile.key) for tile in tiles] == [
        ("stored", 0, "req-a-0.png"),
        ("stored", 1, "req-a-1.png"),
        ("stored", 2, "req-b-0.png"),
        ("failed", 3, None),  # req-a reported a failed image: shown next to its siblings
    ]
    assert {tile.aws_conn_id for tile in tiles[:3]} == {"aws_s3"}
    assert tiles[0].negative_prompt == "watermark" and tiles[0].size == "1024*768"
    assert tiles[3].failure == "DataInspectionFailed: refused"


def test_generation_tiles_prefer_the_stored_copy_then_a_valid_url_else_expired() -> None:
    run = run_images()
    kinds = {
        output.map_index: [(tile.kind, tile.bucket, tile.url_sealed) for tile in run.tiles(output)]
        for output in run.task_instances("generate")
    }
    assert kinds == {
        0: [("stored", "bucket", None), ("stored", "bucket", None), ("failed", None, None)],
        1: [("stored", "bucket", None), ("result", None, "sealed-req-b-1")],
        2: [("expired", None, None)],  # expired a minute ago, never stored: no URL kept to fetch
    }


def test_the_run_gallery_shows_each_image_once() -> None:
    gallery = run_images().gallery()
    assert [(tile.task_id, tile.map_index, tile.kind) for tile in gallery] == [
        ("store", -1, "stored"),
        ("store", -1, "stored"),
        ("store", -1, "stored"),
        ("store", -1, "failed"),
        ("generate", 0, "failed"),
        ("generate", 1, "result"),
        ("generate", 2, "expired"),
    ]


def test_unreadable_xcom_and_unknown_connections_show_no_pixels() -> None:
    run = RunImages(
        [
            TaskOutput("store", -1, TRANSFER, [stored("r", 0), {"bucket": "b"}, "s3://x/y"], UNKNOWN_CONN),
            TaskOutput("generate", -1, GENERATION, "not a record", "imggen_default"),
        ],
        now=NOW,
    )
    (store,) = run.task_instances("store")
    # An unreadable record keeps its place as a broken tile, which names the failed field, not its content.
    assert [(tile.kind, tile.failure) for tile in run.tiles(store)] == [
        ("unavailable", "the task's aws_conn_id is unknown"),
        ("broken", "unreadable XCom record (stored image: bucket): not shown"),
        ("broken", "unreadable XCom record (stored image: not a record): not shown"),
    ]
    assert not any(tile.has_pixels for tile in run.tiles(store))
    assert [(tile.kind, tile.failure) for tile in run.tiles(run.task_instances("generate")[0])] == [
        ("broken", "unreadable XCom record (generation: not a record): not shown")
    ]


@pytest.mark.parametrize(
    ("rendered", "declared", "expected"),
    [
        ({"aws_conn_id": "rendered"}, "declared", "rendered"),
        ({}, "declared", "declared"),
        (None, MISSING, "aws_default"),
        ({"aws_conn_id": None}, "declared", None),
        (None, "{{ var.value.conn }}", UNKNOWN_CONN),
        ({"aws_conn_id": 3}, "declared", UNKNOWN_CONN),
    ],
)
def test_the_connection_is_the_one_the_task_instance_rendered(
    rendered: dict[str, object] | None, declared: object, expected: str | None
) -> None:
    assert conn_id_of(rendered, declared, "aws_conn_id", "aws_default") == expected


def test_pages_escape_everything_and_never_show_sealed_urls_or_keys() -> None:
    run = RunImages(
        [
            TaskOutput(
                "generate",
                -1,
                GENERATION,
                {
                    **generation("req", expires=NOW + timedelta(hours=1), n=1),
                    "prompt": '<script>alert("x")</script>',
                },
                "imggen_default",
            )
        ],
        now=NOW,
    )
    tiles = run.gallery()
    page = render_page(title="t", dag_id="d", run_id="r&1", tiles=tiles, show_task=True, empty="")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "sealed-req-0" not in page
    assert "run_id=r%261" in page  # identifiers are URL-encoded in the tile links


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: params.dag_id(None), "dag_id is required"),
        (lambda: params.dag_id("../etc"), "dag_id: expected"),
        (lambda: params.task_id("a" * 251), "task_id: expected"),
        (lambda: params.run_id("x\n"), "run_id: expected"),
        (lambda: params.run_id("x" * 251), "run_id: expected"),
        (lambda: params.map_index("-2", required=True), "map_index: expected an integer from -1"),
        (lambda: params.map_index("1e3", required=True), "map_index: expected"),
        (lambda: params.map_index(None, required=True), "map_index is required"),
        (lambda: params.position("-1"), "n: expected an integer from 0"),
        (lambda: params.position("99999999"), "n: expected"),
        (lambda: params.thumbnail_size("300"), "size: expected one of 128, 256, 512"),
    ],
)
def test_bad_parameters_are_named(call: object, message: str) -> None:
    with pytest.raises(params.BadParameterError, match=message.replace("(", r"\(")):
        call()  # type: ignore[operator]


def test_good_parameters() -> None:
    assert params.map_index("{MAP_INDEX}", required=False) is None  # the UI's unfilled template
    assert params.map_index("3", required=False) == 3
    assert params.run_id("manual__2026-11-29T16:03:52.214769+00:00").endswith("+00:00")
    assert params.tile_address("d", "r", "t.inner", "-1", "4") == params.TileAddress(
        "d", "r", "t.inner", -1, 4
    )
    assert params.thumbnail_size(None) == 256


def png(width: int, height: int, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), (200, 30, 30, 128) if mode == "RGBA" else (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def test_thumbnails_are_bounded_jpegs() -> None:
    for source, size in ((png(1024, 768), 256), (png(300, 1200, "RGBA"), 128), (png(40, 30), 512)):
        data = make_thumbnail(io.BytesIO(source), size)
        with Image.open(io.BytesIO(data)) as thumb:
            assert thumb.format == "JPEG" and thumb.mode == "RGB"
            assert max(thumb.size) <= size and min(thumb.size) > 0
    with Image.open(io.BytesIO(make_thumbnail(io.BytesIO(png(1024, 768))))) as thumb:
        assert thumb.size == (256, 192)


def bomb_png(width: int, height: int) -> bytes:
    """A PNG header claiming ``width`` x ``height`` with almost no data: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("dimensions", [(4097, 4096), (30000, 30000), (100000, 100000)])
def test_decompression_bombs_are_refused_before_decoding(dimensions: tuple[int, int]) -> None:
    assert dimensions[0] * dimensions[1] > MAX_PIXELS
    with pytest.raises(ThumbnailError, match=r"pixels|decompression bomb"):
        make_thumbnail(io.BytesIO(bomb_png(*dimensions)))


@pytest.mark.parametrize("content", [b"<html>error</html>", b"GIF89a" + b"\0" * 100, png(64, 64)[:60], b""])
def test_non_images_and_broken_images_are_refused(content: bytes) -> None:
    with pytest.raises(ThumbnailError):
        make_thumbnail(io.BytesIO(content))


def test_reads_are_bounded_and_checked_against_the_xcom_sha256() -> None:
    import hashlib

    data = png(16, 16)
    with _spool([data[:10], data[10:]], hashlib.sha256(data).hexdigest(), len(data)) as spooled:
        assert spooled.read() == data
    with pytest.raises(PixelsUnavailableError, match="sha256 differs"):
        _spool([data], "00" * 32, None)
    with pytest.raises(PixelsUnavailableError, match="size differs"):
        _spool([data], hashlib.sha256(data).hexdigest(), len(data) + 1)
    # Without a sha256 (or with one that is none: empty, upper case) nothing is read, but a sealed result.
    for unverifiable in (None, "", hashlib.sha256(data).hexdigest().upper()):
        with pytest.raises(PixelsUnavailableError, match="sha256"):
            _spool([data], unverifiable, None)
    with pytest.raises(PixelsUnavailableError, match="size differs"):
        _spool([data], None, len(data) + 1, sealed_result=True)

    def endless():  # type: ignore[no-untyped-def]
        while True:
            yield b"\0" * (1024 * 1024)

    with pytest.raises(PixelsUnavailableError, match=f"over {MAX_SOURCE_BYTES} bytes"):
        _spool(endless(), None, None, sealed_result=True)


def test_etags_follow_content_and_size_and_the_cache_stays_bounded() -> None:
    assert etag_for("s3:a:b/k:sha", 256) == etag_for("s3:a:b/k:sha", 256)
    assert etag_for("s3:a:b/k:sha", 256) != etag_for("s3:a:b/k:sha2", 256)
    assert etag_for("s3:a:b/k:sha", 256) != etag_for("s3:a:b/k:sha", 128)
    cache = ThumbnailCache(max_bytes=100)
    for number in range(10):
        cache.put(f"e{number}", b"x" * 30)
    assert cache.size_bytes <= 100
    assert cache.get("e9") == b"x" * 30 and cache.get("e0") is None
    cache.put("huge", b"x" * 101)
    assert cache.get("huge") is None


def test_the_plugin_declares_the_view_and_stays_light_to_import() -> None:
    import subprocess
    import sys

    from airflow_provider_imggen.plugin import ImageGenerationPlugin, LazyImagesApp

    (app,) = ImageGenerationPlugin.fastapi_apps
    assert app["url_prefix"] == "/imggen" and isinstance(app["app"], LazyImagesApp)
    assert [(view["destination"], view["url_route"]) for view in ImageGenerationPlugin.external_views] == [
        ("task_instance", "imggen-images"),
        ("dag_run", "imggen-gallery"),
    ]
    assert all(view["href"].startswith("/imggen/") for view in ImageGenerationPlugin.external_views)
    # Every Airflow process imports the plugin: none of the view's dependencies may come with it.
    heavy = ("PIL", "boto3", "fastapi", "airflow_provider_imggen.ui.routes", "botocore")
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, airflow_provider_imggen.plugin; "
            f"print([name for name in {heavy!r} if name in sys.modules])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert loaded == "[]"


def result_tile(url: str, conn_id: str = "imggen_default") -> Any:
    from airflow_provider_imggen.sealed_urls import seal
    from airflow_provider_imggen.ui.tiles import Tile

    return Tile(
        task_id="t", map_index=-1, position=0, kind="result", url_sealed=seal(url), imggen_conn_id=conn_id
    )


def test_unstored_results_are_fetched_only_under_the_transfer_s_url_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow_provider_imggen.ui.pixels import ResultExpiredError, open_pixels
    from tests.conftest import set_imggen_connection

    set_imggen_connection(monkeypatch, "https://gateway.example.com/v1")
    future = int((datetime.now(UTC) + timedelta(hours=1)).timestamp())
    # Not the API's origin, not https, a loopback address: refused before any connection is made.
    for url in (
        f"http://127.0.0.1:9/r.png?Expires={future}&Signature=s3cr3t",
        f"https://169.254.169.254/latest/meta-data?Expires={future}",
        "file:///etc/passwd",
    ):
        with pytest.raises(PixelsUnavailableError, match="refused by the result-URL policy") as refused:
            open_pixels(result_tile(url))
        assert "s3cr3t" not in str(refused.value) and "127.0.0.1" not in str(refused.value)
    # A URL that says it has expired is not fetched at all.
    past = int((datetime.now(UTC) - timedelta(minutes=1)).timestamp())
    with pytest.raises(ResultExpiredError, match="expired, not stored"):
        open_pixels(result_tile(f"https://gateway.example.com/r.png?Expires={past}&Signature=x"))
    # A seal this deployment's key does not open is said to be so, without its content.
    from airflow_provider_imggen.ui.tiles import Tile

    forged = Tile(
        task_id="t", map_index=-1, position=0, kind="result", url_sealed="gAAAAforged", imggen_conn_id="x"
    )
    with pytest.raises(PixelsUnavailableError, match="cannot be opened with this Fernet key"):
        open_pixels(forged)


def test_an_edits_inputs_are_shown_first_and_only_s3_ones_are_read() -> None:
    record = generation("req-edit", expires=NOW + timedelta(hours=1), n=1)
    record["input_images"] = [
        {"uri": "s3://products/mug.png", "sha256": "a" * 64, "bytes": 10, "width": 512, "height": 512},
        {"uri": "https://cdn.example.com/label.png?Signature=***", "sha256": "b" * 64},
        {"uri": "s3://../../etc", "sha256": "c" * 64},  # an edited XCom: no such bucket name
    ]
    output = TaskOutput("edit", -1, GENERATION, record, "imggen_default", aws_conn_id="aws_inputs")
    run = RunImages([output], now=NOW)
    tiles = run.tiles(output)
    assert [tile.kind for tile in tiles] == ["input", "input", "input", "result"]
    first, https, edited = tiles[:3]
    assert (first.has_pixels, first.bucket, first.key, first.aws_conn_id) == (
        True,
        "products",
        "mug.png",
        "aws_inputs",
    )
    assert first.from_s3 and first.sha256 == "a" * 64
    assert not https.has_pixels and "not fetched here" in (https.failure or "")
    assert not edited.has_pixels and edited.bucket is None
    assert [tile.position for tile in tiles] == [0, 1, 2, 3]
    assert [tile.kind for tile in run.gallery()] == ["result"], "the run's gallery shows what it made"
    page = render_page(title="t", dag_id="d", run_id="r", tiles=tiles, show_task=False, empty="none")
    assert "made from 3 input image(s)" in page and 'aria-label="input"' in page
    assert "input image 0" in page and "Signature=***" in page and "Signature=s" not in page
    unknown = TaskOutput("edit", -1, GENERATION, record, "imggen_default")  # aws_conn_id not known
    assert not RunImages([unknown], now=NOW).tiles(unknown)[0].has_pixels
