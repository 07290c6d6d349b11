"""
Deferrable against sync: N generations of L seconds emulated latency each, run by a real Airflow.

One DAG run per mode, each a single ImageGenerationOperator mapped over N prompts, or for ``batch`` one
ImageGenerationBatchOperator with the N prompts (benchmarks/bench_deferrable_dag.py), executed by
``airflow standalone`` (scheduler, dag-processor, triggerer and api-server; LocalExecutor,
``[core] parallelism`` P, SQLite metadata DB in a temp AIRFLOW_HOME) against the API emulator (no account
quotas) on a free loopback port. Modes:

- ``sync``: the native task API (``api_style`` dashscope); the worker submits, then polls the task
  (``task_duration_ms`` = L) while holding its slot. The anchor: it needs at least N x L / P seconds.
- ``deferrable``: the same, but the operator defers to the triggerer after submitting: P slots are held
  only for the submissions and the resumes.
- ``deferrable-trigger``: deferrable with ``end_from_trigger=True``: the triggerer pushes the XCom and
  ends the task, so a generation is one worker run (the submission) instead of two.
- ``sync-openai``: the OpenAI-compatible route, each request answered after L seconds (``latency_ms``).
- ``batch``: one task instance; its single worker run validates the N prompts and defers once, and the
  trigger sends every prompt from the triggerer, each under a claim in the connection's billing ledger
  (an S3 ledger on a moto_server started next to the emulator), at ``--batch-rate`` submissions per
  second and N tasks at once (the emulator has no quota: the mapped modes are bounded only by the P
  slots), then ends the task from the triggerer with a list XCom of N generation records.

Prints per mode the DAG run's wall time (created to finished, Airflow's own timestamps), its ratio to
the anchor and to one generation's latency L (goal for the best mode: 1.5x), the worker runs per
generation, the worker-slot seconds per image, the tasks' durations, the submissions in the emulator's
request log, the most task instances seen running (and deferred) at once, and checks (exit status 1 when
one does not hold): every task succeeded, exactly N submissions and N billed images per mode (nothing
paid twice), never more than P tasks running, and the sync modes no faster than their lower bound
N x L / P; for ``batch`` also: one task instance, one worker run for the whole batch, and its XCom a list
of N records whose task ids are the N tasks the emulator created.

    python benchmarks/bench_deferrable.py [--modes sync,deferrable,deferrable-trigger,sync-openai,batch]
                                          [--tasks 40] [--latency 20] [--parallelism 4] [--batch-rate 20]
    python benchmarks/bench_deferrable.py --tasks 8 --latency 10     # a smoke run, a few minutes

All processes it starts run in new sessions and are stopped (the whole session: LocalExecutor's task
supervisors put their task processes in process groups of their own) on the way out, also on failure
and Ctrl-C. The work dir (AIRFLOW_HOME, logs, SQLite DB) is kept after a failure, or with --keep-home.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python benchmarks/...py` imports the other scripts' helpers
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.demo import background, emulator_command, free_port  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
DAG_FILE = BENCH_DIR / "bench_deferrable_dag.py"
API_KEY = "sk-bench-deferrable"
MODEL = "wan2.2-t2i-flash"
TERMINAL_RUN_STATES = ("success", "failed")
OPENAI_SUBMIT_PATH = "/v1/images/generations"
NATIVE_SUBMIT_PATH = "/api/v1/services/aigc/text2image/image-synthesis"
NATIVE_TASK_PATH = "/api/v1/tasks/"


@dataclass(frozen=True)
class Mode:
    """How one benchmark mode configures the operator and the emulator's latency."""

    conn_id: str
    operator_kwargs: dict[str, Any]
    submit_path: str
    native: bool
    # ``mapped``: ImageGenerationOperator mapped over the prompts; ``batch``: one
    # ImageGenerationBatchOperator sending them all from the triggerer.
    kind: str = "mapped"

    @property
    def batch(self) -> bool:
        return self.kind == "batch"

    @property
    def deferrable(self) -> bool:
        """Whether its generations wait in the triggerer (so no N x L / P lower bound holds)."""
        return self.batch or bool(self.operator_kwargs.get("deferrable"))

    @property
    def last_worker_run(self) -> tuple[str, ...]:
        """How a task's last worker run ends: ``deferred`` when the triggerer ends the task."""
        if self.batch or self.operator_kwargs.get("end_from_trigger"):
            return ("success", "deferred")
        return ("success",)

    def task_instances(self, generations: int) -> int:
        """Task instances of a run of ``generations``: one per prompt, or one for a whole batch."""
        return 1 if self.batch else generations

    def dag_kwargs(self, generations: int, args: argparse.Namespace) -> dict[str, Any]:
        """The operator's arguments in a DAG of ``generations`` prompts."""
        if not self.batch:
            return dict(self.operator_kwargs)
        # The emulator runs without the account's quota: as many tasks at once as there are prompts (the
        # mapped modes are bounded only by the slots), at a submission rate the emulator takes; the
        # benchmark is alone on its account, so the batch reads at the account's whole 20 queries/s.
        return {
            **self.operator_kwargs,
            "concurrent_tasks": generations,
            "submissions_per_second": args.batch_rate,
            "status_queries_per_second": 20,
        }

    def faults(self, latency_ms: float) -> dict[str, float]:
        if self.native:
            return {"latency_ms": 0, "task_pending_ms": 0, "task_duration_ms": latency_ms}
        return {"latency_ms": latency_ms}


