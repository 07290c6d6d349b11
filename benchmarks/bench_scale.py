"""
Throughput at the account's quota on the cluster: N prompts through the content pipeline at volume.

Brings up benchmarks/cluster.py's deployment once (CeleryExecutor, PostgreSQL, Redis, two Celery workers
of 2 slots, two triggerers failing over within about 7 s; the billing ledger in PostgreSQL; the emulator
with the real quota: 2 submissions per second, 2 concurrent tasks) and measures, one after the other:

- ``batch`` (benchmarks/bench_scale_batch_dag.py): one ImageGenerationBatchOperator task for all N prompts,
  submitted from the triggerer under claims in the ledger, in each over-quota mode of the emulator
  (``refuse``: 429 beyond the concurrency quota; ``queue``: PENDING until a slot frees). Faults: once a
  third of the prompts were submitted a Celery worker is killed (SIGKILL, every process of it; in batch
  mode it usually runs nothing of the run, which the output says) and restarted; at half, the triggerer
  running the batch trigger is paused (SIGSTOP) past the health threshold until the other triggerer has
  taken the trigger, then resumed (SIGCONT): both run the trigger until the resumed one notices; at two
  thirds the triggerer running the trigger is killed (SIGKILL) and restarted.
- ``mapped`` (benchmarks/bench_scale_dag.py): one deferrable task per prompt in the pool ``imggen_quota``
  (2 slots, deferred counted), ``--mapped-prompts`` of them, ``refuse`` mode only; a worker running a
  generation killed at a third, the triggerer running most of the run's triggers killed at two thirds.

The quota's limit is N x G / 2 seconds (2 generations at a time). Prints per run the wall time (DAG run
queued to finished) and its ratio to that limit (goal <= 1.15x), worker-slot seconds per image (from the
workers' "Workload finished" lines of the run's task instances: the generate tasks', and every task's;
goal <= 0.5 for batch), 429s, images billed, stored, billed twice (billed submissions beyond one per
request body, i.e. per prompt), lost (prompts with no stored image, by the objects' prompt-sha256) and
failed tasks; then a table of all runs. Exits 1 when a batch run billed twice, lost an image or failed a
task, or any run did not succeed.

    python benchmarks/bench_scale.py [--pipelines batch,mapped] [--over-concurrency refuse,queue]
        [--prompts 200] [--mapped-prompts 60] [--generation-seconds 4] [--no-faults] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR.parent) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR.parent))

from benchmarks.cluster import (  # noqa: E402
    BUCKET,
    LEDGER_DATABASE,
    NATIVE_SUBMIT_PATH,
    TRIGGERER_HEALTH_SECONDS,
    Cluster,
    Service,
    cluster,
    log,
    s3_client,
    wait_until,
)

PIPELINES = {
    "batch": (BENCH_DIR / "bench_scale_batch_dag.py", "bench_scale_batch"),
    "mapped": (BENCH_DIR / "bench_scale_dag.py", "bench_scale"),
}
BATCH_OPERATOR_MODULE = "airflow_provider_imggen.operators.image_generation_batch"
OVERFLOWS = ("refuse", "queue")
POOL = "imggen_quota"
QUOTA_CONCURRENT = 2
TRIGGERERS = 2
GENERATE = "generate"
WORKLOAD_LINE = re.compile(
    r"Workload finished .*?duration=(?P<duration>[\d.]+).*?workload_id=(?P<ti_id>[\w-]+)"
)


@dataclass
class RunResult:
    pipeline: str
    overflow: str
    prompts: int
    generation_seconds: float
    run_id: str = ""
    state: str = "not run"
    wall: float = 0.0
    slot_generate: float = 0.0
    slot_all: float = 0.0
    worker_runs: int = 0
    throttled: int = 0
    billed_images: int = 0
    billed_submissions: int = 0
    stored: int = 0
    billed_twice: int = 0
    lost: int = 0
    failed: int = 0
    faults: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.pipeline}/{self.overflow}"

    @property
    def limit(self) -> float:
        return self.prompts * self.generation_seconds / QUOTA_CONCURRENT

    @property
    def problems(self) -> list[str]:
        """What makes the benchmark fail: any run not successful; a batch run's money or task errors."""
        found = []
        if self.state != "success":
            found.append(f"{self.name}: run {self.state}")
        if self.pipeline == "batch":
            if self.billed_twice:
                found.append(f"{self.name}: {self.billed_twice} prompt(s) billed twice")
            if self.lost:
                found.append(f"{self.name}: {self.lost} prompt(s) lost (no stored image)")
            if self.failed:
                found.append(f"{self.name}: {self.failed} task(s) not successful")
        return found


