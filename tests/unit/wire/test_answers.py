"""Decoding what the APIs answer, trusting none of it (pure functions, no HTTP)."""

from __future__ import annotations

import base64
import importlib
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from airflow_provider_imggen.exceptions import (
    ImageGenerationMalformedResponseError,
    ImageGenerationRejectedError,
)
from airflow_provider_imggen.request import GenerationRequest, validate_generation_request
from airflow_provider_imggen.results import EMPTY_RESULT, MALFORMED_ITEM, FailedImage
from airflow_provider_imggen.retry_policy import Failure, TransientAPIError
from airflow_provider_imggen.wire.answers import MAX_DELIVERED_IMAGES
from airflow_provider_imggen.wire.errors import decode_response
from airflow_provider_imggen.wire.gateway import gateway_ignored_fields, parse_generation_result
from airflow_provider_imggen.wire.multimodal import parse_multimodal_result
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


def test_more_images_than_asked_are_delivered_with_a_warning() -> None:
    """A relay that drops n bills the model's default count: what was paid for is delivered."""
    body = {"created": 1, "data": [{"url": f"https://x/{i}.png?Signature=s{i}"} for i in range(50)]}
    result, notes = parse_generation_result(body, request(n=1), "r1")
    assert [image.index for image in result.images] == list(range(50))
    (warning,) = result.warnings
    assert notes == [warning] and warning.startswith("the service returned 50 images for n=1: 50 billed")
    assert "images 1 to 49 beyond n" in warning and "https://" not in warning


def test_a_hostile_count_of_images_is_capped() -> None:
    body = {"created": 1, "data": [{"url": f"https://x/{i}.png"} for i in range(MAX_DELIVERED_IMAGES + 36)]}
    result, notes = parse_generation_result(body, request(n=2), "r1")
    assert len(result.images) == MAX_DELIVERED_IMAGES
    assert f"the first {MAX_DELIVERED_IMAGES} are delivered, 36 are not" in notes[0]


def test_more_images_than_asked_on_the_synchronous_endpoint() -> None:
    content = [{"image": f"https://x/{i}.png"} for i in range(3)] + [{"text": "a cat, detailed"}]
    body = {"output": {"choices": [{"message": {"content": content}}]}}
    result, notes = parse_multimodal_result(body, request(n=1), "r1")
    assert [image.index for image in result.images] == [0, 1, 2]
    assert result.warnings == tuple(notes) and "returned 3 images for n=1: 3 billed" in notes[0]


# Result URLs no parser accepts: a failed image, never a ValueError (billed: Airflow would pay again).
BAD_URLS = [
    "https://[bad/img.png?Expires=1900000000&Signature=secret",
    "https://host:notaport/img.png?Signature=secret",
    "https://host:99999999/img.png?Signature=secret",
    "https:///img.png?Signature=secret",
]


@pytest.mark.parametrize("bad", BAD_URLS)
def test_gateway_unparsable_url_is_a_failed_image(bad: str) -> None:
    result, _ = parse_generation_result(
        {"created": 1, "data": [{"url": bad}, {"url": URL}]}, request(n=2), "r1"
    )
    assert [image.index for image in result.images] == [1]
    ((index, code, message),) = [(f.index, f.code, f.message) for f in result.failed_images]
    assert (index, code) == (0, MALFORMED_ITEM) and "secret" not in message and "[bad" not in message


@pytest.mark.parametrize("bad", BAD_URLS)
def test_synchronous_unparsable_url_is_a_failed_image(bad: str) -> None:
    body = {"output": {"choices": [{"message": {"content": [{"image": bad}, {"image": URL}]}}]}}
    result, _ = parse_multimodal_result(body, request(n=2), "r1")
    assert [image.index for image in result.images] == [1]
    assert [(f.index, f.code) for f in result.failed_images] == [(0, MALFORMED_ITEM)]
    assert "secret" not in result.failed_images[0].message


