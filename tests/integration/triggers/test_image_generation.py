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
from tests.conftest import AIRFLOW_BIN, API_KEY, set_imggen_connection, task_queries, task_submissions
from tests.integration.hooks.test_image_generation import fast_hook

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
        "end_from_trigger": False,
        "request_fields": None,
        "do_xcom_push": True,
        "multiple_outputs": False,
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
        "end_from_trigger": False,
        "request_fields": None,
        "do_xcom_push": True,
        "multiple_outputs": False,
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
        ({"end_from_trigger": "yes"}, "end_from_trigger"),
        ({"do_xcom_push": 1}, "do_xcom_push"),
        ({"request_fields": {"prompt": "p", "api_key": "k"}}, "request_fields"),
        ({"request_fields": ["prompt"]}, "request_fields"),
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
    batch = "airflow_provider_imggen.triggers.image_generation_batch"
    assert entry["python-modules"] == [CLASSPATH.rsplit(".", 1)[0], batch]
    listed = subprocess.run(
        [str(AIRFLOW_BIN), "providers", "triggers", "--output", "json"],
        env=airflow_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert CLASSPATH.rsplit(".", 1)[0] in listed.stdout and batch in listed.stdout


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


# end_from_trigger: the trigger pushes the worker's XCom and ends the task ---------------------------------
class Supervisor:
    """Stands for the triggerer's supervisor: records what the trigger sends it (XComs, secrets to mask)."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, msg: Any) -> None:
        self.sent.append(msg)

    async def asend(self, msg: Any) -> None:
        self.sent.append(msg)

    @property
    def xcoms(self) -> dict[str, Any]:
        from airflow.sdk.execution_time.comms import SetXCom

        pushed = [msg for msg in self.sent if isinstance(msg, SetXCom)]
        assert len({msg.key for msg in pushed}) == len(pushed), "each key pushed once"
        return {msg.key: msg for msg in pushed}


@pytest.fixture
def supervisor(monkeypatch: pytest.MonkeyPatch) -> Supervisor:
    from airflow.sdk.execution_time import task_runner

    comms = Supervisor()
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", comms, raising=False)
    return comms


TI = {"dag_id": "unit", "run_id": "manual__2026-01-01", "map_index": -1}


def ending_trigger(operator: Any) -> tuple[ImageGenerationTaskTrigger, Any, dict[str, Any]]:
    """Let the operator submit and defer; return its trigger (as the triggerer runs it), deferral, context."""
    from airflow.sdk.exceptions import TaskDeferred

    from tests.integration.operators.test_image_generation import make_context

    context = make_context(operator)
    operator.render_template_fields(context)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    trigger = deferred.value.trigger
    assert isinstance(trigger, ImageGenerationTaskTrigger)
    # The triggerer attaches the task instance before running a trigger that defers a task.
    trigger.task_instance = SimpleNamespace(task_id=operator.task_id, **TI)  # type: ignore[assignment]
    return trigger, deferred.value, context


def first_event(trigger: ImageGenerationTaskTrigger) -> TriggerEvent:
    async def collect() -> list[TriggerEvent]:
        return [event async for event in trigger.run()]

    (event,) = asyncio.run(collect())
    return event


def through_the_triggerer(event: TriggerEvent) -> TriggerEvent:
    """The trip an event makes from the trigger runner to the triggerer's supervisor (msgpack, pydantic)."""
    import msgspec
    from airflow.jobs.triggerer_job_runner import TriggerEventEntry, messages
    from airflow.sdk.execution_time.comms import _new_encoder

    sent = messages.TriggerStateChanges(events=[TriggerEventEntry(7, event, None)])
    received = messages.TriggerStateChanges.model_validate(
        msgspec.msgpack.decode(_new_encoder().encode(sent.model_dump()))
    )
    assert received.events is not None
    return received.events[0].event


# Facts of the status read the XCom was built from: any two reads of one task differ in these.
READ_FIELDS = {"created": int, "created_at": str, "request_id": str}


def comparable(metadata: dict[str, Any]) -> dict[str, Any]:
    """
    The XCom with each sealed URL opened (Fernet tokens differ on every encryption, the URLs must not) and
    the read's own facts replaced by their types.
    """
    from airflow_provider_imggen.sealed_urls import unseal

    images = [
        {**image, "url_sealed": unseal(image["url_sealed"], label="image")} for image in metadata["images"]
    ]
    read = {name: type(metadata[name]) for name in READ_FIELDS}
    assert read == READ_FIELDS, read
    return {**metadata, **read, "images": images}


def generating_operator(**kwargs: Any) -> Any:
    from tests.integration.operators.test_image_generation import make_operator

    return make_operator(n=2, size="512x512", seed=21, deferrable=True, **FAST, **kwargs)


def worker_push(operator_kwargs: dict[str, Any], trigger: Any, deferred: Any, context: Any) -> Any:
    """What the worker path pushes for the same task: the ordinary event, execute_complete, XCom backend."""
    from airflow.sdk.execution_time.xcom import XCom

    plain = first_event(ImageGenerationTaskTrigger(generation_task_id=trigger.generation_task_id, **FAST))
    resumed = generating_operator(**operator_kwargs).execute_complete(
        context, event=plain.payload, **deferred.kwargs
    )
    return XCom.serialize_value(resumed)


def test_end_from_trigger_pushes_exactly_the_xcom_the_resumed_worker_pushes(
    dashscope_conn: EmulatorServer, supervisor: Supervisor
) -> None:
    import msgspec
    from airflow.sdk.execution_time.comms import _new_encoder
    from airflow.triggers.base import TaskSuccessEvent

    from tests.integration.operators.test_image_generation import XCOM_KEYS

    dashscope_conn.set_faults(task_pending_ms=100, task_duration_ms=200)
    trigger, deferred, context = ending_trigger(generating_operator(end_from_trigger=True))
    assert trigger.end_from_trigger and trigger.request_fields == {
        "model": "wan2.2-t2i-flash",
        "prompt": "a lighthouse at dawn",
        "negative_prompt": None,
        "size": "512x512",
        "n": 2,
        "seed": 21,
        "prompt_upsampling": None,
    }
    stored = json.dumps(trigger.serialize()[1])  # what the metadata DB keeps of the trigger
    assert API_KEY not in stored and "http" not in stored

    event = through_the_triggerer(first_event(trigger))
    assert isinstance(event, TaskSuccessEvent) and event.xcoms is None, "the XCom went as a worker's does"
    (pushed,) = supervisor.xcoms.values()
    assert (pushed.key, pushed.dag_id, pushed.run_id, pushed.task_id, pushed.map_index) == (
        "return_value",
        "unit",
        "manual__2026-01-01",
        "generate",
        -1,
    )
    # The message crosses to the supervisor as msgpack, and the Execution API stores its JSON value as is.
    ended = msgspec.msgpack.decode(_new_encoder().encode(pushed.model_dump()))["value"]
    assert isinstance(ended, dict) and set(ended) == XCOM_KEYS

    resumed = worker_push({}, trigger, deferred, context)
    assert comparable(ended) == comparable(resumed)
    assert [image["seed"] for image in ended["images"]] == [21, 22]
    # No image bytes, no usable signed URL, no key: masked URLs and Fernet tokens only.
    text = json.dumps(ended)
    assert API_KEY not in text and "Signature=" not in text.replace("Signature=***", "")
    assert len(task_submissions(dashscope_conn)) == 1, "the trigger never submits"


def test_end_from_trigger_keeps_failed_images_as_the_worker_does(
    dashscope_conn: EmulatorServer, supervisor: Supervisor
) -> None:
    from airflow.triggers.base import TaskSuccessEvent

    dashscope_conn.set_faults(fail_next_task_images=[[0]])
    trigger, deferred, context = ending_trigger(generating_operator(end_from_trigger=True))
    assert isinstance(first_event(trigger), TaskSuccessEvent)
    ended = supervisor.xcoms["return_value"].value
    assert [image["index"] for image in ended["images"]] == [1]
    assert [failed["index"] for failed in ended["failed_images"]] == [0]
    assert comparable(ended) == comparable(worker_push({}, trigger, deferred, context))


@pytest.mark.parametrize(
    "operator_kwargs", [{"do_xcom_push": False}, {"multiple_outputs": True}], ids=["no-push", "multiple"]
)
def test_end_from_trigger_pushes_what_the_task_runner_would(
    dashscope_conn: EmulatorServer, supervisor: Supervisor, operator_kwargs: dict[str, Any]
) -> None:
    from airflow.triggers.base import TaskSuccessEvent

    from tests.integration.operators.test_image_generation import XCOM_KEYS

    trigger, _, _ = ending_trigger(generating_operator(end_from_trigger=True, **operator_kwargs))
    assert isinstance(first_event(trigger), TaskSuccessEvent)
    pushed = supervisor.xcoms
    if not operator_kwargs.get("do_xcom_push", True):
        assert pushed == {}, "do_xcom_push=False: nothing, as on a worker"
        return
    # multiple_outputs: every key on its own, and return_value, as on a worker.
    assert set(pushed) == XCOM_KEYS | {"return_value"}
    result = pushed["return_value"].value
    assert all(pushed[key].value == value for key, value in result.items())


def test_end_from_trigger_leaves_failures_to_the_worker_which_raises_without_retry(
    dashscope_conn: EmulatorServer, supervisor: Supervisor
) -> None:
    """A TaskFailedEvent would be retried by Airflow while retries are left: FAILED must not be."""
    from airflow.sdk.exceptions import AirflowFailException
    from airflow.triggers.base import BaseTaskEndEvent

    from airflow_provider_imggen.exceptions import ImageGenerationTaskFailedError

    dashscope_conn.set_faults(fail_next_tasks=["DataInspectionFailed"])
    operator = generating_operator(end_from_trigger=True, retries=3)
    trigger, deferred, context = ending_trigger(operator)
    event = first_event(trigger)
    assert not isinstance(event, BaseTaskEndEvent) and event.payload["status"] == "failed"
    assert supervisor.xcoms == {}
    with pytest.raises(ImageGenerationTaskFailedError) as raised:
        operator.execute_complete(context, event=event.payload, **deferred.kwargs)
    assert isinstance(raised.value, AirflowFailException) and raised.value.code == "DataInspectionFailed"


def test_end_from_trigger_sends_the_ordinary_event_without_a_task_instance(
    dashscope_conn: EmulatorServer, supervisor: Supervisor
) -> None:
    """`airflow dags test` runs triggers with no task instance and resumes with a task-end event's payload."""
    trigger, _, _ = ending_trigger(generating_operator(end_from_trigger=True))
    trigger.task_instance = None
    event = first_event(trigger)
    assert type(event) is TriggerEvent and event.payload["status"] == "success"
    assert supervisor.xcoms == {}


def test_end_from_trigger_falls_back_to_the_worker_when_the_xcom_cannot_be_pushed(
    dashscope_conn: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.sdk.execution_time import task_runner

    # No supervisor to push the XCom to (as if the triggerer could not reach the Execution API).
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", None, raising=False)
    trigger, _, _ = ending_trigger(generating_operator(end_from_trigger=True))
    event = first_event(trigger)
    assert type(event) is TriggerEvent and event.payload["status"] == "success"
    assert len(task_submissions(dashscope_conn)) == 1


def test_end_from_trigger_is_off_by_default_and_left_to_the_worker_where_airflow_needs_it(
    dashscope_conn: EmulatorServer,
) -> None:
    from airflow.sdk import DAG, Asset, task

    from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator
    from tests.integration.operators.test_image_generation import START

    trigger, _, _ = ending_trigger(generating_operator())
    assert (trigger.end_from_trigger, trigger.request_fields) == (False, None)
    # Outlets: their asset events are recorded only when a worker finishes the task.
    trigger, _, _ = ending_trigger(generating_operator(end_from_trigger=True, outlets=[Asset("s3://b/k")]))
    assert trigger.end_from_trigger is False
    # A mapped downstream task: the XCom's length is recorded only when a worker pushes it.
    with DAG(dag_id="mapped_downstream", schedule=None, start_date=START):
        generate = ImageGenerationOperator(
            task_id="generate",
            prompt="a lighthouse at dawn",
            model="wan2.2-t2i-flash",
            size="512x512",
            deferrable=True,
            end_from_trigger=True,
            **FAST,
        )

        @task
        def each(item: object) -> None:
            """Maps over the generation's XCom."""

        each.expand(item=generate.output)
    trigger, _, _ = ending_trigger(generate)
    assert trigger.end_from_trigger is False


def test_end_from_trigger_makes_no_blocking_calls_on_the_event_loop(
    no_retry_conn: EmulatorServer, supervisor: Supervisor
) -> None:
    from airflow.triggers.base import TaskSuccessEvent
    from blockbuster import blockbuster_ctx

    trigger, _, _ = ending_trigger(generating_operator(end_from_trigger=True))
    with blockbuster_ctx(["airflow_provider_imggen"], excluded_modules=["airflow_provider_imggen.emulator"]):
        event = first_event(trigger)
    assert isinstance(event, TaskSuccessEvent) and "return_value" in supervisor.xcoms
