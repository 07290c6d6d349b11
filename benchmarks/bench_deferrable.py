"""
Deferrable against sync: N generations of L seconds emulated latency each, run by a real Airflow.

One DAG run per mode, each a single ImageGenerationOperator mapped over N prompts
(benchmarks/bench_deferrable_dag.py), executed by ``airflow standalone`` (scheduler, dag-processor,
triggerer and api-server; LocalExecutor, ``[core] parallelism`` P, SQLite metadata DB in a temp
AIRFLOW_HOME) against the API emulator on a free loopback port. Modes:

- ``sync``: the native task API (``api_style`` dashscope); the worker submits, then polls the task
  (``task_duration_ms`` = L) while holding its slot. The anchor: it needs at least N x L / P seconds.
- ``deferrable``: the same, but the operator defers to the triggerer after submitting: P slots are held
  only for the submissions and the resumes.
- ``deferrable-trigger``: deferrable with ``end_from_trigger=True``: the triggerer pushes the XCom and
  ends the task, so a generation is one worker run (the submission) instead of two.
- ``sync-openai``: the OpenAI-compatible route, each request answered after L seconds (``latency_ms``).

Prints per mode the DAG run's wall time (created to finished, Airflow's own timestamps), its ratio to
the anchor and to one generation's latency L (goal for the best mode: 1.5x), the worker runs per
generation, the mapped tasks' durations, the submissions in the emulator's request log, the most task
instances seen running (and deferred) at once, and checks (the run fails when one does not hold): every
task succeeded, exactly N submissions and N billed images per mode (nothing paid twice), never more
than P tasks running, and the sync modes no faster than their lower bound N x L / P.

    python benchmarks/bench_deferrable.py [--modes sync,deferrable,deferrable-trigger] [--tasks 40]
                                          [--latency 20]
                                          [--parallelism 4]
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

    @property
    def deferrable(self) -> bool:
        """Whether its generations wait in the triggerer (so no N x L / P lower bound holds)."""
        return bool(self.operator_kwargs.get("deferrable"))

    @property
    def last_worker_run(self) -> tuple[str, ...]:
        """How a task's last worker run ends: ``deferred`` when the triggerer ends the task."""
        if self.operator_kwargs.get("end_from_trigger"):
            return ("success", "deferred")
        return ("success",)

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
}


# Before the measured runs, one task per slot: the first tasks' cold start (imports, page cache) is paid
# there, not by whichever mode runs first. Deferred and ended in the triggerer (hence a short latency: a
# task already done when submitted never defers), it also pays the triggerer's one-time start: its first
# XCom push builds the in-process Execution API (Cadwyn's versioned routers, 4 s here, once per triggerer
# process, its supervisor loop blocked meanwhile).
WARMUP = MODES["deferrable-trigger"]
WARMUP_LATENCY = 2.0
WARMUP_DAG_ID = "bench_deferrable_warmup"


def dag_id_of(mode: str) -> str:
    return f"bench_deferrable_{mode.replace('-', '_')}"


def http_json(
    url: str, body: Any = None, *, method: str = "GET", headers: dict[str, str] | None = None
) -> Any:
    """One JSON request with the standard library; raises RuntimeError with the body on HTTP errors."""
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
        raise RuntimeError(f"{method} {url}: HTTP {error.code} {error.read()[:500]!r}") from None


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