MODES = {
    # Sync is the operator's default ([operators] default_deferrable is set to False below).
    "sync": Mode("imggen_bench_native", {}, NATIVE_SUBMIT_PATH, native=True),
    "deferrable": Mode("imggen_bench_native", {"deferrable": True}, NATIVE_SUBMIT_PATH, native=True),
    "deferrable-trigger": Mode(
        "imggen_bench_native",
        {"deferrable": True, "end_from_trigger": True},
        NATIVE_SUBMIT_PATH,
        native=True,
    ),
    "sync-openai": Mode("imggen_bench_openai", {}, OPENAI_SUBMIT_PATH, native=False),
    # The trigger sends every prompt from the triggerer under ledger claims and ends the task there.
    "batch": Mode(
        "imggen_bench_batch", {"poll_interval": 1.0}, NATIVE_SUBMIT_PATH, native=True, kind="batch"
    ),
}


# Before the measured runs, one task per slot: the first tasks' cold start (imports, page cache) is paid
# there, not by whichever mode runs first. Deferred and ended in the triggerer (hence a short latency: a
# task already done when submitted never defers), it also pays the triggerer's one-time start: its first
# XCom push builds the in-process Execution API (Cadwyn's versioned routers, 4 s here, once per triggerer
# process, its supervisor loop blocked meanwhile).
WARMUP = MODES["deferrable-trigger"]
WARMUP_LATENCY = 2.0
WARMUP_DAG_ID = "bench_deferrable_warmup"
# With the batch mode, a batch of one prompt per slot too: the triggerer's first batch pays its one-time
# imports (boto3 and the amazon provider for the S3 ledger, the ledger's client) there.
WARMUP_BATCH = MODES["batch"]
WARMUP_BATCH_DAG_ID = "bench_deferrable_warmup_batch"
# The ledger of the batch connection: an S3 bucket on the moto_server started next to the emulator.
LEDGER_AWS_CONN_ID = "bench_ledger_s3"
LEDGER_BUCKET = "imggen-bench-ledger"
LEDGER_SETTING = f"s3://{LEDGER_AWS_CONN_ID}@{LEDGER_BUCKET}/ledger"


def dag_id_of(mode: str) -> str:
    return f"bench_deferrable_{mode.replace('-', '_')}"


class HttpJsonError(RuntimeError):
    """An HTTP error answer of :func:`http_json`: its status and the start of its body."""

    def __init__(self, method: str, url: str, status: int, body: bytes) -> None:
        super().__init__(f"{method} {url}: HTTP {status} {body!r}")
        self.status = status
        self.body = body


def http_json(
    url: str, body: Any = None, *, method: str = "GET", headers: dict[str, str] | None = None
) -> Any:
    """One JSON request with the standard library; raises HttpJsonError with the body on HTTP errors."""
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as error:
        raise HttpJsonError(method, url, error.code, error.read()[:500]) from None


def session_pids(session_id: int) -> list[int]:
    """The processes of one session (started by us with setsid), whatever process group they moved to."""
    import psutil

    found = []
    for pid in psutil.pids():
        with contextlib.suppress(OSError):
            if os.getsid(pid) == session_id and pid != os.getpid():
                found.append(pid)
    return found


