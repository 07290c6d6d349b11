"""
Reading input images on the worker (inputs/resolve.py) from moto_server's S3, a file store and stored-image
records: what is sent for each, and every check that refuses an input before anything is billed.
"""

from __future__ import annotations

import base64
import urllib.request
from pathlib import Path

import pytest

from airflow_provider_imggen.exceptions import ImageGenerationInputError, ImageGenerationValidationError
from airflow_provider_imggen.inputs.resolve import INLINE_MAX_BYTES, resolve_input_images
from airflow_provider_imggen.request import validate_generation_request
from tests.input_images import jpeg, png, sha256
from tests.s3_fixtures import S3Bucket


def _request(images: object, model: str = "qwen-image-edit-plus") -> object:
    return validate_generation_request(model=model, prompt="the same product on a beach", images=images)


def _resolve(images: object, model: str = "qwen-image-edit-plus") -> object:
    return resolve_input_images(_request(images, model), aws_conn_id="aws_default", imggen_conn_id=None)


def test_a_small_s3_image_is_sent_inline_as_the_bytes_checked(s3: S3Bucket) -> None:
    data = png(640, 480)
    s3.client.put_object(Bucket=s3.name, Key="in/product.png", Body=data)
    (image,) = _resolve([f"s3://{s3.name}/in/product.png"]).images
    assert (image.sha256, image.bytes, image.content_type) == (sha256(data), len(data), "image/png")
    assert (image.width, image.height) == (640, 480)
    assert image.wire == "data:image/png;base64," + base64.b64encode(data).decode()
    assert "wire" not in image.record() and image.record()["uri"] == f"s3://{s3.name}/in/product.png"


def test_a_large_s3_image_is_sent_as_a_presigned_url_of_the_same_bytes(s3: S3Bucket) -> None:
    data = png(900, 900, noise=True)
    assert len(data) > INLINE_MAX_BYTES
    s3.client.put_object(Bucket=s3.name, Key="big.png", Body=data)
    (image,) = _resolve([f"s3://{s3.name}/big.png"]).images
    assert image.wire is not None and image.wire.startswith(s3.endpoint_url)
    assert "Signature" in image.wire  # a credential: never recorded
    assert image.wire not in str(image.record()) and image.wire not in repr(image)
    with urllib.request.urlopen(image.wire, timeout=10) as answer:  # what the service will fetch
        assert sha256(answer.read()) == image.sha256 == sha256(data)


def test_inputs_keep_their_order_and_formats(s3: S3Bucket, tmp_path: Path) -> None:
    first, second = jpeg(800, 600), png(400, 400, seed=7)
    s3.client.put_object(Bucket=s3.name, Key="a.jpg", Body=first)
    local = tmp_path / "logo.png"
    local.write_bytes(second)
    from airflow.sdk import ObjectStoragePath

    images = _resolve([f"s3://{s3.name}/a.jpg", ObjectStoragePath(f"file://{local}")]).images
    assert [image.sha256 for image in images] == [sha256(first), sha256(second)]
    assert [image.content_type for image in images] == ["image/jpeg", "image/png"]
    assert images[1].wire is not None and images[1].wire.startswith("data:image/png;base64,")


def test_a_stored_images_record_must_still_match_its_sha256(s3: S3Bucket) -> None:
    data = png()
    s3.client.put_object(Bucket=s3.name, Key="stored.png", Body=data)
    record = {"bucket": s3.name, "key": "stored.png", "sha256": sha256(data), "bytes": len(data)}
    (image,) = _resolve([record]).images
    assert image.sha256 == sha256(data)
    edited = {**record, "sha256": sha256(b"something else")}
    with pytest.raises(ImageGenerationValidationError, match="no longer match the sha256") as raised:
        _resolve([edited])
    assert raised.value.parameter == "images[0]"


