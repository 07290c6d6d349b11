"""
ImageGenerationToS3Operator against real parts: the emulator over HTTP on loopback, and moto_server as S3.

The ``generation`` input is what ImageGenerationOperator pushes, built from a real hook call.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import pendulum
import pytest
import requests
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowFailException
from PIL import Image

from airflow_provider_imggen.emulator import EmulatorConfig, EmulatorServer
from airflow_provider_imggen.exceptions import (
    ImageGenerationValidationError,
    ImageResultExpiredError,
    ImageTransferError,
    ImageTransferRejectedError,
)
from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator
from airflow_provider_imggen.sealed_urls import unseal
from airflow_provider_imggen.transfers.image_generation_to_s3 import (
    ImageGenerationToS3Operator,
    ImagesViewLink,
    S3ImageLink,
)
from tests.conftest import (
    API_KEY,
    TESTS_DIR,
    dag_run_rows,
    emulator_connection_env,
    run_dag,
    set_imggen_connection,
)

if TYPE_CHECKING:
    from tests.s3_fixtures import S3Bucket

# The moto_server and s3 fixtures.

START = pendulum.datetime(2026, 1, 1, tz="UTC")
PROMPT = "a lighthouse at dawn, risograph"
XCOM_KEYS = {
    "s3_uri",
    "bucket",
    "key",
    "bytes",
    "sha256",
    "content_type",
    "width",
    "height",
    "generation",
    "index",
    "model",
    "seed",
    "prompt",
    "request_id",
    "skipped",
    "cost_per_image",
    "cost_currency",
}


# -- helpers ------------------------------------------------------------------------------------------


def generate(
    *,
    n: int = 2,
    seed: int = 1234,
    size: str = "512x512",
    prompt: str = PROMPT,
    response_format: str = "url",
    output_dir: Path | None = None,
) -> dict[str, Any]:
    """The XCom a real ImageGenerationOperator pushes (b64_json images written under ``output_dir``)."""
    with DAG(dag_id="unit", schedule=None, start_date=START):
        operator = ImageGenerationOperator(
            task_id="generate",
            prompt=prompt,
            model="wan2.2-t2i-flash",
            n=n,
            size=size,
            seed=seed,
            response_format=response_format,
            output_path=str(output_dir) if output_dir else None,
        )
    ti = StubTaskInstance()
    context: dict[str, Any] = {"ti": ti, "task_instance": ti}
    operator.render_template_fields(context)  # type: ignore[arg-type]
    return operator.execute(context)  # type: ignore[arg-type]


def signed_url(image: dict[str, Any]) -> str:
    """The full signed URL of an image record: XCom shows it masked and keeps it sealed (Fernet)."""
    return unseal(image["url_sealed"], label=f"image {image['index']}")


def direct_download(url: str) -> bytes:
    response = requests.get(url, timeout=30)
    response.raise_for_status()
    return response.content


class StubTaskInstance:
    """The slice of a task instance execute() uses, without a metadata database."""

    def __init__(self, map_index: int = -1) -> None:
        self.dag_id = "unit"
        self.run_id = "manual__2026-01-01"
        self.task_id = "store"
        self.map_index = map_index
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


def make_operator(**kwargs: Any) -> ImageGenerationToS3Operator:
    kwargs.setdefault("download_retry_wait", 0.01)
    with DAG(dag_id="unit", schedule=None, start_date=START):
        return ImageGenerationToS3Operator(task_id="store", **kwargs)


def run(operator: ImageGenerationToS3Operator, ti: StubTaskInstance | None = None) -> list[dict[str, Any]]:
    ti = ti or StubTaskInstance()
    context: dict[str, Any] = {"ti": ti, "task_instance": ti, "ds": "2026-01-01", "params": {}}
    operator.render_template_fields(context)  # type: ignore[arg-type]
    return operator.execute(context)  # type: ignore[arg-type]


def downloads(emulator: EmulatorServer) -> list[dict[str, Any]]:
    return [entry for entry in emulator.requests_log() if entry["path"].startswith("/results/")]


def png_bytes(width: int = 64, height: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


class StaticServer:
    """
    A loopback HTTP server with fixed answers per path; records request headers and the peak number of
    requests in flight. ``hold_for`` makes each request wait (up to ``hold_seconds``) until that many are in
    flight, so concurrency shows up deterministically instead of depending on timing.
    """

    def __init__(
        self, routes: dict[str, dict[str, Any]], hold_for: int = 0, hold_seconds: float = 1.0
    ) -> None:
        self.routes = routes
        self.hold_for = hold_for
        self.headers: list[dict[str, str]] = []
        self.hits: dict[str, int] = {}
        self.in_flight = 0
        self.peak = 0
        self._condition = threading.Condition()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                with server._condition:
                    server.headers.append(dict(self.headers))
                    server.hits[path] = server.hits.get(path, 0) + 1
                    server.in_flight += 1
                    server.peak = max(server.peak, server.in_flight)
                    server._condition.notify_all()
                    server._condition.wait_for(
                        lambda: server.in_flight >= server.hold_for, timeout=hold_seconds
                    )
                    # Counted out before answering: the client frees its slot only once it has the answer,
                    # so its next request can never be counted alongside this one (counting out after the
                    # write raced with that next request on a loaded machine).
                    server.in_flight -= 1
                route = server.routes.get(path, {"status": 404, "body": b"missing"})
                status = route["status"]
                if route.get("fail_first", 0) >= server.hits[path]:
                    status = 503
                self.send_response(status)
                self.send_header("Content-Type", route.get("content_type", "image/png"))
                if route.get("content_length", True):
                    self.send_header("Content-Length", str(len(route["body"])))
                self.end_headers()
                self.wfile.write(route["body"])

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def __enter__(self) -> StaticServer:
        # Inside the block this server is the API's origin (imggen_default points at it): plain http on
        # loopback is trusted there only. tests/security covers the result-URL policy for other hosts.
        self._saved_connection = os.environ.get("AIRFLOW_CONN_IMGGEN_DEFAULT")
        os.environ["AIRFLOW_CONN_IMGGEN_DEFAULT"] = json.dumps(
            {"conn_type": "imggen", "host": f"{self.url('')}/v1", "password": API_KEY}
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved_connection is None:
            os.environ.pop("AIRFLOW_CONN_IMGGEN_DEFAULT", None)
        else:
            os.environ["AIRFLOW_CONN_IMGGEN_DEFAULT"] = self._saved_connection
        self._server.shutdown()
        self._server.server_close()


# -- storing ------------------------------------------------------------------------------------------


def test_url_images_land_in_s3_with_content_type_size_and_metadata(
    imggen_conn: EmulatorServer, s3: S3Bucket
) -> None:
    generation = generate(n=2, size="768x512")
    operator = make_operator(generation=generation, s3_bucket=s3.name, s3_key="run/{index}.{ext}")
    ti = StubTaskInstance()

    entries = run(operator, ti)

    assert s3.object_keys() == ["run/0.png", "run/1.png"]
    for entry, image in zip(entries, generation["images"], strict=True):
        expected = direct_download(signed_url(image))
        stored = s3.read(entry["key"])
        assert stored == expected
        assert entry["sha256"] == hashlib.sha256(expected).hexdigest()
        assert set(entry) == XCOM_KEYS
        assert entry["bytes"] == len(expected)
        assert entry["s3_uri"] == f"s3://{s3.name}/run/{image['index']}.png"
        assert (entry["content_type"], entry["width"], entry["height"]) == ("image/png", 768, 512)
        assert (entry["index"], entry["seed"], entry["skipped"]) == (image["index"], image["seed"], False)
        assert (entry["model"], entry["prompt"]) == ("wan2.2-t2i-flash", PROMPT)
        assert entry["request_id"] == generation["request_id"] is not None
        head = s3.head(entry["key"])
        assert head["ContentType"] == "image/png"
        assert head["Metadata"] == {
            "model": "wan2.2-t2i-flash",
            "seed": str(image["seed"]),
            "request-id": generation["request_id"],
            "prompt-sha256": hashlib.sha256(PROMPT.encode()).hexdigest(),
            "sha256": entry["sha256"],
            "width": "768",
            "height": "512",
        }
    assert ti.xcoms[S3ImageLink.key] == {
        "bucket": s3.name,
        "key": "run/0.png",
        "region_name": "us-east-1",
        "endpoint_url": s3.endpoint_url,
    }


def test_b64_images_are_uploaded_from_their_storage_location(
    imggen_conn: EmulatorServer, s3: S3Bucket, tmp_path: Path
) -> None:
    generation = generate(n=2, response_format="b64_json", output_dir=tmp_path)
    assert all(image["url"] is None and image["location"] for image in generation["images"])
    operator = make_operator(generation=generation, s3_bucket=s3.name, s3_key="b64/{seed}.{ext}")

    entries = run(operator)

    assert not downloads(imggen_conn), "b64_json images are read from their location, not downloaded"
    for entry, image in zip(entries, generation["images"], strict=True):
        stored = s3.read(entry["key"])
        assert stored == Path(image["location"].removeprefix("file://")).read_bytes()
        assert entry["sha256"] == image["sha256"] == hashlib.sha256(stored).hexdigest()
        assert entry["key"] == f"b64/{image['seed']}.png"


def test_a_location_whose_content_differs_from_the_recorded_sha256_is_not_stored(
    imggen_conn: EmulatorServer, s3: S3Bucket, tmp_path: Path
) -> None:
    generation = generate(n=1, response_format="b64_json", output_dir=tmp_path)
    location = Path(generation["images"][0]["location"].removeprefix("file://"))
    data = bytearray(location.read_bytes())
    data[-20] ^= 0xFF  # same size, other content
    location.write_bytes(bytes(data))
    operator = make_operator(
        generation=generation, s3_bucket=s3.name, s3_key="x/{index}.png", download_retries=1
    )

    with pytest.raises(ImageTransferError, match="sha256"):
        run(operator)
    assert s3.object_keys() == []


def test_placeholders_and_jinja_render_per_image(imggen_conn: EmulatorServer, s3: S3Bucket) -> None:
    generations = [generate(n=2, seed=10), generate(n=1, seed=20, prompt="a tram")]
    operator = make_operator(
        generation=generations,
        s3_bucket=s3.name,
        s3_key="{{ ds }}/{{ ti.map_index }}/{generation}-{index:02d}-{seed}-{model}-{request_id}.{ext}",
    )

    entries = run(operator, StubTaskInstance(map_index=7))

    expected = [
        f"2026-01-01/7/{g}-{image['index']:02d}-{image['seed']}-wan2.2-t2i-flash-{generation['request_id']}.png"
        for g, generation in enumerate(generations)
        for image in generation["images"]
    ]
    assert [entry["key"] for entry in entries] == expected
    assert s3.object_keys() == sorted(expected)
    assert [entry["generation"] for entry in entries] == [0, 0, 1]

    by_hash = make_operator(generation=generations, s3_bucket=s3.name, s3_key="by-hash/{sha256}.{ext}")
    hashed = run(by_hash)
    assert [entry["key"] for entry in hashed] == [f"by-hash/{entry['sha256']}.png" for entry in entries]
    for entry in hashed:
        assert hashlib.sha256(s3.read(entry["key"])).hexdigest() == entry["sha256"]


class LazySequence(Sequence[Any]):
    """Stands in for Airflow's lazy XCom sequence (the XCom of a mapped task): a Sequence, not a list."""

    def __init__(self, items: list[Any]) -> None:
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: Any) -> Any:
        return self._items[index]


