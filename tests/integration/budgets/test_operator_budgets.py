"""
Budgets on ImageGenerationOperator, with real parts: the emulator over HTTP (whose billing log is what is
counted), the ledger in PostgreSQL or S3 (moto_server). A send that would exceed a budget is refused before
it leaves; what may have been billed stays counted; what provably was not is given back.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest

from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.exceptions import (
    ImageGenerationBudgetExceededError,
    ImageGenerationOutcomeUnknownError,
    ImageGenerationRejectedError,
    ImageGenerationValidationError,
)
from tests.conftest import set_imggen_connection
from tests.integration.ledger.conftest import PG_CONN_ID, pg_conn, postgres_server  # noqa: F401
from tests.integration.operators.test_deferrable import fast
from tests.integration.operators.test_image_generation import make_context, make_operator
from tests.s3_fixtures import S3Bucket


@pytest.fixture(params=["postgres", "s3"])
def ledger(request: pytest.FixtureRequest, s3: S3Bucket) -> str:
    if request.param == "s3":
        return f"s3://aws_default@{s3.name}/imggen-ledger"
    request.getfixturevalue("pg_conn")
    return f"postgres://{PG_CONN_ID}/ledger_{uuid.uuid4().hex[:16]}"  # a table per test


def connect(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, ledger: str | None, **extra: Any
) -> None:
    set_imggen_connection(
        monkeypatch,
        emulator.base_url,
        api_style="dashscope",
        max_retries=0,
        price_list="beijing",
        **({"ledger": ledger} if ledger else {}),
        **extra,
    )


def generate(map_index: int, run_id: str = "manual__2026-12-07", **kwargs: Any) -> dict[str, Any]:
    """One mapped task instance of the DAG run ``run_id`` (a new prompt each: another request)."""
    kwargs.setdefault("prompt", f"product shot {map_index}")
    kwargs.setdefault("model", "wan2.2-t2i-flash")
    operator = make_operator(**fast(**kwargs))
    context = make_context(operator, map_index=map_index)
    context["ti"].run_id = run_id
    operator.render_template_fields(context)  # type: ignore[arg-type]
    return operator.execute(context)  # type: ignore[arg-type]


def test_a_dag_run_budget_refuses_the_sends_past_it_before_they_leave(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, ledger: str
) -> None:
    connect(emulator, monkeypatch, ledger)
    delivered, refusals = [], []
    for index in range(5):
        try:
            delivered.append(generate(index, budget={"dag_run": 3}))
        except ImageGenerationBudgetExceededError as refused:
            refusals.append(refused)

    assert len(delivered) == 3 and emulator.billing()["billed_images"] == 3
    assert len(refusals) == 2
    message = str(refusals[0])
    assert "the dag_run budget of 3 images set on the operator" in message
    assert "3 images spent and 0 reserved" in message and "asked 1" in message
    assert (refusals[0].spent, refusals[0].reserved, refusals[0].asked) == (3, 0, 1)
    # Another DAG run has a budget of its own.
    generate(0, run_id="manual__2026-12-08", budget={"dag_run": 3})
    assert emulator.billing()["billed_images"] == 4


def test_a_connection_budget_in_yuan_counts_the_price_table(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, ledger: str
) -> None:
    connect(emulator, monkeypatch, ledger, budget={"connection_per_day": "0.30 CNY"})
    generate(0)
    generate(1)  # 2 × 0.14 = 0.28
    with pytest.raises(ImageGenerationBudgetExceededError, match=r"0\.28 CNY spent .* asked 0\.14"):
        generate(2)
    assert emulator.billing()["billed_images"] == 2


def test_a_task_that_billed_fewer_images_spends_only_those(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, ledger: str
) -> None:
    connect(emulator, monkeypatch, ledger)
    emulator.set_faults(fail_next_task_images=((0, 1),))
    metadata = generate(0, n=4, budget={"dag_run": 5})
    assert metadata["cost"]["billed_images"] == 2 == emulator.billing()["billed_images"]
    generate(1, n=3, budget={"dag_run": 5})  # 2 spent + 3 = 5: fits
    with pytest.raises(ImageGenerationBudgetExceededError):
        generate(2, budget={"dag_run": 5})


def test_a_send_whose_outcome_is_unknown_stays_counted(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, ledger: str
) -> None:
    connect(emulator, monkeypatch, ledger)
    emulator.set_faults(fail_next=("billed_500",))
    with pytest.raises(ImageGenerationOutcomeUnknownError):
        generate(0, n=2, budget={"dag_run": 3}, endpoint="sync", model="wan2.6-t2i")
    # Billed (the emulator says so) and never answered: its 2 images count, though nobody saw them.
    assert emulator.billing()["billed_images"] == 2
    with pytest.raises(ImageGenerationBudgetExceededError, match="2 images spent and 0 reserved"):
        generate(1, n=2, budget={"dag_run": 3})


def test_a_send_the_service_refused_gives_its_reservation_back(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, ledger: str
) -> None:
    connect(emulator, monkeypatch, ledger)
    emulator.set_faults(fail_next=("moderation",))
    with pytest.raises(ImageGenerationRejectedError):
        generate(0, n=2, budget={"dag_run": 2})
    generate(1, n=2, budget={"dag_run": 2})
    assert emulator.billing()["billed_images"] == 2


def test_a_budget_without_a_ledger_or_a_price_is_refused_before_sending(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, ledger: str
) -> None:
    connect(emulator, monkeypatch, None)
    with pytest.raises(ImageGenerationValidationError, match="needs the connection extra ledger"):
        generate(0, budget={"dag_run": 3})
    set_imggen_connection(monkeypatch, f"{emulator.base_url}/v1", max_retries=0, ledger=ledger)
    with pytest.raises(ImageGenerationValidationError, match=r"needs a price of wan2\.2-t2i-flash in USD"):
        generate(0, budget={"dag_run": "1 USD"})
    assert emulator.requests_log() == []


def test_a_retry_that_sends_again_reserves_again(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, ledger: str
) -> None:
    """
    Each send has its own reservation: a try that sends again while an earlier try's send may have billed
    (reuse=False after a task never read; retry_unknown_outcome after a 5xx) counts both.
    """
    connect(emulator, monkeypatch, ledger)
    generate(
        0, n=2, budget={"dag_run": 3}, wait_for_completion=False
    )  # its task is never read: stays reserved
    with pytest.raises(ImageGenerationBudgetExceededError, match="0 images spent and 2 reserved"):
        generate(0, n=2, budget={"dag_run": 3}, reuse=False)
    assert emulator.billing()["billed_images"] == 2

    connect(emulator, monkeypatch, ledger, retry_unknown_outcome=True)
    emulator.set_faults(fail_next=("billed_500",))
    sync = {"model": "wan2.6-t2i", "endpoint": "sync", "n": 1, "budget": {"dag_run": 4}}
    with pytest.raises(ImageGenerationOutcomeUnknownError):
        generate(1, **sync)
    with pytest.raises(ImageGenerationBudgetExceededError, match="1 images spent and 2 reserved"):
        generate(1, **{**sync, "n": 2})  # the retry: 2 reserved + 1 unknown + 2 asked > 4
    assert emulator.billing()["billed_images"] == 3


def test_the_hook_in_a_task_of_its_own_keeps_the_connection_budget(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, ledger: str
) -> None:
    from airflow.sdk.execution_time.context import set_current_context

    from airflow_provider_imggen.hooks.image_generation import ImageGenerationHook

    connect(emulator, monkeypatch, ledger, budget={"connection_per_day": 2})
    with pytest.raises(ImageGenerationValidationError, match="sends from Airflow tasks only"):
        ImageGenerationHook().generate_images("a teapot", model="wan2.2-t2i-flash")
    assert emulator.requests_log() == []

    operator = make_operator(prompt="a teapot")
    with set_current_context(make_context(operator)):  # type: ignore[arg-type]
        hook = ImageGenerationHook()
        for prompt in ("a teapot", "a kettle"):
            hook.generate_images(prompt, model="wan2.2-t2i-flash")
        with pytest.raises(ImageGenerationBudgetExceededError, match="connection_per_day budget of 2 images"):
            hook.generate_images("a cup", model="wan2.2-t2i-flash")
    assert emulator.billing()["billed_images"] == 2


def test_the_batch_operator_refuses_a_budget_rather_than_send_unbudgeted(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, ledger: str
) -> None:
    from airflow_provider_imggen.operators.image_generation_batch import ImageGenerationBatchOperator

    connect(emulator, monkeypatch, ledger)
    batch = ImageGenerationBatchOperator(task_id="batch", prompts=["a", "b"], budget={"dag_run": 1})
    with pytest.raises(ImageGenerationValidationError, match="does not enforce budgets yet"):
        batch.execute(make_context(batch))  # type: ignore[arg-type]
    assert emulator.requests_log() == []


def test_a_5xx_resent_by_the_hook_counts_both_sends(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, ledger: str
) -> None:
    """retry_unknown_outcome with retries: the billed 5xx is counted (unknown) before the resend reserves."""
    from airflow_provider_imggen.budgets.book import BudgetBook, document_key
    from airflow_provider_imggen.ledger import open_ledger_store

    connect(emulator, monkeypatch, ledger, retry_unknown_outcome=True)
    monkeypatch.setenv(
        "AIRFLOW_CONN_IMGGEN_DEFAULT",
        os.environ["AIRFLOW_CONN_IMGGEN_DEFAULT"].replace('"max_retries": 0', '"max_retries": 2'),
    )
    emulator.set_faults(fail_next=("billed_500",), retry_after_seconds=0)
    generate(0, n=1, model="wan2.6-t2i", endpoint="sync", budget={"dag_run": 2})
    assert emulator.billing()["billed_images"] == 2  # the 500's image and the resend's
    with open_ledger_store(ledger) as store:
        spending = BudgetBook(store, "x/y/z/-1/1").read(document_key("dag_run", "unit/manual__2026-12-07"))
    assert spending is not None and (spending.spent_images, spending.reservations) == (2, {})
    with pytest.raises(ImageGenerationBudgetExceededError, match="2 images spent and 0 reserved"):
        generate(1, n=1, budget={"dag_run": 2})

    # A refusal of the resend (the budget is spent) fails closed on the 5xx, and hides nothing of it.
    emulator.set_faults(fail_next=("billed_500",))
    with pytest.raises(ImageGenerationOutcomeUnknownError):
        generate(2, n=1, model="wan2.6-t2i", endpoint="sync", budget={"dag_run": 3})
    assert emulator.billing()["billed_images"] == 3
