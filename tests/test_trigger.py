"""ImageGenerationTaskTrigger: serialisation, and run() against the emulator over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.triggers.base import TriggerEvent

from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from airflow_provider_imggen.get_provider_info import get_provider_info
from airflow_provider_imggen.triggers.image_generation import ImageGenerationTaskTrigger
from tests.conftest import AIRFLOW_BIN, API_KEY, set_imggen_connection, task_queries
from tests.test_hook import fast_hook

CLASSPATH = "airflow_provider_imggen.triggers.image_generation.ImageGenerationTaskTrigger"
EVENT_KEYS = {"status", "generation_task_id", "task_status", "code", "message", "succeeded", "failed"}
FAST = {"poll_interval": 0.02, "max_poll_interval": 0.05}


def run_trigger(trigger: ImageGenerationTaskTrigger) -> dict[str, Any]:
    """Drive run() to its end as the triggerer would; exactly one small event without URLs or the key."""

    async def collect() -> list[TriggerEvent]:
        return [event async for event in trigger.run()]

    events = asyncio.run(collect())
    assert len(events) == 1, events
    payload = events[0].payload
    assert isinstance(payload, dict) and set(payload) == EVENT_KEYS
    assert payload["generation_task_id"] == trigger.generation_task_id
    text = json.dumps(payload)  # JSON-serialisable, as events are stored in the metadata DB
    assert len(text) < 1000
    assert "http" not in text and "Signature" not in text and API_KEY not in text
    return payload


def submit(**kwargs: Any) -> str:
    return fast_hook().submit_task("a quiet harbour", size="512x512", **kwargs).generation_task_id


@pytest.fixture
def no_retry_conn(dashscope_conn: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    """dashscope_conn without the hook's own retries: every failed request is one failed poll."""
    set_imggen_connection(
        monkeypatch,
        dashscope_conn.base_url,
        default_model="wan2.2-t2i-flash",
        max_retries=0,
        api_style="dashscope",
    )
    return dashscope_conn


# Serialisation ---------------------------------------------------------------------------------------------
def test_serialize_round_trip() -> None:
    from airflow._shared.module_loading import import_string  # what the triggerer uses

    trigger = ImageGenerationTaskTrigger(
        generation_task_id="0a1b2c3d",
        imggen_conn_id="imggen_other",
        poll_interval=2.5,
        max_poll_interval=20.0,
        end_time=1_900_000_000.5,
        max_consecutive_errors=5,
        cancel_on_kill=True,
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == CLASSPATH
    assert kwargs == {
        "generation_task_id": "0a1b2c3d",
        "imggen_conn_id": "imggen_other",
        "poll_interval": 2.5,
        "max_poll_interval": 20.0,
        "end_time": 1_900_000_000.5,
        "max_consecutive_errors": 5,
        "cancel_on_kill": True,
    }
    # As the triggerer does: import the class path, re-create from the (JSON-stored) kwargs.
    again = import_string(classpath)(**json.loads(json.dumps(kwargs)))
    assert isinstance(again, ImageGenerationTaskTrigger)
    assert again.serialize() == (classpath, kwargs)
    assert ImageGenerationTaskTrigger(generation_task_id="t").serialize()[1] == {
        "generation_task_id": "t",
        "imggen_conn_id": "imggen_default",
        "poll_interval": 3.0,
        "max_poll_interval": 30.0,
        "end_time": None,
        "max_consecutive_errors": 3,
        "cancel_on_kill": False,
    }


def test_a_trigger_serialised_before_the_rename_still_loads() -> None:
    """A task deferred across the upgrade: the triggerer re-creates its trigger from the old kwargs."""
    old_kwargs = {"task_id": "0a1b2c3d", "imggen_conn_id": "imggen_default", "poll_interval": 2.0}
    trigger = ImageGenerationTaskTrigger(**old_kwargs)  # type: ignore[arg-type]
    assert trigger.generation_task_id == "0a1b2c3d"
    assert trigger.serialize()[1]["generation_task_id"] == "0a1b2c3d"
    assert "task_id" not in trigger.serialize()[1]


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({}, "generation_task_id"),
        ({"poll_interval": float("inf")}, "poll_interval"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"poll_interval": 10, "max_poll_interval": 5}, "max_poll_interval"),
        ({"max_consecutive_errors": -1}, "max_consecutive_errors"),
        ({"max_consecutive_errors": True}, "max_consecutive_errors"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], parameter: str) -> None:
    if parameter != "generation_task_id":
        kwargs = {"generation_task_id": "t", **kwargs}
    with pytest.raises(ImageGenerationValidationError) as raised:
        ImageGenerationTaskTrigger(**kwargs)
    assert raised.value.parameter == parameter