def test_lazy_sequences_and_generators_of_generations(imggen_conn: EmulatorServer, s3: S3Bucket) -> None:
    generations = [generate(n=1, seed=30), generate(n=1, seed=31)]

    entries = run(
        make_operator(generation=LazySequence(generations), s3_bucket=s3.name, s3_key="l/{generation}.png")
    )
    assert [entry["key"] for entry in entries] == ["l/0.png", "l/1.png"]

    entries = run(
        make_operator(generation=(g for g in generations), s3_bucket=s3.name, s3_key="g/{generation}.png")
    )
    assert [entry["seed"] for entry in entries] == [30, 31]


def test_plain_urls_are_downloaded_without_the_api_key(imggen_conn: EmulatorServer, s3: S3Bucket) -> None:
    png = png_bytes(40, 30)
    with StaticServer({"/a.png": {"status": 200, "body": png}, "/b": {"status": 200, "body": png}}) as server:
        operator = make_operator(
            generation=[server.url("/a.png?Signature=abc"), server.url("/b")],
            s3_key=f"s3://{s3.name}/plain/{{generation}}.{{ext}}",
        )
        entries = run(operator)

    assert s3.object_keys() == ["plain/0.png", "plain/1.png"]
    assert [(entry["width"], entry["height"], entry["model"], entry["seed"]) for entry in entries] == [
        (40, 30, None, None)
    ] * 2
    assert len(server.headers) == 2
    for headers in server.headers:
        assert "Authorization" not in headers
        assert API_KEY not in json.dumps(headers)


