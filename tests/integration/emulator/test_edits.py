"""
The emulator's image editing over real HTTP: input images as data URIs and as URLs it downloads itself
(from a loopback HTTP server of the test and from moto_server presigned URLs), per family (qwen-image-edit,
the qwen-image 2.x family, wan2.5-i2i-preview's task API, wan2.6-image, wan2.7-image, the image-generation
task endpoint); the output derived from the inputs (the PNG's ``imggen:inputs`` chunk lists their sha256s in
order); every input limit (count, format, bytes, side, alpha, download) answered 400 InvalidParameter and not
billed; the endpoints refusing each other's models; the refused upload policy; text to image unchanged.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
import requests
from PIL import Image

from airflow_provider_imggen.emulator import EmulatorServer, render_png
from tests.conftest import API_KEY
from tests.s3_fixtures import MotoServer

KEY = API_KEY
AUTH = {"Authorization": f"Bearer {KEY}"}
ASYNC = {**AUTH, "X-DashScope-Async": "enable"}
SYNC_PATH = "/api/v1/services/aigc/multimodal-generation/generation"
I2I_PATH = "/api/v1/services/aigc/image2image/image-synthesis"
GENERATION_PATH = "/api/v1/services/aigc/image-generation/generation"
T2I_PATH = "/api/v1/services/aigc/text2image/image-synthesis"
MAX_BYTES = 10 * 1024 * 1024
CHUNK = "imggen:inputs"


# Inputs -----------------------------------------------------------------------------------------------------
def image_bytes(
    width: int, height: int, color: tuple[int, ...] = (200, 40, 40), fmt: str = "PNG", mode: str = "RGB"
) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), color).save(buffer, format=fmt)
    return buffer.getvalue()


RED = image_bytes(800, 600)
GREEN = image_bytes(1200, 600, (30, 190, 60), fmt="JPEG")
BLUE = image_bytes(640, 960, (40, 60, 210), fmt="WEBP")


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Files(BaseHTTPRequestHandler):
    """The test's files: path -> (status, headers, body); ``/slow`` sleeps, ``/stream`` has no length."""

    files: ClassVar[dict[str, tuple[int, dict[str, str], bytes]]] = {}

    def do_GET(self) -> None:
        if self.path.startswith("/slow"):
            time.sleep(1.5)
        status, headers, body = self.files.get(self.path, (404, {}, b"not found"))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if not self.path.startswith("/stream"):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # The emulator may stop reading: what a size limit does.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class FileServer:
    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, path: str, body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> str:
        _Files.files[path] = (status, {"Content-Type": "image/png", **(headers or {})}, body)
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"


@pytest.fixture(scope="module")
def files() -> Iterator[FileServer]:
    server = FileServer()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def emu(emulator: EmulatorServer) -> EmulatorServer:
    """The session's emulator (tests/conftest.py), reset, quotas off."""
    return emulator


# Requests ---------------------------------------------------------------------------------------------------
def messages(images: list[str], prompt: str | None = "make the sky purple") -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"image": image} for image in images]
    if prompt is not None:
        content.append({"text": prompt})
    return {"messages": [{"role": "user", "content": content}]}


def sync(emu: EmulatorServer, model: str, images: list[str], **params: Any) -> requests.Response:
    body = {"model": model, "input": messages(images), "parameters": params}
    return requests.post(f"{emu.base_url}{SYNC_PATH}", json=body, headers=AUTH, timeout=60)


def i2i(
    emu: EmulatorServer, images: object, model: str = "wan2.5-i2i-preview", **params: Any
) -> requests.Response:
    body = {"model": model, "input": {"prompt": "a watercolour", "images": images}, "parameters": params}
    return requests.post(f"{emu.base_url}{I2I_PATH}", json=body, headers=ASYNC, timeout=60)


def generation(emu: EmulatorServer, model: str, images: list[str], **params: Any) -> requests.Response:
    body = {"model": model, "input": messages(images), "parameters": params}
    return requests.post(f"{emu.base_url}{GENERATION_PATH}", json=body, headers=ASYNC, timeout=60)


