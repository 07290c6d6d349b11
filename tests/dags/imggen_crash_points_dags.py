"""
The crash points of a billable request, each hit in a real task process under an executor, followed by
Airflow's retry (tests/system/test_crash_points.py, benchmarks/bench_billing_safety.py --part crash).

One mapped task per case: try 1 arms the provider's test-only crash switch
(:mod:`airflow_provider_imggen.crash_points`) at the case's point, the way the case says (SIGKILL,
``AirflowTaskTimeout``, an exception); try 2 runs clean. The cases come from ``IMGGEN_CRASH_CASES`` (a
JSON list of ``[endpoint, point, how]``); each has a prompt of its own, so the emulator's billing log tells
them apart. ``IMGGEN_CRASH_DISARMED=1`` leaves the switch off in every try: the same cases with no crash,
the benchmark's clean anchor run. Connections: ``imggen_crash_gateway`` (OpenAI-compatible) and
``imggen_crash_native`` (DashScope: the task API for ``async``, the synchronous endpoint for ``sync``).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pendulum
from airflow.sdk import DAG

from airflow_provider_imggen.crash_points import ENV as CRASH_ENV
from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator

START = pendulum.datetime(2026, 1, 1, tz="UTC")
MODELS = {"gateway": "wan2.2-t2i-flash", "async": "wan2.2-t2i-flash", "sync": "qwen-image-2.0"}
CONNECTIONS = {
    "gateway": "imggen_crash_gateway",
    "async": "imggen_crash_native",
    "sync": "imggen_crash_native",
}
DEFAULT_CASES = [
    ["gateway", "after_send", "sigkill"],
    ["gateway", "after_record", "sigkill"],
    ["sync", "after_answer", "timeout"],
    ["gateway", "during_result_write", "exception"],
    ["async", "after_intent", "timeout"],
    ["async", "after_send", "sigkill"],
    ["async", "after_answer", "exception"],
    ["async", "after_record", "sigkill"],
]


def cases() -> list[list[str]]:
    return json.loads(os.environ.get("IMGGEN_CRASH_CASES", "null")) or DEFAULT_CASES


def case_prompt(endpoint: str, point: str, how: str) -> str:
    return f"crash case {endpoint} {point} {how}: a lighthouse"


class CrashingOnce(ImageGenerationOperator):
    """An ImageGenerationOperator whose try 1 stops at ``crash`` (``point:how``)."""

    def __init__(self, *, crash: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.crash = crash

    def execute(self, context: Any, *args: Any, **kwargs: Any) -> Any:
        armed = os.environ.get("IMGGEN_CRASH_DISARMED") != "1"
        if armed and context["ti"].try_number == 1 and not args and not kwargs:
            os.environ[CRASH_ENV] = self.crash
        else:
            os.environ.pop(CRASH_ENV, None)
        return super().execute(context, *args, **kwargs)


def case_arguments(endpoint: str, point: str, how: str) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "crash": f"{point}:{how}",
        "prompt": case_prompt(endpoint, point, how),
        "imggen_conn_id": CONNECTIONS[endpoint],
        "model": MODELS[endpoint],
    }
    if point == "during_result_write":
        arguments.update(
            response_format="b64_json", output_path=os.environ.get("IMGGEN_CRASH_OUTPUT", "/tmp/imggen-crash")
        )
    return arguments


with DAG(
    dag_id="imggen_crash_points",
    schedule=None,
    start_date=START,
    catchup=False,
    default_args={"retries": 1, "retry_delay": pendulum.duration(seconds=1)},
):
    CrashingOnce.partial(
        task_id="generate", size="512x512", n=2, poll_interval=0.2, max_poll_interval=0.5
    ).expand_kwargs([case_arguments(*case) for case in cases()])