@pytest.mark.parametrize(
    ("body", "model", "expected"),
    [
        (
            png(100, 100),
            "qwen-image-edit-plus",
            r"100x100: qwen-image-edit-plus takes input images with each ",
        ),
        (png(4000, 400), "qwen-image-edit", r"each side 384-3072 px"),
        (b"GIF89a" + b"\0" * 64, "qwen-image-edit", r"not a complete PNG, JPEG or WebP image"),
        (png()[:-20], "wan2.6-image", r"not a complete PNG, JPEG or WebP image: truncated"),
    ],
)
def test_an_input_the_model_does_not_take_is_refused_naming_it(
    s3: S3Bucket, body: bytes, model: str, expected: str
) -> None:
    s3.client.put_object(Bucket=s3.name, Key="x.png", Body=body)
    with pytest.raises(ImageGenerationValidationError, match=expected) as raised:
        _resolve([f"s3://{s3.name}/x.png"], model)
    assert raised.value.parameter == "images[0]" and raised.value.value == f"s3://{s3.name}/x.png"


def test_an_input_over_the_models_bytes_is_refused_without_reading_it(s3: S3Bucket) -> None:
    s3.client.put_object(Bucket=s3.name, Key="huge.png", Body=b"\x89PNG" + b"\0" * (10 * 1024 * 1024))
    with pytest.raises(ImageGenerationValidationError, match=r"at most 10485760 bytes"):
        _resolve([f"s3://{s3.name}/huge.png"])


def test_a_missing_input_is_an_error_airflow_may_retry(s3: S3Bucket) -> None:
    with pytest.raises(ImageGenerationInputError, match="does not exist") as raised:
        _resolve([f"s3://{s3.name}/nowhere.png"])
    assert not raised.value.__class__.__name__.endswith("ValidationError")


def test_a_large_input_from_a_store_the_service_cannot_reach_is_refused(tmp_path: Path) -> None:
    from airflow.sdk import ObjectStoragePath

    local = tmp_path / "big.png"
    local.write_bytes(png(900, 900, noise=True))
    with pytest.raises(ImageGenerationValidationError, match="must be in S3 or behind an https URL"):
        _resolve([ObjectStoragePath(f"file://{local}")])


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (
            "file:///etc/passwd",
            "other stores: an ObjectStoragePath",
        ),  # a DAG run's conf cannot read the worker
        ("s3://aws_other@bucket/key.png", r"ObjectStoragePath\('s3://conn_id@bucket/key'\)"),
        ("s4://bucket/key.png", "expected an s3:// URI or an https URL"),
        ("data:image/png;base64,AAAA", "do not belong in task arguments"),
        ("s3://bucket", "expected s3://bucket/key"),
    ],
)
def test_a_reference_no_input_can_come_from_fails_when_parsed(given: str, expected: str) -> None:
    with pytest.raises(ImageGenerationValidationError, match=expected) as raised:
        _request([given])
    assert raised.value.parameter == "images[0]"


def test_an_s3_key_is_read_as_written(s3: S3Bucket) -> None:
    data = png(512, 512, seed=9)
    s3.client.put_object(Bucket=s3.name, Key="a#1?v=2.png", Body=data)
    s3.client.put_object(Bucket=s3.name, Key="a", Body=png(512, 512, seed=10))
    (image,) = _resolve([f"s3://{s3.name}/a#1?v=2.png"]).images
    assert image.sha256 == sha256(data)


def test_a_mapped_transfers_lazy_output_is_a_list_of_inputs(s3: S3Bucket) -> None:
    data = png(512, 512, seed=12)
    s3.client.put_object(Bucket=s3.name, Key="k.png", Body=data)
    record = {"bucket": s3.name, "key": "k.png", "sha256": sha256(data)}

    class LazySequence:  # what Airflow hands a task for a mapped task's output: iterable, not a list
        def __iter__(self):  # type: ignore[no-untyped-def]
            return iter([[record], [record]])

    assert [image.sha256 for image in _resolve(LazySequence()).images] == [sha256(data)] * 2


def test_credentials_in_a_store_uri_are_never_shown() -> None:
    from airflow_provider_imggen.inputs.references import InputImage, shown_uri

    assert shown_uri("sftp://user:secret@host/x.png") == "sftp://host/x.png"
    image = InputImage(uri="sftp://user:secret@host/x.png")
    assert "secret" not in repr(image) and "secret" not in str(image.record())