def sync_urls(answer: requests.Response) -> list[str]:
    assert answer.status_code == 200, answer.text
    content = answer.json()["output"]["choices"][0]["message"]["content"]
    return [item["image"] for item in content if "image" in item]


def task(emu: EmulatorServer, submitted: requests.Response) -> dict[str, Any]:
    assert submitted.status_code == 200, submitted.text
    assert submitted.json()["output"]["task_status"] == "PENDING"
    task_id = submitted.json()["output"]["task_id"]
    body: dict[str, Any] = requests.get(
        f"{emu.base_url}/api/v1/tasks/{task_id}", headers=AUTH, timeout=30
    ).json()
    return body


def download(url: str) -> Image.Image:
    answer = requests.get(url, timeout=60)
    assert answer.status_code == 200
    image = Image.open(io.BytesIO(answer.content))
    image.load()
    return image


def inputs_chunk(url: str) -> list[str] | None:
    text = download(url).info.get(CHUNK)
    return None if text is None else list(json.loads(text))


def billed(emu: EmulatorServer) -> int:
    """Through the admin endpoint, as a human would look."""
    body = requests.get(f"{emu.base_url}/_emulator/billing", timeout=30).json()
    return int(body["billed_images"])


def assert_refused(emu: EmulatorServer, answer: requests.Response, *words: str) -> None:
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["code"] == "InvalidParameter" and body["request_id"], body
    for word in words:
        assert word in body["message"], body["message"]
    assert billed(emu) == 0
    assert emu.tasks() == []
    assert [entry["outcome"] for entry in emu.requests_log()][-1] == "rejected"


# Each family, data URIs and URLs ----------------------------------------------------------------------------
SYNC_EDITORS = [
    ("qwen-image-edit", 1),
    ("qwen-image-edit-plus", 2),
    ("qwen-image-edit-max", 2),
    ("qwen-image-2.0", 2),
    ("qwen-image-2.0-pro", 1),
    ("qwen-image-2.1-pro", 1),
    ("wan2.6-image", 2),
    ("wan2.7-image", 2),
    ("wan2.7-image-pro", 1),
]


@pytest.mark.parametrize(("model", "n"), SYNC_EDITORS)
def test_sync_edit_with_data_uris(emu: EmulatorServer, model: str, n: int) -> None:
    inputs = [RED, GREEN, BLUE]
    mimes = ["image/png", "image/jpeg", "image/webp"]
    urls = sync_urls(sync(emu, model, [data_uri(d, m) for d, m in zip(inputs, mimes, strict=True)], n=n))
    assert len(urls) == n
    assert all(inputs_chunk(url) == [sha(d) for d in inputs] for url in urls)
    assert billed(emu) == n


@pytest.mark.parametrize(("model", "n"), SYNC_EDITORS)
def test_sync_edit_with_urls(emu: EmulatorServer, files: FileServer, model: str, n: int) -> None:
    first = files.serve(f"/{model}/blue.webp", BLUE, headers={"Content-Type": "image/webp"})
    second = files.serve(f"/{model}/red.png", RED)
    urls = sync_urls(sync(emu, model, [first, second], n=n))
    assert inputs_chunk(urls[0]) == [sha(BLUE), sha(RED)]
    assert billed(emu) == n


def test_same_bytes_by_url_or_data_uri_make_the_same_image(emu: EmulatorServer, files: FileServer) -> None:
    by_uri = sync_urls(sync(emu, "qwen-image-edit", [data_uri(RED)], seed=7))[0]
    by_url = sync_urls(sync(emu, "qwen-image-edit", [files.serve("/same.png", RED)], seed=7))[0]
    assert by_uri.split("?")[0] == by_url.split("?")[0]
    other = sync_urls(sync(emu, "qwen-image-edit", [data_uri(image_bytes(800, 600, (1, 2, 3)))], seed=7))[0]
    assert other.split("?")[0] != by_uri.split("?")[0]
    reordered = sync_urls(sync(emu, "qwen-image-edit-plus", [data_uri(RED), data_uri(BLUE)], seed=7))[0]
    swapped = sync_urls(sync(emu, "qwen-image-edit-plus", [data_uri(BLUE), data_uri(RED)], seed=7))[0]
    assert inputs_chunk(reordered) == [sha(RED), sha(BLUE)] and inputs_chunk(swapped) == [sha(BLUE), sha(RED)]
    assert download(reordered).tobytes() != download(swapped).tobytes()


