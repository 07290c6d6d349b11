"""
Billing safety against the emulator with the real quota and billed-then-failed answers.

The emulator (in-process, loopback) enforces the documented quota (2 submissions per second, 2 concurrent
tasks per key and model) and answers 10 % of billable requests with a failure after billing them (500, 502,
504), drops 5 % of the connections after billing, answers 5 % with partial results and 2 % with malformed
bodies; seeded, so a run repeats. Parts:

- ``anchor``: N gateway generations (n images each) through the official ``openai`` client with its default
  retries, ``--workers`` at a time (a mapped DAG's parallelism);
- ``gateway`` / ``native``: the provider, a mapped DAG of N prompts (``ImageGenerationOperator``, task
  retries on) under ``airflow dags test``, once per API style (benchmarks/bench_billing_safety_dag.py);
- ``crash``: every crash point of a billable request (airflow_provider_imggen/crash_points.py) x endpoint
  (gateway, native task API, native synchronous) x way of dying (SIGKILL, ``execution_timeout``, an
  exception), 39 cases in one run of tests/dags/imggen_crash_points_dags.py under LocalExecutor (an
  ``airflow api-server`` serves the Execution API, so SIGKILL kills a real task process); try 1 of each
  case crashes, Airflow's retry runs clean. Its own emulator: no random faults, answers held 1.5 s (the
  ``after_send`` alarm, 1 s after the intent on a machine this loaded, lands while the request is in
  flight), native tasks 0.3 s pending + 0.3 s running, 8 task processes at a time, quotas off. With
  ``--crash-quotas`` (2 concurrent tasks per model, 2 submissions a second) an ``after_send`` alarm can
  fire during the hook's back-off between two 429 answers, when nothing is in flight: nothing is billed,
  but the retry finds no task and fails closed (``reported`` where ``delivered`` is expected), so the case
  no longer tests a crash in flight. Each case is judged as tests/system/test_crash_points.py
  does (tests/crash_cases.py): its outcome (``delivered``; ``reported``: failed naming what may have been
  billed; ``unreported``), billed requests and images from the emulator's billing log (by prompt), images
  delivered, and whether it adopted a native task submitted for another case. Anchor: the same cases with
  the switch disarmed, run right after: "crash run / clean run" wall time (``--no-crash-anchor`` skips it).

Every part turns what its client saw into :class:`Generation` records and :func:`count_billing` joins them
with the emulator's request log (each log entry carries the fingerprint of its request body, equal for a
request and its re-sends). Printed per part: images requested, billed, delivered, reported failed/unknown,
billed twice, billed but neither delivered nor named in a failure ("unaccounted"), the 429s and billable
sends, failures and why, and the ratios (billed/requested, billed twice/billed...) side by side.

What counts as "named" is what a user can act on. A task that succeeded names its undelivered images in
its XCom's ``failed_images``. A task that failed names images only when its final exception (read from the
``airflow dags test`` output) says how many images of which model may have been billed and gives the
request id, or, when no answer came back (a dropped connection), the second the request was sent: then it
claims the one billed request of that second no other generation accounts for. A billed request no
delivery or failure message points to is unaccounted, whatever the totals.

Exit status 1 when a provider part billed an image twice, billed an image it neither delivered nor named in
a failure, failed a task by throttling, or did not run every generation (the anchor is only measured: it is
the baseline); or when a crash case billed an image twice, left paid images neither stored nor reported,
adopted another case's task, or ended other than ``expected_outcome`` says.

    python benchmarks/bench_billing_safety.py [--part anchor|gateway|native|crash|all] [--generations 100]
        [--n 2] [--no-crash-quotas] [--no-crash-anchor]
        [--keep DIR]   # keep the Airflow home, the dags test output and the emulator's request logs
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR.parent) not in sys.path:  # `python benchmarks/bench_billing_safety.py`: the crash harness
    sys.path.insert(0, str(BENCH_DIR.parent))

from airflow_provider_imggen.emulator import EmulatorConfig, EmulatorServer, FaultConfig  # noqa: E402
from airflow_provider_imggen.emulator.wire import body_fingerprint  # noqa: E402
from tests import local_executor  # noqa: E402
from tests.crash_cases import CRASH_DAGS, CaseReport, all_cases, crash_connections, judge_cases  # noqa: E402

DAG_FILE = BENCH_DIR / "bench_billing_safety_dag.py"
API_KEY = "sk-bench-billing-safety"
MODEL = "wan2.2-t2i-flash"
SIZE = "512x512"
# The mix of issue 11's "Must show": 10 % billed-then-5xx, 5 % drop after send, 5 % partial, 2 % malformed.
FAULTS: dict[str, Any] = {
    "quotas": True,
    "rate_billed_500": 0.04,
    "rate_billed_502": 0.03,
    "rate_billed_504": 0.03,
    "rate_billed_drop": 0.05,
    "rate_partial": 0.05,
    "rate_malformed": 0.02,
}
BILLABLE_KINDS = ("generate", "submit")
THROTTLING = re.compile(r"throttl|rate.?limit|429", re.IGNORECASE)


@dataclass
class Generation:
    """
    One generation as its client saw it.

    :param key: which generation (prompt index or map index)
    :param requested: images asked for
    :param delivered: usable images the client handed over
    :param named_failed: images the client reported as failed or of unknown outcome (per image or as a
        whole failed generation)
    :param outcome: ``ok``, ``partial`` (delivered some, named the rest), ``failed``, ``unknown`` or
        ``silent_loss`` (reported success with fewer usable images and nothing named)
    :param reason: the error class or code, for failures
    :param fingerprints: fingerprints of the request bodies it sent, when the client side knows them
    :param request_ids: emulator request ids it knows (from the answer or the error)
    :param task_ids: native task ids it knows (the emulator logs the submission that created each)
    :param sent_at: when a failure without any request id says it sent the request (``YYYY-MM-DD
        HH:MM:SS``, UTC): the connection dropped before an answer, the time is all a user can look up
    """

    key: str
    requested: int
    delivered: int = 0
    named_failed: int = 0
    outcome: str = "ok"
    reason: str = ""
    fingerprints: set[str] = field(default_factory=set)
    request_ids: set[str] = field(default_factory=set)
    task_ids: set[str] = field(default_factory=set)
    sent_at: str | None = None


@dataclass
class Report:
    name: str
    seconds: float = 0.0
    generations: int = 0
    requested: int = 0
    billed: int = 0
    delivered: int = 0
    named_failed: int = 0
    billable_requests: int = 0
    throttled_answers: int = 0
    generations_billed_twice: int = 0
    images_billed_twice: int = 0
    unaccounted: int = 0
    named_by_time: int = 0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    failure_reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    throttling_failures: int = 0


def count_billing(name: str, generations: list[Generation], log: Iterable[dict[str, Any]]) -> Report:
    """
    Join client-side generations with the emulator's request log.

    Log entries are grouped by body fingerprint (one group per generation: its first send and every
    re-send). A group with more than one billed entry was billed twice. A generation claims the groups of
    the fingerprints, request ids and task ids it knows (from its delivery or its failure message); a
    failure that names no request id because no answer came back claims the one billed group sent within
    a second of the time it names (what a user can find on the usage page). A generation's billed images
    are its groups' first billed entries; those it neither delivered nor named are ``unaccounted``, and so
    is every billed group no generation claims: a charge no message points to.
    """
    billable = [entry for entry in log if entry["kind"] in BILLABLE_KINDS]
    groups: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    by_request_id: dict[str, str] = {}
    by_task_id: dict[str, str] = {}
    for entry in billable:
        fingerprint = entry.get("fingerprint") or f"request:{entry['request_id']}"
        groups[fingerprint].append(entry)
        by_request_id[entry["request_id"]] = fingerprint
        if entry.get("task_id"):
            by_task_id[entry["task_id"]] = fingerprint

    report = Report(name=name, generations=len(generations))
    report.billable_requests = len(billable)
    report.throttled_answers = sum(1 for entry in billable if entry["status"] == 429)
    report.billed = sum(entry["billed_images"] for entry in billable)
    billed_once: dict[str, int] = {}
    for fingerprint, entries in groups.items():
        paid = [entry["billed_images"] for entry in entries if entry["billed_images"]]
        billed_once[fingerprint] = paid[0] if paid else 0
        if len(paid) > 1:
            report.generations_billed_twice += 1
            report.images_billed_twice += sum(paid[1:])

    claims: dict[str, set[str]] = {}
    for generation in generations:
        claims[generation.key] = (
            {fp for fp in generation.fingerprints if fp in groups}
            | {
                by_request_id[request_id]
                for request_id in generation.request_ids
                if request_id in by_request_id
            }
            | {by_task_id[task_id] for task_id in generation.task_ids if task_id in by_task_id}
        )
    claimed = set().union(*claims.values()) if claims else set()
    # A failure without a request id names the second it sent the request: it accounts for one charge
    # of that second that no other message points to (the earliest, as a user would pair them in order).
    by_time = sorted(
        (generation for generation in generations if not claims[generation.key] and generation.sent_at),
        key=lambda generation: generation.sent_at or "",
    )
    for generation in by_time:
        assert generation.sent_at is not None
        sent = datetime.strptime(generation.sent_at, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()
        near = sorted(
            (min(entry["time"] for entry in entries), fingerprint)
            for fingerprint, entries in groups.items()
            if fingerprint not in claimed
            and billed_once[fingerprint]
            and any(sent - 0.5 <= entry["time"] < sent + 1.5 for entry in entries)
        )
        if near:
            fingerprint = near[0][1]
            claims[generation.key] = {fingerprint}
            claimed.add(fingerprint)
            report.named_by_time += min(generation.named_failed, billed_once[fingerprint])

    for generation in generations:
        report.requested += generation.requested
        report.delivered += generation.delivered
        report.named_failed += generation.named_failed
        report.outcomes[generation.outcome] += 1
        if generation.outcome in ("failed", "unknown"):
            report.failure_reasons[generation.reason or "?"] += 1
            if THROTTLING.search(generation.reason):
                report.throttling_failures += 1
        billed = sum(billed_once[fingerprint] for fingerprint in claims[generation.key])
        report.unaccounted += max(0, billed - generation.delivered - generation.named_failed)
    report.unaccounted += sum(
        billed for fingerprint, billed in billed_once.items() if fingerprint not in claimed
    )
    return report


def emulator(config_faults: dict[str, Any], seed: int) -> EmulatorServer:
    return EmulatorServer(EmulatorConfig(api_key=API_KEY, faults=FaultConfig(seed=seed, **config_faults)))


# Anchor: the official openai client ---------------------------------------------------------------------
def _usable(item: Any) -> bool:
    url, b64 = getattr(item, "url", None), getattr(item, "b64_json", None)
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        return True
    if isinstance(b64, str) and b64:
        try:
            return base64.b64decode(b64, validate=True).startswith(b"\x89PNG")
        except (binascii.Error, ValueError):
            return False
    return False


def run_anchor(server: EmulatorServer, generations: int, n: int, workers: int) -> list[Generation]:
    """N generations through ``openai.OpenAI`` (default max_retries), fingerprints taken as sent."""
    import httpx
    import openai

    current = threading.local()

    def on_request(request: httpx.Request) -> None:
        request.read()
        try:
            body = json.loads(request.content)
        except ValueError:
            return
        if isinstance(body, dict):
            current.generation.fingerprints.add(body_fingerprint(body))

    client = openai.OpenAI(
        base_url=f"{server.base_url}/v1",
        api_key=API_KEY,
        timeout=60,
        http_client=httpx.Client(event_hooks={"request": [on_request]}),
    )

    def one(index: int) -> Generation:
        generation = Generation(key=str(index), requested=n)
        current.generation = generation
        try:
            raw = client.images.with_raw_response.generate(
                model=MODEL,
                prompt=f"billing safety generation {index}, a lighthouse in the fog",
                n=n,
                size=SIZE,
            )
            generation.request_ids.add(raw.headers.get("x-request-id", ""))
            result = raw.parse()
            usable = sum(1 for item in (result.data or []) if _usable(item))
            generation.delivered = min(usable, n)
            generation.outcome = "ok" if generation.delivered == n else "silent_loss"
        except openai.APIStatusError as exc:
            generation.outcome, generation.named_failed = "failed", n
            generation.reason = f"{type(exc).__name__} {exc.status_code}"
            generation.request_ids.add(exc.response.headers.get("x-request-id", ""))
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            generation.outcome, generation.named_failed = "unknown", n
            generation.reason = type(exc).__name__
        except Exception as exc:  # a malformed body the client could not parse
            generation.outcome, generation.named_failed = "failed", n
            generation.reason = f"{type(exc).__name__} (unparsed answer)"
        return generation

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, range(generations)))


# Provider: a mapped DAG under `airflow dags test` ----------------------------------------------------------
def airflow_env(home: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))
    }
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(BENCH_DIR),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
        # Airflow's processes (dags test, api-server, the task processes) import the provider of this tree,
        # not whichever checkout the virtualenv's editable install points at.
        PYTHONPATH=os.pathsep.join(filter(None, [str(BENCH_DIR.parent), os.environ.get("PYTHONPATH")])),
    )
    return env


def run_provider(
    server: EmulatorServer,
    style: str,
    generations: int,
    n: int,
    retries: int,
    home: Path,
    env: dict[str, str],
) -> tuple[list[Generation], str]:
    """Run the mapped DAG of one API style; its generations from XComs, task states and task logs."""
    dag_id = f"bench_billing_safety_{style}"
    host = server.base_url if style == "native" else f"{server.base_url}/v1"
    extra: dict[str, Any] = {"default_model": MODEL}
    if style == "native":
        extra["api_style"] = "dashscope"
    connection = {"conn_type": "imggen", "host": host, "password": API_KEY, "extra": extra}
    airflow = Path(sys.executable).with_name("airflow")
    finished = subprocess.run(
        [str(airflow), "dags", "test", dag_id, "--dagfile-path", str(DAG_FILE)],
        env={
            **env,
            f"AIRFLOW_CONN_IMGGEN_BENCH_{style.upper()}": json.dumps(connection),
            "BENCH_BILLING_GENERATIONS": str(generations),
            "BENCH_BILLING_N": str(n),
            "BENCH_BILLING_RETRIES": str(retries),
        },
        capture_output=True,
        text=True,
        timeout=3600,
    )
    (home / f"{dag_id}.log").write_text(finished.stdout + finished.stderr)
    output = finished.stdout + finished.stderr
    return collect_provider_generations(home, dag_id, n, output), output


# What a failed task's message must name for its images to count as "named": the model, how many images
# may have been billed, and the request id (or, when no answer came back, when it was sent) -- what a user
# needs to find the charge on the usage page. Anything less leaves the billed images unaccounted.
_SEGMENT_START = re.compile(r"\[DAG TEST\] starting task_id=generate map_index=(\d+)")
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
_EXCEPTION = re.compile(r"^([\w.]+\.)?(\w*(?:Error|Exception)): (.*)$")
_IMAGES_AT_RISK = re.compile(r"up to (\d+) image\(s\) of ([\w.\-]+)")
_REQUEST_ID = re.compile(r"request[ _]id[ =]([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
_SENT_AT = re.compile(r"sent at (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC")


def task_segments(output: str) -> dict[int, str]:
    """The ``airflow dags test`` output of each mapped task (every try), keyed by map index."""
    segments: dict[int, list[str]] = collections.defaultdict(list)
    current: int | None = None
    for line in output.splitlines():
        started = _SEGMENT_START.search(line)
        if started:
            current = int(started.group(1))
        if current is not None:
            segments[current].append(line)
    return {index: "\n".join(lines) for index, lines in segments.items()}


def final_exception(segment: str) -> tuple[str, str]:
    """The class name and full message (all its lines) of the last exception a task's output shows."""
    lines = segment.splitlines()
    found: tuple[str, str] = ("", "")
    for position, line in enumerate(lines):
        match = _EXCEPTION.match(line)
        if not match or line.startswith((" ", "\t")):
            continue
        message = [match.group(3)]
        for following in lines[position + 1 :]:
            if _LOG_LINE.match(following) or following.startswith(("Traceback", "  File ")):
                break
            message.append(following)
        found = (match.group(2), "\n".join(message))
    return found


