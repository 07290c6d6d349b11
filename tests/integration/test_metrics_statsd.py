"""
The provider's metrics as a deployment receives them: Airflow's StatsD backend, initialised as the task
runner does, sending to a real UDP listener, while the operator generates against the emulator over HTTP.
Every count is checked against the emulator's billing log, not against what the provider believes.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.exceptions import (
    ImageGenerationBudgetExceededError,
    ImageGenerationOutcomeUnknownError,
)
from airflow_provider_imggen.prices import LIST_PRICES
from tests.conftest import set_imggen_connection
from tests.integration.ledger.conftest import PG_CONN_ID, pg_conn, postgres_server  # noqa: F401
from tests.integration.operators.test_deferrable import fast
from tests.integration.operators.test_image_generation import make_context, make_operator
from tests.statsd_listener import StatsdListener, statsd_metrics


def generate(map_index: int, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("prompt", f"poster {map_index}")
    kwargs.setdefault("model", "wan2.2-t2i-flash")
    operator = make_operator(**fast(**kwargs))
    context = make_context(operator, map_index=map_index)
    operator.render_template_fields(context)  # type: ignore[arg-type]
    return operator.execute(context)  # type: ignore[arg-type]


def total(listener: StatsdListener, name: str) -> int | float:
    return sum(listener.values(f"airflow.{name}"))


@pytest.mark.usefixtures("pg_conn")
def test_billed_images_cost_failures_and_budget_refusals_reach_statsd(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_imggen_connection(
        monkeypatch,
        emulator.base_url,
        api_style="dashscope",
        max_retries=0,
        price_list="beijing",
        ledger=f"postgres://{PG_CONN_ID}/ledger_{uuid.uuid4().hex[:12]}",
        # Every send below counts against one budget: 2 + 2 + 2 (of 3 asked) + 1 unknown = 7.
        budget={"dag_run": 7},
    )
    with statsd_metrics() as listener:
        generate(0, n=2)  # the task API
        generate(1, n=2, model="wan2.6-t2i", endpoint="sync")  # the synchronous endpoint
        emulator.set_faults(fail_next_task_images=((0,),))
        generate(2, n=3)  # billed 2 of 3
        emulator.set_faults(fail_next=("billed_500",))
        with pytest.raises(ImageGenerationOutcomeUnknownError):
            generate(3, n=1, model="wan2.6-t2i", endpoint="sync")
        with pytest.raises(ImageGenerationBudgetExceededError):
            generate(4, n=1)
        listener.sync()

    billing = emulator.billing()
    answered = billing["billed_images"] - 1  # the billed_500 image was billed, never answered
    assert answered == 6
    assert total(listener, "imggen.images_billed") == answered
    flash, wan26 = LIST_PRICES["wan2.2-t2i-flash"][0], LIST_PRICES["wan2.6-t2i"][0]
    assert flash is not None and wan26 is not None
    billed_cost = flash.per_image * 4 + wan26.per_image * 2
    assert total(listener, "imggen.cost.billed.CNY") == billed_cost * 1_000_000
    estimated = flash.per_image * (2 + 3) + wan26.per_image * (2 + 1)
    assert total(listener, "imggen.cost.estimated.CNY") == estimated * 1_000_000
    assert total(listener, "imggen.failures") == 1
    # The billed-then-failed answer, by the code the emulator sent (a known one: named).
    by_code = {name: total(listener, name[len("airflow.") :]) for name in listener.names()}
    assert {name: count for name, count in by_code.items() if ".failures." in name} == {
        "airflow.imggen.failures.InternalError": 1
    }
    assert total(listener, "imggen.budget_refused") == 1 == total(listener, "imggen.budget_refused.dag_run")
    # One latency per answered request (two tasks, one synchronous answer), in milliseconds.
    latencies = listener.values("airflow.imggen.task_latency")
    assert len(latencies) == 3 and all(0 < value < 60_000 for value in latencies)
