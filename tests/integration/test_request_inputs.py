"""Input gaps of issue 11 item 7: each refused before anything is billed (pure functions, no HTTP)."""

from __future__ import annotations

import json
import math

import pytest
from airflow.sdk import Connection

from airflow_provider_imggen.coercion import coerce_int, coerce_seconds
from airflow_provider_imggen.connection_settings import parse_connection
from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from airflow_provider_imggen.polling import check_poll_settings
from airflow_provider_imggen.request import check_extra_body, validate_generation_request
from airflow_provider_imggen.wire.native import submission_body


@pytest.mark.parametrize("value", ["\u0662", "\u0968", "\uff12", "2\u0660", " \u0663 "])
def test_other_scripts_digits_are_not_numbers(value: str) -> None:
    assert int(value) > 0  # what Python would do...
    with pytest.raises(ImageGenerationValidationError):
        coerce_int("n", value, "a whole number")  # ...and what the API would not
    assert coerce_int("n", " 2 ", "x") == 2 and coerce_int("n", "+3", "x") == 3


@pytest.mark.parametrize(
    "value", [math.inf, -math.inf, math.nan, "inf", "nan", "1e999", True, "\u0665", 0, -1]
)
def test_seconds_must_be_finite_and_positive(value: object) -> None:
    with pytest.raises(ImageGenerationValidationError, match="finite number of seconds"):
        coerce_seconds("request_timeout", value)


def test_seconds_accepted() -> None:
    assert coerce_seconds("t", "45") == 45.0 and coerce_seconds("t", 0.5) == 0.5
    assert coerce_seconds("t", 0, allow_zero=True) == 0.0
    assert coerce_seconds("t", None, allow_none=True) is None


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"poll_interval": math.inf, "max_poll_interval": math.inf}, "poll_interval"),
        ({"poll_interval": math.nan, "max_poll_interval": 30}, "poll_interval"),
        ({"poll_interval": 3, "max_poll_interval": math.inf}, "max_poll_interval"),
        ({"poll_interval": 3, "max_poll_interval": 30, "timeout": math.inf}, "timeout"),
        ({"poll_interval": 3, "max_poll_interval": 30, "timeout": math.nan}, "timeout"),
    ],
)
def test_poll_settings_refuse_infinity_and_nan(kwargs: dict, parameter: str) -> None:
    with pytest.raises(ImageGenerationValidationError) as raised:
        check_poll_settings(**kwargs)
    assert raised.value.parameter == parameter


@pytest.mark.parametrize(
    "extra_body",
    [{"x": math.nan}, {"x": [1, math.inf]}, {"x": {"y": -math.inf}}, {"x": {1, 2}}, {"x": b"bytes"}],
)
def test_extra_body_must_be_json(extra_body: dict) -> None:
    with pytest.raises(ImageGenerationValidationError, match="JSON values"):
        check_extra_body(extra_body)


@pytest.mark.parametrize("name", ["prompt_extend", "input", "parameters", "size", "n", "seed", "model"])
def test_native_names_are_protected_in_the_dashscope_style(name: str) -> None:
    with pytest.raises(ImageGenerationValidationError, match=name):
        check_extra_body({name: 1}, "dashscope")


def test_gateway_style_keeps_extra_fields_of_its_own() -> None:
    # A relay may read nested parameters; prompt_extend is not the gateway's name for anything.
    assert check_extra_body({"parameters": {"watermark": False}, "prompt_extend": False}, "openai") == {
        "parameters": {"watermark": False},
        "prompt_extend": False,
    }
    with pytest.raises(ImageGenerationValidationError):
        check_extra_body({"prompt_upsampling": False}, "openai")


def test_prompt_extend_cannot_override_prompt_upsampling_in_a_native_request() -> None:
    with pytest.raises(ImageGenerationValidationError, match="prompt_extend is prompt_upsampling"):
        validate_generation_request(
            prompt="a cat",
            model="qwen-image",
            prompt_upsampling=False,
            extra_body={"prompt_extend": True},
            api_style="dashscope",
        )
    native = submission_body(
        validate_generation_request(
            prompt="a cat",
            model="qwen-image",
            prompt_upsampling=False,
            extra_body={"watermark": True},
            api_style="dashscope",
        )
    )
    assert native["parameters"]["prompt_extend"] is False and native["parameters"]["watermark"] is True


@pytest.mark.parametrize("prompt", ["None", "  None "])
def test_a_prompt_rendered_from_a_missing_value(prompt: str) -> None:
    with pytest.raises(ImageGenerationValidationError, match="rendered a missing value"):
        validate_generation_request(prompt=prompt, model="qwen-image")
    assert validate_generation_request(prompt="None of these cats", model="qwen-image").prompt


def connection(**extra: object) -> Connection:
    return Connection(
        conn_id="imggen_x",
        conn_type="imggen",
        host="https://gw.example.com/v1",
        password="sk-k",
        extra=json.dumps(extra),
    )


@pytest.mark.parametrize("value", ["inf", "NaN", "\u0663\u0660", -1])
def test_connection_request_timeout_must_be_finite(value: object) -> None:
    with pytest.raises(ImageGenerationValidationError, match="request_timeout"):
        parse_connection(connection(request_timeout=value))


def test_connection_retry_unknown_outcome() -> None:
    assert parse_connection(connection()).retry_unknown_outcome is False
    assert parse_connection(connection(retry_unknown_outcome="true")).retry_unknown_outcome is True
    assert parse_connection(connection(retry_unknown_outcome=False)).retry_unknown_outcome is False
    with pytest.raises(ImageGenerationValidationError, match="retry_unknown_outcome"):
        parse_connection(connection(retry_unknown_outcome="sometimes"))
    with pytest.raises(ImageGenerationValidationError, match="max_retries"):
        parse_connection(connection(max_retries="\u0663"))


def test_the_ui_form_offers_retry_unknown_outcome() -> None:
    from airflow_provider_imggen.get_provider_info import get_provider_info

    (conn_type,) = get_provider_info()["connection-types"]
    field = conn_type["conn-fields"]["retry_unknown_outcome"]
    assert field["schema"]["default"] is False and "boolean" in field["schema"]["type"]
    assert "bill twice" in field["label"] and "pay twice" in field["description"]


@pytest.mark.parametrize(
    ("arguments", "parameter"),
    [
        ({"wait_timeout": math.inf}, "wait_timeout"),
        ({"wait_timeout": math.nan}, "wait_timeout"),
        ({"request_timeout": "inf"}, "request_timeout"),
        ({"request_timeout": math.nan}, "request_timeout"),
        ({"poll_interval": math.inf, "max_poll_interval": math.inf}, "poll_interval"),
        ({"n": "\u0662"}, "n"),
        ({"extra_body": {"strength": math.nan}}, "extra_body"),
    ],
)
def test_operator_refuses_them_when_the_dag_is_parsed(arguments: dict, parameter: str) -> None:
    # Not after the billable submission: the operator checks literal arguments in its constructor.
    from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator

    with pytest.raises(ImageGenerationValidationError) as raised:
        ImageGenerationOperator(task_id="generate", prompt="a cat", model="wan2.2-t2i-flash", **arguments)
    assert raised.value.parameter == parameter