def read_failure(generation: Generation, segment: str, requested_model: str) -> None:
    """
    Fill a failed task's reason, the images its failure names, and the request ids (or send time) that
    let a user find them; a message that does not name them names nothing.
    """
    reason, message = final_exception(segment)
    generation.reason = reason or "task failed (no exception in the output)"
    if THROTTLING.search(reason) or (reason == "ImageGenerationAPIError" and "429" in message):
        generation.reason = f"{reason} (throttling)"
    generation.outcome = "unknown" if "Unknown" in reason else "failed"
    generation.request_ids |= set(_REQUEST_ID.findall(message))
    at_risk = _IMAGES_AT_RISK.search(message)
    if at_risk is None or at_risk.group(2) != requested_model:
        return
    sent_at = _SENT_AT.search(message)
    if generation.request_ids or sent_at:
        generation.named_failed = int(at_risk.group(1))
        if sent_at and not generation.request_ids:
            generation.sent_at = sent_at.group(1)


def collect_provider_generations(
    home: Path, dag_id: str, n: int, output: str, model: str = MODEL
) -> list[Generation]:
    """
    One Generation per mapped task. A task that succeeded: its delivered and failed images from its XCom
    (``images``, ``failed_images``, ``request_id``, ``generation_task_id``). A task that failed: what its
    final exception (in the ``dags test`` output) names; see :func:`read_failure`.
    """
    database = home / "airflow.db"
    with sqlite3.connect(database) as db:
        row = db.execute(
            "SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)
        ).fetchone()
        if row is None:
            return []
        (run_id,) = row
        states = dict(
            db.execute(
                "SELECT map_index, state FROM task_instance "
                "WHERE dag_id = ? AND run_id = ? AND task_id = 'generate'",
                (dag_id, run_id),
            ).fetchall()
        )
        xcoms = {
            map_index: value
            for map_index, value in db.execute(
                "SELECT map_index, value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = 'generate' "
                "AND key = 'return_value'",
                (dag_id, run_id),
            )
        }
    segments = task_segments(output)
    generations = []
    for map_index in sorted(states):
        generation = Generation(key=str(map_index), requested=n)
        value = xcoms.get(map_index)
        metadata = json.loads(value) if isinstance(value, str | bytes) else value
        if states[map_index] == "success" and isinstance(metadata, dict):
            generation.delivered = len(metadata.get("images") or [])
            generation.named_failed = len(metadata.get("failed_images") or [])
            generation.outcome = "ok" if generation.delivered == n else "partial"
            if generation.delivered + generation.named_failed < n:
                generation.outcome = "silent_loss"
            if metadata.get("request_id"):
                generation.request_ids.add(str(metadata["request_id"]))
            if metadata.get("generation_task_id"):
                generation.task_ids.add(str(metadata["generation_task_id"]))
        else:
            generation.outcome = "failed"
            read_failure(generation, segments.get(map_index, ""), model)
        generations.append(generation)
    return generations


