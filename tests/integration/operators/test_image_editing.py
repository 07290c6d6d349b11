"""
ImageGenerationOperator with input images, per editing family, over real HTTP: the emulator (which reads
the inputs itself, from data URIs or from moto_server's presigned URLs) and moto_server's S3. The output is
proven derived from the inputs: the emulator writes their sha256, in the order received, into its PNG
(``imggen:inputs``), and the XCom records the same digests. Every input limit is refused before anything
reaches the service.
"""

from __future__ import annotations

import os
import ssl
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from airflow_provider_imggen.model_table import KNOWN_MODELS
from airflow_provider_imggen.sealed_urls import unseal
from tests.input_images import inputs_chunk, jpeg, png, sha256
from tests.integration.operators.test_image_generation import make_operator, run
from tests.integration.security.conftest import (  # noqa: F401  (fixtures: an https store on loopback)
    Names,
    Server,
    image,
    names,
    servers,
    test_ca,
    tls,
)
from tests.s3_fixtures import S3Bucket

# One model per family that takes input images, and the endpoint path it must be sent to.
MULTIMODAL = "/api/v1/services/aigc/multimodal-generation/generation"
IMAGE2IMAGE = "/api/v1/services/aigc/image2image/image-synthesis"
FAMILIES = {
    "qwen-image-edit": MULTIMODAL,
    "qwen-image-edit-plus": MULTIMODAL,
    "qwen-image-edit-max": MULTIMODAL,
    "qwen-image-2.0": MULTIMODAL,
    "qwen-image-2.1-pro": MULTIMODAL,
    "wan2.5-i2i-preview": IMAGE2IMAGE,
    "wan2.6-image": MULTIMODAL,
    "wan2.7-image": MULTIMODAL,
    "wan2.7-image-pro": MULTIMODAL,
}


def _output_bytes(xcom: dict[str, Any]) -> list[bytes]:
    outputs = []
    for item in xcom["images"]:
        with urllib.request.urlopen(unseal(item["url_sealed"], label="image"), timeout=30) as answer:
            outputs.append(answer.read())
    return outputs


def _billable(emulator: EmulatorServer) -> list[str]:
    """The paths of the requests that could bill (generations and task submissions)."""
    kinds = {"multimodal", "submit", "image2image", "generate"}
    return [entry["path"] for entry in emulator.requests_log() if entry["kind"] in kinds]


@pytest.fixture
def https_store(  # the security tests' fixtures, imported above
    servers: Callable[..., Server],  # noqa: F811
    tls: ssl.SSLContext,  # noqa: F811
    names: Names,  # noqa: F811
    dashscope_conn: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
) -> Server:
    """An https image store on loopback, allowed by the connection's result-URL policy."""
    from tests.conftest import set_imggen_connection

    names.table["store.imggen.test"] = ["127.0.0.1"]
    server = servers({"/products/label.png": image(HTTPS_INPUT)}, tls=tls)
    import json

    conn = json.loads(os.environ["AIRFLOW_CONN_IMGGEN_DEFAULT"])  # dashscope_conn's: add the store
    set_imggen_connection(
        monkeypatch,
        conn["host"],
        **{
            **conn["extra"],
            "result_hosts": [f"store.imggen.test:{server.port}"],
            "allow_private_result_hosts": True,
        },
    )
    return server


HTTPS_INPUT = png(480, 480, seed=31)


def _inputs(s3: S3Bucket, https_store: Server) -> tuple[list[object], list[str]]:
    """
    Three inputs, one of each source: a large S3 object (sent as a presigned URL the emulator fetches from
    moto_server), a small https image (read under the result-URL policy, sent inline) and a stored image's
    record (what an upstream ImageGenerationToS3Operator pushed).
    """
    large, stored = png(900, 900, noise=True), jpeg(512, 768)
    s3.client.put_object(Bucket=s3.name, Key="in/large.png", Body=large)
    s3.client.put_object(Bucket=s3.name, Key="stored/earlier.jpg", Body=stored)
    record = {  # what ImageGenerationToS3Operator pushed for an image it stored
        "s3_uri": f"s3://{s3.name}/stored/earlier.jpg",
        "bucket": s3.name,
        "key": "stored/earlier.jpg",
        "bytes": len(stored),
        "sha256": sha256(stored),
        "content_type": "image/jpeg",
        "width": 512,
        "height": 768,
        "generation": 0,
        "index": 0,
        "skipped": False,
    }
    https_url = https_store.url("/products/label.png?Expires=1&Signature=store-secret", "store.imggen.test")
    given: list[object] = [f"s3://{s3.name}/in/large.png", https_url, [record]]
    return given, [sha256(large), sha256(HTTPS_INPUT), sha256(stored)]