def test_inputs_from_moto_presigned_urls(emu: EmulatorServer, moto_server: MotoServer) -> None:
    client = moto_server.client()
    bucket = f"edits-{int(time.time() * 1000)}"
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="in/red.png", Body=RED)
    client.put_object(Bucket=bucket, Key="in/green.jpg", Body=GREEN)
    urls = [
        client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=600)
        for key in ("in/red.png", "in/green.jpg")
    ]
    out = sync_urls(sync(emu, "wan2.6-image", urls, n=1))
    assert inputs_chunk(out[0]) == [sha(RED), sha(GREEN)]


def test_an_emulator_result_can_be_edited_again(emu: EmulatorServer) -> None:
    first = sync_urls(sync(emu, "qwen-image-edit", [data_uri(RED)]))[0]
    again = sync_urls(sync(emu, "qwen-image-edit", [first]))[0]
    assert inputs_chunk(again) == [sha(requests.get(first, timeout=30).content)]


def test_a_redirect_is_followed(emu: EmulatorServer, files: FileServer) -> None:
    target = files.serve("/target.png", RED)
    hop = files.serve("/hop", b"", status=302, headers={"Location": target})
    assert inputs_chunk(sync_urls(sync(emu, "qwen-image-edit", [hop]))[0]) == [sha(RED)]


# The task endpoints ----------------------------------------------------------------------------------------
def test_image2image_task_end_to_end(emu: EmulatorServer, files: FileServer) -> None:
    submitted = i2i(emu, [files.serve("/i2i/red.png", RED), data_uri(GREEN, "image/jpeg")])
    body = task(emu, submitted)
    output = body["output"]
    assert output["task_status"] == "SUCCEEDED"
    assert len(output["results"]) == 4 and body["usage"] == {"image_count": 4}  # n defaults to 4
    assert output["task_metrics"] == {"TOTAL": 4, "SUCCEEDED": 4, "FAILED": 0}
    for result in output["results"]:
        assert inputs_chunk(result["url"]) == [sha(RED), sha(GREEN)]
    # The default size: about 1280*1280 pixels at the last input's 2:1.
    width, height = download(output["results"][0]["url"]).size
    assert abs(width / height - 2) < 0.05 and abs(width * height - 1280 * 1280) < 0.05 * 1280 * 1280
    assert billed(emu) == 4
    listed = requests.get(f"{emu.base_url}/api/v1/tasks", headers=AUTH, timeout=30).json()["data"]
    assert listed[0]["user_api_unique_key"].startswith("apikey:v1:aigc:image2image:image-synthesis:")


def test_image2image_size_and_n(emu: EmulatorServer) -> None:
    body = task(emu, i2i(emu, [data_uri(RED)], n=1, size="1024*1024"))
    assert download(body["output"]["results"][0]["url"]).size == (1024, 1024)
    emu.set_faults(invalid_native_params="reject")
    for params in ({"n": 5}, {"size": "1440*1440"}, {"size": "2100*500"}, {"size": "700*700"}):
        assert i2i(emu, [data_uri(RED)], **params).status_code == 400, params
    emu.set_faults(invalid_native_params="fail_task")
    failed = task(emu, i2i(emu, [data_uri(RED)], n=5))["output"]
    assert failed["task_status"] == "FAILED" and failed["code"] == "InvalidParameter"


def test_image2image_needs_the_async_header(emu: EmulatorServer) -> None:
    body = {"model": "wan2.5-i2i-preview", "input": {"prompt": "p", "images": [data_uri(RED)]}}
    answer = requests.post(f"{emu.base_url}{I2I_PATH}", json=body, headers=AUTH, timeout=30)
    assert answer.status_code == 403 and answer.json()["code"] == "AccessDenied"
    assert billed(emu) == 0 and emu.tasks() == []


