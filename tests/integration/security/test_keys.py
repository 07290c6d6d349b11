"""Safe keys: API values are checked before they become part of a key; Jinja output is never re-parsed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from tests.integration.security.conftest import Server, gateway_answer, image, use_gateway
from tests.integration.transfers.test_image_generation_to_s3 import (
    StubTaskInstance,
    generate,
    make_operator,
    png_bytes,
)
from tests.s3_fixtures import S3Bucket

PNG = png_bytes(20, 20)


@pytest.fixture
def api(servers: Callable[..., Server], monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Server]:
    """The gateway (serving its own results) answering with the given x-request-id."""

    def start(request_id: str) -> Server:
        server = servers({"/results/a.png": image(PNG)})
        server.post = gateway_answer([server.url("/results/a.png")], request_id=request_id)
        use_gateway(monkeypatch, server)
        return server

    return start


def run_with(
    operator: Any, *, params: dict[str, Any] | None = None, map_index: int = -1
) -> list[dict[str, Any]]:
    ti = StubTaskInstance(map_index=map_index)
    context: dict[str, Any] = {"ti": ti, "task_instance": ti, "ds": "2026-01-01", "params": params or {}}
    operator.render_template_fields(context)
    return operator.execute(context)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "request_id", ["../../other-team/hijacked", "..", ".", "a/b", "id with space", "x" * 200, "id;rm"]
)
def test_an_unsafe_request_id_never_becomes_part_of_a_key(
    api: Callable[[str], Server], s3: S3Bucket, request_id: str
) -> None:
    server = api(request_id)
    generation = generate(n=1)
    operator = make_operator(
        generation=generation, s3_bucket=s3.name, s3_key="team-a/{{ ds }}/{request_id}.png"
    )

    with pytest.raises(ImageGenerationValidationError, match=r"\{request_id\}"):
        run_with(operator)
    assert s3.object_keys() == []
    assert server.gets() == [], "refused before any download"


def test_an_empty_request_id_never_makes_an_empty_name(api: Callable[[str], Server], s3: S3Bucket) -> None:
    api("")
    operator = make_operator(generation=generate(n=1), s3_bucket=s3.name, s3_key="team-a/{request_id}.png")
    with pytest.raises(ImageGenerationValidationError, match=r"\{request_id\}"):
        run_with(operator)
    assert s3.object_keys() == []


def test_braces_from_jinja_are_never_read_as_placeholders_or_format_specs(
    api: Callable[[str], Server], s3: S3Bucket
) -> None:
    server = api("req-1")
    operator = make_operator(
        generation=generate(n=1), s3_bucket=s3.name, s3_key="team-a/{{ params.label }}/{index}.png"
    )
    with pytest.raises(ImageGenerationValidationError, match="stray brace") as raised:
        run_with(operator, params={"label": "{model:>40000000}"})
    assert len(str(raised.value)) < 1000
    assert s3.object_keys() == [] and server.gets() == []
    # The same conf value inside a placeholder-free key is just as refused: braces never reach S3.
    operator = make_operator(generation=generate(n=1), s3_bucket=s3.name, s3_key="x/{{ params.label }}.png")
    with pytest.raises(ImageGenerationValidationError, match="stray brace"):
        run_with(operator, params={"label": "{index}"})


@pytest.mark.parametrize(
    ("s3_key", "message", "at_parse"),
    [
        ("k/{index:>40000000}.png", "format spec", True),
        ("k/{model:05d}.png", "format spec", True),
        ("k/{index!r}.png", "unknown placeholder", True),
        ("k/{}.png", "unknown placeholder", True),
        # Segments are checked on the rendered key: a value could make any key one.
        ("k/../{index}.png", "'.' or '..'", False),
    ],
)
def test_format_specs_and_dot_segments_in_the_template_are_refused(
    api: Callable[[str], Server], s3: S3Bucket, s3_key: str, message: str, at_parse: bool
) -> None:
    """Placeholders are refused when the operator is created (the DAG is parsed); every rule by execute."""
    api("req-1")
    if at_parse:
        with pytest.raises(ImageGenerationValidationError, match=message):
            make_operator(generation=generate(n=1), s3_bucket=s3.name, s3_key=s3_key)
    operator = make_operator(generation=generate(n=1), s3_bucket=s3.name, s3_key="k/{index}.png")
    operator.s3_key = s3_key
    with pytest.raises(ImageGenerationValidationError, match=message):
        run_with(operator)
    assert s3.object_keys() == []


def test_map_index_placeholder_and_zero_padding(api: Callable[[str], Server], s3: S3Bucket) -> None:
    api("req-1")
    operator = make_operator(
        generation=generate(n=1), s3_bucket=s3.name, s3_key="m/{map_index}/{index:03d}-{request_id}.{ext}"
    )
    (entry,) = run_with(operator, map_index=3)
    assert entry["key"] == "m/3/000-req-1.png"
    assert operator.s3_key == "m/{map_index}/{index:03d}-{request_id}.{ext}", "the rendered field as written"


def test_a_mapped_overwriting_transfer_whose_keys_ignore_the_map_index_fails_before_downloading(
    api: Callable[[str], Server], s3: S3Bucket
) -> None:
    server = api("req-1")
    operator = make_operator(
        generation=generate(n=1), s3_bucket=s3.name, s3_key="daily/{generation}-{index}.png", replace=True
    )
    with pytest.raises(ImageGenerationValidationError, match=r"mapped and replace=True.*\{map_index\}"):
        run_with(operator, map_index=1)
    assert server.gets() == [] and s3.object_keys() == []

    for s3_key in ("daily/{map_index}-{index}.png", "daily/{{ ti.map_index }}-{index}.png"):
        operator = make_operator(generation=generate(n=1), s3_bucket=s3.name, s3_key=s3_key, replace=True)
        (entry,) = run_with(operator, map_index=1)
        assert entry["key"] == "daily/1-0.png"
