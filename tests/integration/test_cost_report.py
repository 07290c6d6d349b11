"""
The cost report (``python -m airflow_provider_imggen.cost_report``) over a real ledger (PostgreSQL, and S3
on moto_server), after generations against the emulator: per DAG, per day and per model, equal to the
price table × what the emulator billed; an edited entry left out and counted, never summed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.ledger import open_ledger_store
from airflow_provider_imggen.prices import LIST_PRICES
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
    return f"postgres://{PG_CONN_ID}/ledger_{uuid.uuid4().hex[:12]}"


def generate(dag_id: str, prompt: str, **kwargs: Any) -> dict[str, Any]:
    operator = make_operator(prompt=prompt, **fast(**kwargs))
    context = make_context(operator)
    context["ti"].dag_id = dag_id
    operator.render_template_fields(context)  # type: ignore[arg-type]
    return operator.execute(context)  # type: ignore[arg-type]


def deferred_in_a_new_process(dag_id: str, prompt: str, **kwargs: Any) -> dict[str, Any]:
    """A deferrable generation resumed by another operator object (Airflow resumes in a new process)."""
    from airflow.sdk.exceptions import TaskDeferred

    from tests.integration.operators.test_deferrable import run_trigger

    arguments = fast(prompt=prompt, model="wan2.2-t2i-flash", deferrable=True, **kwargs)
    operator = make_operator(**arguments)
    context = make_context(operator)
    context["ti"].dag_id = dag_id
    operator.render_template_fields(context)  # type: ignore[arg-type]
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)  # type: ignore[arg-type]
    event = run_trigger(deferred.value)
    resumed = make_operator(**arguments)
    resumed.render_template_fields(context)  # type: ignore[arg-type]
    return resumed.execute_complete(context, event=event, **(deferred.value.kwargs or {}))  # type: ignore[arg-type]


def report(*arguments: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "airflow_provider_imggen.cost_report", "--json", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_report_sums_what_the_ledger_says_was_paid(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, ledger: str
) -> None:
    set_imggen_connection(
        monkeypatch,
        emulator.base_url,
        api_style="dashscope",
        max_retries=0,
        price_list="beijing",
        ledger=ledger,
    )
    generate("posters", "a red poster", model="wan2.2-t2i-flash", n=2)
    generate("posters", "a blue poster", model="wan2.6-t2i", n=1, endpoint="sync")
    emulator.set_faults(fail_next_task_images=((1,),))
    generate("product_shots", "a teapot", model="wan2.2-t2i-flash", n=3)  # billed 2 of 3
    deferred_in_a_new_process("product_shots", "a kettle", n=2)
    flash, wan26 = LIST_PRICES["wan2.2-t2i-flash"][0], LIST_PRICES["wan2.6-t2i"][0]
    assert flash is not None and wan26 is not None
    assert emulator.billing()["billed_images"] == 7

    today = datetime.now(UTC).date().isoformat()
    summary = report("--since", today)
    assert summary["total"] == {
        "requests": 4,
        "images": 7,
        "unpriced_images": 0,
        "cost": {"CNY": str(flash.per_image * 6 + wan26.per_image)},
    }
    assert summary["by_dag"]["posters"]["cost"] == {"CNY": str(flash.per_image * 2 + wan26.per_image)}
    assert summary["by_dag"]["product_shots"]["images"] == 4
    assert summary["by_model"]["wan2.2-t2i-flash"]["cost"] == {"CNY": str(flash.per_image * 6)}
    assert list(summary["by_day"]) == [today]
    assert {(row["dag_id"], row["model"]) for row in summary["rows"]} == {
        ("posters", "wan2.2-t2i-flash"),
        ("posters", "wan2.6-t2i"),
        ("product_shots", "wan2.2-t2i-flash"),
    }
    assert report("--until", "2000-01-01")["total"]["requests"] == 0

    # An editor of the ledger makes one entry claim a fortune: left out, counted as unreadable.
    with open_ledger_store(ledger) as store:
        fingerprint = next(fp for fp in store.fingerprints() if store.read(fp)[0].request.get("cost"))
        entry, version = store.read(fingerprint)
        edited = {**entry.request, "cost": {**entry.request["cost"], "billed": "1e9"}}
        assert store.replace(type(entry)(**{**entry.__dict__, "request": edited}), version)
    tampered = report()
    assert tampered["unreadable_entries"] == 1 and tampered["total"]["requests"] == 3
    assert Decimal(tampered["total"]["cost"]["CNY"]) < flash.per_image * 6 + wan26.per_image
