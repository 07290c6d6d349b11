"""
The operator's billing journal in the task state store: what a retry of the same task instance does with
what an earlier try paid for (the emulator over HTTP; the store kept in memory between the two tries, as
Airflow keeps it between tries of one task instance).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_imggen.billing_journal import JOURNAL_KEY
from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.exceptions import (
    ImageGenerationOutcomeUnknownError,
    ImageGenerationUndeliveredError,
)
from tests.integration.operators.test_image_generation import make_context, make_operator


class MemoryStore:
    """The task state store's get/set/delete for one task instance."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def set(self, key: str, value: Any, **_: Any) -> None:
        self.values[key] = value

    def delete(self, key: str) -> None:
        self.values.pop(key, None)


def run_try(store: MemoryStore, try_number: int, **kwargs: Any) -> dict[str, Any]:
    operator = make_operator(size="512x512", n=2, seed=7, **kwargs)
    context = make_context(operator, task_state_store=store)
    context["ti"].try_number = try_number
    operator.render_template_fields(context)  # type: ignore[arg-type]
    return operator.execute(context)  # type: ignore[arg-type]


def test_a_b64_write_that_fails_after_billing_is_not_paid_again(
    imggen_conn: EmulatorServer, tmp_path: Path
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("output_path below a file: every write fails")
    store = MemoryStore()
    with pytest.raises(ImageGenerationUndeliveredError, match="billed") as raised:
        run_try(store, 1, response_format="b64_json", output_path=str(blocked / "images"))
    assert isinstance(raised.value, AirflowFailException)
    [attempt] = store.get(JOURNAL_KEY)
    assert attempt["outcome"] == "undelivered"
    # The retry (an Airflow retry, or a cleared task): refuses to pay again, says why.
    with pytest.raises(ImageGenerationOutcomeUnknownError, match="could not be delivered"):
        run_try(store, 2, response_format="b64_json", output_path=str(blocked / "images"))
    assert imggen_conn.billed_images() == 2


def test_a_retry_after_the_answer_was_recorded_delivers_it_again(imggen_conn: EmulatorServer) -> None:
    store = MemoryStore()
    first = run_try(store, 1)
    # Try 1 died after recording its answer (before Airflow stored the XCom): try 2 delivers the same.
    again = run_try(store, 2)
    assert again == first and imggen_conn.billed_images() == 2
    # reuse=False: new images, paid for on purpose.
    third = run_try(store, 3, reuse=False)
    assert third["request_id"] != first["request_id"] and imggen_conn.billed_images() == 4


def test_an_edited_delivery_is_not_returned(imggen_conn: EmulatorServer) -> None:
    store = MemoryStore()
    run_try(store, 1)
    [attempt] = store.get(JOURNAL_KEY)
    attempt["delivered"]["images"][0] = {"index": 0, "location": "file:///etc/passwd"}
    # Not an XCom this operator would push: refused, and not paid again either.
    with pytest.raises(ImageGenerationOutcomeUnknownError, match="was answered"):
        run_try(store, 2)
    assert imggen_conn.billed_images() == 2


@pytest.mark.parametrize("how", ["exception", "timeout"])
def test_a_trigger_stopped_after_its_task_ended_is_retried_without_paying_again(
    dashscope_conn: EmulatorServer, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The triggerer's crash point: the trigger dies once the task ended; the retry reconnects to it."""
    import asyncio

    from airflow.sdk.exceptions import TaskDeferred

    from airflow_provider_imggen.crash_points import ENV as CRASH_ENV

    dashscope_conn.set_faults(task_pending_ms=100, task_duration_ms=100)
    store = MemoryStore()
    operator = make_operator(size="512x512", n=2, seed=7, deferrable=True, poll_interval=0.1)
    context = make_context(operator, task_state_store=store)
    operator.render_template_fields(context)  # type: ignore[arg-type]
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)  # type: ignore[arg-type]
    # What Airflow stores of the submission before the deferral, as ResumableJobMixin does.
    assert store.get("imggen_task")["generation_task_id"]

    monkeypatch.setenv(CRASH_ENV, f"trigger_event:{how}")

    async def first_event() -> Any:
        return [event async for event in deferred.value.trigger.run()]

    with pytest.raises(BaseException, match="trigger_event"):
        asyncio.run(first_event())
    # Airflow fails the try (a trigger error) and retries the task: try 2 finds the task it paid for.
    retried = run_try(store, 2, deferrable=False, poll_interval=0.1)
    (submission,) = [entry for entry in dashscope_conn.requests_log() if entry["kind"] == "submit"]
    assert retried["generation_task_id"] == submission["task_id"] and len(retried["images"]) == 2
    assert dashscope_conn.billed_images() == 2, "paid once"