@pytest.mark.parametrize("bad", BAD_URLS)
def test_task_unparsable_url_is_a_failed_image(bad: str) -> None:
    body = {"output": {"task_status": "SUCCEEDED", "results": [{"url": bad}, {"url": URL}]}}
    state = parse_task_state(body, "r1", generation_task_id="t1")
    assert [image.index for image in state.images] == [1]
    assert [(f.index, f.code) for f in state.failed_images] == [(0, MALFORMED_ITEM)]
    assert "secret" not in state.failed_images[0].message


def test_a_single_unparsable_url_is_malformed_not_a_value_error() -> None:
    with pytest.raises(ImageGenerationMalformedResponseError) as raised:
        parse_generation_result({"created": 1, "data": [{"url": BAD_URLS[0]}]}, request(), "r1")
    assert "secret" not in str(raised.value) and raised.value.images_at_risk == 1


def test_an_odd_expires_is_no_expiry_not_an_error() -> None:
    url = "https://x/a.png?Expires=99999999999999999999&Signature=s"
    result, _ = parse_generation_result({"created": 1, "data": [{"url": url}]}, request(), "r1")
    assert result.images[0].url_expires_at is None


# Answers nested deeper than Python recurses, and parser bugs: the provider's own errors only.
@pytest.mark.parametrize(
    "text", ["[" * 100_000, '{"data": ' + "[" * 5000 + "]" * 5000 + "}", '{"a": ' * 5000 + "1" + "}" * 5000]
)
def test_a_deeply_nested_body_is_a_malformed_answer(text: str) -> None:
    with pytest.raises(TransientAPIError) as raised:
        decode_response(200, "OK", {"x-request-id": "r1"}, text, "sk-k")
    assert raised.value.failure is Failure.MALFORMED and "nested deeper" in str(raised.value)
    assert raised.value.request_id == "r1"


def test_a_failure_of_the_decoding_itself_is_a_malformed_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise KeyError("code")

    monkeypatch.setattr("airflow_provider_imggen.wire.errors._error_fields", broken)
    with pytest.raises(TransientAPIError) as raised:
        decode_response(200, "OK", {"x-request-id": "r1"}, '{"data": []}', "sk-k")
    assert raised.value.failure is Failure.MALFORMED and "KeyError" in str(raised.value)


ANSWER: dict[str, Any] = {"created": 1, "data": [{"url": URL}, {"url": URL}]}
SYNC_ANSWER: dict[str, Any] = {
    "output": {"choices": [{"message": {"content": [{"image": URL}, {"image": URL}]}}]}
}
TASK_ANSWER: dict[str, Any] = {
    "output": {"task_status": "SUCCEEDED", "results": [{"url": URL}, {"url": URL}]}
}


def _deep(depth: int) -> object:
    value: object = "x"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("module", "target", "parse"),
    [
        ("gateway", "_parse_item", lambda: parse_generation_result(ANSWER, request(n=2), "r1")),
        ("multimodal", "_parse_item", lambda: parse_multimodal_result(SYNC_ANSWER, request(n=2), "r1")),
        ("native", "_task_result", lambda: parse_task_state(TASK_ANSWER, "r1", generation_task_id="t1")),
    ],
)
def test_an_item_the_parser_fails_on_is_a_failed_image(
    monkeypatch: pytest.MonkeyPatch, module: str, target: str, parse: Any
) -> None:
    original = getattr(importlib.import_module(f"airflow_provider_imggen.wire.{module}"), target)

    def flaky(index: int, *args: object) -> object:
        if index == 0:
            raise RecursionError("maximum recursion depth exceeded")
        return original(index, *args)

    monkeypatch.setattr(f"airflow_provider_imggen.wire.{module}.{target}", flaky)
    parsed = parse()
    outcome = parsed[0] if isinstance(parsed, tuple) else parsed
    assert [image.index for image in outcome.images] == [1]
    assert outcome.failed_images == (
        FailedImage(0, MALFORMED_ITEM, "the item could not be read (RecursionError)"),
    )


