"""
The crash-point cases of tests/dags/imggen_crash_points_dags.py and how each is judged after its run:
shared by tests/system/test_crash_points.py (8 cases) and benchmarks/bench_billing_safety.py ``--part
crash`` (every case). Importable outside pytest: nothing done at import.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_provider_imggen.crash_points import HOWS, POINTS
from airflow_provider_imggen.emulator import EmulatorServer
from tests.local_executor import dag_run_rows, xcoms

CRASH_DAGS = Path(__file__).parent / "dags" / "imggen_crash_points_dags.py"
DAG_ID = "imggen_crash_points"
BILLABLE_KINDS = ("generate", "submit", "multimodal")
ENDPOINTS = ("gateway", "async", "sync")


def all_cases() -> list[list[str]]:
    """
    Every endpoint x point x way of dying: ``during_result_write`` needs ``b64_json`` output, which only
    the gateway serves (DashScope answers with URLs), so the native endpoints have four points: 39 cases.
    """
    return [
        [endpoint, point, how]
        for endpoint in ENDPOINTS
        for point in POINTS
        if endpoint == "gateway" or point != "during_result_write"
        for how in HOWS
    ]


def crash_connections(emulator: EmulatorServer, api_key: str) -> dict[str, str]:
    def connection(host: str, **extra: object) -> str:
        return json.dumps({"conn_type": "imggen", "host": host, "password": api_key, "extra": extra})

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
    images_billed_again: int = 0  # billed by the case's billed requests after its first

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
    airflow_env: dict[str, str], emulator: EmulatorServer, cases: list[list[str]]
) -> list[CaseReport]:
    """
    Join the latest run's task instances, XComs and final errors with the emulator's billing log, per case
    (run before another run of the DAG in the same Airflow home: the task logs are read by map index).
    Imports the DAG file (so Airflow) for its prompts: set ``AIRFLOW_HOME`` first outside pytest.
    """
    from tests.dags.imggen_crash_points_dags import case_prompt

    states = {
        map_index: state
        for map_index, state in dag_run_rows(airflow_env, DAG_ID, "task_instance", "map_index, state")
    }
    delivered = xcoms(airflow_env, DAG_ID)
    log = emulator.requests_log()
    # Which prompt each native task was created for: the submission the emulator logged with its task id.
    task_prompts = {
        entry["task_id"]: entry.get("prompt")
        for entry in log
        if entry["kind"] == "submit" and entry.get("task_id")
    }
    billed: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for entry in log:
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
                images_billed_again=sum(int(entry.get("billed_images") or 0) for entry in entries[1:]),
            )
        )
    return reports


def task_log(airflow_env: dict[str, str], map_index: int) -> Path | None:
    """The log file of a case's last try (of the DAG's runs in this Airflow home, the last by run id)."""
    logs = Path(airflow_env["AIRFLOW_HOME"], "logs")
    found = sorted(
        logs.glob(f"dag_id={DAG_ID}/run_id=*/task_id=generate/map_index={map_index}/attempt=*.log")
    )
    return found[-1] if found else None


def _reported(airflow_env: dict[str, str], map_index: int) -> bool:
    """Whether the case's last try failed naming what may have been billed (its task log says so)."""
    found = task_log(airflow_env, map_index)
    if found is None:
        return False
    text = found.read_text(errors="replace")
    return any(words in text for words in ("billed up to", "billed (request id", "may have been billed"))
