"""
ImageGenerationOperator on the native task API and ImageGenerationTaskSensor, against the emulator over
real HTTP on loopback: sync polling in the worker, deferral to the real trigger and resume, failures.

Runs without a metadata database (operators executed directly); the Airflow-state parts (retries that
reconnect, reschedule mode, triggers run by Airflow) are in test_async_dag_runs.py.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from airflow.sdk import DAG
from airflow.sdk.exceptions import (
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
    TaskDeferred,
)

from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.exceptions import (
    ImageGenerationTaskFailedError,
    ImageGenerationTaskTimeoutError,
    ImageGenerationValidationError,
)
from airflow_provider_imggen.hooks.image_generation import ImageGenerationHook
from airflow_provider_imggen.sealed_urls import unseal
from airflow_provider_imggen.sensors.image_generation import ImageGenerationTaskSensor
from tests.conftest import task_queries, task_submissions
from tests.integration.operators.test_image_generation import (
    IMAGE_KEYS,
    START,
    XCOM_KEYS,
    make_context,
    make_operator,
    run,
)


def fast(**kwargs: Any) -> dict[str, Any]:
    """Polling settings that keep tests quick."""
    return {"poll_interval": 0.05, "max_poll_interval": 0.1, **kwargs}


def submit(n: int = 2, seed: int = 11) -> str:
    """Submit a native task directly through the hook (what a submitting task did earlier)."""
    return (
        ImageGenerationHook()
        .submit_task("a lighthouse at dawn", n=n, size="512x512", seed=seed)
        .generation_task_id
    )


def make_sensor(**kwargs: Any) -> ImageGenerationTaskSensor:
    kwargs.setdefault("poke_interval", 0.05)
    kwargs.setdefault("max_poll_interval", 0.1)
    with DAG(dag_id="unit", schedule=None, start_date=START):
        return ImageGenerationTaskSensor(task_id="wait", **kwargs)


def run_trigger(deferred: TaskDeferred) -> dict[str, Any]:
    """Run the trigger a task deferred to, as the triggerer would, and return its one event's payload."""

    async def first_event() -> dict[str, Any]:
        events = [event async for event in deferred.trigger.run()]
        assert len(events) == 1, "a trigger fires exactly one event"
        return dict(events[0].payload)

    return asyncio.run(first_event())


def defer_and_resume(operator: Any, context: dict[str, Any]) -> dict[str, Any]:
    """execute() must defer; the real trigger runs; the task resumes in execute_complete as Airflow does."""
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    assert deferred.value.method_name == "execute_complete"
    event = run_trigger(deferred.value)
    assert "url" not in str(event) and "sk-" not in str(event), "events stay small: no URLs, no key"
    return getattr(operator, deferred.value.method_name)(
        context, event=event, **(deferred.value.kwargs or {})
    )


def check_images_download(metadata: dict[str, Any], size: tuple[int, int]) -> None:
    import io

    from PIL import Image

    for image in metadata["images"]:
        assert set(image) == IMAGE_KEYS
        # XCom shows the URL masked (it does not download); the sealed copy opens with the Fernet key.
        assert requests.get(image["url"], timeout=10).status_code in (403, 404), (
            "the masked URL does not download"
        )
        response = requests.get(unseal(image["url_sealed"], label="image"), timeout=10)
        assert response.status_code == 200
        assert Image.open(io.BytesIO(response.content)).size == size


# -- operator: sync polling in the worker ------------------------------------------------------------------


def test_native_sync_mode_submits_once_polls_in_the_worker_and_pushes_the_usual_xcom(
    dashscope_conn: EmulatorServer,
) -> None:
    dashscope_conn.set_faults(task_pending_ms=100, task_duration_ms=200)
    metadata = run(make_operator(n=2, size="768x512", seed=5, deferrable=False, **fast()))

    assert set(metadata) == XCOM_KEYS
    assert (metadata["model"], metadata["n"], metadata["size"], metadata["seed"]) == (
        "wan2.2-t2i-flash",
        2,
        "768x512",
        5,
    )
    assert [(image["index"], image["seed"]) for image in metadata["images"]] == [(0, 5), (1, 6)]
    assert metadata["task_status"] == "SUCCEEDED" and metadata["failed_images"] == []
    check_images_download(metadata, (768, 512))
    (submission,) = task_submissions(dashscope_conn)
    assert submission["task_id"] == metadata["generation_task_id"] and submission["billed_images"] == 2
    assert len(task_queries(dashscope_conn)) >= 2, "it polled until the task ended"