@pytest.mark.parametrize("model", sorted(FAMILIES))
def test_each_family_edits_inputs_from_s3_https_and_a_transfer(
    dashscope_conn: EmulatorServer, s3: S3Bucket, https_store: Server, model: str
) -> None:
    given, digests = _inputs(s3, https_store)
    xcom = run(make_operator(model=model, prompt="the product on a marble table", images=given))
    assert _billable(dashscope_conn) == [FAMILIES[model]]
    assert [item["sha256"] for item in xcom["input_images"]] == digests
    assert "store-secret" not in str(xcom) and "Signature=***" in xcom["input_images"][1]["uri"]
    outputs = _output_bytes(xcom)
    assert outputs and all(inputs_chunk(output) == digests for output in outputs)


def test_inputs_given_as_a_template_render_from_the_dag_run(
    dashscope_conn: EmulatorServer, s3: S3Bucket
) -> None:
    data = png(512, 512, seed=11)
    s3.client.put_object(Bucket=s3.name, Key="conf/product.png", Body=data)
    operator = make_operator(
        model="qwen-image-edit-plus",
        prompt="the product in snow",
        images="{{ params.product }}",
        params={"product": f"s3://{s3.name}/conf/product.png"},
    )
    xcom = run(operator)
    assert [item["sha256"] for item in xcom["input_images"]] == [sha256(data)]
    assert inputs_chunk(_output_bytes(xcom)[0]) == [sha256(data)]


@pytest.mark.parametrize("model", [*sorted(FAMILIES), "qwen-image-3.0", "wan2.6-t2i", "qwen-image"])
def test_an_input_count_the_model_does_not_take_fails_at_parse_time(model: str) -> None:
    spec = KNOWN_MODELS[model]
    counts = [spec.max_input_images + 1] + ([spec.min_input_images - 1] if spec.min_input_images else [])
    for count in counts:
        given = [f"s3://bucket/in/{i}.png" for i in range(count)]
        with pytest.raises(ImageGenerationValidationError) as raised:
            make_operator(model=model, images=given)
        assert raised.value.parameter == "images"
        assert f"{spec.describe_input_count()}, got {count}" in str(raised.value)
        assert (raised.value.value == given) if given else raised.value.value in ([], None)


@pytest.mark.parametrize("model", sorted(FAMILIES))
def test_an_input_side_out_of_the_families_range_is_refused_before_billing(
    dashscope_conn: EmulatorServer, s3: S3Bucket, model: str
) -> None:
    spec = KNOWN_MODELS[model]
    s3.client.put_object(Bucket=s3.name, Key="narrow.png", Body=png(spec.min_input_side - 1, 600))
    with pytest.raises(ImageGenerationValidationError) as raised:
        run(make_operator(model=model, prompt="restyle", images=[f"s3://{s3.name}/narrow.png"]))
    assert (raised.value.parameter, raised.value.value) == ("images[0]", f"s3://{s3.name}/narrow.png")
    limit = f"each side {spec.min_input_side}-{spec.max_input_side} px"
    assert f"{spec.min_input_side - 1}x600: {model} takes input images with {limit}" in str(raised.value)
    assert dashscope_conn.requests_log() == []