def test_registered_with_airflow(airflow_env: dict[str, str]) -> None:
    [entry] = get_provider_info()["triggers"]
    assert entry["python-modules"] == [CLASSPATH.rsplit(".", 1)[0]]
    listed = subprocess.run(
        [str(AIRFLOW_BIN), "providers", "triggers", "--output", "json"],
        env=airflow_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert CLASSPATH.rsplit(".", 1)[0] in listed.stdout


# run(): outcomes -------------------------------------------------------------------------------------------
def test_success_after_pending_and_running(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(task_pending_ms=100, task_duration_ms=100)
    task_id = submit(n=2)
    payload = run_trigger(ImageGenerationTaskTrigger(generation_task_id=task_id, **FAST))
    assert payload == {
        "status": "success",
        "generation_task_id": task_id,
        "task_status": "SUCCEEDED",
        "code": None,
        "message": None,
        "succeeded": 2,
        "failed": 0,
    }
    assert len(task_queries(dashscope_conn)) >= 1
    # The worker resuming the task reads the results itself; the event only said where to look.
    assert len(fast_hook().get_task(task_id).images) == 2


def test_waits_on_its_own_task_once_the_triggerer_attached_the_task_instance(
    dashscope_conn: EmulatorServer,
) -> None:
    # The triggerer sets trigger.task_instance, and BaseTrigger then sets trigger.task_id to the *Airflow*
    # task's id ("generate"): the trigger must keep polling the API's task id, not that one.
    task_id = submit()
    trigger = ImageGenerationTaskTrigger(generation_task_id=task_id, **FAST)
    trigger.task_instance = SimpleNamespace(task_id="generate")  # type: ignore[assignment]
    assert trigger.task_id == "generate"
    payload = run_trigger(trigger)
    assert (payload["status"], payload["generation_task_id"], payload["task_status"]) == (
        "success",
        task_id,
        "SUCCEEDED",
    )
    assert {query["path"].rsplit("/", 1)[-1] for query in task_queries(dashscope_conn)} == {task_id}


def test_partial_failure_is_a_success_with_failed_images(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(fail_next_task_images=[[0]])
    payload = run_trigger(ImageGenerationTaskTrigger(generation_task_id=submit(n=3), **FAST))
    assert (payload["status"], payload["succeeded"], payload["failed"]) == ("success", 2, 1)


@pytest.mark.parametrize(
    ("faults", "task_status", "code", "message"),
    [
        (
            {"fail_next_tasks": ["DataInspectionFailed"]},
            "FAILED",
            "DataInspectionFailed",
            "Output data may contain inappropriate content.",
        ),
        ({"fail_next_task_images": [[0, 1]]}, "SUCCEEDED", "DataInspectionFailed", "all 2 image(s) failed"),
    ],
)
def test_failed_task(
    dashscope_conn: EmulatorServer, faults: dict, task_status: str, code: str, message: str
) -> None:
    dashscope_conn.set_faults(**faults)
    payload = run_trigger(ImageGenerationTaskTrigger(generation_task_id=submit(n=2), **FAST))
    assert (payload["status"], payload["task_status"], payload["code"]) == ("failed", task_status, code)
    assert payload["message"].startswith(message) and payload["succeeded"] == 0 and payload["failed"] == 2


def test_unknown_expired_and_canceled_tasks_fail(dashscope_conn: EmulatorServer) -> None:
    expired = submit()
    dashscope_conn.expire_task(expired)
    dashscope_conn.set_faults(task_pending_ms=600_000)
    canceled = submit()
    assert fast_hook().cancel_task(canceled)

    for task_id, task_status, message in (
        ("no-such-task", "UNKNOWN", "expired"),
        (expired, "UNKNOWN", "expired"),
        (canceled, "CANCELED", "canceled"),
    ):
        payload = run_trigger(ImageGenerationTaskTrigger(generation_task_id=task_id, **FAST))
        assert (payload["status"], payload["task_status"]) == ("failed", task_status)
        assert message in payload["message"]


def test_timeout_at_end_time(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(task_duration_ms=600_000)
    task_id = submit()
    payload = run_trigger(
        ImageGenerationTaskTrigger(generation_task_id=task_id, end_time=time.time() + 0.3, **FAST)
    )
    assert (payload["status"], payload["task_status"]) == ("timeout", "RUNNING")
    assert len(task_queries(dashscope_conn)) >= 2

    # A deadline already past still gets one look at the task first.
    dashscope_conn.clear_log()
    payload = run_trigger(
        ImageGenerationTaskTrigger(generation_task_id=task_id, end_time=time.time() - 1, **FAST)
    )
    assert payload["status"] == "timeout" and len(task_queries(dashscope_conn)) == 1


# run(): poll errors ----------------------------------------------------------------------------------------
def test_tolerates_a_few_consecutive_poll_errors(no_retry_conn: EmulatorServer) -> None:
    task_id = submit()
    no_retry_conn.set_faults(fail_next=["500", "drop", "503"])
    payload = run_trigger(
        ImageGenerationTaskTrigger(generation_task_id=task_id, max_consecutive_errors=3, **FAST)
    )
    assert payload["status"] == "success"
    assert [entry["fault"] for entry in task_queries(no_retry_conn)] == ["500", "drop", "503", None]


def test_gives_up_after_max_consecutive_errors(no_retry_conn: EmulatorServer) -> None:
    task_id = submit()
    no_retry_conn.set_faults(rate_500=1.0)
    payload = run_trigger(
        ImageGenerationTaskTrigger(generation_task_id=task_id, max_consecutive_errors=2, **FAST)
    )
    assert (payload["status"], payload["task_status"], payload["code"]) == ("error", None, "InternalError")
    assert "internal error" in payload["message"]
    assert len(task_queries(no_retry_conn)) == 3  # two tolerated, the third gives up


def test_error_count_resets_after_a_good_poll(no_retry_conn: EmulatorServer) -> None:
    no_retry_conn.set_faults(task_duration_ms=600_000)
    task_id = submit()
    no_retry_conn.set_faults(fail_next=["500", "500", "none", "500", "500"])
    payload = run_trigger(
        ImageGenerationTaskTrigger(
            generation_task_id=task_id, max_consecutive_errors=2, end_time=time.time() + 1, **FAST
        )
    )
    assert payload["status"] == "timeout"  # four errors, never three in a row
    assert [entry["fault"] for entry in task_queries(no_retry_conn)][:5] == ["500", "500", None, "500", "500"]


def test_hook_retries_come_before_the_trigger_counts_an_error(dashscope_conn: EmulatorServer) -> None:
    task_id = submit()
    dashscope_conn.set_faults(fail_next=["429", "429", "429"], retry_after_seconds=0.01)  # max_retries=3
    payload = run_trigger(
        ImageGenerationTaskTrigger(generation_task_id=task_id, max_consecutive_errors=0, **FAST)
    )
    assert payload["status"] == "success"


def test_refused_key_gives_up_at_once_without_showing_it(
    dashscope_conn: EmulatorServer, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    wrong_key = "sk-wrong-trigger-0123456789"
    set_imggen_connection(monkeypatch, dashscope_conn.base_url, password=wrong_key, api_style="dashscope")
    payload = run_trigger(
        ImageGenerationTaskTrigger(generation_task_id="t", max_consecutive_errors=5, **FAST)
    )
    assert (payload["status"], payload["code"]) == ("error", "InvalidApiKey")
    assert wrong_key not in json.dumps(payload) + "".join(capfd.readouterr())
    assert len(task_queries(dashscope_conn)) == 1


def test_unusable_connection_is_an_error_event(imggen_conn: EmulatorServer) -> None:
    payload = run_trigger(ImageGenerationTaskTrigger(generation_task_id="t", **FAST))  # api_style openai
    assert payload["status"] == "error" and "api_style" in payload["message"]
    assert imggen_conn.requests_log() == []


# run(): no blocking calls ----------------------------------------------------------------------------------
def test_run_makes_no_blocking_calls(no_retry_conn: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import requests
    from blockbuster import blockbuster_ctx

    no_retry_conn.set_faults(task_pending_ms=50, task_duration_ms=50)
    task_id = submit()
    no_retry_conn.set_faults(fail_next=["500", "drop"])

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("run() must not use requests")

    monkeypatch.setattr(requests.Session, "send", refuse)
    # Any blocking call (time.sleep, blocking sockets, file I/O...) made from the provider's code on the
    # event loop raises BlockingError; the emulator, serving in its own thread, is left out.
    with blockbuster_ctx(["airflow_provider_imggen"], excluded_modules=["airflow_provider_imggen.emulator"]):
        payload = run_trigger(ImageGenerationTaskTrigger(generation_task_id=task_id, **FAST))
    assert payload["status"] == "success"
