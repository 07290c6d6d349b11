"""
ImageGenerationBatchTrigger against the emulator over real HTTP and a real PostgreSQL ledger: pacing at the
quota, both over-quota behaviours, two copies of one trigger at once, retries that resume from the ledger.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from types import SimpleNamespace
from typing import Any

from airflow.triggers.base import TriggerEvent

from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.hooks.image_generation import ImageGenerationHook
from airflow_provider_imggen.ledger import open_ledger_store
from airflow_provider_imggen.operators.image_generation_batch import ImageGenerationBatchOperator
from airflow_provider_imggen.triggers.image_generation_batch import ImageGenerationBatchTrigger
from tests.conftest import task_submissions

MODEL = "wan2.2-t2i-flash"


def make_trigger(
    prompts: list[str], *, run_id: str | None = None, try_number: int = 1, **params: Any
) -> ImageGenerationBatchTrigger:
    operator = ImageGenerationBatchOperator(
        task_id="generate", prompts=prompts, model=MODEL, size="512*512", seed=11, **params
    )
    ti = SimpleNamespace(
        dag_id="content",
        run_id=run_id or f"manual__{uuid.uuid4().hex}",
        task_id="generate",
        map_index=-1,
        try_number=try_number,
    )
    return operator.batch_trigger(ImageGenerationHook(), ti)


async def _events(trigger: ImageGenerationBatchTrigger) -> list[TriggerEvent]:
    return [event async for event in trigger.run()]


def run_trigger(trigger: ImageGenerationBatchTrigger) -> dict[str, Any]:
    events = asyncio.run(_events(trigger))
    assert len(events) == 1
    payload = events[0].payload
    assert isinstance(payload, dict), payload
    return payload


def accepted(emulator: EmulatorServer) -> list[dict[str, Any]]:
    return [entry for entry in task_submissions(emulator) if entry.get("task_id")]


def test_every_prompt_is_sent_once_at_the_quota_and_delivered(
    emulator: EmulatorServer, batch_conn: str
) -> None:
    emulator.set_faults(quotas=True, task_pending_ms=0, task_duration_ms=1500, concurrency_overflow="refuse")
    prompts = [f"a lighthouse, variant {i}" for i in range(8)]
    started = time.monotonic()
    payload = run_trigger(make_trigger(prompts))
    took = time.monotonic() - started
    assert payload["status"] == "done" and payload["problems"] == []
    assert all(payload["tasks"]), payload
    assert len(set(payload["tasks"])) == 8
    assert len(accepted(emulator)) == 8 and emulator.billed_images() == 8
    # The probe found out the service refuses beyond the quota: nothing billed for it.
    assert payload["over_quota"] == "refuse"
    # 8 x 1.5 s, 2 at a time: 6 s at best; the pace and the predicted ends keep it near.
    assert took < 6 * 1.5, took


def test_a_service_that_queues_is_fed_ahead(emulator: EmulatorServer, batch_conn: str) -> None:
    emulator.set_faults(quotas=True, task_pending_ms=0, task_duration_ms=1500, concurrency_overflow="queue")
    payload = run_trigger(make_trigger([f"a harbour, variant {i}" for i in range(8)]))
    assert payload["problems"] == [] and all(payload["tasks"])
    assert payload["over_quota"] == "queue"
    assert payload["throttled"] == 0
    assert len(accepted(emulator)) == 8 and emulator.billed_images() == 8


def test_two_copies_of_the_trigger_send_each_prompt_once(emulator: EmulatorServer, batch_conn: str) -> None:
    emulator.set_faults(quotas=True, task_pending_ms=0, task_duration_ms=300, concurrency_overflow="refuse")
    run_id = f"manual__{uuid.uuid4().hex}"
    prompts = [f"a forest, variant {i}" for i in range(10)]
    first, second = make_trigger(prompts, run_id=run_id), make_trigger(prompts, run_id=run_id)

    async def both() -> list[list[TriggerEvent]]:
        return list(await asyncio.gather(_events(first), _events(second)))

    results = asyncio.run(both())
    payloads = [events[0].payload for events in results]
    for payload in payloads:
        assert payload["problems"] == [] and all(payload["tasks"]), payload
    assert payloads[0]["tasks"] == payloads[1]["tasks"]
    assert len(accepted(emulator)) == 10 and emulator.billed_images() == 10
    assert payloads[0]["sent"] + payloads[1]["sent"] >= 10


def test_a_retry_resumes_from_the_ledger_and_sends_nothing_again(
    emulator: EmulatorServer, batch_conn: str
) -> None:
    emulator.set_faults(task_pending_ms=0, task_duration_ms=100)
    run_id = f"manual__{uuid.uuid4().hex}"
    prompts = [f"a bridge, variant {i}" for i in range(4)]
    first = run_trigger(make_trigger(prompts, run_id=run_id))
    again = run_trigger(make_trigger(prompts, run_id=run_id, try_number=2))
    assert again["tasks"] == first["tasks"] and again["sent"] == 0
    assert len(accepted(emulator)) == 4


def test_a_claim_left_by_a_dead_copy_is_recovered_from_the_task_list_never_sent_again(
    emulator: EmulatorServer, batch_conn: str
) -> None:
    from airflow_provider_imggen.ledger.slots import SendSlots

    emulator.set_faults(task_pending_ms=0, task_duration_ms=100)
    run_id = f"manual__{uuid.uuid4().hex}"
    prompts = ["a dead copy's lighthouse", "a dead copy's harbour"]
    trigger = make_trigger(prompts, run_id=run_id)
    hook = ImageGenerationHook()
    store = open_ledger_store(batch_conn)
    dead = SendSlots(store=store, owner=trigger.owner, copy="dead")
    # The dead copy claimed both; it sent the first (a task exists), and died before sending the second.
    for index, request in enumerate(trigger.requests):
        held = dead.claim(request["key"], None, index=index, model=MODEL, images=1)
        assert held is not None
    sent = hook.submit_task(prompts[0], model=MODEL, size="512*512", seed=11)
    try:
        # The claims count as stale at once (a test does not wait out the request timeout).
        payload = run_trigger(ImageGenerationBatchTrigger(**{**trigger.serialize()[1], "stale_after": 0.0}))
    finally:
        store.close()
    assert payload["tasks"][0] == sent.generation_task_id
    assert payload["recovered"] == 1 and payload["sent"] == 0
    (problem,) = payload["problems"]
    assert problem["index"] == 1 and problem["status"] == "unknown"
    assert len(accepted(emulator)) == 1  # nothing sent again
