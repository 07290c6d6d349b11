"""
The request is defined once and validated once per billable send, whatever the endpoint: counted on the
one function that checks a request against the connection's API, over real HTTP against the emulator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from airflow_provider_imggen import request as request_module
from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.records import REQUEST_FIELDS
from airflow_provider_imggen.request import (
    REQUEST_PARAMETERS,
    GenerationRequest,
    validate_generation_request,
)
from tests.conftest import set_imggen_connection
from tests.integration.hooks.test_image_generation import fast_hook


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Every check of a request against a connection's API: (model, api_style)."""
    seen: list[tuple[str, Any]] = []
    real: Callable[..., None] = request_module.check_request_for_style

    def counting(request: GenerationRequest, api_style: str, dialect: str | None = None) -> None:
        seen.append((request.model, api_style))
        real(request, api_style, dialect)

    monkeypatch.setattr(request_module, "check_request_for_style", counting)
    return seen


@pytest.mark.parametrize(
    ("api_style", "model", "path"),
    [
        ("openai", "wan2.2-t2i-flash", "/v1/images/generations"),
        ("dashscope", "wan2.2-t2i-flash", "/api/v1/services/aigc/text2image/image-synthesis"),
        ("dashscope", "qwen-image-max", "/api/v1/services/aigc/multimodal-generation/generation"),
    ],
)
def test_a_request_is_validated_once_per_billable_send(
    emulator: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    checks: list[tuple[str, Any]],
    api_style: str,
    model: str,
    path: str,
) -> None:
    host = f"{emulator.base_url}/v1" if api_style == "openai" else emulator.base_url
    set_imggen_connection(monkeypatch, host, api_style=api_style)
    fast_hook().generate_images("a lighthouse", model=model, size="1328x1328" if "qwen" in model else None)
    assert checks == [(model, api_style)]
    assert [entry["path"] for entry in emulator.requests_log() if entry["method"] == "POST"] == [path]


def test_a_request_validated_for_another_api_is_checked_again(
    imggen_conn: EmulatorServer, checks: list[tuple[str, Any]]
) -> None:
    """Validated without the connection (as operators do at parse time): checked once when sent."""
    request = validate_generation_request(prompt="a lighthouse", model="wan2.2-t2i-flash")
    assert request.validated_for is None and checks == []
    fast_hook().generate(request)
    assert checks == [("wan2.2-t2i-flash", "openai")]


def test_a_derived_seed_keeps_the_validation(imggen_conn: EmulatorServer) -> None:
    """The operator sets a derived seed after validating: the request stays validated for its API."""
    request = validate_generation_request(prompt="a lighthouse", model="wan2.2-t2i-flash", api_style="openai")
    assert request.validated_for == ("openai", None)
    assert dataclasses.replace(request, seed=7).validated_for == ("openai", None)


def test_the_parameter_list_is_the_requests_fields() -> None:
    """Where the list is used, it is the request's: the operator's templates, the names validation accepts."""
    from airflow_provider_imggen.exceptions import ImageGenerationValidationError
    from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator

    fields = [item.name for item in dataclasses.fields(GenerationRequest)]
    assert list(REQUEST_PARAMETERS) == [name for name in fields if name != "validated_for"]
    assert set(REQUEST_PARAMETERS) <= set(ImageGenerationOperator.template_fields)
    with pytest.raises(ImageGenerationValidationError, match="not a request parameter"):
        validate_generation_request(prompt="a", model="wan2.2-t2i-flash", quality="hd")
    # input_images: the records of the request's images (which in a generation's XCom are its outputs).
    assert set(REQUEST_FIELDS) - {"input_images"} <= set(REQUEST_PARAMETERS)
    assert set(REQUEST_FIELDS) == {
        "input_images",
        "model",
        "prompt",
        "negative_prompt",
        "size",
        "n",
        "seed",
        "prompt_upsampling",
    }
