"""
The write-ahead billing journal against the emulator over real HTTP: every crash point of a billable
request, on every endpoint, followed by the retry (a second call with the journal the first one left).

The journal here is the operator's own :class:`TaskStateJournal` on a file-backed stand-in for the task
state store, so a process killed with SIGKILL leaves exactly what Airflow's store would hold.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowTaskTimeout

from airflow_provider_imggen.billing_journal import JOURNAL_KEY, TaskStateJournal
from airflow_provider_imggen.crash_points import ENV as CRASH_ENV
from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.exceptions import (
    ImageGenerationOutcomeUnknownError,
    ImageGenerationSubmissionUnknownError,
)
from tests.conftest import task_submissions
from tests.integration.hooks.test_image_generation import fast_hook

SYNC_MODEL = "qwen-image-2.0"


class FileStore:
    """The task state store's get/set, kept in a JSON file (what survives the process)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self, key: str, default: Any = None) -> Any:
        if not self.path.exists():
            return default
        return json.loads(self.path.read_text()).get(key, default)

    def set(self, key: str, value: Any) -> None:
        stored = json.loads(self.path.read_text()) if self.path.exists() else {}
        stored[key] = value
        self.path.write_text(json.dumps(stored))


def billable_sends(emulator: EmulatorServer) -> list[dict]:
    return [
        entry for entry in emulator.requests_log() if entry["kind"] in ("generate", "submit", "multimodal")
    ]


@pytest.fixture
def crash_at(monkeypatch: pytest.MonkeyPatch) -> Any:
    def arm(spec: str) -> None:
        monkeypatch.setenv(CRASH_ENV, spec)

    return arm


def endpoint_arguments(endpoint: str) -> dict[str, Any]:
    if endpoint == "sync":
        return {"model": SYNC_MODEL, "size": "512x512", "n": 2}
    return {"model": "wan2.2-t2i-flash", "size": "512x512", "n": 2}