def test_a_string_holding_a_rendered_dict_is_refused_with_a_hint(s3: S3Bucket) -> None:
    operator = make_operator(
        generation="{'model': 'qwen-image', 'images': []}", s3_bucket=s3.name, s3_key="k"
    )
    with pytest.raises(ImageGenerationValidationError, match="render_template_as_native_obj"):
        run(operator)


@pytest.mark.parametrize(
    ("s3_key", "message"),
    [
        pytest.param("img/{foo}.png", "unknown placeholder {foo}", id="unknown"),
        pytest.param("img/{0}.png", "unknown placeholder {0}", id="positional"),
        pytest.param("img/{index.real}.png", "unknown placeholder {index.real}", id="attribute"),
        pytest.param("img/{index", "not a valid key template", id="unbalanced"),
        pytest.param("img/{index:q}.png", "not a valid key template", id="bad-spec"),
    ],
)
def test_bad_key_templates_fail_when_the_dag_is_parsed_and_before_any_download(
    imggen_conn: EmulatorServer, s3: S3Bucket, s3_key: str, message: str
) -> None:
    generation = generate(n=1)
    pattern = message.replace("{", r"\{").replace(".", r"\.")
    # Literal (and Jinja-templated) keys are checked as written when the operator is created...
    with pytest.raises(ImageGenerationValidationError, match=pattern):
        make_operator(generation=generation, s3_bucket=s3.name, s3_key=s3_key)
    if s3_key != "img/{index":  # with Jinja, a stray brace is found in what Jinja rendered
        with pytest.raises(ImageGenerationValidationError, match=pattern):
            make_operator(generation=generation, s3_bucket=s3.name, s3_key="{{ ds }}/" + s3_key)
    # ...and again before any download, whatever set them.
    operator = make_operator(generation=generation, s3_bucket=s3.name, s3_key="img/{index}.png")
    operator.s3_key = s3_key
    with pytest.raises(ImageGenerationValidationError, match=pattern):
        run(operator)
    assert not downloads(imggen_conn)


def test_placeholders_without_a_value_are_refused(s3: S3Bucket) -> None:
    operator = make_operator(
        generation="https://example.invalid/a.png", s3_bucket=s3.name, s3_key="{seed}.png"
    )
    with pytest.raises(ImageGenerationValidationError, match=r"no value for \{seed\}"):
        run(operator)