def stop_session(process: subprocess.Popen[bytes], grace_seconds: float = 15.0) -> None:
    """SIGTERM the session's process group, wait, then SIGKILL every process left in the session."""
    session_id = process.pid
    # A second Ctrl-C must not cut the clean-up short.
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _stop_session(process, session_id, grace_seconds)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_session(process: subprocess.Popen[bytes], session_id: int, grace_seconds: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(session_id, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while session_pids(session_id) and time.monotonic() < deadline:
        process.poll()
        time.sleep(0.2)
    import psutil

    for pid in session_pids(session_id):
        with contextlib.suppress(psutil.Error):
            print(f"SIGKILL to {pid} {' '.join(psutil.Process(pid).cmdline())[:120]!r}", flush=True)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=10)


DATABASE_ERROR_ATTEMPTS = 4


def _database_locked(error: BaseException) -> bool:
    return isinstance(error, HttpJsonError) and error.status == 500 and b"Database error" in error.body


@dataclass
class Airflow:
    """A running ``airflow standalone`` and its REST API (v2, bearer token of the generated admin)."""

    base_url: str
    home: Path
    process: subprocess.Popen[bytes]
    token: str = ""

    def api(self, path: str, body: Any = None, method: str = "GET") -> Any:
        import tenacity

        # SQLite (these harnesses' metadata database) locks the whole file per writer: a request that meets
        # the scheduler's write times out with the API's "Database error" 500. Its transaction was rolled
        # back, so sending it again (even a POST) is safe.
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_database_locked),
            stop=tenacity.stop_after_attempt(DATABASE_ERROR_ATTEMPTS),
            wait=tenacity.wait_incrementing(start=1, increment=1),
            reraise=True,
        )
        return retrying(
            http_json,
            f"{self.base_url}/api/v2/{path}",
            body,
            method=method,
            headers={"Authorization": f"Bearer {self.token}"},
        )

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"airflow standalone exited ({self.process.returncode}); see {self.home / 'standalone.log'}"
            )

    def wait_ready(self, dag_ids: list[str], timeout: float = 300.0) -> None:
        """Wait for the components' health, log in, and wait until the dag-processor parsed our DAGs."""
        deadline = time.monotonic() + timeout
        password_file = self.home / "simple_auth_manager_passwords.json.generated"
        waiting_for = "the api-server"
        while True:
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"airflow standalone not ready after {timeout:.0f} s (waiting for {waiting_for}); "
                    f"see {self.home / 'standalone.log'}"
                )
            try:
                health = http_json(f"{self.base_url}/api/v2/monitor/health")
                unhealthy = [
                    name
                    for name in ("metadatabase", "scheduler", "triggerer", "dag_processor")
                    if (health.get(name) or {}).get("status") != "healthy"
                ]
                if unhealthy:
                    waiting_for = f"healthy {', '.join(unhealthy)}"
                elif not self.token:
                    waiting_for = "a token"
                    (password,) = json.loads(password_file.read_text()).values()
                    self.token = http_json(
                        f"{self.base_url}/auth/token",
                        {"username": "admin", "password": password},
                        method="POST",
                    )["access_token"]
                else:
                    waiting_for = f"the DAGs {dag_ids} to be parsed"
                    known = {dag["dag_id"] for dag in self.api("dags?tags=benchmark&limit=100")["dags"]}
                    if known.issuperset(dag_ids):
                        return
            except (OSError, RuntimeError, ValueError):
                pass
            time.sleep(1)


@contextlib.contextmanager
def airflow_standalone(env: dict[str, str], home: Path) -> Iterator[Airflow]:
    """Start ``airflow standalone`` in a session of its own; stop the whole session on the way out."""
    port = free_port()
    env = {
        **env,
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
    }
    log = (home / "standalone.log").open("wb")
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("airflow")), "standalone"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield Airflow(f"http://127.0.0.1:{port}", home, process)
    finally:
        stop_session(process)
        log.close()


@dataclass
class RunResult:
    mode: str
    spec: Mode
    generations: int
    state: str
    wall_seconds: float
    durations: list[float]
    task_states: dict[str, int]
    max_running: int
    max_deferred: int
    submissions: int
    billed_images: int
    polls: int
    requests: int
    api_stalls: int
    killed_by_stale_event: int
    # From the LocalExecutor's "Workload finished" lines: each time a task held a worker slot.
    workloads: list[Workload] = field(default_factory=list)
    # The generation task ids of the accepted submissions in the emulator's request log, and the times
    # (epoch seconds) of every submission there.
    submitted_task_ids: list[str] = field(default_factory=list)
    submit_times: list[float] = field(default_factory=list)
    # The DAG run's queued_at and end_date, epoch seconds.
    queued_at: float = 0.0
    ended_at: float = 0.0
    # A batch's trigger, from its log: when it started, when every request was done, when it fired.
    trigger_marks: dict[str, float] = field(default_factory=dict)
    # A batch's return_value XCom (None: not a batch), or why it could not be read.
    xcom: Any = None
    xcom_error: str = ""

    @property
    def slot_seconds(self) -> float:
        return sum(workload.end - workload.start for workload in self.workloads)

    @property
    def max_busy_slots(self) -> int:
        """The most workloads in progress at once (a sweep over their intervals)."""
        events = sorted(
            [(workload.start, 1) for workload in self.workloads]
            + [(workload.end, -1) for workload in self.workloads]
        )
        busy = most = 0
        for _, step in events:
            busy += step
            most = max(most, busy)
        return most


@dataclass(frozen=True)
class Workload:
    """One run of a task instance in a worker slot (a deferrable task has two: execute, then resume)."""

    ti_id: str
    start: float
    end: float
    final_state: str


WORKLOAD_LINE = re.compile(
    r"(?P<end>\d{4}-\d\d-\d\dT[\d:.]+)Z? \[info\s*\] Workload finished .*?duration=(?P<duration>[\d.]+)"
    r".*?final_state=(?P<state>\w+).*?workload_id=(?P<ti_id>[\w-]+)"
)