# --- progress and faults --------------------------------------------------------------------------------


def accepted_submissions(c: Cluster) -> int:
    return sum(
        1
        for entry in c.emulator("requests")["requests"]
        if entry["method"] == "POST" and entry["path"] == NATIVE_SUBMIT_PATH and entry["outcome"] == "ok"
    )


def run_state(c: Cluster, dag_id: str, run_id: str) -> str:
    return str(c.api(f"dags/{dag_id}/dagRuns/{run_id}")["state"])


def wait_submitted(c: Cluster, dag_id: str, run_id: str, count: int, what: str, timeout: float) -> bool:
    """Wait until ``count`` submissions were accepted; False when the run ended first."""

    def reached() -> str | None:
        if accepted_submissions(c) >= count:
            return "reached"
        return "ended" if run_state(c, dag_id, run_id) in ("success", "failed") else None

    outcome = wait_until(f"{what} ({count} submissions)", reached, timeout, list(c.services.values()), 0.5)
    if outcome == "ended":
        log(f"the run ended before {what}: fault skipped")
        return False
    return True


def task_names(c: Cluster, dag_id: str, run_id: str, ti_ids: set[str]) -> list[str]:
    return sorted(
        f"{i['task_id']}" + (f"[{i['map_index']}]" if i["map_index"] >= 0 else "")
        for i in c.task_instances(dag_id, run_id)
        if i["id"] in ti_ids
    )


def kill_a_worker(c: Cluster, dag_id: str, run_id: str) -> str:
    """SIGKILL a worker running a task of the run, or the first worker if none does; restart it."""
    # A Celery pool process keeps its last task's title: only task instances still running count.
    run_ids = {i["id"] for i in c.task_instances(dag_id, run_id) if i["state"] == "running"}
    victim = next((w for w in c.workers if c.running_on(w) & run_ids), c.workers[0])
    running = task_names(c, dag_id, run_id, c.running_on(victim) & run_ids)
    c.kill_worker(victim)
    time.sleep(2)
    c.restart_worker(victim)
    what = ", ".join(running) if running else "nothing of this run (no task of it was on a worker)"
    return f"killed {victim.name} running {what}"


def kill_a_generating_worker(c: Cluster, dag_id: str, run_id: str) -> str:
    """SIGKILL a worker that runs a generate task (wait for one), then restart it."""

    def generating_worker() -> Service | None:
        running = {
            instance["id"]
            for instance in c.task_instances(dag_id, run_id)
            if instance["task_id"] == GENERATE and instance["state"] == "running"
        }
        return next((worker for worker in c.workers if c.running_on(worker) & running), None)

    victim: Service = wait_until("a worker running a generation", generating_worker, 300, c.workers, 0.2)
    running = task_names(c, dag_id, run_id, c.running_on(victim))
    c.kill_worker(victim)
    time.sleep(2)
    c.restart_worker(victim)
    return f"killed {victim.name} running {', '.join(running) or 'a generation'}"


def batch_triggerer(c: Cluster, dag_id: str, run_id: str, timeout: float = 120) -> str:
    """The triggerer running the batch trigger (waits while the trigger is not assigned)."""
    return str(
        wait_until(
            "the batch trigger assigned to a triggerer",
            lambda: c.triggerer_of(dag_id, run_id, GENERATE),
            timeout,
            c.triggerers,
            0.5,
        )
    )


def log_tail(service: Service, offset: int, pattern: re.Pattern[str], limit: int = 12) -> list[str]:
    """Lines of a service's log after ``offset`` that match ``pattern`` (at most ``limit``)."""
    with service.log_path.open("rb") as output:
        output.seek(offset)
        text = output.read().decode(errors="replace")
    return [line.rstrip()[:300] for line in text.splitlines() if pattern.search(line)][:limit]


TRIGGER_LINE = re.compile(r"(?i)trigger|batch|ledger|claim|cancel")
HEARTBEAT_GAP = re.compile(r"Heartbeat recovered after (?P<seconds>[\d.]+) seconds")


