"""
Each crash point of a billable send, hit in a batch's trigger: a copy of the trigger (its own process, as
in a triggerer) is SIGKILLed there, then another copy runs the same trigger to its end. Never two sends for
one claim; a send that may have happened and cannot be proven is reported, never sent again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest

from airflow_provider_imggen.emulator import EmulatorServer
from tests.conftest import task_submissions
from tests.integration.triggers.test_image_generation_batch import make_trigger

RUNNER = """
import asyncio, json, sys
from airflow_provider_imggen.triggers.image_generation_batch import ImageGenerationBatchTrigger

async def main():
    trigger = ImageGenerationBatchTrigger(**json.loads(sys.argv[1]))
    async for event in trigger.run():
        print("EVENT " + json.dumps(event.payload), flush=True)

asyncio.run(main())
"""


def run_copy(
    kwargs: dict[str, Any], crash_at: str | None = None, **env: str
) -> tuple[int, dict[str, Any] | None]:
    """Run one copy of the trigger in a process of its own; its exit code and event (None if it died)."""
    environment = {key: value for key, value in os.environ.items() if key != "IMGGEN_TEST_CRASH_AT"}
    if crash_at:
        environment["IMGGEN_TEST_CRASH_AT"] = crash_at
    environment.update(env)
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(kwargs)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=180,
    )
    events = [line[6:] for line in done.stdout.splitlines() if line.startswith("EVENT ")]
    if crash_at:
        assert f"imggen crash switch: sigkill at {crash_at.split(':')[0]}" in done.stdout, (
            done.stdout + done.stderr
        )
    return done.returncode, json.loads(events[0]) if events else None


def accepted(emulator: EmulatorServer) -> list[dict[str, Any]]:
    return [entry for entry in task_submissions(emulator) if entry.get("task_id")]


@pytest.mark.parametrize(
    ("point", "sent_before_the_kill", "lost_to_unknown"),
    [
        # Claimed, nothing sent: the claim cannot be told from a send whose task is not listed: reported.
        ("after_intent", 0, 1),
        # Sent, the answer on its way (held back by the service): the task list proves the task.
        ("after_send", 1, 0),
        ("after_answer", 1, 0),
        ("after_record", 1, 0),
        # Every task ended; the event never left: the next copy reads them again, sends nothing.
        ("trigger_event", 3, 0),
    ],
)
def test_a_copy_killed_at_each_point_is_finished_by_the_next_without_sending_twice(
    emulator: EmulatorServer, batch_conn: str, point: str, sent_before_the_kill: int, lost_to_unknown: int
) -> None:
    emulator.set_faults(task_pending_ms=0, task_duration_ms=200)
    prompts = [f"{point} lighthouse {uuid.uuid4().hex[:6]}, variant {i}" for i in range(3)]
    kwargs = {**make_trigger(prompts).serialize()[1], "stale_after": 0.0}
    env = {}
    if point == "after_send":
        emulator.set_faults(task_pending_ms=0, task_duration_ms=200, hold_ms=1500)
        env["IMGGEN_TEST_CRASH_DELAY"] = "0.3"
    code, event = run_copy(kwargs, f"{point}:sigkill", **env)
    assert code == -9 and event is None
    assert len(accepted(emulator)) == sent_before_the_kill
    emulator.set_faults(task_pending_ms=0, task_duration_ms=200)

    code, event = run_copy(kwargs)
    assert code == 0 and event is not None, event
    problems = event["problems"]
    assert len(problems) == lost_to_unknown, problems
    assert all(problem["status"] == "unknown" for problem in problems)
    delivered = [task for task in event["tasks"] if task]
    assert len(delivered) == 3 - lost_to_unknown
    # Never two sends for one claim: every accepted submission is one delivered task.
    assert len(accepted(emulator)) == len(delivered)
    assert sorted(entry["task_id"] for entry in accepted(emulator)) == sorted(delivered)
    if point != "after_intent":
        assert event["recovered"] == (1 if point in ("after_send", "after_answer") else 0)