def worker_workloads(
    standalone_log: Path,
    ti_ids: set[str],
    timeout: float = 15.0,
    last_states: tuple[str, ...] = ("success",),
) -> list[Workload]:
    """
    The worker workloads of these task instances, read from the scheduler's output in standalone.log.

    Waits (up to ``timeout``) until every task instance's last workload was logged: one that ended in one
    of ``last_states`` (a task the triggerer ended has only its ``deferred`` run on a worker).
    """
    from datetime import datetime

    deadline = time.monotonic() + timeout
    while True:
        found = []
        for match in WORKLOAD_LINE.finditer(standalone_log.read_text(errors="replace")):
            if match["ti_id"] in ti_ids:
                end = datetime.fromisoformat(match["end"]).replace(tzinfo=UTC).timestamp()
                found.append(Workload(match["ti_id"], end - float(match["duration"]), end, match["state"]))
        finished = {workload.ti_id for workload in found if workload.final_state in last_states}
        if finished >= ti_ids or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def run_mode(
    airflow: Airflow,
    emulator_url: str,
    mode: str,
    args: argparse.Namespace,
    *,
    dag_id: str | None = None,
    spec: Mode | None = None,
    latency: float | None = None,
    generations: int | None = None,
) -> RunResult:
    """Trigger one DAG run of ``mode``, sample its task states until it ends, and collect the figures."""
    spec = spec or MODES[mode]
    dag_id = dag_id or dag_id_of(mode)
    latency = args.latency if latency is None else latency
    generations = args.tasks if generations is None else generations
    http_json(f"{emulator_url}/_emulator/faults", spec.faults(latency * 1000), method="PUT")
    http_json(f"{emulator_url}/_emulator/requests", method="DELETE")
    run_id = f"bench-{mode}-{int(time.time())}"
    airflow.api(f"dags/{dag_id}/dagRuns", {"dag_run_id": run_id, "logical_date": None}, method="POST")
    print(f"[{mode}] triggered {dag_id} run {run_id}", flush=True)

    max_running = max_deferred = stalls = 0
    deadline = time.monotonic() + args.timeout
    while True:
        airflow.check_alive()
        try:
            instances = task_instances(airflow, dag_id, run_id)
            run = airflow.api(f"dags/{dag_id}/dagRuns/{run_id}")
        except OSError as error:  # a busy api-server (timeout): skip this sample, the run goes on
            stalls += 1
            print(f"[{mode}] no answer from the api-server ({error}); sampling on", flush=True)
        else:
            states = [instance["state"] for instance in instances]
            max_running = max(max_running, states.count("running"))
            max_deferred = max(max_deferred, states.count("deferred"))
            if run["state"] in TERMINAL_RUN_STATES:
                break
        if time.monotonic() > deadline:
            raise RuntimeError(f"[{mode}] the DAG run did not finish within {args.timeout:.0f} s")
        time.sleep(args.sample_interval)

    instances = task_instances(airflow, dag_id, run_id)
    log = http_json(f"{emulator_url}/_emulator/requests")
    entries = log["requests"]
    task_states: dict[str, int] = {}
    for instance in instances:
        task_states[instance["state"]] = task_states.get(instance["state"], 0) + 1
    xcom, xcom_error = None, ""
    if spec.batch:
        try:
            xcom = return_value(airflow, dag_id, run_id, "generate")
        except (OSError, RuntimeError, ValueError) as error:
            xcom_error = str(error)[:300]
    return RunResult(
        mode=mode,
        spec=spec,
        generations=generations,
        state=run["state"],
        wall_seconds=seconds_between(run["queued_at"], run["end_date"]),
        durations=[float(instance["duration"] or 0.0) for instance in instances],
        task_states=task_states,
        max_running=max_running,
        max_deferred=max_deferred,
        submissions=sum(
            1 for entry in entries if entry["method"] == "POST" and entry["path"] == spec.submit_path
        ),
        billed_images=int(log["billed_images"]),
        api_stalls=stalls,
        polls=sum(1 for entry in entries if entry["path"].startswith(NATIVE_TASK_PATH)),
        requests=len(entries),
        submitted_task_ids=[
            str(entry["task_id"])
            for entry in entries
            if entry["method"] == "POST" and entry["path"] == spec.submit_path and entry.get("task_id")
        ],
        submit_times=sorted(
            float(entry["time"])
            for entry in entries
            if entry["method"] == "POST" and entry["path"] == spec.submit_path
        ),
        queued_at=epoch(run["queued_at"]),
        ended_at=epoch(run["end_date"]),
        trigger_marks=trigger_marks(airflow.home, dag_id, run_id) if spec.batch else {},
        xcom=xcom,
        xcom_error=xcom_error,
        workloads=worker_workloads(
            airflow.home / "standalone.log",
            {instance["id"] for instance in instances},
            last_states=spec.last_worker_run,
        ),
        killed_by_stale_event=len(
            re.findall(
                rf"reported that the task instance <TaskInstance: {dag_id}\.\S+ {run_id} .*?finished with "
                r"state success, but the task instance's state attribute is",
                (airflow.home / "standalone.log").read_text(errors="replace"),
            )
        ),
    )