@pytest.mark.parametrize(("model", "images"), [("wan2.6-t2i", 0), ("wan2.6-image", 2), ("wan2.7-image", 1)])
def test_image_generation_task_answers_in_the_messages_shape(
    emu: EmulatorServer, model: str, images: int
) -> None:
    inputs = [RED, GREEN][:images]
    body = task(emu, generation(emu, model, [data_uri(d) for d in inputs], n=2))
    output = body["output"]
    assert output["task_status"] == "SUCCEEDED" and output["finished"] is True
    assert "task_metrics" not in output
    urls = [choice["message"]["content"][0]["image"] for choice in output["choices"]]
    assert len(urls) == 2 and body["usage"]["image_count"] == 2
    width, height = download(urls[0]).size
    assert body["usage"]["size"] == f"{width}*{height}"
    assert inputs_chunk(urls[0]) == ([sha(d) for d in inputs] or None)
    assert billed(emu) == 2


def test_wan26_t2i_sync_and_default_n_on_the_task_endpoint(emu: EmulatorServer) -> None:
    answer = sync(emu, "wan2.6-t2i", [])
    assert answer.status_code == 200
    assert answer.json()["usage"]["size"] == "1280*1280" and answer.json()["output"]["finished"] is True
    body = task(emu, generation(emu, "wan2.6-t2i", []))
    assert len(body["output"]["choices"]) == 4
    assert sync(emu, "wan2.6-t2i", [], size="1024*1024").status_code == 400  # under 1280*1280 pixels


# Endpoints refusing each other's models --------------------------------------------------------------------
def test_endpoints_refuse_each_others_models(emu: EmulatorServer) -> None:
    t2i = requests.post(
        f"{emu.base_url}{T2I_PATH}",
        json={"model": "wan2.5-i2i-preview", "input": {"prompt": "p"}},
        headers=ASYNC,
        timeout=30,
    )
    assert_refused(emu, t2i, "image2image/image-synthesis")
    assert_refused(emu, i2i(emu, [data_uri(RED)], model="wan2.2-t2i-flash"), "text2image/image-synthesis")
    assert_refused(emu, i2i(emu, [data_uri(RED)], model="qwen-image-edit"), "multimodal-generation")
    assert_refused(emu, sync(emu, "wan2.5-i2i-preview", [data_uri(RED)]), "image2image/image-synthesis")
    assert_refused(emu, generation(emu, "wan2.2-t2i-flash", []), "text2image/image-synthesis")
    denied = generation(emu, "qwen-image-edit", [data_uri(RED)])
    assert denied.status_code == 403 and denied.json()["code"] == "AccessDenied"
    missing = i2i(emu, [data_uri(RED)], model="wan9-i2i")
    assert missing.status_code == 404 and missing.json()["code"] == "ModelNotFound"
    gateway = requests.post(
        f"{emu.base_url}/v1/images/generations",
        json={"model": "qwen-image-edit", "prompt": "p"},
        headers=AUTH,
        timeout=30,
    )
    assert gateway.status_code == 400 and "input images" in gateway.json()["error"]["message"]
    assert billed(emu) == 0


def test_the_upload_policy_is_refused(emu: EmulatorServer) -> None:
    url = f"{emu.base_url}/api/v1/uploads?action=getPolicy&model=qwen-image-edit"
    answer = requests.get(url, headers=AUTH, timeout=30)
    assert answer.status_code == 403
    body = answer.json()
    assert body["code"] == "AccessDenied" and "pass URLs or data URIs" in body["message"]
    assert requests.get(url, timeout=30).status_code == 401
    assert [entry["kind"] for entry in emu.requests_log()] == ["uploads", "uploads"]
    assert_refused(emu, sync(emu, "qwen-image-edit", ["oss://dashscope-instant/abc/red.png"]), "uploads")


