"""
The billing ledger across runs, with real parts: the emulator over HTTP, moto_server as S3, and the ledger
in S3 or in a PostgreSQL server of its own. Paid once per request, whatever runs ask for it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.ledger import open_ledger_store
from tests.conftest import set_imggen_connection
from tests.integration.ledger.conftest import PG_CONN_ID, pg_conn, postgres_server  # noqa: F401
from tests.integration.operators.test_image_generation import make_context, make_operator
from tests.integration.transfers.test_image_generation_to_s3 import StubTaskInstance
from tests.integration.transfers.test_image_generation_to_s3 import make_operator as make_transfer
from tests.integration.transfers.test_image_generation_to_s3 import run as run_transfer
from tests.s3_fixtures import S3Bucket

SEED = 4242


@pytest.fixture(params=["s3", "postgres"])
def ledger_setting(request: pytest.FixtureRequest, s3: S3Bucket) -> str:
    if request.param == "s3":
        return f"s3://aws_default@{s3.name}/imggen-ledger"
    request.getfixturevalue("pg_conn")
    return f"postgres://{PG_CONN_ID}/ledger_{request.node.name.encode().hex()[:16]}"


@pytest.fixture
def ledger_conn(emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, ledger_setting: str) -> str:
    set_imggen_connection(
        monkeypatch,
        f"{emulator.base_url}/v1",
        default_model="wan2.2-t2i-flash",
        max_retries=2,
        ledger=ledger_setting,
    )
    return ledger_setting


def generate(run_id: str = "manual__2026-01-01", **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("seed", SEED)
    operator = make_operator(size="512x512", n=2, **kwargs)
    context = make_context(operator)
    context["ti"].run_id = run_id
    operator.render_template_fields(context)  # type: ignore[arg-type]
    return operator.execute(context)  # type: ignore[arg-type]


def store(xcom: dict[str, Any], s3: S3Bucket) -> list[dict[str, Any]]:
    transfer = make_transfer(generation=xcom, s3_bucket=s3.name, s3_key="ledger/{index}-seed{seed}.{ext}")
    return run_transfer(transfer, StubTaskInstance())


def objects(s3: S3Bucket) -> dict[str, tuple[str, object]]:
    listing = s3.client.list_objects_v2(Bucket=s3.name, Prefix="ledger/").get("Contents", [])
    return {item["Key"]: (item["ETag"], item["LastModified"]) for item in listing}


def test_a_stored_request_is_reused_by_a_cleared_run_and_a_backfill_without_paying(
    emulator: EmulatorServer, s3: S3Bucket, ledger_conn: str
) -> None:
    first = generate()
    assert first["ledger_fingerprint"] and not first["reused"]
    stored = store(first, s3)
    assert [image["skipped"] for image in stored] == [False, False]
    before = objects(s3)
    [(entry, _)] = [open_ledger_store(ledger_conn).read(first["ledger_fingerprint"])]
    assert entry.state == "stored" and [image.key for image in entry.images] == sorted(before)

    # The cleared run (same run, new try) and a backfill run (another run id, the same explicit seed).
    for run_id in ("manual__2026-01-01", "backfill__2026-01-01"):
        again = generate(run_id=run_id)
        assert again["reused"] is True and again["ledger_fingerprint"] == first["ledger_fingerprint"]
        assert [image["sha256"] for image in again["images"]] == [image["sha256"] for image in stored]
        assert [image["skipped"] for image in store(again, s3)] == [True, True]
    assert emulator.billed_images() == 2, "paid once"
    assert objects(s3) == before, "objects unchanged"


def test_reuse_false_pays_again_and_a_tampered_object_is_not_reused(
    emulator: EmulatorServer, s3: S3Bucket, ledger_conn: str
) -> None:
    first = generate()
    store(first, s3)
    again = generate(reuse=False)
    assert not again["reused"] and emulator.billed_images() == 4
    # The new images are the ones the ledger points at once stored; replace one behind its back.
    stored = store(again, s3)
    s3.client.put_object(Bucket=s3.name, Key=stored[0]["key"], Body=b"not the image")
    store_key = stored[0]["key"]
    third = generate(run_id="backfill__2026-01-01")
    assert not third["reused"], f"{store_key} no longer has the recorded sha256: paid again"
    assert emulator.billed_images() == 6


def test_two_runs_asking_for_one_request_at_once_pay_once(
    emulator: EmulatorServer, s3: S3Bucket, ledger_conn: str
) -> None:
    emulator.set_faults(hold_ms=1500)
    results: dict[str, dict[str, Any]] = {}

    def first_run() -> None:
        results["first"] = generate(run_id="scheduled__2026-01-01")
        store(results["first"], s3)

    def second_run() -> None:
        results["second"] = generate(run_id="scheduled__2026-01-02")

    threads = [threading.Thread(target=first_run), threading.Thread(target=second_run)]
    threads[0].start()
    # The second run asks while the first holds the claim: once the first's request is billed (its answer
    # is held back 1.5 s). A fixed delay lost the race to a first run slow to start (cold imports).
    deadline = time.monotonic() + 30
    while emulator.billed_images() < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert emulator.billed_images() == 2, "the first run never sent its request"
    threads[1].start()
    threads[0].join(60)
    threading.Event().wait(0.5)
    threads[1].join(60)
    assert results["second"]["reused"] is True
    assert emulator.billed_images() == 2, "billed once"


@pytest.mark.parametrize("with_ledger", [True, False])
def test_identical_prompts_of_two_mapped_tasks_are_recovered_without_a_mix_up(
    emulator: EmulatorServer, s3: S3Bucket, monkeypatch: pytest.MonkeyPatch, with_ledger: bool
) -> None:
    extra = {"ledger": f"s3://aws_default@{s3.name}/imggen-ledger"} if with_ledger else {}
    set_imggen_connection(
        monkeypatch, emulator.base_url, default_model="wan2.2-t2i-flash", api_style="dashscope", **extra
    )
    emulator.set_faults(task_pending_ms=200, task_duration_ms=200)

    def mapped(map_index: int) -> dict[str, Any]:
        # The same prompt; the derived seeds differ by map index, so the requests do too.
        operator = make_operator(prompt="the same poster", size="512x512", n=2, poll_interval=0.1)
        context = make_context(operator, map_index=map_index)
        operator.render_template_fields(context)  # type: ignore[arg-type]
        return operator.execute(context)  # type: ignore[arg-type]

    other = mapped(1)
    # Map index 0's submission creates its task (billed), but the connection drops before any answer: no
    # request id to go by, recovery from the list by what the statuses show.
    emulator.set_faults(fail_next=["billed_drop"])
    if not with_ledger:
        # Two listed tasks carry the prompt and image count: nothing proves which is ours. Fails closed.
        from airflow_provider_imggen.exceptions import ImageGenerationSubmissionUnknownError

        with pytest.raises(ImageGenerationSubmissionUnknownError, match=other["generation_task_id"]):
            mapped(0)
        assert emulator.billed_images() == 4
        return
    mine = mapped(0)
    submitted = {entry["task_id"] for entry in emulator.requests_log() if entry["kind"] == "submit"}
    assert (
        mine["generation_task_id"] in submitted and mine["generation_task_id"] != other["generation_task_id"]
    )
    assert emulator.billed_images() == 4, "two tasks, each paid once, each delivered to its own"


def test_a_deferred_native_generation_is_recorded_and_reused(
    emulator: EmulatorServer, s3: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.integration.operators.test_deferrable import defer_and_resume

    set_imggen_connection(
        monkeypatch,
        emulator.base_url,
        default_model="wan2.2-t2i-flash",
        api_style="dashscope",
        ledger=f"s3://aws_default@{s3.name}/imggen-ledger",
    )
    emulator.set_faults(task_pending_ms=200, task_duration_ms=200)

    def deferred_run(run_id: str) -> dict[str, Any]:
        operator = make_operator(
            size="512x512", n=2, seed=SEED, deferrable=True, poll_interval=0.1, max_poll_interval=0.2
        )
        context = make_context(operator)
        context["ti"].run_id = run_id
        operator.render_template_fields(context)  # type: ignore[arg-type]
        return defer_and_resume(operator, context)

    # The XCom is built after the deferral, in another process as far as the operator knows: it still
    # names the ledger entry, and the transfer completes the entry billed for that very task.
    first = deferred_run("scheduled__2026-01-01")
    assert first["ledger_fingerprint"] and first["generation_task_id"]
    store(first, s3)
    entry, _ = open_ledger_store(f"s3://aws_default@{s3.name}/imggen-ledger").read(
        first["ledger_fingerprint"]
    )
    assert entry.state == "stored" and entry.generation_task_id == first["generation_task_id"]
    # Another run of the same request: reused before anything is submitted (no deferral at all).
    again = generate(run_id="scheduled__2026-01-02", deferrable=True)
    assert again["reused"] is True and emulator.billed_images() == 2


def test_stored_images_that_cannot_be_read_back_are_not_paid_for_again(
    emulator: EmulatorServer, s3: S3Bucket, ledger_conn: str
) -> None:
    from airflow_provider_imggen.ledger.store import LedgerStoreError

    store(generate(), s3)
    # A connection that cannot read the bucket (or S3 throttling): not proof the images are gone.
    with pytest.raises(LedgerStoreError, match="nothing was billed"):
        generate(run_id="backfill__2026-01-01", aws_conn_id="no_such_connection")
    assert emulator.billed_images() == 2


def test_an_entry_pointed_at_other_objects_by_an_editor_is_not_reused(
    emulator: EmulatorServer, s3: S3Bucket, ledger_conn: str
) -> None:
    from dataclasses import replace

    first = generate()
    stored = store(first, s3)
    ledger = open_ledger_store(ledger_conn)
    entry, version = ledger.read(first["ledger_fingerprint"])
    # An editor of the ledger (not the deployment) points the request at an object of its choosing, with
    # the right sha256 and size: the seal, made with the deployment's Fernet key, no longer matches.
    s3.client.copy_object(
        Bucket=s3.name, Key="elsewhere.png", CopySource={"Bucket": s3.name, "Key": stored[0]["key"]}
    )
    moved = tuple(
        replace(image, key="elsewhere.png") if image.index == 0 else image for image in entry.images
    )
    assert ledger.replace(replace(entry, images=moved), version) is not None
    again = generate(run_id="backfill__2026-01-01")
    assert not again["reused"] and emulator.billed_images() == 4