@pytest.mark.parametrize(
    ("target", "parse"),
    [
        ("gateway._parse_generation_result", lambda: parse_generation_result(ANSWER, request(n=2), "r1")),
        (
            "multimodal._parse_multimodal_result",
            lambda: parse_multimodal_result(SYNC_ANSWER, request(n=2), "r1"),
        ),
        (
            "native._parse_submitted_task",
            lambda: parse_submitted_task({"output": {}}, "r1", submission_body(request(n=2))),
        ),
    ],
)
def test_a_parser_bug_on_a_billed_answer_is_malformed_naming_the_bill(
    monkeypatch: pytest.MonkeyPatch, target: str, parse: Any
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise TypeError(f"cannot read {URL}")

    monkeypatch.setattr(f"airflow_provider_imggen.wire.{target}", broken)
    with pytest.raises(ImageGenerationMalformedResponseError) as raised:
        parse()
    error = raised.value
    assert (error.request_id, error.model, error.images_at_risk) == ("r1", "wan2.2-t2i-flash", 2)
    assert "TypeError" in str(error) and "up to 2 image(s) of wan2.2-t2i-flash" in str(error)
    assert "secret" not in str(error), "the parser's message may quote the answer: left out"


def test_a_parser_bug_on_a_task_state_is_the_unreadable_answer_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RecursionError

    monkeypatch.setattr("airflow_provider_imggen.wire.native._parse_task_state", broken)
    with pytest.raises(TransientAPIError) as raised:
        parse_task_state(TASK_ANSWER, "r1", generation_task_id="t1")
    assert raised.value.failure is Failure.MALFORMED and raised.value.request_id == "r1"


def test_a_deeply_nested_answer_that_parses_is_malformed_items() -> None:
    body = {"created": 1, "data": [_deep(300), {"url": URL}]}
    result, _ = parse_generation_result(body, request(n=2), "r1")
    assert [image.index for image in result.images] == [1]
    state = parse_task_state(
        {"output": {"task_status": "FAILED", "message": _deep(900)}}, "r1", generation_task_id="t1"
    )
    assert state.status == "FAILED"


def test_the_ignored_fields_check_never_raises() -> None:
    seeded = validate_generation_request(
        prompt="a cat", model="wan2.2-t2i-flash", n=1, size="512x512", seed=3
    )
    body = {"created": 1, "data": [{"url": URL, "seed": _deep(5000)}]}
    result, _ = parse_generation_result(body, seeded, "r1")
    warning = gateway_ignored_fields(body, seeded, result, "openai")
    assert warning is None or "Could not check" in warning


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


def test_an_image_generation_tasks_status_is_read_from_its_choices() -> None:
    """wan2.6 / wan2.7 tasks answer in the synchronous shape: images, and a choice that failed."""
    from airflow_provider_imggen.wire.native import parse_task_state

    url = "https://dashscope-result-bj.oss-cn-beijing.aliyuncs.com/a.png?Expires=1764500000&Signature=x"
    body = {
        "output": {
            "task_id": "t-1",
            "task_status": "SUCCEEDED",
            "finished": True,
            "choices": [
                {
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": [{"image": url, "type": "image"}]},
                },
                {"finish_reason": "error", "code": "DataInspectionFailed", "message": "refused"},
                {
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": [{"text": "a caption"}]},
                },
            ],
        },
        "usage": {"image_count": 1, "size": "1024*1024"},
    }
    state = parse_task_state(body, "req-1", generation_task_id="t-1")
    assert [image.url for image in state.images] == [url]
    assert [(failed.index, failed.code) for failed in state.failed_images] == [(1, "DataInspectionFailed")]


def test_a_failed_choice_never_carries_its_message_object_into_the_failure() -> None:
    from airflow_provider_imggen.wire.native import parse_task_state

    secret = "https://dashscope-result-bj.oss-cn-beijing.aliyuncs.com/a.png?Signature=do-not-print"
    body = {
        "output": {
            "task_id": "t-2",
            "task_status": "SUCCEEDED",
            "choices": [{"finish_reason": "error", "code": "X", "message": {"content": [{"image": secret}]}}],
        }
    }
    state = parse_task_state(body, "req-2", generation_task_id="t-2")
    assert not state.images and "do-not-print" not in str(state.failed_images)