@pytest.mark.parametrize(
    ("model", "body", "expected"),
    [
        (
            "qwen-image-edit",
            png(300, 600),
            r"300x600: qwen-image-edit takes input images with each side 384-3072",
        ),
        ("wan2.5-i2i-preview", png(383, 900), r"each side 384-5000 px"),
        ("wan2.6-image", png(239, 400), r"each side 240-8000 px"),
        ("wan2.7-image", b"BM" + b"\0" * 100, r"not a complete PNG, JPEG or WebP image"),
    ],
)
def test_an_input_the_model_does_not_take_is_refused_before_billing(
    dashscope_conn: EmulatorServer, s3: S3Bucket, model: str, body: bytes, expected: str
) -> None:
    s3.client.put_object(Bucket=s3.name, Key="bad.png", Body=body)
    with pytest.raises(ImageGenerationValidationError, match=expected) as raised:
        run(make_operator(model=model, prompt="restyle", images=[f"s3://{s3.name}/bad.png"]))
    assert (raised.value.parameter, raised.value.value) == ("images[0]", f"s3://{s3.name}/bad.png")
    assert dashscope_conn.requests_log() == []


def test_an_input_over_ten_megabytes_is_refused_before_billing(
    dashscope_conn: EmulatorServer, s3: S3Bucket
) -> None:
    s3.client.put_object(Bucket=s3.name, Key="huge.png", Body=png(16, 16) + b"\0" * (10 * 1024 * 1024))
    with pytest.raises(ImageGenerationValidationError, match=r"at most 10485760 bytes"):
        run(make_operator(model="wan2.6-image", prompt="restyle", images=[f"s3://{s3.name}/huge.png"]))
    assert dashscope_conn.requests_log() == []


def test_input_images_need_dashscope_s_native_api(imggen_conn: EmulatorServer, s3: S3Bucket) -> None:
    s3.client.put_object(Bucket=s3.name, Key="p.png", Body=png())
    with pytest.raises(ImageGenerationValidationError, match="api_style 'dashscope'"):
        run(make_operator(model="qwen-image-edit-plus", prompt="x", images=[f"s3://{s3.name}/p.png"]))
    assert imggen_conn.requests_log() == []


def test_an_edit_chains_generate_store_edit_store(dashscope_conn: EmulatorServer, s3: S3Bucket) -> None:
    """A stored image's XCom as the next edit's input; the edit's objects name their inputs' sha256."""
    from tests.integration.transfers.test_image_generation_to_s3 import make_operator as make_transfer
    from tests.integration.transfers.test_image_generation_to_s3 import run as run_transfer

    first = run(make_operator(model="qwen-image-2.0", prompt="a ceramic mug", size="768*768"))
    stored = run_transfer(make_transfer(generation=first, s3_bucket=s3.name, s3_key="hero/{index}.{ext}"))
    edited = run(make_operator(model="qwen-image-edit-plus", prompt="the mug in snow", images=stored))
    assert [item["sha256"] for item in edited["input_images"]] == [stored[0]["sha256"]]
    assert inputs_chunk(_output_bytes(edited)[0]) == [stored[0]["sha256"]]
    again = run_transfer(make_transfer(generation=edited, s3_bucket=s3.name, s3_key="edits/{index}.{ext}"))
    assert s3.head(again[0]["key"])["Metadata"]["input-sha256"] == stored[0]["sha256"]


def test_lineage_names_each_input_without_its_query() -> None:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_imggen.inputs.references import lineage_dataset, parse_input_images

    images = parse_input_images(
        [
            "s3://bucket/products/mug.png",
            "https://cdn.example.com:8443/a/b.png?Signature=secret",
            ObjectStoragePath("file:///data/logo.png"),
        ]
    )
    assert [lineage_dataset(image) for image in images] == [
        ("s3://bucket", "products/mug.png"),
        ("https://cdn.example.com:8443", "/a/b.png"),
        ("file", "/data/logo.png"),
    ]