# -- no silent overwrites -----------------------------------------------------------------------------


def test_colliding_keys_fail_before_anything_is_downloaded_or_uploaded(
    imggen_conn: EmulatorServer, s3: S3Bucket
) -> None:
    operator = make_operator(generation=generate(n=2), s3_bucket=s3.name, s3_key="daily/poster.png")

    with pytest.raises(AirflowFailException) as raised:
        run(operator)

    message = str(raised.value)
    assert "image 0 of generation 0, image 1 of generation 0 -> 'daily/poster.png'" in message
    assert "{index}" in message and "{generation}" in message
    assert s3.object_keys() == []
    assert not downloads(imggen_conn)


def test_keys_colliding_on_content_placeholders_fail_before_any_upload(
    imggen_conn: EmulatorServer, s3: S3Bucket
) -> None:
    generation = generate(n=1)
    # The same generation listed twice: the same content, so the same {sha256} key.
    operator = make_operator(generation=[generation, generation], s3_bucket=s3.name, s3_key="h/{sha256}.png")

    with pytest.raises(ImageGenerationValidationError) as raised:
        run(operator)

    assert "image 0 of generation 0, image 0 of generation 1 -> 'h/" in str(raised.value)
    assert len(downloads(imggen_conn)) == 2
    assert s3.object_keys() == []


def test_ext_comes_from_the_content_when_the_path_does_not_say(s3: S3Bucket) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 10)).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    routes = {"/plain": {"status": 200, "body": jpeg}, "/lies.png": {"status": 200, "body": jpeg}}
    with StaticServer(routes) as server:
        entries = run(
            make_operator(
                generation=[server.url("/plain"), server.url("/lies.png")],
                s3_bucket=s3.name,
                s3_key="e/{generation}.{ext}",
            )
        )
    assert [(entry["key"], entry["content_type"]) for entry in entries] == [
        ("e/0.jpg", "image/jpeg"),
        ("e/1.jpg", "image/jpeg"),
    ]
    assert s3.head("e/1.jpg")["ContentType"] == "image/jpeg"


def test_a_rerun_leaves_the_same_objects_and_needs_no_download(
    imggen_conn: EmulatorServer, s3: S3Bucket
) -> None:
    generation = generate(n=3)
    first = run(make_operator(generation=generation, s3_bucket=s3.name, s3_key="r/{index}.{ext}"))
    before = {key: s3.head(key)["ETag"] for key in s3.object_keys()}
    imggen_conn.clear_log()

    # Cleared a day later: the result URLs have expired, the objects are there.
    expired = json.loads(json.dumps(generation))
    for image in expired["images"]:
        image["url_expires_at"] = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    second = run(make_operator(generation=expired, s3_bucket=s3.name, s3_key="r/{index}.{ext}"))

    assert {key: s3.head(key)["ETag"] for key in s3.object_keys()} == before
    assert len(before) == 3
    assert not downloads(imggen_conn)
    assert [entry["skipped"] for entry in second] == [True] * 3
    assert [{**entry, "skipped": False} for entry in second] == first


def test_rerun_with_content_keys_skips_identical_objects(imggen_conn: EmulatorServer, s3: S3Bucket) -> None:
    generation = generate(n=2)
    first = run(make_operator(generation=generation, s3_bucket=s3.name, s3_key="h/{sha256}.{ext}"))
    second = run(make_operator(generation=generation, s3_bucket=s3.name, s3_key="h/{sha256}.{ext}"))

    assert len(s3.object_keys()) == 2
    assert [entry["skipped"] for entry in second] == [True, True]
    assert [entry["key"] for entry in second] == [entry["key"] for entry in first]


def test_an_identical_object_written_by_someone_else_is_skipped(
    imggen_conn: EmulatorServer, s3: S3Bucket
) -> None:
    generation = generate(n=1)
    content = direct_download(signed_url(generation["images"][0]))
    s3.client.put_object(Bucket=s3.name, Key="o/0.png", Body=content)  # no sha256 metadata

    (entry,) = run(make_operator(generation=generation, s3_bucket=s3.name, s3_key="o/{index}.png"))

    assert entry["skipped"] is True
    assert s3.head("o/0.png")["Metadata"] == {}  # left as it was


def test_a_different_existing_object_fails_and_nothing_is_uploaded(
    imggen_conn: EmulatorServer, s3: S3Bucket
) -> None:
    s3.client.put_object(Bucket=s3.name, Key="d/1.png", Body=b"older content")
    operator = make_operator(generation=generate(n=3), s3_bucket=s3.name, s3_key="d/{index}.png")

    with pytest.raises(ImageTransferRejectedError, match=r"different content.*d/1\.png.*replace=True"):
        run(operator)

    assert s3.object_keys() == ["d/1.png"]
    assert s3.read("d/1.png") == b"older content"