def return_value(airflow: Airflow, dag_id: str, run_id: str, task_id: str) -> Any:
    """A task's ``return_value`` XCom as stored (the API's native form; a JSON text is decoded)."""
    entry = airflow.api(f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value")
    value = entry["value"]
    return json.loads(value) if isinstance(value, str) else value


def task_instances(airflow: Airflow, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    """Every (mapped) task instance of the run, sorted by map index; pages through the API's limit."""
    found: list[dict[str, Any]] = []
    while True:
        page = airflow.api(
            f"dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100&offset={len(found)}&order_by=map_index"
        )
        found += page["task_instances"]
        if not page["task_instances"] or len(found) >= page["total_entries"]:
            return found


# Lines of the batch trigger's log that mark its phases.
TRIGGER_MARKS = {"started": "Batch of ", "done": "Batch done:", "fired": "Trigger fired event"}


def trigger_marks(home: Path, dag_id: str, run_id: str) -> dict[str, float]:
    """The epoch times of the first line of each of TRIGGER_MARKS in the run's trigger logs (JSON lines)."""
    marks: dict[str, float] = {}
    for path in sorted((home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}").glob("*/*.log.trigger.*")):
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                record = json.loads(line)
                for mark, start in TRIGGER_MARKS.items():
                    if mark not in marks and str(record["event"]).startswith(start):
                        marks[mark] = epoch(record["timestamp"])
    return marks


def epoch(timestamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(timestamp).timestamp()


def seconds_between(start: str, end: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def dag_spec(dag_id: str, spec: Mode, generations: int, args: argparse.Namespace) -> dict[str, Any]:
    """One DAG of bench_deferrable_dag.py, as IMGGEN_BENCH describes it."""
    return {
        "dag_id": dag_id,
        "kind": spec.kind,
        "tasks": generations,
        "conn_id": spec.conn_id,
        "operator_kwargs": spec.dag_kwargs(generations, args),
    }


def warmups(modes: list[str]) -> list[tuple[str, Mode]]:
    """The warm-up runs before the measured ones: mapped tasks, and a batch when a batch is measured."""
    found = [(WARMUP_DAG_ID, WARMUP)]
    if any(MODES[mode].batch for mode in modes):
        found.append((WARMUP_BATCH_DAG_ID, WARMUP_BATCH))
    return found


def standalone_env(
    work: Path,
    args: argparse.Namespace,
    emulator_url: str,
    modes: list[str],
    s3_endpoint: str | None = None,
) -> dict[str, str]:
    """
    The environment of ``airflow standalone``; ``s3_endpoint``: the moto_server holding the batch
    connection's ledger (needed by the batch mode).
    """
    dags_folder = work / "dags"
    dags_folder.mkdir()
    shutil.copy(DAG_FILE, dags_folder / DAG_FILE.name)
    home = work / "airflow"
    home.mkdir()
    connections = {
        "imggen_bench_openai": {"host": f"{emulator_url}/v1", "extra": {"default_model": MODEL}},
        "imggen_bench_native": {
            "host": emulator_url,
            "extra": {"default_model": MODEL, "api_style": "dashscope"},
        },
        # The batch's own connection: the others keep no ledger (a ledger has a cost of its own per send).
        "imggen_bench_batch": {
            "host": emulator_url,
            "extra": {"default_model": MODEL, "api_style": "dashscope", "ledger": LEDGER_SETTING},
        },
    }
    dags = [dag_spec(dag_id_of(mode), MODES[mode], args.tasks, args) for mode in modes]
    if args.warmup:
        dags += [dag_spec(dag_id, spec, args.parallelism, args) for dag_id, spec in warmups(modes)]
    other_connections = {}
    if s3_endpoint is not None:
        other_connections[f"AIRFLOW_CONN_{LEDGER_AWS_CONN_ID.upper()}"] = json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"},
            }
        )
    return {
        **{key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "IMGGEN_"))},
        # standalone starts its components as plain `airflow` from PATH: this venv's.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(args.parallelism),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        # The scheduler's and the triggerer's log servers default to fixed ports (8793, 8794).
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        # Shared by every component from the start (no race on a generated airflow.cfg).
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "IMGGEN_BENCH": json.dumps(dags),
        # Component output reaches standalone.log line by line (the harness reads the workloads there).
        "PYTHONUNBUFFERED": "1",
        # The components import the provider of this checkout (a worktree's), not the venv's editable one.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "AWS_EC2_METADATA_DISABLED": "true",
        **{
            f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(
                {"conn_type": "imggen", "password": API_KEY, **connection}
            )
            for conn_id, connection in connections.items()
        },
        **other_connections,
    }


@contextlib.contextmanager
def ledger_s3(work: Path) -> Iterator[str]:
    """moto_server on a free loopback port, in a session of its own, with the ledger's bucket: its URL."""
    import boto3

    endpoint = f"http://127.0.0.1:{free_port()}"
    with background(
        [
            str(Path(sys.executable).with_name("moto_server")),
            "-H",
            "127.0.0.1",
            "-p",
            endpoint.rsplit(":", 1)[1],
        ],
        f"{endpoint}/moto-api/data.json",
        work / "moto.log",
    ):
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket=LEDGER_BUCKET)
        yield endpoint


def check_operator_supports(modes: list[str]) -> None:
    """Fail early, with the reason, when the installed operator lacks an argument a mode needs."""
    from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator

    accepted = inspect.signature(ImageGenerationOperator.__init__).parameters
    for mode in modes:
        if MODES[mode].batch:
            try:
                from airflow_provider_imggen.operators.image_generation_batch import (  # noqa: F401
                    ImageGenerationBatchOperator,
                )
            except ImportError:
                raise SystemExit(
                    f"mode {mode!r} needs ImageGenerationBatchOperator, which this checkout does not have"
                ) from None
            continue
        missing = sorted(set(MODES[mode].operator_kwargs) - set(accepted))
        if missing:
            raise SystemExit(
                f"mode {mode!r} needs ImageGenerationOperator({', '.join(missing)}=...), which this "
                "checkout does not have yet (the async-operator branch adds it); try --modes sync,sync-openai"
            )


def fmt_durations(durations: list[float]) -> str:
    if not durations:
        return "-"
    return (
        f"min {min(durations):.1f}  median {statistics.median(durations):.1f}  max {max(durations):.1f}  "
        f"sum {sum(durations):.0f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"comma-separated, the first is the anchor; of {', '.join(MODES)} (default: %(default)s)",
    )
    parser.add_argument("--tasks", type=int, default=40, help="generations (prompts) per DAG run")
    parser.add_argument("--latency", type=float, default=20.0, help="seconds per generation")
    parser.add_argument("--parallelism", type=int, default=4, help="[core] parallelism: worker slots")
    parser.add_argument("--timeout", type=float, default=0.0, help="per DAG run; default 3 x bound + 300 s")
    parser.add_argument("--sample-interval", type=float, default=0.5, help="task-state sampling, seconds")
    parser.add_argument(
        "--batch-rate",
        type=float,
        default=20.0,
        help="the batch's submissions per second (the emulator runs without quota; default: %(default)s)",
    )
    parser.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="skip the warm-up runs (one generation per slot, 2 s latency) before the measured runs",
    )
    parser.add_argument(
        "--keep-home", action="store_true", help="keep the temp dir (logs, DB) also after a successful run"
    )
    parser.add_argument("--show-durations", action="store_true", help="print every task's duration")
    args = parser.parse_args()
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown or not modes or len(set(modes)) != len(modes):
        parser.error(f"--modes: {args.modes!r}; expected distinct names among {', '.join(MODES)}")
    if args.tasks < 1 or args.latency <= 0 or args.parallelism < 1 or args.batch_rate <= 0:
        parser.error("--tasks and --parallelism must be >= 1, --latency and --batch-rate > 0")
    check_operator_supports(modes)
    lower_bound = args.tasks * args.latency / args.parallelism
    if not args.timeout:
        args.timeout = 3 * lower_bound + 300

    # SIGTERM (and SIGHUP) unwind like Ctrl-C, so every `finally` below stops what it started.
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)

    work = Path(tempfile.mkdtemp(prefix="imggen-bench-deferrable-"))
    print(f"work dir (AIRFLOW_HOME, logs, DB): {work}", flush=True)
    results: list[RunResult] = []
    exit_code = 1  # until a report says otherwise: the work dir is kept after a failure
    try:
        emulator_port = free_port()
        emulator_url = f"http://127.0.0.1:{emulator_port}"
        with contextlib.ExitStack() as servers:
            servers.enter_context(
                background(
                    emulator_command(emulator_port, API_KEY),
                    f"{emulator_url}/_emulator/faults",
                    work / "emulator.log",
                )
            )
            # The batch connection's ledger: an S3 bucket on moto_server (started only for a batch).
            s3_endpoint = (
                servers.enter_context(ledger_s3(work)) if any(MODES[mode].batch for mode in modes) else None
            )
            env = standalone_env(work, args, emulator_url, modes, s3_endpoint)
            airflow = servers.enter_context(airflow_standalone(env, Path(env["AIRFLOW_HOME"])))
            started = time.monotonic()
            airflow.wait_ready([dag_id_of(mode) for mode in modes])
            print(
                f"airflow standalone ready at {airflow.base_url} in {time.monotonic() - started:.0f} s",
                flush=True,
            )
            for dag_id, spec in warmups(modes) if args.warmup else []:
                name = "warm-up" if spec.kind == "mapped" else f"warm-up-{spec.kind}"
                warmup = run_mode(
                    airflow,
                    emulator_url,
                    name,
                    args,
                    dag_id=dag_id,
                    spec=spec,
                    latency=WARMUP_LATENCY,
                    generations=args.parallelism,
                )
                print(f"[{name}] {warmup.state} in {warmup.wall_seconds:.1f} s", flush=True)
                if warmup.state != "success":
                    raise RuntimeError(f"the {name} run failed: see the task logs under {airflow.home}/logs")
            for mode in modes:
                results.append(run_mode(airflow, emulator_url, mode, args))
                print(f"[{mode}] {results[-1].state} in {results[-1].wall_seconds:.1f} s", flush=True)
            stopping = time.monotonic()
        print(f"stopped every process in {time.monotonic() - stopping:.0f} s", flush=True)
        exit_code = report(results, args, lower_bound)
        return exit_code
    except KeyboardInterrupt:
        print("interrupted: every process started was stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep_home or exit_code:
            print(f"kept the work dir for inspection: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


# The goal for the best mode: a run of N generations within 1.5x one generation's latency.
LATENCY_GOAL = 1.5


def report(results: list[RunResult], args: argparse.Namespace, lower_bound: float) -> int:
    anchor = results[0]
    print()
    print(
        f"{args.tasks} generations x {args.latency:g} s emulated latency, airflow standalone, LocalExecutor, "
        f"[core] parallelism {args.parallelism}; mapped ImageGenerationOperator, or one "
        f"ImageGenerationBatchOperator (batch: {args.batch_rate:g} submissions/s, {args.tasks} at once, "
        "S3 ledger on moto_server)"
    )
    print(f"load average at the end (1, 5, 15 min): {' '.join(f'{load:.1f}' for load in os.getloadavg())}")
    print(
        f"anchor {anchor.mode}; sync lower bound {args.tasks} x {args.latency:g} s / {args.parallelism} = "
        f"{lower_bound:.0f} s; one generation = {args.latency:g} s"
    )
    print(
        f"{'mode':<18} {'wall s':>7} {'ratio':>6} {'x gen':>6} {'submits':>7} {'billed':>6} {'polls':>5} "
        f"{'TIs':>3} {'max run':>7} {'max def':>7} {'slots':>5} {'slot s':>7} {'s/img':>5} {'runs':>4} "
        f"{'runs/gen':>8}  task durations s"
    )
    failures = []
    for result in results:
        ratio, per_generation = result.wall_seconds / anchor.wall_seconds, result.wall_seconds / args.latency
        print(
            f"{result.mode:<18} {result.wall_seconds:>7.1f} {ratio:>5.2f}x {per_generation:>5.2f}x "
            f"{result.submissions:>7} {result.billed_images:>6} {result.polls:>5} "
            f"{sum(result.task_states.values()):>3} {result.max_running:>7} "
            f"{result.max_deferred:>7} {result.max_busy_slots:>5} {result.slot_seconds:>7.1f} "
            f"{result.slot_seconds / args.tasks:>5.2f} {len(result.workloads):>4} "
            f"{len(result.workloads) / args.tasks:>8.3f}  {fmt_durations(result.durations)}"
        )
        if result.api_stalls:
            print(
                f"    {result.api_stalls} samples got no answer from the api-server in 30 s (machine busy?)"
            )
        if args.show_durations:
            print("    " + " ".join(f"{duration:.1f}" for duration in result.durations))
        failures += check(result, args, lower_bound)
    print(
        "(wall: DAG run queued to finished; ratio: to the anchor; x gen: to one generation's latency; "
        "submits: generation POSTs in the emulator's log; polls: task status and task list GETs; TIs: task "
        "instances; max run / max def: most task instances seen running / deferred; slots: most worker runs "
        "at once, slot s their summed time and s/img that per image, from the executor's 'Workload finished' "
        "lines; runs: worker runs, and per generation; task durations: Airflow's start-to-end per task, a "
        "deferred task's spanning its wait)"
    )
    summarise_deferrable(results, args, anchor)
    for failure in failures:
        print("FAILED:", failure)
    return 1 if failures else 0


def check(result: RunResult, args: argparse.Namespace, lower_bound: float) -> list[str]:
    """
    What one mode's run got wrong: failed tasks, paying twice, too many slots, an impossible speed; for a
    batch also more than its one worker run, or an XCom that is not the N generations the emulator made.
    """
    failures = []
    instances = result.spec.task_instances(args.tasks)
    if result.state != "success" or result.task_states != {"success": instances}:
        failures.append(f"{result.mode}: run {result.state}, task states {result.task_states}")
        if result.killed_by_stale_event:
            failures.append(
                f"{result.mode}: {result.killed_by_stale_event} task(s) failed by the scheduler's "
                "'state mismatch' on the stale executor event of the defer exit, an Airflow race when a "
                "trigger fires within seconds of deferring (apache/airflow#67287, #72716); a latency of "
                "10 s or more keeps clear of it"
            )
    if result.submissions != args.tasks or result.billed_images != args.tasks:
        failures.append(
            f"{result.mode}: {result.submissions} submissions, {result.billed_images} images billed "
            f"for {args.tasks} generations"
        )
    if max(result.max_running, result.max_busy_slots) > args.parallelism:
        failures.append(
            f"{result.mode}: {max(result.max_running, result.max_busy_slots)} tasks running at once "
            f"> parallelism {args.parallelism}"
        )
    if len({workload.ti_id for workload in result.workloads}) != instances:
        failures.append(
            f"{result.mode}: worker runs of {instances} task instance(s) not found in standalone.log"
        )
    # A sync mode holds a slot for every generation's whole latency: it cannot beat N x L / P.
    if not result.spec.deferrable and result.wall_seconds < lower_bound:
        failures.append(f"{result.mode} took {result.wall_seconds:.1f} s < its bound {lower_bound:.0f} s")
    if result.spec.batch:
        failures += check_batch(result, args)
    return failures


def check_batch(result: RunResult, args: argparse.Namespace) -> list[str]:
    """A batch: one worker run (validate and defer; the triggerer ends it) and an XCom of N records."""
    failures = []
    if len(result.workloads) != 1:
        states = ", ".join(workload.final_state for workload in result.workloads) or "none"
        failures.append(
            f"{result.mode}: {len(result.workloads)} worker runs ({states}) for the whole batch, not 1 "
            "(a second one is the worker resuming: the trigger did not end the task itself)"
        )
    if result.xcom_error or not isinstance(result.xcom, list):
        failures.append(
            f"{result.mode}: no list in the return_value XCom "
            f"({result.xcom_error or type(result.xcom).__name__})"
        )
        return failures
    records = [record for record in result.xcom if isinstance(record, dict)]
    xcom_ids = [record.get("generation_task_id") for record in records]
    if len(result.xcom) != args.tasks or len(records) != args.tasks:
        failures.append(f"{result.mode}: the XCom has {len(result.xcom)} records for {args.tasks} prompts")
    elif len(set(xcom_ids)) != args.tasks or set(xcom_ids) != set(result.submitted_task_ids):
        failures.append(
            f"{result.mode}: the XCom's {len(set(xcom_ids))} distinct generation task ids are not the "
            f"{len(set(result.submitted_task_ids))} tasks the emulator created"
        )
    else:
        expected = [f"benchmark poster number {number}" for number in range(args.tasks)]
        if [record.get("prompt") for record in records] != expected:
            failures.append(f"{result.mode}: the XCom's records are not in prompt order")
    return failures


def summarise_deferrable(results: list[RunResult], args: argparse.Namespace, anchor: RunResult) -> None:
    """Per deferrable mode (and the batch): where its wall time goes; then the best mode against the goal."""
    deferred = [result for result in results if result.spec.deferrable and result.workloads]
    for result in deferred:
        mean_run = result.slot_seconds / len(result.workloads)
        print(
            f"{result.mode}: {result.wall_seconds:.1f} s = {result.wall_seconds / args.latency:.2f}x one "
            f"generation, {anchor.mode} ratio {result.wall_seconds / anchor.wall_seconds:.2f}; its "
            f"{len(result.workloads)} worker runs ({len(result.workloads) / args.tasks:.3f} per generation) "
            f"of {mean_run:.1f} s mean, {result.slot_seconds / args.tasks:.2f} worker-slot s per image, "
            f"need {result.slot_seconds / args.parallelism:.0f} s of {args.parallelism} slots by themselves"
        )
    for result in results:
        if result.spec.batch and result.submit_times:
            summarise_batch(result, args)
    if results:
        best = min(results, key=lambda result: result.wall_seconds)
        ratio = best.wall_seconds / args.latency
        verdict = "met" if ratio <= LATENCY_GOAL else "missed"
        print(f"best mode {best.mode}: {ratio:.2f}x one generation (goal {LATENCY_GOAL}x: {verdict})")


def summarise_batch(result: RunResult, args: argparse.Namespace) -> None:
    """Where a batch's wall time goes, from the run's times, the emulator's log and the trigger's log."""
    first, last = result.submit_times[0], result.submit_times[-1]
    last_end = last + args.latency  # the emulator runs a task exactly the latency (no pending time)
    marks = result.trigger_marks
    if {"started", "done", "fired"} <= set(marks):
        print(
            f"{result.mode} phases: queued -> trigger running {marks['started'] - result.queued_at:.1f} s "
            f"(scheduler, the one worker run, the triggerer taking the trigger); -> first submission "
            f"{first - marks['started']:.1f} s (ledger reads); submissions spread over {last - first:.1f} s; "
            f"last task's end -> batch done {marks['done'] - last_end:.1f} s (ends noticed by status reads); "
            f"-> trigger fired {marks['fired'] - marks['done']:.1f} s ({args.tasks} XCom records built and "
            f"pushed); -> run finished {result.ended_at - marks['fired']:.1f} s (the scheduler)"
        )
    else:  # no trigger log (or another format): the emulator's times only
        print(
            f"{result.mode} phases: queued -> first submission {first - result.queued_at:.1f} s; "
            f"submissions spread over {last - first:.1f} s; last task's end -> run finished "
            f"{result.ended_at - last_end:.1f} s (trigger log marks found: {sorted(marks) or 'none'})"
        )


if __name__ == "__main__":
    raise SystemExit(main())