def test_native_and_openai_paths_push_the_same_xcom_shape(
    dashscope_conn: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import set_imggen_connection

    native = run(make_operator(n=2, size="512x512", seed=3, **fast()))
    set_imggen_connection(
        monkeypatch,
        f"{dashscope_conn.base_url}/v1",
        conn_id="imggen_openai",
        default_model="wan2.2-t2i-flash",
    )
    openai = run(make_operator(n=2, size="512x512", seed=3, imggen_conn_id="imggen_openai"))

    assert set(native) == set(openai) == XCOM_KEYS
    assert [set(image) for image in native["images"]] == [set(image) for image in openai["images"]]
    same = ("model", "prompt", "size", "n", "seed", "response_format", "failed_images")
    assert {key: native[key] for key in same} == {key: openai[key] for key in same}
    assert (openai["generation_task_id"], openai["task_status"]) == (None, None)


def test_openai_api_with_deferrable_generates_synchronously_and_says_why(
    imggen_conn: EmulatorServer, capfd: pytest.CaptureFixture[str]
) -> None:
    metadata = run(make_operator(size="512x512", deferrable=True))  # would raise TaskDeferred if it deferred

    assert len(metadata["images"]) == 1
    logged = "".join(capfd.readouterr())
    assert "deferrable=True has no effect with the OpenAI-compatible API" in logged


@pytest.mark.parametrize(
    ("arguments", "parameter"),
    [
        pytest.param({"wait_for_completion": False}, "wait_for_completion", id="openai-submit-only"),
    ],
)
def test_openai_api_refuses_what_needs_a_task(
    imggen_conn: EmulatorServer, arguments: dict[str, Any], parameter: str
) -> None:
    with pytest.raises(ImageGenerationValidationError) as raised:
        run(make_operator(**arguments))
    assert raised.value.parameter == parameter
    assert imggen_conn.requests_log() == []


def test_native_api_refuses_b64_json_before_submitting(dashscope_conn: EmulatorServer, tmp_path: Any) -> None:
    with pytest.raises(ImageGenerationValidationError) as raised:
        run(make_operator(response_format="b64_json", output_path=str(tmp_path)))
    assert raised.value.parameter == "response_format" and "returns result URLs only" in str(raised.value)
    assert dashscope_conn.requests_log() == []


@pytest.mark.parametrize(
    ("arguments", "parameter"),
    [
        pytest.param({"poll_interval": 0}, "poll_interval", id="poll-zero"),
        pytest.param({"poll_interval": 5, "max_poll_interval": 1}, "max_poll_interval", id="max-below"),
        pytest.param({"wait_timeout": -1}, "wait_timeout", id="timeout-negative"),
        pytest.param({"wait_timeout": float("inf")}, "wait_timeout", id="timeout-inf"),
        pytest.param({"poll_interval": float("inf")}, "poll_interval", id="poll-inf"),
        pytest.param({"max_poll_interval": float("nan")}, "max_poll_interval", id="max-nan"),
        pytest.param({"deferrable": "yes"}, "deferrable", id="deferrable-text"),
        pytest.param({"wait_for_completion": None}, "wait_for_completion", id="wait-none"),
    ],
)
def test_bad_wait_arguments_fail_when_the_dag_is_parsed(arguments: dict[str, Any], parameter: str) -> None:
    with pytest.raises(ImageGenerationValidationError) as raised:
        make_operator(**arguments)
    assert raised.value.parameter == parameter


def test_native_failed_task_fails_without_retry_with_the_apis_message(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(fail_next_tasks=["DataInspectionFailed"], task_duration_ms=50)
    with pytest.raises(ImageGenerationTaskFailedError) as raised:
        run(make_operator(**fast()))

    assert isinstance(raised.value, AirflowFailException), "FAILED is final: no Airflow retry"
    assert raised.value.task_status == "FAILED" and raised.value.code == "DataInspectionFailed"
    assert "inappropriate content" in str(raised.value)
    assert len(task_submissions(dashscope_conn)) == 1


def test_native_partial_failure_delivers_the_other_images_and_lists_the_failed_one(
    dashscope_conn: EmulatorServer, capfd: pytest.CaptureFixture[str]
) -> None:
    dashscope_conn.set_faults(fail_next_task_images=[[1]])
    metadata = run(make_operator(n=3, size="512x512", seed=100, **fast()))

    assert [(image["index"], image["seed"]) for image in metadata["images"]] == [(0, 100), (2, 102)]
    assert metadata["failed_images"] == [
        {
            "index": 1,
            "code": "DataInspectionFailed",
            "message": "Output data may contain inappropriate content.",
        }
    ]
    assert metadata["usage"] == {"image_count": 2}
    check_images_download(metadata, (512, 512))
    logged = "".join(capfd.readouterr())
    assert "image 1 failed: DataInspectionFailed" in logged


def test_every_image_failed_fails_the_task(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(fail_next_task_images=[[0, 1]])
    with pytest.raises(ImageGenerationTaskFailedError, match="all 2 image"):
        run(make_operator(n=2, size="512x512", **fast()))


def test_sync_wait_timeout_cancels_a_pending_task(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(task_pending_ms=60_000)
    with pytest.raises(ImageGenerationTaskTimeoutError) as raised:
        run(make_operator(**fast(wait_timeout=0.3)))

    assert not isinstance(raised.value, AirflowFailException), "a retry reconnects: Airflow may retry"
    (task,) = dashscope_conn.tasks()
    assert task["task_status"] == "CANCELED"
    (submission,) = task_submissions(dashscope_conn)
    assert submission["billed_images"] == 0, "a canceled task is not billed"


def test_submit_only_returns_the_task_id_at_once(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(task_pending_ms=60_000)
    metadata = run(make_operator(n=2, size="512x512", seed=8, wait_for_completion=False))

    assert set(metadata) == XCOM_KEYS
    assert metadata["task_status"] == "PENDING" and metadata["images"] == []
    (task,) = dashscope_conn.tasks()
    assert task["task_id"] == metadata["generation_task_id"] and task["task_status"] == "PENDING"
    assert task_queries(dashscope_conn) == [], "it did not wait"


class TaskStateStore:
    """The part of Airflow's task state store ResumableJobMixin uses: what a try left for the next one."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def set(self, key: str, value: Any) -> None:
        self.values[key] = value


def test_the_state_key_names_the_generation_task_and_a_record_from_before_the_rename_reconnects(
    dashscope_conn: EmulatorServer,
) -> None:
    store = TaskStateStore()
    first = run(make_operator(n=2, size="512x512", seed=9, **fast()), task_state_store=store)
    record = store.values["imggen_task"]
    assert set(record) == {"generation_task_id", "request_sha256", "submitted_at"}
    assert record["generation_task_id"] == first["generation_task_id"]

    # A try of the previous version stored {"task_id": ...}: the retry after the upgrade reconnects to it.
    store.values["imggen_task"] = {
        "task_id": record["generation_task_id"],
        "request_sha256": record["request_sha256"],
        "submitted_at": record["submitted_at"],
    }
    again = run(make_operator(n=2, size="512x512", seed=9, **fast()), task_state_store=store)

    assert again["generation_task_id"] == first["generation_task_id"]
    assert [image["url"] for image in again["images"]] == [image["url"] for image in first["images"]]
    assert len(task_submissions(dashscope_conn)) == 1, "reconnected: nothing submitted (or billed) again"


def test_on_kill_cancels_the_pending_task(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(task_pending_ms=60_000)
    operator = make_operator(wait_for_completion=False)
    run(operator)
    operator.wait_for_completion = True  # as if killed while waiting for it

    operator.on_kill()

    (task,) = dashscope_conn.tasks()
    assert task["task_status"] == "CANCELED"


# -- operator: deferral to the real trigger, and resume -------------------------------------------------


def test_deferrable_operator_submits_in_execute_and_resumes_with_the_same_xcom(
    dashscope_conn: EmulatorServer,
) -> None:
    dashscope_conn.set_faults(task_pending_ms=100, task_duration_ms=200)
    operator = make_operator(n=2, size="512x512", seed=21, deferrable=True, **fast(wait_timeout=60))
    context = make_context(operator)
    operator.render_template_fields(context)  # type: ignore[arg-type]

    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)  # type: ignore[arg-type]
    # The billable POST happened in execute(), before the trigger exists; the trigger only reads.
    (submission,) = task_submissions(dashscope_conn)
    assert deferred.value.trigger.generation_task_id == submission["task_id"]
    assert deferred.value.timeout is not None
    queries_before = len(task_queries(dashscope_conn))

    event = run_trigger(deferred.value)
    assert event["status"] == "success" and event["generation_task_id"] == submission["task_id"]
    assert len(task_submissions(dashscope_conn)) == 1, "the trigger never submits"
    assert len(task_queries(dashscope_conn)) > queries_before

    # Airflow resumes on a fresh operator instance.
    resumed = make_operator(n=2, size="512x512", seed=21, deferrable=True, **fast(wait_timeout=60))
    metadata = resumed.execute_complete(context, event=event, **deferred.value.kwargs)  # type: ignore[arg-type]
    assert set(metadata) == XCOM_KEYS
    assert metadata["generation_task_id"] == submission["task_id"] and metadata["seed"] == 21
    assert [image["seed"] for image in metadata["images"]] == [21, 22]
    check_images_download(metadata, (512, 512))


def test_deferred_failed_task_fails_with_the_apis_message(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(fail_next_tasks=["InvalidParameter"])
    operator = make_operator(deferrable=True, **fast())
    context = make_context(operator)

    with pytest.raises(ImageGenerationTaskFailedError) as raised:
        defer_and_resume(operator, context)
    assert isinstance(raised.value, AirflowFailException)
    assert raised.value.code == "InvalidParameter" and "invalid for this model" in str(raised.value)


def test_deferred_timeout_cancels_the_pending_task_and_may_be_retried(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(task_pending_ms=60_000)
    operator = make_operator(deferrable=True, **fast(wait_timeout=0.3))
    context = make_context(operator)

    with pytest.raises(ImageGenerationTaskTimeoutError) as raised:
        defer_and_resume(operator, context)
    assert not isinstance(raised.value, AirflowFailException)
    (task,) = dashscope_conn.tasks()
    assert task["task_status"] == "CANCELED"


def test_deferred_partial_failure_is_reported_per_image(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(fail_next_task_images=[[0]])
    operator = make_operator(n=2, size="512x512", seed=1, deferrable=True, **fast())

    metadata = defer_and_resume(operator, make_context(operator))

    assert [image["index"] for image in metadata["images"]] == [1]
    assert [failed["index"] for failed in metadata["failed_images"]] == [0]


def test_killing_a_deferred_operator_cancels_its_pending_task_a_sensor_does_not(
    dashscope_conn: EmulatorServer,
) -> None:
    """A user kills the deferred task: the triggerer calls the trigger's on_kill."""
    dashscope_conn.set_faults(task_pending_ms=60_000)
    operator = make_operator(deferrable=True, **fast())
    with pytest.raises(TaskDeferred) as operator_deferred:
        operator.execute(make_context(operator))  # type: ignore[arg-type]
    watched = submit()
    sensor = make_sensor(generation_task_id=watched, deferrable=True)
    with pytest.raises(TaskDeferred) as sensor_deferred:
        sensor.execute(make_context(sensor))  # type: ignore[arg-type]
    for deferred in (operator_deferred, sensor_deferred):
        # As the triggerer does; BaseTrigger then sets trigger.task_id to the Airflow task's id.
        deferred.value.trigger.task_instance = SimpleNamespace(task_id="generate")  # type: ignore[assignment]

    asyncio.run(operator_deferred.value.trigger.on_kill())
    asyncio.run(sensor_deferred.value.trigger.on_kill())

    statuses = {task["task_id"]: task["task_status"] for task in dashscope_conn.tasks()}
    assert statuses[operator_deferred.value.trigger.generation_task_id] == "CANCELED", (
        "the operator paid for it"
    )
    assert statuses[watched] == "PENDING", "the sensor only watches a task it does not own"


# -- sensor ----------------------------------------------------------------------------------------------


def test_sensor_poke_mode_waits_then_pushes_the_operators_xcom_shape(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(task_pending_ms=100, task_duration_ms=200)
    task_id = submit(n=2)
    sensor = make_sensor(generation_task_id=task_id)

    metadata = sensor.execute(make_context(sensor))  # type: ignore[arg-type]

    assert set(metadata) == XCOM_KEYS
    assert metadata["generation_task_id"] == task_id and len(metadata["images"]) == 2 and metadata["n"] == 2
    # The prompt comes with the results; the rest of the request does not: None, not guessed.
    assert metadata["prompt"] == "a lighthouse at dawn"
    assert (metadata["seed"], metadata["size"], metadata["model"]) == (None, None, None)
    check_images_download(metadata, (512, 512))
    assert len(task_queries(dashscope_conn)) >= 2
    assert len(task_submissions(dashscope_conn)) == 1, "the sensor only reads"


def test_sensor_given_the_submitting_xcom_carries_its_request_fields(dashscope_conn: EmulatorServer) -> None:
    submitted = run(make_operator(n=2, size="512x512", seed=40, wait_for_completion=False))
    sensor = make_sensor(generation_task_id=submitted)

    metadata = sensor.execute(make_context(sensor))  # type: ignore[arg-type]

    assert (metadata["seed"], metadata["size"], metadata["prompt"], metadata["model"]) == (
        40,
        "512x512",
        "a lighthouse at dawn",
        "wan2.2-t2i-flash",
    )
    assert [image["seed"] for image in metadata["images"]] == [40, 41]


@pytest.mark.parametrize("deferrable", [False, True], ids=["poke", "deferrable"])
def test_sensor_fails_on_a_failed_task_without_retry(
    dashscope_conn: EmulatorServer, deferrable: bool
) -> None:
    dashscope_conn.set_faults(fail_next_tasks=["DataInspectionFailed"])
    sensor = make_sensor(generation_task_id=submit(), deferrable=deferrable)
    context = make_context(sensor)

    with pytest.raises(ImageGenerationTaskFailedError) as raised:
        defer_and_resume(sensor, context) if deferrable else sensor.execute(context)  # type: ignore[arg-type]
    assert isinstance(raised.value, AirflowFailException)
    assert raised.value.task_status == "FAILED" and raised.value.code == "DataInspectionFailed"


@pytest.mark.parametrize("deferrable", [False, True], ids=["poke", "deferrable"])
def test_sensor_fails_on_an_expired_task(dashscope_conn: EmulatorServer, deferrable: bool) -> None:
    task_id = submit()
    dashscope_conn.expire_task(task_id)
    sensor = make_sensor(generation_task_id=task_id, deferrable=deferrable)
    context = make_context(sensor)

    with pytest.raises(ImageGenerationTaskFailedError) as raised:
        defer_and_resume(sensor, context) if deferrable else sensor.execute(context)  # type: ignore[arg-type]
    assert raised.value.task_status == "UNKNOWN" and "expired" in str(raised.value)


def test_sensor_soft_fail_skips_on_a_failed_task(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(fail_next_tasks=["InvalidParameter"])
    sensor = make_sensor(generation_task_id=submit(), soft_fail=True)
    with pytest.raises(AirflowSkipException):
        sensor.execute(make_context(sensor))  # type: ignore[arg-type]


def test_sensor_partial_failure_delivers_the_other_images(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(fail_next_task_images=[[1]])
    sensor = make_sensor(generation_task_id=submit(n=3), deferrable=True)

    metadata = defer_and_resume(sensor, make_context(sensor))

    assert [image["index"] for image in metadata["images"]] == [0, 2]
    assert [(failed["index"], failed["code"]) for failed in metadata["failed_images"]] == [
        (1, "DataInspectionFailed")
    ]


def test_deferrable_sensor_times_out_as_a_sensor(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(task_pending_ms=60_000)
    sensor = make_sensor(generation_task_id=submit(), deferrable=True, timeout=0.3)

    with pytest.raises(AirflowSensorTimeout, match="still PENDING"):
        defer_and_resume(sensor, make_context(sensor))


def test_sensor_reads_the_task_id_of_an_xcom_pushed_before_the_rename(dashscope_conn: EmulatorServer) -> None:
    generation_task_id = submit(n=1)
    sensor = make_sensor(generation_task_id={"task_id": generation_task_id, "seed": 11})

    metadata = sensor.execute(make_context(sensor))  # type: ignore[arg-type]

    assert metadata["generation_task_id"] == generation_task_id and len(metadata["images"]) == 1


def test_sensor_refuses_something_that_is_not_a_task_id(dashscope_conn: EmulatorServer) -> None:
    sensor = make_sensor(generation_task_id={"images": []})
    with pytest.raises(ImageGenerationValidationError) as raised:
        sensor.execute(make_context(sensor))  # type: ignore[arg-type]
    assert raised.value.parameter == "generation_task_id"
    assert dashscope_conn.requests_log() == []