def test_a_failed_upload_is_retried_from_the_same_generation_without_billing_again(
    imggen_conn: EmulatorServer, s3: S3Bucket
) -> None:
    generation = generate(n=2)
    billed = imggen_conn.billed_images()
    missing_bucket = f"{s3.name}-not-yet"

    # Both images upload concurrently: whichever fails first is reported.
    expected = r"Uploading image [01] of generation 0 .* failed.*NoSuchBucket"
    with pytest.raises(ImageTransferError, match=expected) as raised:
        run(make_operator(generation=generation, s3_bucket=missing_bucket, s3_key="u/{index}.png"))
    # An Airflow retry is allowed (the cause may be transient) ...
    assert not isinstance(raised.value, AirflowFailException)

    # ... and the retry stores the images the generation already paid for.
    s3.client.create_bucket(Bucket=missing_bucket)
    stored = run(make_operator(generation=generation, s3_bucket=missing_bucket, s3_key="u/{index}.png"))
    assert [entry["key"] for entry in stored] == ["u/0.png", "u/1.png"]
    assert [entry["skipped"] for entry in stored] == [False, False]
    assert imggen_conn.billed_images() == billed == 2


def test_replace_overwrites(imggen_conn: EmulatorServer, s3: S3Bucket) -> None:
    s3.client.put_object(Bucket=s3.name, Key="w/0.png", Body=b"older content")
    generation = generate(n=1)

    (entry,) = run(
        make_operator(generation=generation, s3_bucket=s3.name, s3_key="w/{index}.png", replace=True)
    )
    again = run(make_operator(generation=generation, s3_bucket=s3.name, s3_key="w/{index}.png", replace=True))

    assert s3.read("w/0.png") == direct_download(signed_url(generation["images"][0]))
    assert entry["skipped"] is False and again[0]["skipped"] is False
    assert s3.object_keys() == ["w/0.png"]


# -- failures while downloading -----------------------------------------------------------------------


def test_truncated_downloads_are_retried_and_the_stored_objects_are_complete(
    imggen_conn: EmulatorServer, s3: S3Bucket
) -> None:
    generation = generate(n=4)
    expected = [direct_download(signed_url(image)) for image in generation["images"]]
    imggen_conn.clear_log()
    # Seeded, and sequential (max_concurrency=1), so the draws repeat: 4 downloads are truncated, and no
    # image more than 3 times in a row.
    imggen_conn.set_faults(rate_truncate=0.5, seed=0)

    entries = run(
        make_operator(
            generation=generation,
            s3_bucket=s3.name,
            s3_key="t/{index}.png",
            max_concurrency=1,
            download_retries=3,
        )
    )

    truncated = [entry for entry in downloads(imggen_conn) if entry["fault"] == "truncate"]
    assert len(truncated) == 4
    assert len(downloads(imggen_conn)) == 4 + len(truncated)
    for entry, content in zip(entries, expected, strict=True):
        assert s3.read(entry["key"]) == content
        assert entry["bytes"] == len(content)


def test_downloads_truncated_every_time_fail_and_store_nothing(
    imggen_conn: EmulatorServer, s3: S3Bucket
) -> None:
    generation = generate(n=2)
    imggen_conn.clear_log()
    imggen_conn.set_faults(rate_truncate=1.0)
    operator = make_operator(
        generation=generation,
        s3_bucket=s3.name,
        s3_key="t/{index}.png",
        download_retries=2,
        max_concurrency=1,
    )

    with pytest.raises(ImageTransferError) as raised:
        run(operator)

    assert not isinstance(raised.value, AirflowFailException), "a task retry may succeed: Airflow retries it"
    assert "after 3 attempt(s)" in str(raised.value) and "truncated" in str(raised.value).lower()
    assert s3.object_keys() == []
    assert len(downloads(imggen_conn)) == 3  # the first image's attempts; the second never started
    assert imggen_conn.billed_images() == 0, "no new generation"


def test_transient_http_errors_are_retried_and_others_are_not(s3: S3Bucket) -> None:
    png = png_bytes()
    routes = {
        "/flaky.png": {"status": 200, "body": png, "fail_first": 2},
        "/gone.png": {"status": 404, "body": b"<Error><Code>NoSuchKey</Code></Error>"},
    }
    with StaticServer(routes) as server:
        (entry,) = run(make_operator(generation=server.url("/flaky.png"), s3_bucket=s3.name, s3_key="f.png"))
        assert server.hits["/flaky.png"] == 3
        assert s3.read("f.png") == png == s3.read(entry["key"])

        with pytest.raises(ImageTransferRejectedError, match="HTTP 404"):
            run(make_operator(generation=server.url("/gone.png"), s3_bucket=s3.name, s3_key="g.png"))
        assert server.hits["/gone.png"] == 1


def test_an_expired_url_fails_before_any_download(imggen_conn: EmulatorServer, s3: S3Bucket) -> None:
    generation = generate(n=2)
    generation["images"][1]["url_expires_at"] = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    imggen_conn.clear_log()

    with pytest.raises(ImageResultExpiredError) as raised:
        run(make_operator(generation=generation, s3_bucket=s3.name, s3_key="e/{index}.png"))

    assert isinstance(raised.value, AirflowFailException)
    assert "expired" in str(raised.value) and "Re-run the generation task" in str(raised.value)
    assert "image 1 of generation 0" in str(raised.value)
    assert not downloads(imggen_conn)
    assert s3.object_keys() == []


