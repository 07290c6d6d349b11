"""
Issue 25: ``extra_body`` cannot carry a named parameter past the model table, wherever it lands in the body.

Seen on main: ``extra_body={"parameters": {"n": 4}}`` for a model that makes one image per request went out
to the gateway unchecked (relays read ``parameters.n`` as the native API does): four billed images.
"""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from tests.integration.hooks.test_image_generation import fast_hook, generation_requests

# (extra_body, the path the error names)
SMUGGLED = {
    "n under parameters": ({"parameters": {"n": 4}}, "extra_body['parameters']['n']"),
    "size under parameters": ({"parameters": {"size": "9999*9999"}}, "extra_body['parameters']['size']"),
    "seed out of range": ({"parameters": {"seed": -1}}, "extra_body['parameters']['seed']"),
    "n spelled another way": ({"Parameters": {" N ": 4}}, "extra_body['Parameters'][' N ']"),
    "another prompt": ({"input": {"prompt": "something else"}}, "extra_body['input']['prompt']"),
    "negative prompt under input": (
        {"input": {"negative_prompt": "x" * 100_000}},
        "extra_body['input']['negative_prompt']",
    ),
    "prompt_extend not a boolean": (
        {"parameters": {"prompt_extend": "sometimes"}},
        "extra_body['parameters']['prompt_extend']",
    ),
    "another model": ({"parameters": {"Model": "qwen-image-max"}}, "extra_body['parameters']['Model']"),
    "input images": (
        {"input": {"images": ["http://169.254.169.254/latest/meta-data"]}},
        "extra_body['input']['images']",
    ),
}


@pytest.mark.parametrize(("extra_body", "where"), SMUGGLED.values(), ids=SMUGGLED.keys())
def test_a_named_parameter_smuggled_in_extra_body_is_refused_before_sending(
    imggen_conn: EmulatorServer, extra_body: dict[str, Any], where: str
) -> None:
    with pytest.raises(ImageGenerationValidationError) as raised:
        fast_hook().generate_images(prompt="a cat", model="qwen-image", extra_body=extra_body)

    assert raised.value.parameter == where
    assert len(str(raised.value)) < 400, "the value is shown shortened"
    assert generation_requests(imggen_conn) == [], "nothing was sent"


def test_other_extra_fields_still_reach_the_api(imggen_conn: EmulatorServer) -> None:
    fast_hook().generate_images(
        prompt="a cat",
        model="qwen-image",
        extra_body={"parameters": {"style": "<watercolor>"}, "user": "u-1"},
    )
    (entry,) = generation_requests(imggen_conn)
    assert entry["billed"]


def test_names_elsewhere_in_extra_body_mean_something_else_and_pass(imggen_conn: EmulatorServer) -> None:
    """A LoRA's or a ControlNet's model, a tag's size: not the request's parameters (only parameters.* and
    input.* are read as those by relays)."""
    extra = {
        "loras": [{"model": "my-lora", "scale": 0.8}],
        "controlnet": {"model": "canny"},
        "meta": {"size": "L"},
    }
    fast_hook().generate_images(prompt="a cat", model="qwen-image", extra_body=extra)
    assert len(generation_requests(imggen_conn)) == 1


def test_an_extra_body_nested_past_what_json_can_write_is_a_validation_error(
    imggen_conn: EmulatorServer,
) -> None:
    deep: dict[str, Any] = {}
    for _ in range(5000):
        deep = {"x": deep}
    with pytest.raises(ImageGenerationValidationError, match="nested deeper"):
        fast_hook().generate_images(prompt="a cat", model="qwen-image", extra_body=deep)
    assert generation_requests(imggen_conn) == []
