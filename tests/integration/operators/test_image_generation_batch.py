"""ImageGenerationBatchOperator before anything is sent: every request validated, each error naming it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from airflow_provider_imggen.hooks.image_generation import ImageGenerationHook
from airflow_provider_imggen.operators.image_generation_batch import ImageGenerationBatchOperator
from tests.conftest import set_imggen_connection, task_submissions

TI = SimpleNamespace(dag_id="content", run_id="manual__1", task_id="generate", map_index=-1, try_number=1)


@pytest.fixture
def ledger_conn(emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    set_imggen_connection(
        monkeypatch,
        emulator.base_url,
        api_style="dashscope",
        default_model="wan2.2-t2i-flash",
        ledger="postgres://ledger_pg/imggen_ledger",
    )
    return emulator


def trigger(**params: Any) -> Any:
    operator = ImageGenerationBatchOperator(task_id="generate", **{"size": "512*512", **params})
    return operator.batch_trigger(ImageGenerationHook(), TI)


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"prompts": ["a lighthouse", "a harbour", ""]}, "prompts[2].prompt"),
        ({"prompts": ["a lighthouse", {"prompt": "a harbour", "seed": -1}]}, "prompts[1].seed"),
        ({"prompts": ["a lighthouse"], "n": 9}, "prompts[0].n"),
        ({"prompts": [{"prompt": "x", "style": "oil"}]}, "prompts[0]"),
        ({"prompts": "a lighthouse"}, "prompts"),
        ({"prompts": ["a lighthouse"], "model": "qwen-image-max", "size": None}, "model"),
    ],
)
def test_a_bad_request_fails_before_anything_is_sent_naming_it(
    ledger_conn: EmulatorServer, params: dict[str, Any], parameter: str
) -> None:
    with pytest.raises(ImageGenerationValidationError) as caught:
        trigger(**params)
    assert caught.value.parameter == parameter
    assert task_submissions(ledger_conn) == []


def test_a_batch_needs_the_native_api_and_a_ledger(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_imggen_connection(
        monkeypatch, emulator.base_url, api_style="dashscope", default_model="wan2.2-t2i-flash"
    )
    with pytest.raises(ImageGenerationValidationError, match="ledger"):
        trigger(prompts=["a lighthouse"])
    set_imggen_connection(monkeypatch, f"{emulator.base_url}/v1", default_model="wan2.2-t2i-flash")
    with pytest.raises(ImageGenerationValidationError, match="api_style"):
        trigger(prompts=["a lighthouse"])


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("over_quota", "sometimes"),
        ("concurrent_tasks", 0),
        ("submissions_per_second", 0),
        ("poll_interval", 0.001),
        ("status_queries_per_second", 25),
    ],
)
def test_pacing_settings_are_checked_when_the_dag_is_parsed(name: str, value: object) -> None:
    with pytest.raises(ImageGenerationValidationError) as caught:
        ImageGenerationBatchOperator(task_id="generate", prompts=["a lighthouse"], **{name: value})
    assert caught.value.parameter == name


def test_equal_prompts_get_distinct_seeds_and_slots_that_survive_a_reordering(
    ledger_conn: EmulatorServer,
) -> None:
    first = trigger(prompts=["a lighthouse", "a harbour", "a lighthouse"])
    seeds = [request["recorded"]["seed"] for request in first.requests]
    assert seeds[0] != seeds[2]
    reordered = trigger(prompts=["a harbour", "a lighthouse", "a lighthouse"])
    assert sorted(request["key"] for request in first.requests) == sorted(
        request["key"] for request in reordered.requests
    )
    # The quota comes from the model table.
    assert (first.submissions_per_second, first.concurrent_tasks) == (2.0, 2)
