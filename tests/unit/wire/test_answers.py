"""Decoding what the APIs answer, trusting none of it (pure functions, no HTTP)."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import pytest

from airflow_provider_imggen.exceptions import (
    ImageGenerationMalformedResponseError,
    ImageGenerationRejectedError,
)
from airflow_provider_imggen.request import GenerationRequest, validate_generation_request
from airflow_provider_imggen.results import EMPTY_RESULT, MALFORMED_ITEM, FailedImage
from airflow_provider_imggen.retry_policy import Failure, TransientAPIError
from airflow_provider_imggen.wire.errors import decode_response
from airflow_provider_imggen.wire.gateway import parse_generation_result
from airflow_provider_imggen.wire.native import (
    parse_submitted_task,
    parse_task_list,
    parse_task_state,
    submission_body,
)

URL = "https://dashscope-result-bj.oss-cn-beijing.aliyuncs.com/a.png?Expires=1900000000&Signature=secret"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()


def request(n: int = 1, response_format: str = "url") -> GenerationRequest:
    return validate_generation_request(
        prompt="a cat", model="wan2.2-t2i-flash", n=n, size="512x512", response_format=response_format
    )


def test_decode_success_and_request_id() -> None:
    body, request_id = decode_response(200, "OK", {"x-request-id": "r1"}, '{"data": []}', "sk-k")
    assert (body, request_id) == ({"data": []}, "r1")
    assert decode_response(200, "OK", {}, '{"output": {}, "request_id": "r2"}', "sk-k")[1] == "r2"


@pytest.mark.parametrize(
    ("text", "kind"),
    [('{"created": 1, "data": [{"url', "is not JSON"), ('["a"]', "is not a JSON object"), ("", "is not")],
)
def test_an_unreadable_200_is_a_malformed_answer(text: str, kind: str) -> None:
    with pytest.raises(TransientAPIError) as raised:
        decode_response(200, "OK", {"x-request-id": "r1", "content-type": "application/json"}, text, "sk-k")
    assert raised.value.failure is Failure.MALFORMED and kind in str(raised.value)
    assert raised.value.request_id == "r1"


def test_error_bodies_in_both_shapes_redact_the_key() -> None:
    relay = json.dumps({"error": {"message": "bad key sk-k", "type": "ali_error", "code": "InvalidApiKey"}})
    with pytest.raises(ImageGenerationRejectedError) as raised:
        decode_response(401, "Unauthorized", {}, relay, "sk-k")
    assert raised.value.code == "InvalidApiKey" and "sk-k" not in str(raised.value)

    throttled = json.dumps({"code": "Throttling.RateQuota", "message": "slow down", "request_id": "r9"})
    with pytest.raises(TransientAPIError) as transient:
        decode_response(429, "Too Many Requests", {"retry-after": "3"}, throttled, "sk-k")
    assert transient.value.failure is Failure.THROTTLED and transient.value.retry_after == 3
    assert transient.value.request_id == "r9"

    relayed_200 = json.dumps(
        {"error": {"message": "upstream failed", "type": "ali_error", "code": "InternalError"}}
    )
    with pytest.raises(TransientAPIError) as upstream:
        decode_response(200, "OK", {}, relayed_200, "sk-k")
    assert upstream.value.failure is Failure.NOT_PROCESSED


def test_a_clean_answer() -> None:
    body = {
        "created": 1_764_000_000,
        "data": [{"url": URL, "revised_prompt": "a cat, detailed"}],
        "usage": {},
    }
    result, notes = parse_generation_result(body, request(), "r1")
    assert notes == [] and result.failed_images == ()
    (image,) = result.images
    assert image.url == URL and image.revised_prompt == "a cat, detailed" and image.url_expires_at
    assert result.created == 1_764_000_000 and result.request_id == "r1"


# The malformed answers of issue 11, each billed: never an exception Airflow would retry.
def test_url_not_a_string_is_a_malformed_item() -> None:
    body = {"created": 1, "data": [{"url": 12345}, {"url": URL}]}
    result, _ = parse_generation_result(body, request(n=2), "r1")
    assert [image.index for image in result.images] == [1]
    assert result.failed_images == (FailedImage(0, MALFORMED_ITEM, "'url' is a int, not a string"),)


def test_data_of_strings_is_wholly_unreadable() -> None:
    with pytest.raises(ImageGenerationMalformedResponseError) as raised:
        parse_generation_result({"created": 1, "data": ["https://x/a.png"]}, request(), "r1")
    error = raised.value
    assert error.request_id == "r1" and "without a single usable image" in str(error)
    assert error.failed_images == (FailedImage(0, MALFORMED_ITEM, "the item is a str, not an object"),)
    assert "https://x/a.png" not in str(error), "never echo API content"


def test_bad_base64_is_a_malformed_item() -> None:
    body = {"created": 1, "data": [{"b64_json": "not base64!"}, {"b64_json": PNG}]}
    result, _ = parse_generation_result(body, request(n=2, response_format="b64_json"), "r1")
    assert [image.index for image in result.images] == [1] and result.images[0].data.startswith(b"\x89PNG")
    assert result.failed_images == (FailedImage(0, MALFORMED_ITEM, "'b64_json' is not valid base64"),)


def test_created_yesterday_keeps_the_images_and_uses_the_local_time() -> None:
    before = time.time()
    result, notes = parse_generation_result({"created": "yesterday", "data": [{"url": URL}]}, request(), "r1")
    assert len(result.images) == 1 and before - 1 <= result.created <= time.time() + 1
    assert notes == ["'created' is unusable (str): using the local time"]


def test_more_images_than_asked_delivers_n_and_logs_the_count_only() -> None:
    body = {"created": 1, "data": [{"url": f"https://x/{i}.png?Signature=s{i}"} for i in range(50)]}
    result, notes = parse_generation_result(body, request(n=1), "r1")
    assert [image.index for image in result.images] == [0]
    assert notes == ["the answer had 50 images for n=1: 49 ignored"]
    assert "https://" not in " ".join(notes)


def test_partial_answers_name_each_failed_image() -> None:
    body = {"created": 1, "data": [{"url": URL}, {"url": "", "b64_json": "", "revised_prompt": ""}, {}]}
    result, _ = parse_generation_result(body, request(n=3), "r1")
    assert [image.index for image in result.images] == [0]
    assert [(failed.index, failed.code) for failed in result.failed_images] == [
        (1, EMPTY_RESULT),
        (2, EMPTY_RESULT),
    ]


@pytest.mark.parametrize("data", [None, [], {"url": URL}, "x"])
def test_no_image_list(data: object) -> None:
    with pytest.raises(ImageGenerationMalformedResponseError, match="without images"):
        parse_generation_result({"created": 1, "data": data}, request(), "r1")


def test_all_items_empty_is_an_error_naming_them() -> None:
    with pytest.raises(ImageGenerationMalformedResponseError) as raised:
        parse_generation_result({"data": [{}, {"url": ""}]}, request(n=2), "r1")
    assert [failed.code for failed in raised.value.failed_images] == [EMPTY_RESULT, EMPTY_RESULT]


def test_submission_without_a_task_id_is_malformed_not_retryable() -> None:
    native = submission_body(request())
    with pytest.raises(ImageGenerationMalformedResponseError):
        parse_submitted_task({"output": {"task_status": "PENDING"}}, "r1", native)
    submitted = parse_submitted_task({"output": {"task_id": "t-1"}}, "r1", native)
    assert (submitted.generation_task_id, submitted.task_status) == ("t-1", "PENDING")


def test_task_state_without_a_status_is_asked_again() -> None:
    with pytest.raises(TransientAPIError) as raised:
        parse_task_state({"output": {"results": []}}, "r1", generation_task_id="t-1")
    assert raised.value.failure is Failure.MALFORMED
    state = parse_task_state(
        {"output": {"task_status": "SUCCEEDED", "results": [{"url": 5}, {"url": URL}]}},
        "r1",
        generation_task_id="t-1",
    )
    assert state.generation_task_id == "t-1" and [image.index for image in state.images] == [1]
    assert [failed.index for failed in state.failed_images] == [0]


def test_task_list_in_the_sdk_shape() -> None:
    body = {
        "request_id": "r1",
        "data": [
            {
                "task_id": "t-1",
                "status": "RUNNING",
                "model_name": "qwen-image",
                "gmt_create": int(datetime(2026, 11, 29, 10, 0, tzinfo=UTC).timestamp() * 1000),
                "request_id": "sub-1",
            },
            {"task_id": "", "status": "PENDING"},
            "junk",
            {"task_id": "t-2", "gmt_create": "yesterday"},
        ],
        "page_no": 1,
        "page_size": 10,
        "total": 2,
    }
    tasks, total = parse_task_list(body)
    assert total == 2 and [task.generation_task_id for task in tasks] == ["t-1", "t-2"]
    assert tasks[0].created_at == datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
    assert (tasks[0].status, tasks[0].model, tasks[0].request_id) == ("RUNNING", "qwen-image", "sub-1")
    assert tasks[1].created_at is None and tasks[1].model is None