def test_a_refused_url_is_reported_as_expired_not_as_a_bare_403(
    monkeypatch: pytest.MonkeyPatch, s3: S3Bucket
) -> None:
    with EmulatorServer(EmulatorConfig(api_key=API_KEY, url_ttl_seconds=0.001)) as short_lived:
        set_imggen_connection(monkeypatch, f"{short_lived.base_url}/v1", default_model="wan2.2-t2i-flash")
        generation = generate(n=1)
        expires = int(signed_url(generation["images"][0]).split("Expires=")[1].split("&")[0])
        while time.time() <= expires:  # the emulator's URLs have whole-second expiry times
            time.sleep(0.05)
        # The clock of the generating worker said otherwise (skew): the store has the last word.
        generation["images"][0]["url_expires_at"] = (datetime.now(UTC) + timedelta(hours=1)).isoformat()

        with pytest.raises(ImageResultExpiredError, match=r"HTTP 403.*expire.*Re-run the generation task"):
            run(make_operator(generation=generation, s3_bucket=s3.name, s3_key="x.png"))
        assert [
            entry["status"] for entry in short_lived.requests_log() if entry["path"].startswith("/results")
        ] == [403]
    assert s3.object_keys() == []


def test_an_html_page_is_never_stored(s3: S3Bucket) -> None:
    page = b"<!DOCTYPE html><html><body>Service temporarily unavailable</body></html>"
    broken_png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    routes = {
        "/page.png": {"status": 200, "body": page, "content_type": "text/html"},
        "/broken.png": {"status": 200, "body": broken_png},
    }
    with StaticServer(routes) as server:
        with pytest.raises(ImageTransferRejectedError, match="not a PNG, JPEG or WebP image"):
            run(make_operator(generation=server.url("/page.png"), s3_bucket=s3.name, s3_key="p.png"))
        with pytest.raises(ImageTransferRejectedError, match="not a complete image"):
            run(make_operator(generation=server.url("/broken.png"), s3_bucket=s3.name, s3_key="b.png"))
    assert s3.object_keys() == []


@pytest.mark.parametrize("content_length", [True, False], ids=["content-length", "no-content-length"])
def test_max_image_bytes_is_enforced(s3: S3Bucket, content_length: bool) -> None:
    big = png_bytes(256, 256) + b"\x00" * 5000
    with StaticServer({"/big.png": {"status": 200, "body": big, "content_length": content_length}}) as server:
        operator = make_operator(
            generation=[server.url("/big.png")], s3_bucket=s3.name, s3_key="big.png", max_image_bytes=4096
        )
        with pytest.raises(ImageTransferRejectedError, match="max_image_bytes=4096"):
            run(operator)
        assert server.hits["/big.png"] == 1, "not retried"
    assert s3.object_keys() == []


# -- upload arguments, XCom, logs, concurrency --------------------------------------------------------


def test_extra_upload_args_reach_s3(imggen_conn: EmulatorServer, s3: S3Bucket) -> None:
    operator = make_operator(
        generation=generate(n=1),
        s3_bucket=s3.name,
        s3_key="sse/{index}.png",
        extra_upload_args={
            "ServerSideEncryption": "AES256",
            "ACL": "public-read",
            "StorageClass": "STANDARD_IA",
            "CacheControl": "max-age=86400",
            "Metadata": {"team": "growth"},
        },
    )

    run(operator)

    head = s3.head("sse/0.png")
    assert head["ServerSideEncryption"] == "AES256"
    assert head["StorageClass"] == "STANDARD_IA"
    assert head["CacheControl"] == "max-age=86400"
    assert head["Metadata"]["team"] == "growth" and "sha256" in head["Metadata"]
    grants = s3.client.get_object_acl(Bucket=s3.name, Key="sse/0.png")["Grants"]
    assert any(grant["Grantee"].get("URI", "").endswith("/AllUsers") for grant in grants)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param({"ServerSideEncyption": "AES256"}, "unknown upload argument", id="typo"),
        pytest.param({"ContentType": "image/gif"}, "magic number", id="content-type"),
    ],
)
def test_bad_extra_upload_args_fail_before_any_download(
    imggen_conn: EmulatorServer, s3: S3Bucket, args: dict[str, Any], message: str
) -> None:
    operator = make_operator(
        generation=generate(n=1), s3_bucket=s3.name, s3_key="k.png", extra_upload_args=args
    )
    with pytest.raises(ImageGenerationValidationError, match=message):
        run(operator)
    assert not downloads(imggen_conn)


def test_the_xcom_is_small_and_carries_no_credentials(imggen_conn: EmulatorServer, s3: S3Bucket) -> None:
    generations = [generate(n=4, seed=100 + 4 * i, prompt=f"{PROMPT} #{i} " + "x" * 700) for i in range(4)]

    entries = run(
        make_operator(
            generation=generations, s3_bucket=s3.name, s3_key="x/{generation}/{index}.png", max_concurrency=8
        )
    )

    assert len(entries) == 16 and len(s3.object_keys()) == 16
    payload = json.dumps(entries)
    assert len(payload) < 64 * 1024
    assert "Signature=" not in payload and "Expires=" not in payload and API_KEY not in payload
    assert all(set(entry) == XCOM_KEYS for entry in entries)