# Crash points: every point x endpoint x way of dying, each followed by Airflow's retry ---------------------
# Answers held back long enough for the after_send alarm (0.5 s) to land while the request is in flight.
CRASH_FAULTS: dict[str, Any] = {"hold_ms": 1500, "task_pending_ms": 300, "task_duration_ms": 300}


@dataclass
class CrashRun:
    reports: list[CaseReport]
    seconds: float  # the DAG run's own wall time (start to end in the metadata database)
    process_seconds: float  # `airflow dags test --use-executor`, start to exit
    clean_seconds: float | None = None
    clean_process_seconds: float | None = None
    clean_reports: list[CaseReport] = field(default_factory=list)
    # Per case whose outcome differs from the expected one: its last task log and that log's end.
    logs: dict[tuple[str, str, str], tuple[Path | None, str]] = field(default_factory=dict)


def run_seconds(env: dict[str, str], dag_id: str) -> float:
    """How long the latest run of a DAG took, from its start to its end as the metadata database says."""
    ((start, end),) = local_executor.dag_run_rows(env, dag_id, "dag_run", "start_date, end_date")
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def run_crash(home: Path, env: dict[str, str], quotas: bool, seed: int, anchor: bool) -> CrashRun:
    """
    Every case in one run of the crash-points DAG under LocalExecutor (an ``airflow api-server`` serves
    the Execution API), judged against the emulator's billing log; then, unless ``anchor`` is off, the
    same cases with the switch disarmed (no crash), for the wall-time ratio.
    """
    from tests.crash_cases import DAG_ID, task_log

    cases = all_cases()
    env = {
        **env,
        "AIRFLOW__CORE__DAGS_FOLDER": str(CRASH_DAGS.parent),
        # LocalExecutor's default (32) starts most of the 39 task processes at once: on 2 cores their
        # start-up starves the emulator (this process) for over a second, so an after_send crash fires
        # before the request reaches it and the case tests nothing in flight. 8 at a time, as the test's 8.
        "AIRFLOW__CORE__PARALLELISM": os.environ.get("AIRFLOW__CORE__PARALLELISM", "8"),
    }
    # judge_cases imports the DAG file, so Airflow, in this process: into this Airflow home, not ~/airflow.
    os.environ.update({key: env[key] for key in ("AIRFLOW_HOME", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")})
    run_env = {
        "IMGGEN_CRASH_CASES": json.dumps(cases),
        "IMGGEN_CRASH_OUTPUT": str(home / "crash-images"),
        # The after_send alarm, from the intent: late enough for a loaded machine to have the request at the
        # emulator, early enough to land within its 1.5 s hold.
        "IMGGEN_TEST_CRASH_DELAY": os.environ.get("IMGGEN_TEST_CRASH_DELAY", "1.0"),
    }
    timeout = 1800.0
    with local_executor.api_server(env) as server_env:
        with emulator({"quotas": quotas, **CRASH_FAULTS}, seed) as server:
            started = time.monotonic()
            printed = local_executor.run_dag_under_local_executor(
                server_env, DAG_ID, crash_connections(server, API_KEY), CRASH_DAGS, timeout, **run_env
            )
            process_seconds = time.monotonic() - started
            (home / f"{DAG_ID}-crash.log").write_text(printed)
            (home / "crash-requests.json").write_text(json.dumps(server.requests_log(), indent=1))
            # Before any other run of the DAG here: the judge reads the task logs by map index.
            result = CrashRun(judge_cases(env, server, cases), run_seconds(env, DAG_ID), process_seconds)
        for report in result.reports:
            if report.outcome != report.expected:
                found = task_log(env, cases.index(list(report.case)))
                tail = "\n".join(found.read_text(errors="replace").splitlines()[-15:]) if found else ""
                result.logs[report.case] = (found, tail)
        if anchor:
            with emulator({"quotas": quotas, **CRASH_FAULTS}, seed) as server:
                started = time.monotonic()
                printed = local_executor.run_dag_under_local_executor(
                    server_env,
                    DAG_ID,
                    crash_connections(server, API_KEY),
                    CRASH_DAGS,
                    timeout,
                    IMGGEN_CRASH_DISARMED="1",
                    **run_env,
                )
                result.clean_process_seconds = time.monotonic() - started
                (home / f"{DAG_ID}-clean.log").write_text(printed)
                result.clean_seconds = run_seconds(env, DAG_ID)
                result.clean_reports = judge_cases(env, server, cases)
    return result


def print_crash(run: CrashRun) -> list[str]:
    """The per-case table and the totals; what failed, with the task log's end for each case that did."""
    print(
        f"{'endpoint':<8} {'how':<9} {'point':<19} {'outcome':<10} {'expected':<9} {'state':<8} "
        f"{'billed req':>10} {'billed img':>10} {'delivered':>9} {'wrong adopt':>11}"
    )
    for report in sorted(run.reports, key=lambda report: report.case):
        endpoint, point, how = report.case
        mark = "" if report.outcome == report.expected else "  <- expected " + report.expected
        print(
            f"{endpoint:<8} {how:<9} {point:<19} {report.outcome:<10} {report.expected:<9} "
            f"{report.state:<8} {report.billed_requests:>10} {report.billed_images:>10} "
            f"{report.delivered_images:>9} {'yes' if report.adopted_wrong_task else 'no':>11}{mark}"
        )
    twice = sum(report.images_billed_again for report in run.reports)
    unaccounted = sum(report.unaccounted_images for report in run.reports)
    wrong = sum(1 for report in run.reports if report.adopted_wrong_task)
    differ = [report for report in run.reports if report.outcome != report.expected]
    outcomes = collections.Counter(report.outcome for report in run.reports)
    print(
        f"crash totals over {len(run.reports)} cases ({dict(outcomes)}): images billed twice {twice}; "
        f"paid images neither stored nor reported (unaccounted) {unaccounted}; wrong-task adoptions {wrong}; "
        f"outcome differs from expected {len(differ)}"
    )
    print(
        f"  billed {sum(report.billed_images for report in run.reports)} images in "
        f"{sum(report.billed_requests for report in run.reports)} requests, delivered "
        f"{sum(report.delivered_images for report in run.reports)}"
    )
    if run.clean_seconds is not None:
        clean_delivered = sum(1 for report in run.clean_reports if report.outcome == "delivered")
        clean_billed = sum(report.billed_requests for report in run.clean_reports)
        ratio = run.seconds / run.clean_seconds
        print(
            f"  wall time, DAG run start to end: crash run {run.seconds:.1f} s, clean run (same cases, "
            f"switch disarmed) {run.clean_seconds:.1f} s: crash run / clean run {ratio:.2f}x"
        )
        print(
            f"  (dags test processes {run.process_seconds:.1f} s / {run.clean_process_seconds:.1f} s); "
            f"clean run: {clean_delivered}/{len(run.clean_reports)} delivered, {clean_billed} billed requests"
        )
    else:
        print(f"  wall time, DAG run start to end: crash run {run.seconds:.1f} s (no clean anchor run)")
    failures = []
    if twice:
        failures.append(f"crash: {twice} image(s) billed twice")
    if unaccounted:
        failures.append(f"crash: {unaccounted} paid image(s) neither stored nor reported")
    if wrong:
        failures.append(f"crash: {wrong} task(s) adopted another case's generation")
    for report in differ:
        failures.append(f"crash: {' '.join(report.case)} ended {report.outcome}, expected {report.expected}")
    for case, (found, tail) in run.logs.items():
        print(f"--- {' '.join(case)}: the end of {found or 'no task log'}")
        print(tail)
    return failures


# Output -----------------------------------------------------------------------------------------------------
def print_reports(reports: list[Report], anchor: Report | None) -> None:
    header = (
        f"{'part':<9} {'wall s':>7} {'gens':>5} {'requested':>9} {'billed':>6} {'delivered':>9} "
        f"{'failed/unk':>10} {'billed 2x':>9} {'unaccounted':>11} {'429s':>5} {'sends':>5}"
    )
    print(header)
    for report in reports:
        print(
            f"{report.name:<9} {report.seconds:>7.1f} {report.generations:>5} {report.requested:>9} "
            f"{report.billed:>6} {report.delivered:>9} {report.named_failed:>10} "
            f"{report.images_billed_twice:>9} {report.unaccounted:>11} {report.throttled_answers:>5} "
            f"{report.billable_requests:>5}"
        )
    print(
        f"{'ratios':<9} {'billed/requested':>16} {'delivered/billed':>16} {'billed 2x/billed':>15} "
        f"{'unaccounted/billed':>18} {'wall vs anchor':>14}"
    )
    for report in reports:
        billed = report.billed or 1
        vs_anchor = f"{report.seconds / anchor.seconds:.2f}x" if anchor and anchor.seconds else "-"
        print(
            f"{report.name:<9} {report.billed / (report.requested or 1):>16.2f} "
            f"{report.delivered / billed:>16.2f} {report.images_billed_twice / billed:>15.3f} "
            f"{report.unaccounted / billed:>18.3f} {vs_anchor:>14}"
        )
    for report in reports:
        by_time = (
            f" ({report.named_by_time} of them named by send time: the connection dropped, no request id)"
            if report.named_by_time
            else ""
        )
        print(
            f"  {report.name}: outcomes {dict(report.outcomes)}; failed/unknown images named "
            f"{report.named_failed}{by_time}"
        )
        print(f"    failures: {dict(report.failure_reasons) or 'none'}")
        print(
            f"    generations billed twice {report.generations_billed_twice}; "
            f"failed by throttling {report.throttling_failures}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--part", choices=("anchor", "gateway", "native", "crash", "all"), default="all")
    parser.add_argument("--generations", type=int, default=100)
    parser.add_argument("--n", type=int, default=2, help="images per generation (wan2.2-t2i-flash: 1-4)")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="anchor: generations in parallel (default: the concurrent quota)",
    )
    parser.add_argument("--task-retries", type=int, default=2, help="provider DAGs: Airflow task retries")
    parser.add_argument("--fault-seed", type=int, default=11)
    parser.add_argument(
        "--crash-quotas",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="crash: the emulator's real quota on (off by default: see the module's docstring)",
    )
    parser.add_argument(
        "--crash-anchor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="crash: also run the same cases with no crash, for the wall-time ratio",
    )
    parser.add_argument(
        "--keep", metavar="DIR", help="keep the Airflow home (database, task logs, dags test output) in DIR"
    )
    args = parser.parse_args()
    parts = ("anchor", "gateway", "native", "crash") if args.part == "all" else (args.part,)

    if parts != ("crash",):
        print(
            f"billing safety: {args.generations} generations x n={args.n} ({MODEL} {SIZE}), quota on, "
            f"faults {FAULTS}, seed {args.fault_seed}"
        )
    if "crash" in parts:
        print(
            f"crash points: {len(all_cases())} cases (endpoint x point x how), n=2 each, under "
            f"LocalExecutor, 1 retry; emulator faults {CRASH_FAULTS}, "
            f"quotas {'on' if args.crash_quotas else 'off'}"
        )
    crash: CrashRun | None = None
    reports: list[Report] = []
    anchor: Report | None = None
    with tempfile.TemporaryDirectory(prefix="bench-billing-safety-") as work:
        home = Path(args.keep or work)
        home.mkdir(parents=True, exist_ok=True)
        env = airflow_env(home)
        if any(part != "anchor" for part in parts):
            subprocess.run(
                [str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
                env=env,
                check=True,
                capture_output=True,
                timeout=600,
            )
        for part in parts:
            if part == "crash":
                crash = run_crash(home, env, args.crash_quotas, args.fault_seed, args.crash_anchor)
                continue
            with emulator(FAULTS, args.fault_seed) as server:
                started = time.monotonic()
                if part == "anchor":
                    generations = run_anchor(server, args.generations, args.n, args.workers)
                else:
                    generations, _ = run_provider(
                        server, part, args.generations, args.n, args.task_retries, home, env
                    )
                seconds = time.monotonic() - started
                log = server.requests_log()
                report = count_billing(part, generations, log)
                if args.keep:
                    (home / f"{part}-requests.json").write_text(json.dumps(log, indent=1))
                report.seconds = seconds
            if part == "anchor":
                anchor = report
            reports.append(report)

    failures = []
    if reports:
        print_reports(reports, anchor)
    if crash is not None:
        failures += print_crash(crash)
    for report in reports:
        if report.name == "anchor":
            continue
        if report.generations != args.generations:
            failures.append(f"{report.name}: {report.generations} generations ran of {args.generations}")
        if report.images_billed_twice:
            failures.append(f"{report.name}: {report.images_billed_twice} image(s) billed twice")
        if report.unaccounted:
            failures.append(
                f"{report.name}: {report.unaccounted} billed image(s) neither delivered nor named"
            )
        if report.throttling_failures:
            failures.append(f"{report.name}: {report.throttling_failures} task(s) failed by throttling")
    for failure in failures:
        print("FAILED:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
