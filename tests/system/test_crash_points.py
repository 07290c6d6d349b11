"""
Crash points in real task processes under LocalExecutor (SIGKILL included), each followed by Airflow's
retry: nothing is billed twice, nothing billed goes unreported, no task adopts another's generation.

The DAG (tests/dags/imggen_crash_points_dags.py) maps one task per case; benchmarks/bench_billing_safety.py
``--part crash`` runs every point x endpoint x way of dying with the same DAG and :func:`judge_cases`.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_provider_imggen.emulator import EmulatorServer
from tests.conftest import API_KEY, TESTS_DIR, dag_run_rows
from tests.system.test_async_dag_runs import api_server, run_dag_under_local_executor  # noqa: F401
from tests.system.test_dag_runs import xcoms

CRASH_DAGS = TESTS_DIR / "dags" / "imggen_crash_points_dags.py"
DAG_ID = "imggen_crash_points"
BILLABLE_KINDS = ("generate", "submit", "multimodal")


def crash_connections(emulator: EmulatorServer) -> dict[str, str]:
    def connection(host: str, **extra: object) -> str:
        return json.dumps({"conn_type": "imggen", "host": host, "password": API_KEY, "extra": extra})

    return {
        "AIRFLOW_CONN_IMGGEN_CRASH_GATEWAY": connection(f"{emulator.base_url}/v1", max_retries=2),
        "AIRFLOW_CONN_IMGGEN_CRASH_NATIVE": connection(
            emulator.base_url, max_retries=2, api_style="dashscope"
        ),
    }


def expected_outcome(endpoint: str, point: str, how: str) -> str:
    """
    What the case must end as: ``delivered`` (the task succeeded with every image paid for, once) or
    ``reported`` (it failed without a retry, its error naming what may have been billed).

    A stop before the send in this process is provably nothing (the retry sends); a SIGKILL there is not
    (the retry cannot tell it from a kill mid-send, finds nothing in the task list and fails closed). On
    the gateway and the synchronous endpoint an answer not recorded is lost: reported, never re-sent.
    """
    if point == "after_intent":
        return "reported" if how == "sigkill" else "delivered"
    if endpoint == "async" or point == "after_record":
        return "delivered"
    return "reported"


@dataclass
class CaseReport:
    case: tuple[str, str, str]
    state: str
    expected: str
    billed_requests: int
    billed_images: int
    delivered_images: int
    reported: bool
    adopted_wrong_task: bool

    @property
    def outcome(self) -> str:
        if self.state == "success" and self.delivered_images:
            return "delivered"
        return "reported" if self.reported else "unreported"

    @property
    def unaccounted_images(self) -> int:
        """Billed images neither delivered nor named by the task's final error."""
        if self.outcome == "reported":
            return 0
        return max(0, self.billed_images - self.delivered_images)

    @property
    def billed_twice(self) -> bool:
        return self.billed_requests > 1


def judge_cases(
    airflow_env: dict[str, str], emulator: EmulatorServer, cases: list[list[str]], printed: str
) -> list[CaseReport]:
    """Join the run's task instances, XComs and final errors with the emulator's billing log, per case."""
    from tests.dags.imggen_crash_points_dags import case_prompt

    states = {
        map_index: state
        for map_index, state in dag_run_rows(airflow_env, DAG_ID, "task_instance", "map_index, state")
    }
    delivered = xcoms(airflow_env, DAG_ID)
    # Which prompt each native task was created for: the submission the emulator logged with its task id.
    task_prompts = {
        entry["task_id"]: entry.get("prompt")
        for entry in emulator.requests_log()
        if entry["kind"] == "submit" and entry.get("task_id")
    }
    billed: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for entry in emulator.requests_log():
        if entry["kind"] in BILLABLE_KINDS and entry["billed"]:
            billed[str(entry.get("prompt"))].append(entry)
    reports = []
    for map_index, case in enumerate(cases):
        prompt = case_prompt(*case)
        xcom = delivered.get(("generate", map_index))
        images = len(xcom["images"]) if isinstance(xcom, dict) else 0
        generation_task_id = xcom.get("generation_task_id") if isinstance(xcom, dict) else None
        entries = billed.get(prompt, [])
        reports.append(
            CaseReport(
                case=(case[0], case[1], case[2]),
                state=str(states.get(map_index)),
                expected=expected_outcome(*case),
                billed_requests=len(entries),
                billed_images=sum(int(entry.get("billed_images") or 0) for entry in entries),
                delivered_images=images,
                reported=_reported(airflow_env, map_index),
                adopted_wrong_task=generation_task_id is not None
                and task_prompts.get(generation_task_id) != prompt,
            )
        )
    return reports


def _reported(airflow_env: dict[str, str], map_index: int) -> bool:
    """Whether the case's last try failed naming what may have been billed (its task log says so)."""
    logs = Path(airflow_env["AIRFLOW_HOME"], "logs")
    found = sorted(
        logs.glob(f"dag_id={DAG_ID}/run_id=*/task_id=generate/map_index={map_index}/attempt=*.log")
    )
    if not found:
        return False
    text = found[-1].read_text(errors="replace")
    return any(words in text for words in ("billed up to", "billed (request id", "may have been billed"))


def test_every_crash_point_is_retried_without_paying_twice(
    api_server: dict[str, str],  # noqa: F811
    emulator: EmulatorServer,
    tmp_path: Path,
) -> None:
    from tests.dags.imggen_crash_points_dags import DEFAULT_CASES

    # Answers held back long enough for the after_send alarm (0.5 s) to land while the request is in flight.
    emulator.set_faults(hold_ms=1500, task_pending_ms=300, task_duration_ms=300)
    printed = run_dag_under_local_executor(
        api_server,
        DAG_ID,
        crash_connections(emulator),
        dag_file=CRASH_DAGS,
        IMGGEN_CRASH_OUTPUT=str(tmp_path / "images"),
    )
    reports = judge_cases(api_server, emulator, DEFAULT_CASES, printed)
    table = "\n".join(f"{report}" for report in reports) + "\n" + printed[-3000:]
    assert [r.outcome for r in reports] == [r.expected for r in reports], table
    assert not any(r.billed_twice for r in reports), table
    assert sum(r.unaccounted_images for r in reports) == 0, table
    assert not any(r.adopted_wrong_task for r in reports), table
    # Every case that sent anything paid n=2 exactly once.
    assert all(r.billed_images in (0, 2) for r in reports), table