# Limits: 400 InvalidParameter, nothing billed --------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "count"),
    [
        ("qwen-image-edit", 0),
        ("qwen-image-edit", 4),
        ("qwen-image-edit-plus", 4),
        ("qwen-image-2.0", 4),
        ("qwen-image-2.1-pro", 11),
        ("wan2.6-image", 0),
        ("wan2.6-image", 5),
        ("wan2.7-image", 10),
        ("qwen-image-3.0", 1),
        ("qwen-image-3.0-pro", 1),
        ("z-image-turbo", 1),
        ("qwen-image", 1),
        ("wan2.6-t2i", 1),
    ],
)
def test_image_count_limits(emu: EmulatorServer, model: str, count: int) -> None:
    assert_refused(emu, sync(emu, model, [data_uri(RED)] * count), "input images")


@pytest.mark.parametrize("count", [0, 4])
def test_image2image_count_limits(emu: EmulatorServer, count: int) -> None:
    assert_refused(emu, i2i(emu, [data_uri(RED)] * count), "input images")


def test_the_limits_allow_their_bounds(emu: EmulatorServer) -> None:
    assert sync(emu, "qwen-image-2.1-pro", [data_uri(RED)] * 10).status_code == 200
    assert sync(emu, "wan2.7-image", [data_uri(RED)] * 9).status_code == 200
    assert sync(emu, "wan2.6-image", [data_uri(RED)] * 4).status_code == 200
    assert sync(emu, "wan2.6-image", [], enable_interleave=True).status_code == 200
    assert sync(emu, "wan2.6-image", [data_uri(RED)] * 2, enable_interleave=True).status_code == 400
    assert sync(emu, "qwen-image-edit", [data_uri(image_bytes(384, 3072))]).status_code == 200
    assert sync(emu, "wan2.6-image", [data_uri(image_bytes(240, 240))]).status_code == 200
    exactly = RED + b"\0" * (MAX_BYTES - len(RED))  # trailing bytes after IEND: still a PNG
    assert sync(emu, "qwen-image-edit", [data_uri(exactly)]).status_code == 200


@pytest.mark.parametrize(
    ("model", "data", "words"),
    [
        ("wan2.6-image", image_bytes(600, 600, fmt="GIF"), ("format", "GIF")),
        ("wan2.5-i2i-preview", image_bytes(600, 600, fmt="TIFF"), ("format", "TIFF")),
        ("wan2.7-image", image_bytes(600, 600, fmt="TIFF"), ("format",)),
        ("qwen-image-edit", b"this is not an image at all", ("format", "not an image")),
        ("qwen-image-edit", RED[:200], ("cannot be decoded",)),
        ("qwen-image-edit", image_bytes(383, 600), ("resolution", "383x600", "384-3072")),
        ("qwen-image-edit-plus", image_bytes(3073, 400), ("resolution",)),
        ("wan2.5-i2i-preview", image_bytes(5001, 400), ("resolution", "384-5000")),
        ("wan2.5-i2i-preview", image_bytes(383, 400), ("resolution",)),
        ("wan2.6-image", image_bytes(239, 400), ("resolution", "240-8000")),
        ("wan2.7-image", image_bytes(8001, 240), ("resolution",)),
        ("wan2.6-image", image_bytes(600, 600, (1, 2, 3, 4), mode="RGBA"), ("alpha",)),
        ("wan2.5-i2i-preview", image_bytes(600, 600, (1, 2, 3, 4), mode="RGBA"), ("alpha",)),
        ("wan2.7-image", image_bytes(600, 600, (1, 2, 3, 4), mode="RGBA"), ("alpha",)),
        ("qwen-image-edit", RED + b"\0" * (MAX_BYTES + 1 - len(RED)), ("too large",)),
        ("wan2.7-image", RED + b"\0" * (MAX_BYTES + 1 - len(RED)), ("too large",)),
    ],
)
def test_input_limits(
    emu: EmulatorServer, files: FileServer, model: str, data: bytes, words: tuple[str, ...]
) -> None:
    if model == "wan2.5-i2i-preview":
        assert_refused(emu, i2i(emu, [data_uri(RED), data_uri(data)]), *words, "input.images[1]")
        return
    answer = sync(emu, model, [data_uri(RED), data_uri(data)])
    assert_refused(emu, answer, *words, "input.messages[0].content[1].image")
    emu.reset()
    assert_refused(emu, sync(emu, model, [files.serve(f"/limits/{sha(data)}", data)]), *words)