def pause_until_taken_over(c: Cluster, dag_id: str, run_id: str, result: RunResult) -> None:
    """
    SIGSTOP the triggerer running the batch trigger until the other triggerer was assigned the trigger (its
    heartbeat is older than the health threshold), let the other run it a while, SIGCONT: until the resumed
    triggerer's next loop cancels its copy, both run the trigger.
    """
    held = batch_triggerer(c, dag_id, run_id)
    other = next(t for t in c.triggerers if t.name != held)
    snapshot_trigger_logs(c, dag_id, run_id)
    offsets = {t.name: t.log_path.stat().st_size for t in c.triggerers}
    paused_at = time.monotonic()
    c.pause(held)
    try:
        taken = wait_until(
            f"{other.name} to take the batch trigger from the paused {held}",
            lambda: c.triggerer_of(dag_id, run_id, GENERATE) == other.name,
            TRIGGERER_HEALTH_SECONDS * 6 + 30,
            [other],
            0.5,
        )
        took = time.monotonic() - paused_at
        log(f"{other.name} was assigned the batch trigger {took:.1f} s after {held} was paused")
        # The new copy starts (and resumes from the ledger) while the old one is frozen mid-flight.
        time.sleep(3)
    except TimeoutError:
        taken = False
        took = time.monotonic() - paused_at
        log(f"{other.name} did not take the batch trigger in {took:.0f} s")
    finally:
        snapshot_trigger_logs(c, dag_id, run_id)
        c.resume(held)
    resumed_at = time.monotonic()
    # Both copies run until the resumed triggerer loads its triggers again and cancels the one it lost.
    time.sleep(8)
    if taken:
        result.faults.append(
            f"paused {held} {resumed_at - paused_at:.0f} s: {other.name} took the trigger after "
            f"{took:.1f} s; then both ran it"
        )
    else:
        result.faults.append(f"paused {held} {took:.0f} s: the trigger was NOT taken over")
        result.notes.append(f"the paused {held}'s trigger was not taken over by {other.name}")
    for name in (held, other.name):
        lines = log_tail(c.services[name], offsets[name], TRIGGER_LINE)
        if lines:
            print(f"    {name} log during the pause and after the resume:")
            for line in lines:
                print(f"      {line}")