@dataclass
class Airflow:
    """A running ``airflow standalone`` and its REST API (v2, bearer token of the generated admin)."""

    base_url: str
    home: Path
    process: subprocess.Popen[bytes]
    token: str = ""

    def api(self, path: str, body: Any = None, method: str = "GET") -> Any:
        return http_json(
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
) -> RunResult:
    """Trigger one DAG run of ``mode``, sample its task states until it ends, and collect the figures."""
    spec = spec or MODES[mode]
    dag_id = dag_id or dag_id_of(mode)
    latency = args.latency if latency is None else latency
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
    return RunResult(
        mode=mode,
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


def seconds_between(start: str, end: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def standalone_env(
    work: Path, args: argparse.Namespace, emulator_url: str, modes: list[str]
) -> dict[str, str]:
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
    }
    dags = [
        {
            "dag_id": dag_id_of(mode),
            "tasks": args.tasks,
            "conn_id": MODES[mode].conn_id,
            "operator_kwargs": MODES[mode].operator_kwargs,
        }
        for mode in modes
    ]
    if args.warmup:
        dags.append(
            {
                "dag_id": WARMUP_DAG_ID,
                "tasks": args.parallelism,
                "conn_id": WARMUP.conn_id,
                "operator_kwargs": WARMUP.operator_kwargs,
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
        **{
            f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(
                {"conn_type": "imggen", "password": API_KEY, **connection}
            )
            for conn_id, connection in connections.items()
        },
    }


def check_operator_supports(modes: list[str]) -> None:
    """Fail early, with the reason, when the installed operator lacks an argument a mode needs."""
    from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator

    accepted = inspect.signature(ImageGenerationOperator.__init__).parameters
    for mode in modes:
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
        default="sync,deferrable,deferrable-trigger",
        help=f"comma-separated, the first is the anchor; of {', '.join(MODES)} (default: %(default)s)",
    )
    parser.add_argument("--tasks", type=int, default=40, help="mapped generations per DAG run")
    parser.add_argument("--latency", type=float, default=20.0, help="seconds per generation")
    parser.add_argument("--parallelism", type=int, default=4, help="[core] parallelism: worker slots")
    parser.add_argument("--timeout", type=float, default=0.0, help="per DAG run; default 3 x bound + 300 s")
    parser.add_argument("--sample-interval", type=float, default=0.5, help="task-state sampling, seconds")
    parser.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="skip the warm-up run (one task per slot, no latency) before the measured runs",
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
    if args.tasks < 1 or args.latency <= 0 or args.parallelism < 1:
        parser.error("--tasks and --parallelism must be >= 1, --latency > 0")
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
        env = standalone_env(work, args, emulator_url, modes)
        with (
            background(
                emulator_command(emulator_port, API_KEY),
                f"{emulator_url}/_emulator/faults",
                work / "emulator.log",
            ),
            airflow_standalone(env, Path(env["AIRFLOW_HOME"])) as airflow,
        ):
            started = time.monotonic()
            airflow.wait_ready([dag_id_of(mode) for mode in modes])
            print(
                f"airflow standalone ready at {airflow.base_url} in {time.monotonic() - started:.0f} s",
                flush=True,
            )
            if args.warmup:
                warmup = run_mode(
                    airflow,
                    emulator_url,
                    "warm-up",
                    args,
                    dag_id=WARMUP_DAG_ID,
                    spec=WARMUP,
                    latency=WARMUP_LATENCY,
                )
                print(f"[warm-up] {warmup.state} in {warmup.wall_seconds:.1f} s", flush=True)
                if warmup.state != "success":
                    raise RuntimeError(f"the warm-up run failed: see the task logs under {airflow.home}/logs")
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
        f"{args.tasks} generations x {args.latency:g} s emulated latency, mapped ImageGenerationOperator, "
        f"airflow standalone, LocalExecutor, [core] parallelism {args.parallelism}"
    )
    print(f"load average at the end (1, 5, 15 min): {' '.join(f'{load:.1f}' for load in os.getloadavg())}")
    print(
        f"anchor {anchor.mode}; sync lower bound {args.tasks} x {args.latency:g} s / {args.parallelism} = "
        f"{lower_bound:.0f} s; one generation = {args.latency:g} s"
    )
    print(
        f"{'mode':<18} {'wall s':>7} {'ratio':>6} {'x gen':>6} {'submits':>7} {'billed':>6} {'polls':>5} "
        f"{'max run':>7} {'max def':>7} {'slots':>5} {'slot s':>7} {'runs':>4} {'runs/gen':>8}  "
        "task durations s"
    )
    failures = []
    for result in results:
        ratio, per_generation = result.wall_seconds / anchor.wall_seconds, result.wall_seconds / args.latency
        print(
            f"{result.mode:<18} {result.wall_seconds:>7.1f} {ratio:>5.2f}x {per_generation:>5.2f}x "
            f"{result.submissions:>7} {result.billed_images:>6} {result.polls:>5} {result.max_running:>7} "
            f"{result.max_deferred:>7} {result.max_busy_slots:>5} {result.slot_seconds:>7.1f} "
            f"{len(result.workloads):>4} {len(result.workloads) / args.tasks:>8.2f}  "
            f"{fmt_durations(result.durations)}"
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
        "submits: generation POSTs in the emulator's log; polls: task status GETs; max run / max def: most "
        "task instances seen running / deferred; slots: most worker runs at once and slot s their summed "
        "time, from the executor's 'Workload finished' lines; runs: worker runs, and per generation; task "
        "durations: Airflow's start-to-end per task, a deferred task's spanning its wait)"
    )
    summarise_deferrable(results, args, anchor)
    for failure in failures:
        print("FAILED:", failure)
    return 1 if failures else 0


def check(result: RunResult, args: argparse.Namespace, lower_bound: float) -> list[str]:
    """What one mode's run got wrong: failed tasks, paying twice, too many slots, an impossible speed."""
    failures = []
    if result.state != "success" or result.task_states != {"success": args.tasks}:
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
    if len({workload.ti_id for workload in result.workloads}) != args.tasks:
        failures.append(f"{result.mode}: worker runs of {args.tasks} tasks not found in standalone.log")
    # A sync mode holds a slot for every generation's whole latency: it cannot beat N x L / P.
    if not MODES[result.mode].deferrable and result.wall_seconds < lower_bound:
        failures.append(f"{result.mode} took {result.wall_seconds:.1f} s < its bound {lower_bound:.0f} s")
    return failures


def summarise_deferrable(results: list[RunResult], args: argparse.Namespace, anchor: RunResult) -> None:
    """Per deferrable mode: where its wall time goes; then the best mode against the goal."""
    deferred = [result for result in results if MODES[result.mode].deferrable and result.workloads]
    for result in deferred:
        mean_run = result.slot_seconds / len(result.workloads)
        print(
            f"{result.mode}: {result.wall_seconds:.1f} s = {result.wall_seconds / args.latency:.2f}x one "
            f"generation, {anchor.mode} ratio {result.wall_seconds / anchor.wall_seconds:.2f}; its "
            f"{len(result.workloads)} worker runs ({len(result.workloads) / args.tasks:.2f} per generation) "
            f"of {mean_run:.1f} s mean need {result.slot_seconds / args.parallelism:.0f} s of "
            f"{args.parallelism} slots by themselves"
        )
    if deferred:
        best = min(deferred, key=lambda result: result.wall_seconds)
        ratio = best.wall_seconds / args.latency
        verdict = "met" if ratio <= LATENCY_GOAL else "missed"
        print(f"best mode {best.mode}: {ratio:.2f}x one generation (goal {LATENCY_GOAL}x: {verdict})")


if __name__ == "__main__":
    raise SystemExit(main())