def test_a_deferred_edit_resumes_with_its_inputs_known_by_sha256_and_the_ledger_on(
    emulator: EmulatorServer, s3: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trigger's kwargs carry the inputs by sha256 only; the resumed worker needs nothing more."""
    from tests.conftest import set_imggen_connection
    from tests.integration.operators.test_deferrable import defer_and_resume, fast
    from tests.integration.operators.test_image_generation import make_context

    set_imggen_connection(
        monkeypatch,
        emulator.base_url,
        api_style="dashscope",
        ledger=f"s3://aws_default@{s3.name}/imggen-ledger",
    )
    photo = png(900, 900, noise=True)
    s3.client.put_object(Bucket=s3.name, Key="in/photo.png", Body=photo)
    operator = make_operator(
        model="wan2.5-i2i-preview",
        prompt="restyle",
        images=[f"s3://{s3.name}/in/photo.png"],
        deferrable=True,
        **fast(),
    )
    context = make_context(operator)
    operator.render_template_fields(context)  # type: ignore[arg-type]
    xcom = defer_and_resume(operator, context)
    assert [item["sha256"] for item in xcom["input_images"]] == [sha256(photo)]
    assert len(xcom["ledger_fingerprint"]) == 64
    assert inputs_chunk(_output_bytes(xcom)[0]) == [sha256(photo)]


def _retry(operator_kwargs: dict[str, Any], store: Any) -> dict[str, Any]:
    from tests.integration.operators.test_image_generation import make_context

    operator = make_operator(**operator_kwargs)
    context = make_context(operator, task_state_store=store)
    operator.render_template_fields(context)  # type: ignore[arg-type]
    return operator.execute(context)  # type: ignore[arg-type]


def test_a_retry_expects_the_bytes_the_first_try_read(dashscope_conn: EmulatorServer, s3: S3Bucket) -> None:
    """The S3 object replaced between two tries: the retry refuses to send (the first may have paid)."""
    from tests.integration.operators.test_deferrable import TaskStateStore

    s3.client.put_object(Bucket=s3.name, Key="p.png", Body=png(512, 512, seed=1))
    kwargs = {"model": "qwen-image-edit-plus", "prompt": "in snow", "images": [f"s3://{s3.name}/p.png"]}
    store = TaskStateStore()
    first = _retry(kwargs, store)
    assert store.values["imggen_inputs"][0]["sha256"] == first["input_images"][0]["sha256"]
    s3.client.put_object(Bucket=s3.name, Key="p.png", Body=png(512, 512, seed=2))
    dashscope_conn.clear_log()
    with pytest.raises(ImageGenerationValidationError, match="an earlier try of this task"):
        _retry(kwargs, store)
    assert dashscope_conn.requests_log() == []


def test_a_retry_whose_inputs_are_gone_reconnects_to_the_task_it_paid_for(
    dashscope_conn: EmulatorServer, s3: S3Bucket
) -> None:
    """The first try submitted, then died; the input was deleted meanwhile: the retry still delivers."""
    from airflow_provider_imggen.exceptions import ImageGenerationInputError
    from tests.integration.operators.test_deferrable import TaskStateStore, fast

    photo = png(640, 640, seed=5)
    s3.client.put_object(Bucket=s3.name, Key="gone.png", Body=photo)
    kwargs = {
        "model": "wan2.5-i2i-preview",
        "prompt": "restyle",
        "images": [f"s3://{s3.name}/gone.png"],
        "wait_for_completion": False,  # the first try submits and ends: as if it died while waiting
        **fast(),
    }
    store = TaskStateStore()
    submitted = _retry(kwargs, store)
    s3.client.delete_object(Bucket=s3.name, Key="gone.png")
    delivered = _retry({**kwargs, "wait_for_completion": True}, store)
    assert delivered["generation_task_id"] == submitted["generation_task_id"]
    assert [item["sha256"] for item in delivered["input_images"]] == [sha256(photo)]
    assert dashscope_conn.billed_images() == 1
    # Without the first try's record, nothing proves what to send: nothing is sent.
    with pytest.raises(ImageGenerationInputError, match="does not exist"):
        _retry({**kwargs, "wait_for_completion": True}, TaskStateStore())


def test_an_edited_xcoms_input_records_carry_nothing_but_their_fields() -> None:
    from airflow_provider_imggen.records import GenerationRecord

    edited = {
        "model": "qwen-image-edit-plus",
        "input_images": [
            {
                "uri": "https://h/p.png?Signature=s3cret-sig",
                "sha256": "a" * 64,
                "bytes": 10,
                "data": "data:...",
            }
        ],
    }
    (record,) = GenerationRecord.from_dict(edited).to_dict()["input_images"]
    assert record == {
        "uri": "https://h/p.png?Signature=***",
        "sha256": "a" * 64,
        "bytes": 10,
        "content_type": None,
        "width": None,
        "height": None,
    }
    with pytest.raises(ImageGenerationValidationError, match="sha256"):
        GenerationRecord.from_dict({"input_images": [{"uri": "s3://b/k", "sha256": "not-a-digest"}]})


@pytest.mark.parametrize("model", sorted(FAMILIES))
def test_an_input_with_alpha_is_refused_before_billing_where_the_family_refuses_it(
    dashscope_conn: EmulatorServer, s3: S3Bucket, model: str
) -> None:
    from tests.input_images import rgba_png

    s3.client.put_object(Bucket=s3.name, Key="logo.png", Body=rgba_png(512, 512))
    operator = make_operator(model=model, prompt="compose", images=[f"s3://{s3.name}/logo.png"])
    if KNOWN_MODELS[model].input_alpha:
        xcom = run(operator)  # the service takes it: so does the provider
        assert inputs_chunk(_output_bytes(xcom)[0]) == [sha256(rgba_png(512, 512))]
        return
    with pytest.raises(ImageGenerationValidationError, match=f"alpha channel .transparency., which {model}"):
        run(operator)
    assert dashscope_conn.requests_log() == []


IMAGE_GENERATION = "/api/v1/services/aigc/image-generation/generation"


@pytest.mark.parametrize(
    ("model", "images"),
    [("wan2.6-t2i", 0), ("wan2.6-image", 2), ("wan2.7-image", 1), ("wan2.7-image-pro", 0)],
)
def test_the_wan_families_run_as_tasks_on_the_image_generation_surface(
    dashscope_conn: EmulatorServer, s3: S3Bucket, model: str, images: int
) -> None:
    """endpoint="async": the messages body as a task, deferred to the triggerer, read back from its status."""
    from tests.integration.operators.test_deferrable import defer_and_resume, fast
    from tests.integration.operators.test_image_generation import make_context

    given, digests = [], []
    for position in range(images):
        data = png(512, 512, seed=60 + position)
        s3.client.put_object(Bucket=s3.name, Key=f"wan/{position}.png", Body=data)
        given.append(f"s3://{s3.name}/wan/{position}.png")
        digests.append(sha256(data))
    size = "1280*1280" if model == "wan2.6-t2i" else "1024*1024"
    operator = make_operator(
        model=model,
        prompt="a lantern festival",
        images=given,
        n=2,
        size=size,
        endpoint="async",
        deferrable=True,
        **fast(),
    )
    context = make_context(operator)
    operator.render_template_fields(context)  # type: ignore[arg-type]
    xcom = defer_and_resume(operator, context)
    assert _billable(dashscope_conn) == [IMAGE_GENERATION]
    assert xcom["generation_task_id"] and len(xcom["images"]) == 2
    assert [item["sha256"] for item in xcom["input_images"]] == digests
    for output in _output_bytes(xcom):
        assert inputs_chunk(output) == (digests or None)
    assert dashscope_conn.billed_images() == 2


@pytest.mark.parametrize(
    ("boxes", "expected"),
    [
        ([[[10, 10, 100, 100]]], r"one list of \[x1, y1, x2, y2\] boxes per input image \(2\)"),
        ([[[10, 10, 100, 100]], [[0, 0, 700, 100]]], r"input image 1 is 512x512: expected x1 < x2"),
        ([[[10, 10, 5, 100]], []], r"input image 0 is 512x512"),
        ([[[10, 10, 100.5, 100]], []], r"whole pixels"),
    ],
)
def test_a_targeted_edits_boxes_are_checked_against_the_inputs_before_billing(
    dashscope_conn: EmulatorServer, s3: S3Bucket, boxes: object, expected: str
) -> None:
    for position in range(2):
        s3.client.put_object(
            Bucket=s3.name, Key=f"box/{position}.png", Body=png(512, 512, seed=70 + position)
        )
    images = [f"s3://{s3.name}/box/{position}.png" for position in range(2)]
    with pytest.raises(ImageGenerationValidationError, match=expected) as raised:
        run(
            make_operator(
                model="wan2.7-image", prompt="recolour", images=images, extra_body={"bbox_list": boxes}
            )
        )
    assert raised.value.parameter.startswith("extra_body['bbox_list']")
    assert dashscope_conn.requests_log() == []
    # Boxes that fit are sent as given, and the emulator (which checks them its own way) takes them.
    xcom = run(
        make_operator(
            model="wan2.7-image",
            prompt="recolour",
            images=images,
            extra_body={"bbox_list": [[[10, 10, 100, 100]], []]},
        )
    )
    assert len(xcom["images"]) == 1


@pytest.mark.parametrize("fault", ["billed_drop", "billed_500"])
def test_a_lost_edit_submission_is_adopted_by_its_request_id_never_by_its_prompt_alone(
    dashscope_conn: EmulatorServer, s3: S3Bucket, fault: str
) -> None:
    """
    Edits of several products share a prompt: the task list's prompt and image count cannot prove which
    task is this one's. An answer lost with its request id (a 500 naming it) is still proven by that id.
    """
    from airflow_provider_imggen.exceptions import ImageGenerationSubmissionUnknownError
    from tests.integration.operators.test_deferrable import fast

    s3.client.put_object(Bucket=s3.name, Key="lost.png", Body=png(640, 640, seed=80))
    dashscope_conn.set_faults(fail_next=[fault])  # the task is created, its answer lost
    images = [f"s3://{s3.name}/lost.png"]
    operator = make_operator(model="wan2.5-i2i-preview", prompt="restyle", images=images, **fast())
    if fault == "billed_drop":  # no answer at all: only the prompt would match
        with pytest.raises(ImageGenerationSubmissionUnknownError):
            run(operator)
    else:
        assert len(run(operator)["images"]) == 1
    assert len([entry for entry in dashscope_conn.requests_log() if entry["kind"] == "submit"]) == 1


@pytest.mark.parametrize(
    ("given", "expected"), [("s3:/bucket/key.png", "expected s3://bucket/key"), ("S3://bucket/key.png", None)]
)
def test_an_s3_uri_is_read_only_as_written(given: str, expected: str | None) -> None:
    from airflow_provider_imggen.inputs.references import parse_input_images

    if expected is None:
        (image,) = parse_input_images([given])
        assert image.uri == "s3://bucket/key.png"
        return
    with pytest.raises(ImageGenerationValidationError, match=expected):
        parse_input_images([given])


def test_boxes_without_input_images_fail_at_parse_time() -> None:
    with pytest.raises(ImageGenerationValidationError, match="pass images") as raised:
        make_operator(model="wan2.7-image", extra_body={"bbox_list": [[[0, 0, 10, 10]]]})
    assert raised.value.parameter == "extra_body['bbox_list']"


def test_a_remembered_read_matches_the_full_uri_not_its_masked_form() -> None:
    from airflow_provider_imggen.inputs.remembered import INPUTS_KEY, _digest, _earlier
    from airflow_provider_imggen.request import validate_generation_request

    first = "https://store.example.com/get.png?id=1"
    record = {
        "uri": "https://store.example.com/get.png?id=***",
        "uri_sha256": _digest(first),
        "sha256": "a" * 64,
        "bytes": 10,
        "content_type": "image/png",
        "width": 512,
        "height": 512,
    }

    class Store:
        def get(self, key: str) -> object:
            return [record] if key == INPUTS_KEY else None

    def request(url: str) -> Any:
        return validate_generation_request(model="wan2.6-image", prompt="x", images=[url])

    assert _earlier(Store(), request(first)) == [record]
    assert _earlier(Store(), request("https://store.example.com/get.png?id=2")) is None
    record["content_type"] = {"edited": True}
    assert _earlier(Store(), request(first)) is None