def batch_faults(c: Cluster, dag_id: str, run_id: str, result: RunResult, timeout: float) -> None:
    prompts = result.prompts
    if wait_submitted(c, dag_id, run_id, max(1, prompts // 3), "a third submitted", timeout):
        result.faults.append(kill_a_worker(c, dag_id, run_id))
    if wait_submitted(c, dag_id, run_id, max(1, prompts // 2), "half submitted", timeout):
        pause_until_taken_over(c, dag_id, run_id, result)
    if wait_submitted(c, dag_id, run_id, max(2, 2 * prompts // 3), "two thirds submitted", timeout):
        victim = batch_triggerer(c, dag_id, run_id)
        snapshot_trigger_logs(c, dag_id, run_id)
        c.restart_triggerer(victim)
        result.faults.append(f"killed and restarted {victim} (it ran the trigger)")


def mapped_faults(c: Cluster, dag_id: str, run_id: str, result: RunResult, timeout: float) -> None:
    prompts = result.prompts
    if wait_submitted(c, dag_id, run_id, max(1, prompts // 3), "a third submitted", timeout):
        result.faults.append(kill_a_generating_worker(c, dag_id, run_id))
    if wait_submitted(c, dag_id, run_id, max(2, 2 * prompts // 3), "two thirds submitted", timeout):
        assigned = c.triggers_by_triggerer(dag_id, run_id)
        victim = max(assigned, key=lambda name: assigned[name]) if assigned else c.triggerers[0].name
        c.restart_triggerer(victim)
        result.faults.append(
            f"killed and restarted {victim} ({assigned.get(victim, 0)} of the run's triggers)"
        )


# --- one run --------------------------------------------------------------------------------------------


def measure(c: Cluster, dag_id: str, result: RunResult) -> None:
    run_id = result.run_id
    run = c.api(f"dags/{dag_id}/dagRuns/{run_id}")
    result.wall = (
        datetime.fromisoformat(run["end_date"]) - datetime.fromisoformat(run["queued_at"])
    ).total_seconds()
    instances = c.task_instances(dag_id, run_id)
    ti_ids = {instance["id"] for instance in instances}
    generate_ids = {instance["id"] for instance in instances if instance["task_id"] == GENERATE}
    result.failed = sum(1 for instance in instances if instance["state"] != "success")

    def worker_runs() -> list[tuple[str, float]]:
        found: list[tuple[str, float]] = []
        for worker in c.workers:
            text = worker.log_path.read_text(errors="replace")
            found += [
                (match["ti_id"], float(match["duration"]))
                for match in WORKLOAD_LINE.finditer(text)
                if match["ti_id"] in ti_ids
            ]
        return found

    # A worker logs "Workload finished" once its task process exits, which may be after the run ended.
    ended_on_worker = {i["id"] for i in instances if i["task_id"] != GENERATE and i["state"] == "success"}
    with contextlib.suppress(TimeoutError):
        wait_until(
            "the workers' last Workload lines",
            lambda: ended_on_worker <= {ti_id for ti_id, _ in worker_runs()},
            30,
            c.workers,
            1,
        )
    workloads = worker_runs()
    result.worker_runs = len(workloads)
    result.slot_generate = sum(duration for ti_id, duration in workloads if ti_id in generate_ids)
    result.slot_all = sum(duration for _, duration in workloads)
    requests_log = c.emulator("requests")
    entries = requests_log["requests"]
    result.throttled = sum(1 for entry in entries if entry["status"] == 429)
    # A request body (its fingerprint) is one prompt: the prompts differ, every other parameter is equal.
    billed = Counter(
        entry.get("fingerprint")
        for entry in entries
        if entry["billed"] and entry["method"] == "POST" and entry["path"] == NATIVE_SUBMIT_PATH
    )
    result.billed_submissions = sum(billed.values())
    result.billed_twice = sum(count - 1 for count in billed.values())
    result.billed_images = int(requests_log["billed_images"])
    s3 = s3_client(c.s3_endpoint)
    keys = [
        item["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"scale/{run_id}/")
        for item in page.get("Contents", [])
    ]
    result.stored = len(keys)
    # The DAGs' prompts, each found again by the prompt-sha256 metadata of the objects.
    wanted = {
        hashlib.sha256(f"Product photo number {number}, run {run_id}".encode()).hexdigest()
        for number in range(result.prompts)
    }
    stored_prompts = {s3.head_object(Bucket=BUCKET, Key=key)["Metadata"].get("prompt-sha256") for key in keys}
    result.lost = len(wanted - stored_prompts)
    if result.stored != result.prompts or result.billed_images != result.prompts:
        result.notes.append(
            f"{result.prompts} images expected: {result.billed_images} billed, {result.stored} stored"
        )
    retried = [
        f"{i['task_id']}" + (f"[{i['map_index']}]" if i["map_index"] >= 0 else "") + f" try {i['try_number']}"
        for i in instances
        if i["try_number"] > 1
    ]
    if retried:
        result.notes.append(f"{len(retried)} task(s) retried: {', '.join(retried[:8])}")
    not_ok = [
        f"{i['task_id']}" + (f"[{i['map_index']}]" if i["map_index"] >= 0 else "") + f" {i['state']}"
        for i in instances
        if i["state"] != "success"
    ]
    if not_ok:
        result.notes.append(f"not successful: {', '.join(not_ok[:8])}")


# What a batch trigger's copies said: starts, ends, and everything about claims, recoveries and problems.
TRIGGER_EVENT = re.compile(
    r"(?i)starting|Batch|Request \d+|claim|ledger|recover|unknown|changed|could not|throttl|quota|error|"
    r"cancel|fired|completed|Traceback|exception"
)
# A request sent and a task read as planned: one line each per request, left out of the excerpts.
ROUTINE = re.compile(r"Request \d+: sent, task |^Task \S+ SUCCEEDED with ")


# Trigger log lines seen so far, per run and file: a triggerer job that runs a trigger again rewrites its
# file (one per try and triggerer job), so an earlier copy's lines are read before each fault.
TRIGGER_LOG_LINES: dict[str, dict[str, set[str]]] = {}


def snapshot_trigger_logs(c: Cluster, dag_id: str, run_id: str) -> None:
    folder = (
        Path(c.env["AIRFLOW_HOME"]) / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / "task_id=generate"
    )
    seen = TRIGGER_LOG_LINES.setdefault(run_id, {})
    for path in folder.glob("*.trigger.*.log"):
        seen.setdefault(path.name, set()).update(path.read_text(errors="replace").splitlines())


def watch_trigger_logs(c: Cluster, dag_id: str, run_id: str, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        with contextlib.suppress(OSError):
            snapshot_trigger_logs(c, dag_id, run_id)


def trigger_log_excerpts(c: Cluster, dag_id: str, run_id: str, limit: int = 40) -> list[str]:
    """The lines of every trigger log of the run's generate task (one file per try and triggerer job)."""
    import json

    snapshot_trigger_logs(c, dag_id, run_id)
    jobs = {
        str(job_id): str(hostname)
        for job_id, hostname in c.sql("SELECT id, hostname FROM job WHERE job_type = 'TriggererJob'")
    }
    lines: list[tuple[str, str]] = []
    for name, raws in sorted(TRIGGER_LOG_LINES.get(run_id, {}).items()):
        job = name.rsplit(".trigger.", 1)[1].removesuffix(".log")
        source = f"{name.split('.log', 1)[0]} job {job} ({jobs.get(job, '?')})"
        for raw in raws:
            try:
                record = json.loads(raw)
                moment, level = record.get("timestamp", "")[11:23], record.get("level", "")[:4]
                text = f"{moment} {level} {record.get('event')}"
            except (ValueError, AttributeError):
                text = raw
            event = text.split(" ", 2)[-1]
            if TRIGGER_EVENT.search(text) and not ROUTINE.search(event):
                lines.append((text, f"{source}: {text[:260]}"))
    lines.sort()
    picked = [line for _, line in lines]
    if len(picked) > limit:
        picked = [*picked[: limit // 2], f"... {len(picked) - limit} more ...", *picked[-limit // 2 :]]
    return picked


def ledger_summary(c: Cluster, dag_id: str, run_id: str) -> str:
    """The batch's slots in the ledger: their states, and which trigger copy wrote each last."""
    try:
        rows = c.sql(
            "SELECT entry->>'state', entry->'request'->>'copy', entry->'request'->>'attempt', "
            "entry->'request' ? 'earlier_tasks' FROM imggen_ledger "
            "WHERE entry->>'owner' LIKE %s AND entry->'request' ? 'index'",
            f"{dag_id}/{run_id}/%",
            database=LEDGER_DATABASE,
        )
    except Exception as error:  # the table appears with the first claim
        return f"ledger not readable ({type(error).__name__}: {error})"
    states = Counter(str(state) for state, _, _, _ in rows)
    copies = Counter(str(copy)[:8] for _, copy, _, _ in rows)
    again = sum(1 for _, _, attempt, _ in rows if attempt and int(attempt) > 1)
    return (
        f"{len(rows)} slots: {dict(states)}; last written by copy {dict(copies)}; "
        f"{again} claimed more than once (released after a 429 or an unbilled failure)"
    )


def batch_timeline(c: Cluster, dag_id: str, run_id: str, limit: float) -> str:
    """Where a batch run's wall time went, in seconds after it was queued."""
    import json

    run = c.api(f"dags/{dag_id}/dagRuns/{run_id}")
    queued = datetime.fromisoformat(run["queued_at"])

    def at(moment: str | None) -> str:
        return f"{(datetime.fromisoformat(moment) - queued).total_seconds():.1f}" if moment else "?"

    tasks = {i["task_id"]: i for i in c.task_instances(dag_id, run_id)}
    marks: dict[str, list[str]] = {"starting": [], "Batch done": [], "Trigger fired event": []}
    for raws in TRIGGER_LOG_LINES.get(run_id, {}).values():
        for raw in raws:
            with contextlib.suppress(ValueError, AttributeError):
                record = json.loads(raw)
                for mark, found in marks.items():
                    if str(record.get("event", "")).startswith(mark) or (
                        mark == "starting" and str(record.get("event", "")).endswith("starting")
                    ):
                        found.append(str(record["timestamp"]).replace("Z", "+00:00"))
    parts = []
    for task_id in ("prompts", GENERATE, "store_in_s3"):
        instance = tasks.get(task_id)
        if instance is not None:
            parts.append(f"{task_id} {at(instance['start_date'])}-{at(instance['end_date'])}")
    parts.append(
        f"trigger copies started at {', '.join(at(m) for m in sorted(marks['starting'])) or '?'}; "
        f"batch done {at(max(marks['Batch done'], default=None))}, "
        f"event {at(max(marks['Trigger fired event'], default=None))}"
    )
    parts.append(f"run end {at(run['end_date'])}")
    done = max(marks["Batch done"], default=None)
    if done is not None:
        # The trigger's own pace, apart from what follows it (the XCom push, the event, the store task).
        delivered = (datetime.fromisoformat(done) - queued).total_seconds()
        parts.append(f"queued -> batch done {delivered:.1f} s = {delivered / limit:.2f}x the quota limit")
    return "timeline (s after queued): " + "; ".join(parts)


def run_one(c: Cluster, pipeline: str, overflow: str, prompts: int, args: argparse.Namespace) -> RunResult:
    dag_id = PIPELINES[pipeline][1]
    result = RunResult(pipeline, overflow, prompts, args.generation_seconds)
    load_before = os.getloadavg()[0]
    c.emulator(
        "faults",
        {
            "task_pending_ms": 0,
            "task_duration_ms": args.generation_seconds * 1000,
            "concurrency_overflow": overflow,
        },
        method="PUT",
    )
    c.emulator("requests", method="DELETE")
    offsets = {t.name: t.log_path.stat().st_size for t in c.triggerers}
    wait_until(f"DAG {dag_id} parsed", lambda: c.api(f"dags/{dag_id}")["dag_id"], 180, c.workers, 1)
    timeout = result.limit * 4 + 600
    result.run_id = c.trigger(dag_id, {"prompts": prompts})
    log(
        f"[{result.name}] triggered {dag_id} {result.run_id}: {prompts} prompts x "
        f"{args.generation_seconds:g} s; limit {result.limit:.0f} s"
    )
    watching = threading.Event()
    if pipeline == "batch":  # every copy's trigger log, before a later copy on the same job rewrites it
        threading.Thread(
            target=watch_trigger_logs, args=(c, dag_id, result.run_id, watching), daemon=True
        ).start()
    try:
        if args.faults:
            faults = batch_faults if pipeline == "batch" else mapped_faults
            faults(c, dag_id, result.run_id, result, timeout)
        result.state = c.wait_run(dag_id, result.run_id, timeout)
    finally:
        watching.set()
    # The machine is shared: a load far above its 2 cores slows every process of the cluster.
    result.notes.append(f"load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    measure(c, dag_id, result)
    if pipeline == "batch":
        snapshot_trigger_logs(c, dag_id, result.run_id)
        result.notes.append(batch_timeline(c, dag_id, result.run_id, result.limit))
        result.notes.append(f"ledger: {ledger_summary(c, dag_id, result.run_id)}")
        print(f"    [{result.name}] the batch trigger's logs (every copy), in time order:")
        for line in trigger_log_excerpts(c, dag_id, result.run_id):
            print(f"      {line}")
    # A triggerer silent past the health threshold loses its triggers to the other one: say when it happened.
    for triggerer in c.triggerers:
        for line in log_tail(triggerer, offsets[triggerer.name], HEARTBEAT_GAP, 20):
            gap = HEARTBEAT_GAP.search(line)
            assert gap is not None
            result.notes.append(
                f"{triggerer.name} silent {gap['seconds']} s (heartbeat recovered {line.split()[0]}): "
                "past the health threshold, its triggers may have moved"
            )
    report(result)
    return result


def report(r: RunResult) -> None:
    setup = (
        "one batch task, submissions from the triggerer under ledger claims, no pool"
        if r.pipeline == "batch"
        else f"one deferrable task per prompt ending in the triggerer, pool {POOL} of {QUOTA_CONCURRENT}"
    )
    print()
    print(
        f"== {r.name}: {r.prompts} prompts x {r.generation_seconds:g} s, over-concurrency {r.overflow}; "
        f"{setup}; CeleryExecutor 2 workers x 2 slots, {TRIGGERERS} triggerers"
    )
    print(f"   faults: {'; '.join(r.faults) or 'none'}")
    print(
        f"   run {r.state}: wall {r.wall:.1f} s, quota limit {r.limit:.0f} s, "
        f"ratio {r.wall / r.limit:.2f}x (goal <= 1.15x)"
    )
    print(
        f"   worker-slot s per image: {r.slot_generate / r.prompts:.2f} (generate tasks), "
        f"{r.slot_all / r.prompts:.2f} (every task); {r.worker_runs} worker runs"
        + (" (goal <= 0.5)" if r.pipeline == "batch" else "")
    )
    print(
        f"   429s {r.throttled}; images billed {r.billed_images}, stored {r.stored}, "
        f"billed twice {r.billed_twice}, lost {r.lost}; failed tasks {r.failed}"
    )
    for note in r.notes:
        print(f"   note: {note}")
    sys.stdout.flush()


def summary(results: list[RunResult]) -> None:
    header = (
        f"{'run':<15} {'prompts':>7} {'state':>8} {'wall s':>7} {'limit':>6} {'ratio':>6} {'slot/img':>8} "
        f"{'all/img':>8} {'429s':>6} {'billed':>6} {'stored':>6} {'twice':>5} {'lost':>5} {'failed':>6}"
    )
    print()
    print("summary (goals for batch: ratio <= 1.15x, slot s per image <= 0.5, twice / lost / failed 0)")
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.name:<15} {r.prompts:>7} {r.state:>8} {r.wall:>7.1f} {r.limit:>6.0f} "
            f"{r.wall / r.limit if r.wall else 0:>5.2f}x {r.slot_generate / r.prompts:>8.2f} "
            f"{r.slot_all / r.prompts:>8.2f} {r.throttled:>6} {r.billed_images:>6} {r.stored:>6} "
            f"{r.billed_twice:>5} {r.lost:>5} {r.failed:>6}"
        )


# --- the whole benchmark --------------------------------------------------------------------------------


def choices(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    picked = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in picked if part not in allowed]
    if unknown or not picked:
        raise SystemExit(f"{what}: {', '.join(unknown) or '(none)'} not among {', '.join(allowed)}")
    return picked


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--pipelines", default="batch,mapped", help="batch, mapped or both (in that order)")
    parser.add_argument(
        "--over-concurrency",
        default="refuse,queue",
        help="the emulator's answer beyond the concurrency quota for the batch runs (the mapped run: refuse)",
    )
    parser.add_argument("--prompts", type=int, default=200, help="prompts of a batch run")
    parser.add_argument("--mapped-prompts", type=int, default=60, help="prompts of the mapped run")
    parser.add_argument("--generation-seconds", type=float, default=4.0)
    parser.add_argument("--no-faults", dest="faults", action="store_false", help="no kill, no pause")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, DB)")
    args = parser.parse_args()
    pipelines = choices(args.pipelines, tuple(PIPELINES), "--pipelines")
    overflows = choices(args.over_concurrency, OVERFLOWS, "--over-concurrency")
    plan = [
        (pipeline, overflow, args.prompts if pipeline == "batch" else args.mapped_prompts)
        for pipeline in PIPELINES
        if pipeline in pipelines
        for overflow in (overflows if pipeline == "batch" else ["refuse"])
    ]
    if "batch" in pipelines and importlib.util.find_spec(BATCH_OPERATOR_MODULE) is None:
        raise SystemExit(f"--pipelines batch needs {BATCH_OPERATOR_MODULE} (not in this checkout yet)")
    dags = Path(tempfile.mkdtemp(prefix="imggen-bench-scale-dags-"))
    for pipeline in pipelines:
        shutil.copy(PIPELINES[pipeline][0], dags / PIPELINES[pipeline][0].name)
    results: list[RunResult] = []
    try:
        with cluster(dags_folder=dags, triggerers=TRIGGERERS, keep=args.keep) as c:
            # The mapped pipeline's quota pool; the batch DAG uses none.
            c.airflow(
                "pools",
                "set",
                POOL,
                str(QUOTA_CONCURRENT),
                "the account's concurrent tasks",
                "--include-deferred",
            )
            for pipeline, overflow, prompts in plan:
                results.append(run_one(c, pipeline, overflow, prompts, args))
    except KeyboardInterrupt:
        log("interrupted: every process started was stopped")
        return 130
    finally:
        shutil.rmtree(dags, ignore_errors=True)
        if results:
            summary(results)
    problems = [problem for result in results for problem in result.problems]
    for problem in problems:
        print("FAILED:", problem)
    return 1 if problems or len(results) < len(plan) else 0


if __name__ == "__main__":
    raise SystemExit(main())