def test_what_qwen_accepts_and_wan_refuses(emu: EmulatorServer) -> None:
    """GIF, TIFF and an alpha channel: qwen-image-edit takes them (the Wan models refuse them, above)."""
    for data in (
        image_bytes(600, 600, fmt="GIF"),
        image_bytes(600, 600, fmt="TIFF"),
        image_bytes(600, 600, (1, 2, 3, 4), mode="RGBA"),
    ):
        assert sync(emu, "qwen-image-edit", [data_uri(data)]).status_code == 200


def test_downloads_that_fail(emu: EmulatorServer, files: FileServer) -> None:
    too_big = RED + b"\0" * (MAX_BYTES + 1 - len(RED))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    cases: list[tuple[str, tuple[str, ...]]] = [
        (files.url("/nowhere.png"), ("could not be downloaded", "HTTP 404")),
        (f"http://127.0.0.1:{closed_port}/red.png", ("could not be downloaded",)),
        (
            files.serve("/loop", b"", status=302, headers={"Location": files.url("/loop")}),
            ("could not be downloaded",),
        ),
        (files.serve("/big.png", too_big), ("too large",)),
        (files.serve("/stream/big.png", too_big), ("too large",)),
        ("ftp://127.0.0.1/red.png", ("not valid",)),
        ("red.png", ("not valid",)),
        ("data:text/plain;base64,aGVsbG8=", ("MIME",)),
        ("data:image/png;base64,%%%not-base64%%%", ("base64",)),
        ("data:image/png,rawbytes", ("data URI",)),
    ]
    for url, words in cases:
        emu.reset()
        assert_refused(emu, sync(emu, "qwen-image-edit", [url]), *words)
    emu.reset()
    answer = requests.post(
        f"{emu.base_url}{SYNC_PATH}",
        json={
            "model": "qwen-image-edit",
            "input": {"messages": [{"role": "user", "content": [{"image": 12}, {"text": "p"}]}]},
        },
        headers=AUTH,
        timeout=30,
    )
    assert_refused(emu, answer, "expected an http(s) URL or a data URI")


def test_a_download_that_times_out(emu: EmulatorServer, files: FileServer) -> None:
    emu.set_faults(input_download_timeout_ms=300)
    started = time.monotonic()
    answer = sync(emu, "qwen-image-edit", [files.serve("/slow/red.png", RED)])
    assert_refused(emu, answer, "Download the media resource timed out during the data inspection process.")
    assert time.monotonic() - started < 1.4


# The message and the parameters ----------------------------------------------------------------------------
def test_the_message_rules(emu: EmulatorServer) -> None:
    def post(content: list[dict[str, Any]], count: int = 1) -> requests.Response:
        body = {
            "model": "qwen-image-edit",
            "input": {"messages": [{"role": "user", "content": content}] * count},
        }
        return requests.post(f"{emu.base_url}{SYNC_PATH}", json=body, headers=AUTH, timeout=30)

    image = {"image": data_uri(RED)}
    assert_refused(emu, post([image, {"text": "a"}, {"text": "b"}]), "exactly one text item")
    assert_refused(emu, post([image]), "prompt")
    assert_refused(emu, post([image, {"text": "a"}], count=2), "exactly one message")
    assert_refused(emu, post([image, {"text": "a", "image": data_uri(RED)}]), "content[1]")
    assert post([{"text": "text first"}, image]).status_code == 200


def test_qwen_image_edit_parameters(emu: EmulatorServer) -> None:
    assert_refused(emu, sync(emu, "qwen-image-edit", [data_uri(RED)], size="1024*1024"), "size")
    assert_refused(emu, sync(emu, "qwen-image-edit", [data_uri(RED)], n=2), "n=1 only")
    assert sync(emu, "qwen-image-edit-plus", [data_uri(RED)], n=6).status_code == 200
    emu.reset()
    for params in ({"n": 7}, {"size": "511*1024"}, {"size": "2049*1024"}):
        assert_refused(emu, sync(emu, "qwen-image-edit-plus", [data_uri(RED)], **params))
    answer = sync(emu, "qwen-image-edit-plus", [data_uri(RED)], size="512*2048")
    assert answer.status_code == 200 and answer.json()["usage"]["width"] == 512