@pytest.fixture(params=["gateway", "sync"])
def answered_endpoint(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A connection to an endpoint that answers with the images: the gateway or the synchronous one."""
    emulator = request.getfixturevalue("emulator")
    from tests.conftest import set_imggen_connection

    if request.param == "gateway":
        set_imggen_connection(monkeypatch, f"{emulator.base_url}/v1", max_retries=3)
    else:
        set_imggen_connection(monkeypatch, emulator.base_url, max_retries=3, api_style="dashscope")
    return str(request.param)


# Gateway and synchronous endpoint: an interrupted send is never sent again --------------------------------
@pytest.mark.parametrize(
    "crash", ["after_send:timeout", "after_send:exception", "after_answer:exception", "after_answer:timeout"]
)
def test_an_interrupted_answered_request_is_outcome_unknown_and_never_sent_again(
    emulator: EmulatorServer, answered_endpoint: str, crash_at: Any, tmp_path: Path, crash: str
) -> None:
    emulator.set_faults(hold_ms=1500)
    crash_at(crash)
    store = FileStore(tmp_path / "store.json")
    arguments = endpoint_arguments(answered_endpoint)
    with pytest.raises(ImageGenerationOutcomeUnknownError) as raised:
        fast_hook().generate_images("a lighthouse", journal=TaskStateJournal(store), **arguments)

    # Final (no Airflow retry), whatever interrupted it: a timeout, a parser bug.
    assert isinstance(raised.value, AirflowFailException)
    assert "billed up to 2 image(s)" in str(raised.value)
    [attempt] = store.get(JOURNAL_KEY)
    assert attempt["outcome"] == "unknown" and attempt["endpoint"] == answered_endpoint
    # The retry: refuses, sends nothing.
    with pytest.raises(ImageGenerationOutcomeUnknownError, match="outcome is unknown"):
        fast_hook().generate_images("a lighthouse", journal=TaskStateJournal(store), **arguments)
    assert len(billable_sends(emulator)) == 1
    assert emulator.billed_images() == 2


def test_a_recorded_answer_is_not_paid_again(
    emulator: EmulatorServer, answered_endpoint: str, tmp_path: Path
) -> None:
    store = FileStore(tmp_path / "store.json")
    arguments = endpoint_arguments(answered_endpoint)
    fast_hook().generate_images("a lighthouse", journal=TaskStateJournal(store), **arguments)
    # Answered but never delivered (the operator records what it delivers): a retry refuses to pay again.
    with pytest.raises(ImageGenerationOutcomeUnknownError, match="was answered"):
        fast_hook().generate_images("a lighthouse", journal=TaskStateJournal(store), **arguments)
    # Another request is another fingerprint: sent.
    fast_hook().generate_images("a harbour", journal=TaskStateJournal(store), **arguments)
    assert len(billable_sends(emulator)) == 2 and emulator.billed_images() == 4


def test_a_throttled_request_is_recorded_as_not_processed_and_sent_again(
    imggen_conn: EmulatorServer, tmp_path: Path
) -> None:
    imggen_conn.set_faults(fail_next=["429"])
    store = FileStore(tmp_path / "store.json")
    fast_hook().generate_images("a lighthouse", size="512x512", journal=TaskStateJournal(store))
    [attempt] = store.get(JOURNAL_KEY)
    assert attempt["outcome"] == "answered"
    imggen_conn.set_faults(fail_next=["429"] * 10)
    store2 = FileStore(tmp_path / "store2.json")
    with pytest.raises(Exception, match=r"(?i)throttl"):
        fast_hook(max_retries=1).generate_images(
            "a harbour", size="512x512", journal=TaskStateJournal(store2)
        )
    [attempt] = store2.get(JOURNAL_KEY)
    assert attempt["outcome"] == "not_processed"
    imggen_conn.set_faults(fail_next=[])
    fast_hook().generate_images("a harbour", size="512x512", journal=TaskStateJournal(store2))
    assert imggen_conn.billed_images() == 2


def test_retry_unknown_outcome_opts_into_sending_again(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, crash_at: Any, tmp_path: Path
) -> None:
    from tests.conftest import set_imggen_connection

    set_imggen_connection(
        monkeypatch,
        f"{emulator.base_url}/v1",
        max_retries=3,
        retry_unknown_outcome=True,
        default_model="wan2.2-t2i-flash",
    )
    crash_at("after_answer:exception")
    store = FileStore(tmp_path / "store.json")
    with pytest.raises(ImageGenerationOutcomeUnknownError):
        fast_hook().generate_images("a lighthouse", size="512x512", journal=TaskStateJournal(store))
    fast_hook().generate_images("a lighthouse", size="512x512", journal=TaskStateJournal(store))
    assert emulator.billed_images() == 2, "paid twice, as the connection asked"


# Native task API: the retry proves which task is its own --------------------------------------------------
@pytest.mark.parametrize("crash", ["after_send:timeout", "after_answer:timeout", "after_answer:exception"])
def test_an_interrupted_submission_is_recovered_from_the_task_list(
    dashscope_conn: EmulatorServer, crash_at: Any, tmp_path: Path, crash: str
) -> None:
    dashscope_conn.set_faults(hold_ms=1500)
    crash_at(crash)
    store = FileStore(tmp_path / "store.json")
    arguments = endpoint_arguments("async")
    if crash.endswith(":timeout"):
        # execution_timeout: the try ends (Airflow retries it); the journal holds the intent.
        with pytest.raises(AirflowTaskTimeout):
            fast_hook().generate_images("a lighthouse", journal=TaskStateJournal(store), **arguments)
        result = fast_hook().generate_images("a lighthouse", journal=TaskStateJournal(store), **arguments)
    else:
        # A bug after the send: recovered in the same call, from the task list.
        result = fast_hook().generate_images("a lighthouse", journal=TaskStateJournal(store), **arguments)

    [task] = dashscope_conn.tasks()
    assert len(task_submissions(dashscope_conn)) == 1, "submitted once"
    assert [image.index for image in result.images] == [0, 1]
    attempts = store.get(JOURNAL_KEY)
    assert [(a["outcome"], a.get("generation_task_id")) for a in attempts] == [("task", task["task_id"])]
    assert dashscope_conn.billed_images() == 2


def test_a_submission_that_created_nothing_adopts_no_other_task(
    dashscope_conn: EmulatorServer, tmp_path: Path
) -> None:
    # Another pipeline's task of the same model, in the window; then our submission fails with a 500 that
    # created nothing. The retry must not adopt the other task: it fails closed, naming it.
    other = fast_hook().submit_task("another pipeline's prompt", size="512x512", n=2)
    dashscope_conn.set_faults(fail_next=["500"])
    store = FileStore(tmp_path / "store.json")
    with pytest.raises(ImageGenerationSubmissionUnknownError) as raised:
        fast_hook(max_retries=0).generate_images(
            "a lighthouse", journal=TaskStateJournal(store), **endpoint_arguments("async")
        )
    assert other.generation_task_id in str(raised.value)
    with pytest.raises(ImageGenerationSubmissionUnknownError):
        fast_hook().generate_images(
            "a lighthouse", journal=TaskStateJournal(store), **endpoint_arguments("async")
        )
    assert len(task_submissions(dashscope_conn)) == 2 and len(dashscope_conn.tasks()) == 1


def test_tasks_the_journal_holds_are_never_adopted(dashscope_conn: EmulatorServer) -> None:
    hook = fast_hook()
    request = hook.validate_request("twin prompt", size="512x512", n=1)
    first = hook.submit(request).generation_task_id
    second = hook.submit(request).generation_task_id
    from datetime import UTC, datetime, timedelta

    since = datetime.now(tz=UTC) - timedelta(seconds=30)
    # Two identical tasks: neither is provably ours...
    assert hook.find_submitted_task(request, submitted_at=since) is None
    # ...unless one is known to be someone else's.
    found, candidates = hook._find_submitted(request, submitted_at=since, excluding=frozenset({first}))
    assert found is not None and found.generation_task_id == second and candidates == (second,)


_KILLED_TRY = """
import sys
from pathlib import Path
from airflow_provider_imggen.billing_journal import TaskStateJournal
from airflow_provider_imggen.hooks.image_generation import ImageGenerationHook
from tests.integration.hooks.test_billing_journal import FileStore

hook = ImageGenerationHook(retry_wait_initial=0.01, retry_wait_max=0.05)
hook.generate_images(
    "a lighthouse", model="wan2.2-t2i-flash", size="512x512", n=2,
    journal=TaskStateJournal(FileStore(Path(sys.argv[1]))),
)
"""


@pytest.mark.parametrize("point", ["after_intent", "after_send", "after_answer", "after_record"])
def test_a_worker_killed_at_each_step_of_a_submission_pays_once(
    dashscope_conn: EmulatorServer, tmp_path: Path, point: str
) -> None:
    dashscope_conn.set_faults(hold_ms=1500)
    store_path = tmp_path / "store.json"
    killed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KILLED_TRY), str(store_path)],
        env={**os.environ, CRASH_ENV: f"{point}:sigkill"},
        cwd=Path(__file__).parents[3],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    journal = TaskStateJournal(FileStore(store_path))
    arguments = endpoint_arguments("async")

    if point == "after_intent":
        # Nothing was sent, but nothing proves it (a request cut mid-send may still arrive): the retry
        # searches the task list, finds no task of its own, and fails closed instead of sending blind.
        with pytest.raises(ImageGenerationSubmissionUnknownError, match="no task it could be"):
            fast_hook().generate_images("a lighthouse", journal=journal, **arguments)
        assert task_submissions(dashscope_conn) == [] and dashscope_conn.billed_images() == 0
        return
    result = fast_hook().generate_images("a lighthouse", journal=journal, **arguments)
    [task] = dashscope_conn.tasks()
    assert len(task_submissions(dashscope_conn)) == 1, "submitted once"
    assert len(result.images) == 2 and dashscope_conn.billed_images() == 2
    [attempt] = FileStore(store_path).get(JOURNAL_KEY)
    assert (attempt["outcome"], attempt["generation_task_id"]) == ("task", task["task_id"])


def test_an_expired_task_of_an_earlier_attempt_fails_closed_unless_reuse_is_off(
    dashscope_conn: EmulatorServer, tmp_path: Path
) -> None:
    # Try 1's task succeeded (billed) and the try died before delivering; the retry comes after 24 h.
    store = FileStore(tmp_path / "store.json")
    arguments = endpoint_arguments("async")
    first = fast_hook().generate_images("a lighthouse", journal=TaskStateJournal(store), **arguments)
    dashscope_conn.expire_task(str(first.request_id and dashscope_conn.tasks()[0]["task_id"]))
    with pytest.raises(ImageGenerationOutcomeUnknownError, match="unknown to the API") as raised:
        fast_hook().generate_images("a lighthouse", journal=TaskStateJournal(store), **arguments)
    assert isinstance(raised.value, AirflowFailException)
    assert len(task_submissions(dashscope_conn)) == 1 and dashscope_conn.billed_images() == 2
    # reuse=False: the user asks for (and pays for) a new task.
    fast_hook().generate_images("a lighthouse", journal=TaskStateJournal(store), reuse=False, **arguments)
    assert len(task_submissions(dashscope_conn)) == 2 and dashscope_conn.billed_images() == 4


class FailingOutcomeStore(FileStore):
    """A store that takes the intent, then fails (the API server hiccups)."""

    def set(self, key: str, value: Any) -> None:
        if any(attempt.get("outcome") for attempt in value):
            raise ConnectionError("execution API unavailable")
        super().set(key, value)


def test_an_answer_is_delivered_even_when_its_outcome_cannot_be_recorded(
    imggen_conn: EmulatorServer, tmp_path: Path
) -> None:
    store = FailingOutcomeStore(tmp_path / "store.json")
    result = fast_hook().generate_images("a lighthouse", size="512x512", n=2, journal=TaskStateJournal(store))
    assert len(result.images) == 2
    # The journal still says "sent, outcome unknown": a retry would fail closed, not pay again.
    [attempt] = store.get(JOURNAL_KEY)
    assert attempt.get("outcome") is None
    with pytest.raises(ImageGenerationOutcomeUnknownError):
        fast_hook().generate_images(
            "a lighthouse", size="512x512", n=2, journal=TaskStateJournal(FileStore(store.path))
        )
    assert imggen_conn.billed_images() == 2


@pytest.mark.parametrize("endpoint", ["gateway", "async"])
def test_a_try_stopped_while_waiting_out_throttling_has_paid_nothing(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, crash_at: Any, tmp_path: Path, endpoint: str
) -> None:
    from tests.conftest import set_imggen_connection

    base = f"{emulator.base_url}/v1" if endpoint == "gateway" else emulator.base_url
    extra = {} if endpoint == "gateway" else {"api_style": "dashscope"}
    set_imggen_connection(monkeypatch, base, max_retries=3, **extra)
    # Two 429s asking for 2 s each: the execution_timeout lands in the wait, nothing is in flight.
    emulator.set_faults(fail_next=["429", "429"], retry_after_seconds=2)
    crash_at("after_send:timeout")
    store = FileStore(tmp_path / "store.json")
    arguments = endpoint_arguments(endpoint)
    with pytest.raises(AirflowTaskTimeout):
        fast_hook().generate_images("a lighthouse", journal=TaskStateJournal(store), **arguments)
    [attempt] = store.get(JOURNAL_KEY)
    assert attempt["outcome"] == "not_processed"
    # The retry sends: nothing was billed, nothing is lost.
    result = fast_hook().generate_images("a lighthouse", journal=TaskStateJournal(store), **arguments)
    assert len(result.images) == 2 and emulator.billed_images() == 2