def test_progress_is_logged_per_image_without_secrets(
    imggen_conn: EmulatorServer, s3: S3Bucket, capsys: pytest.CaptureFixture[str]
) -> None:
    generation = generate(n=2)
    signatures = [signed_url(image).split("Signature=")[1] for image in generation["images"]]
    capsys.readouterr()

    run(make_operator(generation=generation, s3_bucket=s3.name, s3_key="log/{index}.png"))

    # Airflow's task logging (structlog) writes to stdout outside a task runner.
    text = capsys.readouterr().out
    stored = [line for line in text.splitlines() if " stored: " in line]
    assert len(stored) == 2
    for n in (1, 2):
        (line,) = [line for line in stored if f"Image {n}/2 stored: " in line]
        assert "MB/s" in line and f"s3://{s3.name}/log/{n - 1}.png" in line
        # The emulator's result path is a word, a date and a hash: shown as its date and extension only.
        assert "Signature=***" in line and "/***/" in line and ".png?" in line
    assert len([line for line in text.splitlines() if " downloaded: " in line]) == 2
    assert all(signature not in text for signature in signatures)
    assert API_KEY not in text


@pytest.mark.parametrize("limit", [2, 4])
def test_at_most_max_concurrency_downloads_run_at_once(s3: S3Bucket, limit: int) -> None:
    png = png_bytes()
    routes = {f"/{i}.png": {"status": 200, "body": png} for i in range(8)}
    # Each request waits (up to 0.3 s) for one more than the bound to be in flight: a pool that let more
    # through would reach it at once, and the peak would show it.
    with StaticServer(routes, hold_for=limit + 1, hold_seconds=0.3) as server:
        run(
            make_operator(
                generation=[server.url(f"/{i}.png") for i in range(8)],
                s3_bucket=s3.name,
                s3_key="c/{generation}.png",
                max_concurrency=limit,
            )
        )
    assert server.peak == limit
    assert len(s3.object_keys()) == 8