def test_default_sizes_follow_the_last_input(emu: EmulatorServer) -> None:
    usage = sync(emu, "qwen-image-edit", [data_uri(RED), data_uri(GREEN)]).json()["usage"]
    assert abs(usage["width"] / usage["height"] - 2) < 0.05  # GREEN is 1200x600
    assert abs(usage["width"] * usage["height"] - 1024 * 1024) < 0.05 * 1024 * 1024
    usage = sync(emu, "qwen-image-2.0", [data_uri(GREEN), data_uri(RED)]).json()["usage"]
    assert (usage["width"], usage["height"]) == (800, 600)
    assert sync(emu, "qwen-image-2.0", []).json()["usage"]["width"] == 2048  # text to image, as before
    usage = sync(emu, "wan2.6-image", [data_uri(BLUE)]).json()["usage"]
    assert usage["size"] == f"{usage['width']}*{usage['height']}" and usage["width"] < usage["height"]
    assert abs(usage["width"] * usage["height"] - 1024 * 1024) < 0.05 * 1024 * 1024  # 1K
    usage = sync(emu, "wan2.6-image", [data_uri(RED)], size="2K").json()["usage"]
    assert abs(usage["width"] / usage["height"] - 4 / 3) < 0.05
    assert sync(emu, "wan2.7-image", []).json()["usage"]["size"] == "2048*2048"


def test_wan27_parameters(emu: EmulatorServer) -> None:
    two = [data_uri(RED), data_uri(BLUE)]  # 800x600, 640x960
    assert sync(emu, "wan2.7-image", two, bbox_list=[[[0, 0, 800, 600]], []]).status_code == 200
    emu.reset()
    for boxes in (
        [[[0, 0, 10, 10]]],  # one entry for two images
        [[[0, 0, 801, 600]], []],  # outside image 1
        [[], [[10, 10, 5, 20]]],  # x1 > x2
        [[[0, 0, 10]], []],
        [[[0, 0, 10.5, 10]], []],
    ):
        assert_refused(emu, sync(emu, "wan2.7-image", two, bbox_list=boxes), "bbox_list")
    palette = [{"hex": "#C2D1E6", "ratio": "25.00%"}] * 3
    assert sync(emu, "wan2.7-image", [], color_palette=palette).status_code == 200
    emu.reset()
    assert_refused(emu, sync(emu, "wan2.7-image", [], color_palette=palette[:2]), "color_palette")
    emu.reset()
    assert sync(emu, "wan2.7-image-pro", [], size="4K").json()["usage"]["size"] == "4096*4096"
    emu.reset()
    assert_refused(emu, sync(emu, "wan2.7-image-pro", [data_uri(RED)], size="4K"), "4K")
    assert_refused(emu, sync(emu, "wan2.7-image", [], size="4K"), "size")
    assert_refused(emu, sync(emu, "wan2.7-image", [], n=5), "n=")
    emu.reset()
    answer = sync(emu, "wan2.7-image", [data_uri(RED)], enable_sequential=True)
    assert len(sync_urls(answer)) == 12 and billed(emu) == 12  # sequential output defaults to 12
    emu.reset()
    assert_refused(emu, sync(emu, "wan2.7-image", [], enable_sequential=True, n=13), "n=")


# Text to image is unchanged --------------------------------------------------------------------------------
def test_text_to_image_output_is_unchanged(emu: EmulatorServer) -> None:
    url = sync_urls(sync(emu, "qwen-image-2.0", [], size="512*512", seed=3))[0]
    png = requests.get(url, timeout=30).content
    assert png == render_png("qwen-image-2.0", "make the sky purple", None, 3, 512, 512)
    assert CHUNK not in Image.open(io.BytesIO(png)).info