def test_two_parts_upload_at_a_time_unless_the_connection_says_otherwise(
    s3: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Images run concurrently already: two parts per image, not boto3's 10 (~3 MB per thread)."""
    operator = make_operator(generation="https://example.com/a.png", s3_bucket=s3.name, s3_key="a.png")
    config = operator.get_s3_hook().transfer_config
    assert (config.use_threads, config.max_request_concurrency) == (True, 2)

    connection = json.loads(os.environ["AIRFLOW_CONN_AWS_DEFAULT"])
    connection["extra"]["service_config"] = {"s3": {"transfer_config_args": {"use_threads": False}}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
    assert operator.get_s3_hook().transfer_config.use_threads is False


# -- a real DAG run -----------------------------------------------------------------------------------

TRANSFER_DAGS = TESTS_DIR / "transfer_dags"


def test_a_real_dag_run_stores_a_mapped_generation(
    airflow_env: dict[str, str], imggen_conn: EmulatorServer, s3: S3Bucket
) -> None:
    """generation=generate.output of a mapped task: Airflow hands the operator a lazy XCom sequence."""
    from tests.s3_fixtures import aws_connection

    finished = run_dag(
        {**airflow_env, "AIRFLOW__CORE__DAGS_FOLDER": str(TRANSFER_DAGS)},
        "imggen_transfer_mapped",
        TRANSFER_DAGS / "imggen_transfer_dags.py",
        **emulator_connection_env(imggen_conn),
        AIRFLOW_CONN_AWS_DEFAULT=aws_connection(s3.endpoint_url),
        AIRFLOW_VAR_IMGGEN_TEST_BUCKET=s3.name,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]

    xcoms = {
        (task_id, map_index, key): json.loads(value)
        for task_id, map_index, key, value in dag_run_rows(
            airflow_env, "imggen_transfer_mapped", "xcom", "task_id, map_index, key, value"
        )
    }
    generations = [xcoms[("generate", i, "return_value")] for i in range(2)]
    entries = xcoms[("store", -1, "return_value")]
    run_date = entries[0]["key"].split("/")[1]
    expected_keys = [f"dags/{run_date}/{g}-{i}.png" for g in range(2) for i in range(2)]
    assert [entry["key"] for entry in entries] == expected_keys
    assert s3.object_keys() == sorted([*expected_keys, f"dags/{run_date}/single-0.png"])
    for entry in entries:
        image = generations[entry["generation"]]["images"][entry["index"]]
        assert s3.read(entry["key"]) == direct_download(signed_url(image))
        assert entry["prompt"] == generations[entry["generation"]]["prompt"]
    # moto is not AWS: no S3 console link; the Images view shows the objects instead.
    assert xcoms[("store", -1, "_link_S3ImageLink")] == ""
    (run_id,) = {
        run for _, _, _, run in dag_run_rows(airflow_env, "imggen_transfer_mapped", "xcom", "1, 2, 3, run_id")
    }
    assert xcoms[("store", -1, "_link_ImagesViewLink")].endswith(
        f"/dags/imggen_transfer_mapped/runs/{quote(run_id, safe='')}/tasks/store/plugin/imggen-images"
    )
    # The rendered `generation` field (stored, shown in the UI) carries no URL signature.
    single = xcoms[("generate_one", -1, "return_value")]
    signatures = [
        signed_url(image).split("Signature=")[1] for g in [*generations, single] for image in g["images"]
    ]
    signatures += [unquote(signature) for signature in signatures]
    rendered = dag_run_rows(
        airflow_env, "imggen_transfer_mapped", "rendered_task_instance_fields", "task_id, rendered_fields"
    )
    stored_fields = {task_id: str(fields) for task_id, fields in rendered}
    assert single["images"][0]["url"].split("?")[0] in stored_fields["store_one"]
    assert "Signature=***" in stored_fields["store_one"]
    assert not [signature for signature in signatures if signature in " ".join(stored_fields.values())]
    assert API_KEY not in finished.stdout + finished.stderr


# -- operator surface ---------------------------------------------------------------------------------


def test_s3_link(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.execution_time.xcom import XCom

    link = S3ImageLink()
    assert link.name == "S3 object"
    stored = {"bucket": "my-bucket", "key": "images/2026-01-01/0 a.png", "region_name": "eu-west-1"}
    monkeypatch.setattr(XCom, "get_value", classmethod(lambda cls, *, ti_key, key: stored))
    assert link.get_link(make_operator(generation="", s3_key="k"), ti_key=None) == (  # type: ignore[arg-type]
        "https://console.aws.amazon.com/s3/object/my-bucket?region=eu-west-1&prefix=images/2026-01-01/0%20a.png"
    )
    # An S3-compatible store (MinIO, moto...) has no AWS console: no link there.
    local = {**stored, "endpoint_url": "http://127.0.0.1:9000"}
    monkeypatch.setattr(XCom, "get_value", classmethod(lambda cls, *, ti_key, key: local))
    assert link.get_link(make_operator(generation="", s3_key="k"), ti_key=None) == ""  # type: ignore[arg-type]
    regional = {**stored, "endpoint_url": "https://s3.eu-west-1.amazonaws.com"}
    monkeypatch.setattr(XCom, "get_value", classmethod(lambda cls, *, ti_key, key: regional))
    assert link.get_link(make_operator(generation="", s3_key="k"), ti_key=None).startswith(  # type: ignore[arg-type]
        "https://console.aws.amazon.com/s3/object/my-bucket"
    )
    monkeypatch.setattr(XCom, "get_value", classmethod(lambda cls, *, ti_key, key: None))
    assert link.get_link(make_operator(generation="", s3_key="k"), ti_key=None) == ""  # type: ignore[arg-type]


def test_images_view_link() -> None:
    assert [link.name for link in ImageGenerationToS3Operator.operator_extra_links] == ["Images", "S3 object"]
    assert ImagesViewLink.format_link("http://airflow:8080/", "d", "manual__2026+00:00", "t", -1) == (
        "http://airflow:8080/dags/d/runs/manual__2026%2B00%3A00/tasks/t/plugin/imggen-images"
    )
    assert (
        ImagesViewLink.format_link("", "d", "r", "t", 3)
        == "/dags/d/runs/r/tasks/t/mapped/3/plugin/imggen-images"
    )


def test_openlineage_outputs_name_every_object(imggen_conn: EmulatorServer, s3: S3Bucket) -> None:
    operator = make_operator(generation=generate(n=2), s3_bucket=s3.name, s3_key="ol/{index}.png")
    run(operator)
    lineage = operator.get_openlineage_facets_on_complete(None)
    try:
        import airflow.providers.openlineage  # noqa: F401
    except ImportError:
        assert lineage is None  # the openlineage provider is optional
        return
    assert [(output.namespace, output.name) for output in lineage.outputs] == [
        (f"s3://{s3.name}", "ol/0.png"),
        (f"s3://{s3.name}", "ol/1.png"),
    ]


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        pytest.param({"max_concurrency": 0}, "max_concurrency", id="concurrency-0"),
        pytest.param({"max_image_bytes": -1}, "max_image_bytes", id="bytes-negative"),
        pytest.param({"download_retries": 1.5}, "download_retries", id="retries-float"),
        pytest.param({"replace": "yes"}, "replace", id="replace-str"),
        pytest.param({"extra_upload_args": "AES256"}, "extra_upload_args", id="args-str"),
    ],
)
def test_bad_arguments_fail_when_the_dag_is_parsed(kwargs: dict[str, Any], parameter: str) -> None:
    with pytest.raises(ImageGenerationValidationError) as raised:
        make_operator(generation="https://example.invalid/a.png", s3_bucket="b", s3_key="k", **kwargs)
    assert raised.value.parameter == parameter


def test_templated_fields() -> None:
    assert set(ImageGenerationToS3Operator.template_fields) == {
        "generation",
        "s3_bucket",
        "s3_key",
        "aws_conn_id",
        "imggen_conn_id",
        "download_timeout",
    }
    assert "extra_upload_args" not in ImageGenerationToS3Operator.template_fields


@pytest.fixture(autouse=True)
def _no_real_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield
