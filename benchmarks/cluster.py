"""
A real multi-process Airflow deployment on this machine, started by one command, every port on loopback.

PostgreSQL (Debian's package; a throw-away cluster in a temp dir) is the metadata DB, Redis (Debian's
package) the Celery broker; Airflow runs with CeleryExecutor as separate processes: scheduler, api-server,
dag-processor, one or more triggerers (``triggerer``, ``triggerer-2``, ...; each job row carries its
service name as hostname) and two Celery workers (distinct hostnames, small concurrency). Next to them run
the API emulator with the account's real quota (2 submissions per second, 2 concurrent tasks per model)
and moto_server as S3. The connections ``imggen_default`` (native task API, its billing ledger in the
database ``imggen_ledger`` of the same PostgreSQL through the postgres connection ``imggen_ledger``) and
``aws_default`` reach every component through the environment: no shared filesystem is needed beyond the
DAG files. A stopped triggerer's triggers move to another one within about 7 s (see ``airflow_env``).

    python benchmarks/cluster.py            # `make cluster`: up until Ctrl-C, prints URLs and logs
    python benchmarks/cluster.py --smoke    # the content pipeline with a Celery worker killed mid-run

Missing pieces are installed first: ``postgresql`` and ``redis-server`` with apt-get (``apt-get update``
only when one is missing), ``apache-airflow-providers-celery``, ``apache-airflow-providers-postgres`` and
the PostgreSQL drivers with pip.
Every process runs in a session of its own and the whole session is stopped on the way out, also on a
failure, Ctrl-C or SIGTERM. As a context manager (``with cluster() as c:``) it serves later benchmarks.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python benchmarks/cluster.py` imports the provider's helpers from here
    sys.path.insert(0, str(REPO))

from benchmarks.bench_deferrable import http_json, session_pids  # noqa: E402
from benchmarks.demo import emulator_command, free_port  # noqa: E402

BIN = Path(sys.executable).parent
API_KEY = "sk-cluster-emulator"
MODEL = "wan2.2-t2i-flash"
BUCKET = "imggen-content"
PIPELINE_DAG = REPO / "example_dags" / "example_content_pipeline.py"
PIPELINE_DAG_ID = "example_content_pipeline"
NATIVE_SUBMIT_PATH = "/api/v1/services/aigc/text2image/image-synthesis"
APT_PACKAGES = {"postgresql": "/usr/lib/postgresql/*/bin/initdb", "redis-server": "/usr/bin/redis-server"}
PIP_MODULES = {
    "airflow.providers.celery": "apache-airflow-providers-celery",
    # The billing ledger's store (PostgresHook): the triggerer claims each send there in batch mode.
    "airflow.providers.postgres": "apache-airflow-providers-postgres",
    "psycopg2": "psycopg2-binary",
    "asyncpg": "asyncpg",
}
AIRFLOW_COMPONENTS = ("scheduler", "dag-processor")
# The billing ledger: a database of the cluster's PostgreSQL, reached through an Airflow postgres connection.
LEDGER_DATABASE = "imggen_ledger"
LEDGER_CONN_ID = "imggen_ledger"
LEDGER = f"postgres://{LEDGER_CONN_ID}/imggen_ledger"  # the imggen connection's extra: <conn id>/<table>
# A triggerer heartbeats every TRIGGERER_HEARTBEAT_SECONDS; one silent for TRIGGERER_HEALTH_SECONDS is dead
# to the others, which take its triggers at their next loop (about a second).
TRIGGERER_HEARTBEAT_SECONDS = 1
TRIGGERER_HEALTH_SECONDS = 6
# Set in each triggerer's environment: its service name, which service_hostname() returns to Airflow.
SERVICE_NAME_VARIABLE = "IMGGEN_CLUSTER_SERVICE"


def log(message: str) -> None:
    print(f"[cluster {time.strftime('%H:%M:%S')}] {message}", flush=True)


def service_hostname() -> str:
    """
    ``[core] hostname_callable`` of the triggerers: their service name (``triggerer-2``), so that the job
    row of each (``job.hostname``) tells which process runs a trigger; every process here shares one host.
    """
    return os.environ.get(SERVICE_NAME_VARIABLE) or socket.getfqdn()


# --- warming a triggerer ---------------------------------------------------------------------------------
#
# Airflow 3.3's triggerer answers its triggers' requests (connections, variables, XComs: an end_from_trigger
# task's result) through an in-process Execution API that it builds on the first request: Cadwyn generates
# the API's versioned routers, 7.5 s of CPU on an idle core here, 7-15 s on the loaded cluster. Its loop
# blocks meanwhile: no heartbeat, so with the short health threshold above the other triggerer takes every
# trigger of a triggerer that just got its first one (seen on the cluster: heartbeats "recovered after
# 7.78 / 14.59 / 6.02 seconds", one mapped trigger run by three triggerer jobs). Each triggerer is made to
# serve one such request before a benchmark runs (and after a restart): a DAG run whose trigger reads a
# Variable while the other triggerers are held back (SIGSTOP, a few seconds) so that it is the one
# assigned. The figures then measure failovers, not the Execution API's cold start.

WARMUP_DAG_ID = "cluster_triggerer_warmup"
WARMUP_DAG_FILE = f"{WARMUP_DAG_ID}.py"
WARMUP_DAG = f'''"""Written by benchmarks/cluster.py: its trigger makes the triggerer's first API request."""

import pendulum
from airflow.sdk import DAG, BaseOperator

from benchmarks.cluster import WarmUpTrigger


class WarmUp(BaseOperator):
    def execute(self, context):
        self.defer(trigger=WarmUpTrigger(), method_name="done")

    def done(self, context, event=None):
        return event


with DAG(
    dag_id="{WARMUP_DAG_ID}",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["cluster"],
):
    WarmUp(task_id="warm_up", retries=0)
'''


def _warm_up_trigger_class() -> type:
    """WarmUpTrigger, built on first use: importing this module must not import Airflow."""
    from airflow.triggers.base import BaseTrigger, TriggerEvent

    class WarmUpTrigger(BaseTrigger):
        """Reads a Variable through the triggerer's Execution API (building it), then fires."""

        def serialize(self) -> tuple[str, dict[str, Any]]:
            return f"{__name__}.WarmUpTrigger", {}

        async def run(self) -> Any:
            from airflow.sdk import Variable
            from asgiref.sync import sync_to_async

            started = time.monotonic()
            value = await sync_to_async(Variable.get)("imggen_cluster_warmup", default="unset")
            self.log.info("warmed up: Variable read in %.1f s", time.monotonic() - started)
            yield TriggerEvent({"variable": value, "hostname": service_hostname()})

    WarmUpTrigger.__module__ = __name__
    return WarmUpTrigger


def __getattr__(name: str) -> Any:
    if name == "WarmUpTrigger":  # the classpath the warm-up DAG's trigger serializes to
        cls = _warm_up_trigger_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- installing what is missing -------------------------------------------------------------------------


def ensure_dependencies() -> None:
    """apt-get the Debian packages and pip-install the Python ones that are missing; nothing else."""
    missing = [package for package, probe in APT_PACKAGES.items() if not glob.glob(probe)]
    if missing:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        log(f"apt-get install {' '.join(missing)}")
        subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=apt_env, timeout=600)
        subprocess.run(
            [*sudo, "apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=600", *missing],
            check=True,
            env=apt_env,
            timeout=900,
        )
    import importlib.util

    wanted = [package for module, package in PIP_MODULES.items() if importlib.util.find_spec(module) is None]
    if wanted:
        log(f"pip install {' '.join(wanted)}")
        uv = BIN / "uv"
        if uv.exists():
            command = [str(uv), "pip", "install", "--python", sys.executable, *wanted]
        else:
            command = [sys.executable, "-m", "pip", "install", "--quiet", *wanted]
        subprocess.run(command, check=True, timeout=600)


def postgres_bin() -> Path:
    """The newest installed PostgreSQL's bin dir (Debian keeps initdb and pg_ctl off PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if not found:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    return Path(found[-1]).parent


def versions() -> dict[str, str]:
    """The version of every component, for reports."""
    from importlib.metadata import version

    def first_line(command: list[str]) -> str:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        return (result.stdout or result.stderr).strip().splitlines()[0]

    return {
        "postgresql": first_line([str(postgres_bin() / "postgres"), "--version"]),
        "redis": first_line(["redis-server", "--version"]),
        **{
            package: version(package)
            for package in (
                "apache-airflow",
                "apache-airflow-task-sdk",
                "apache-airflow-providers-celery",
                "apache-airflow-providers-amazon",
                "celery",
                "moto",
            )
        },
    }


# --- processes ------------------------------------------------------------------------------------------


def signal_session(session_id: int, signum: int) -> None:
    """Signal every process of a session: its process group, then each process that left the group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(session_id, signum)
    for pid in session_pids(session_id):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


@dataclass
class Service:
    """One process started in a session of its own, its output in ``log_path``."""

    name: str
    command: list[str]
    log_path: Path
    env: dict[str, str]
    user: str | None = None
    stop_signal: int = signal.SIGTERM
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as output:
            self.process = subprocess.Popen(
                self.command,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                user=self.user,
                cwd=self.log_path.parent,
            )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL every process of the session at once: a node lost, nothing cleaned up."""
        if self.process is not None:
            signal_session(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


def stop_services(services: list[Service], grace_seconds: float = 20.0) -> None:
    """Signal every session, wait for them to empty, SIGKILL what is left."""
    started = [service for service in services if service.process is not None]
    for service in started:
        assert service.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.process.pid, service.stop_signal)
            # A paused service (Cluster.pause) handles the stop signal only once it runs again.
            os.killpg(service.process.pid, signal.SIGCONT)
    deadline = time.monotonic() + grace_seconds
    for service in started:
        assert service.process is not None
        while session_pids(service.process.pid) and time.monotonic() < deadline:
            service.process.poll()
            time.sleep(0.2)
        leftovers = session_pids(service.process.pid)
        if leftovers:
            log(f"{service.name}: SIGKILL to {len(leftovers)} process(es) left after {grace_seconds:.0f} s")
            signal_session(service.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            service.process.wait(timeout=10)


def wait_until(what: str, check: Any, timeout: float, services: list[Service], interval: float = 0.5) -> Any:
    """Call ``check()`` until it returns something truthy; fail when a service died or time ran out."""
    deadline = time.monotonic() + timeout
    while True:
        for service in services:
            if not service.alive:
                raise RuntimeError(f"{service.name} exited while waiting for {what}; see {service.log_path}")
        with contextlib.suppress(OSError, RuntimeError, ValueError, KeyError):
            result = check()
            if result:
                return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout:.0f} s")
        time.sleep(interval)


def redis_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")


# --- the cluster ----------------------------------------------------------------------------------------


@dataclass
class Cluster:
    """A running deployment: its URLs, environment, services, and helpers to drive it."""

    work: Path
    env: dict[str, str]
    api_url: str
    emulator_url: str
    s3_endpoint: str
    services: dict[str, Service] = field(default_factory=dict)
    password: str = ""
    token: str = ""
    paused: set[str] = field(default_factory=set)
    # Each service's environment as started by cluster(), before any restart_triggerer(env=...).
    started_env: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.work / "logs"

    def api(self, path: str, body: Any = None, method: str = "GET") -> Any:
        """Airflow's REST API (v2) as the admin user."""
        return http_json(
            f"{self.api_url}/api/v2/{path}",
            body,
            method=method,
            headers={"Authorization": f"Bearer {self.token}"},
        )

    def emulator(self, path: str, body: Any = None, method: str = "GET") -> Any:
        return http_json(f"{self.emulator_url}/_emulator/{path}", body, method=method)

    def airflow(self, *args: str, timeout: float = 120) -> str:
        """An ``airflow`` CLI command against the cluster's metadata DB; its output."""
        result = subprocess.run(
            [str(BIN / "airflow"), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if result.returncode:
            raise RuntimeError(f"airflow {' '.join(args)}: exit {result.returncode}\n{result.stderr[-2000:]}")
        return result.stdout

    def sql(self, query: str, *params: Any, database: str = "airflow") -> list[tuple[Any, ...]]:
        """One query against the metadata DB, or ``database`` (autocommit, a connection of its own)."""
        import psycopg2

        url = self.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].replace(
            "postgresql+psycopg2://", "postgresql://"
        )
        url = url.rsplit("/", 1)[0] + f"/{database}"
        connection = psycopg2.connect(url, connect_timeout=10)
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(query, params)
                return list(cursor.fetchall()) if cursor.description else []
        finally:
            connection.close()

    def check_alive(self) -> None:
        for service in self.services.values():
            if not service.alive:
                raise RuntimeError(f"{service.name} exited; see {service.log_path}")

    @property
    def workers(self) -> list[Service]:
        return [service for name, service in self.services.items() if name.startswith("worker-")]

    def wait_worker_ready(self, worker: Service, timeout: float = 180, offset: int = 0) -> None:
        """Celery logs '<hostname> ready.' (after ``offset`` in its log) once it consumes from the broker."""
        hostname = worker.command[worker.command.index("--celery-hostname") + 1]

        def ready() -> bool:
            with worker.log_path.open("rb") as output:
                output.seek(offset)
                return f"{hostname} ready.".encode() in output.read()

        wait_until(f"Celery worker {hostname} ready", ready, timeout, [worker])

    def kill_worker(self, worker: Service) -> None:
        log(f"SIGKILL to every process of {worker.name} (pid {worker.process and worker.process.pid})")
        worker.kill()

    def restart_worker(self, worker: Service, timeout: float = 180) -> None:
        with worker.log_path.open("ab") as output:
            output.write(b"\n----- restarted by benchmarks/cluster.py -----\n")
        offset = worker.log_path.stat().st_size
        worker.start()
        self.wait_worker_ready(worker, timeout, offset)
        log(f"{worker.name} restarted and ready")

    @property
    def triggerers(self) -> list[Service]:
        return [service for name, service in self.services.items() if name.startswith("triggerer")]

    def triggerer_heartbeats(self) -> dict[str, datetime]:
        """The latest heartbeat of each triggerer service's newest running job (job.hostname: its name)."""
        rows = self.sql(
            "SELECT hostname, max(latest_heartbeat) FROM job WHERE job_type = 'TriggererJob' "
            "AND state = 'running' GROUP BY hostname"
        )
        return {str(hostname): beat for hostname, beat in rows if beat is not None}

    def wait_triggerer_beating(self, name: str, since: datetime, timeout: float = 180) -> None:
        """Wait for a heartbeat of the triggerer ``name`` later than ``since``."""
        service = self.services[name]

        def beating() -> bool:
            beat = self.triggerer_heartbeats().get(name)
            return beat is not None and beat > since

        wait_until(f"a heartbeat of {name}", beating, timeout, [service], 0.5)

    def restart_triggerer(
        self,
        name: str = "triggerer",
        timeout: float = 180,
        warm: bool = True,
        env: dict[str, str] | None = None,
        may_die: bool = False,
    ) -> None:
        """
        SIGKILL a triggerer (all of its session) and start it again; wait for its next heartbeat. ``warm``:
        then warm it (see WARMUP_DAG) when other triggerers could otherwise take its first triggers.
        ``env``: variables to add to its environment this time (a crash switch), on top of its first one.
        ``may_die``: an armed crash switch may kill it before its first heartbeat (a trigger resumed at
        once): then it is not waited for; the caller checks the crash switch fired.
        """
        triggerer = self.services[name]
        log(f"SIGKILL to every process of {name} (pid {triggerer.process and triggerer.process.pid})")
        triggerer.kill()
        self.paused.discard(name)
        killed_at = datetime.now(UTC)
        with triggerer.log_path.open("ab") as output:
            output.write(b"\n----- restarted by benchmarks/cluster.py -----\n")
        first_env = self.started_env.setdefault(name, dict(triggerer.env))
        triggerer.env = {**first_env, **(env or {})}
        triggerer.start()
        try:
            self.wait_triggerer_beating(name, killed_at, timeout)
        except RuntimeError:
            if not (may_die and not triggerer.alive):
                raise
            log(f"{name} restarted and died before its first heartbeat (its armed crash switch)")
            return
        log(f"{name} restarted and beating")
        if warm and self.warm_triggerers:
            self.warm_triggerer(name, timeout)

    @property
    def warm_triggerers(self) -> bool:
        """Whether triggerers are warmed: several of them, and the warm-up DAG in the DAGs folder."""
        return (
            len(self.triggerers) > 1
            and (Path(self.env["AIRFLOW__CORE__DAGS_FOLDER"]) / WARMUP_DAG_FILE).exists()
        )

    def warm_triggerer(self, name: str, timeout: float = 180, attempts: int = 4) -> None:
        """
        Have the triggerer ``name`` build its in-process Execution API (see WARMUP_DAG): a warm-up DAG run
        whose trigger it is assigned while the other triggerers are held (SIGSTOP). Others that run no
        trigger are held from the start until the assignment; others that do (a restart in a benchmark's
        run) only from the moment the warm-up task runs, for less than the health threshold so that they
        keep their triggers: the warm-up may then go to one of them, and is tried again.
        """
        begun = time.monotonic()
        wait_until(
            f"DAG {WARMUP_DAG_ID} parsed",
            lambda: self.api(f"dags/{WARMUP_DAG_ID}")["dag_id"],
            timeout,
            self.triggerers,
            1,
        )
        for attempt in range(1, attempts + 1):
            held = [t.name for t in self.triggerers if t.name != name and t.name not in self.paused]
            busy = self.sql(
                "SELECT count(*) FROM trigger JOIN job ON job.id = trigger.triggerer_id "
                "WHERE job.hostname = ANY(%s)",
                held,
            )[0][0]
            run_id = self.trigger(WARMUP_DAG_ID)
            if busy:
                wait_until(
                    f"the warm-up task of {name} running",
                    lambda run_id=run_id: (
                        self.warm_up_state(run_id) in ("running", "deferred", "success", "failed")
                    ),
                    timeout,
                    self.triggerers,
                    0.1,
                )
            for other in held:
                self.pause(other, quiet=True)
            try:
                deadline = time.monotonic() + (TRIGGERER_HEALTH_SECONDS - 2 if busy else timeout)
                assigned = None
                while time.monotonic() < deadline and assigned is None:
                    assigned = self.triggerer_of(WARMUP_DAG_ID, run_id, "warm_up")
                    time.sleep(0.1)
            finally:
                for other in held:
                    self.resume(other, quiet=True)
            state = self.wait_run(WARMUP_DAG_ID, run_id, timeout)
            ran_on = self.warm_up_ran_on(run_id)
            if state == "success" and ran_on == name:
                log(f"{name} warmed in {time.monotonic() - begun:.0f} s (attempt {attempt})")
                return
            log(f"warm-up run {run_id}: {state}, its trigger ran on {ran_on or 'no triggerer'}; again")
        raise RuntimeError(f"could not warm {name} in {attempts} attempts")

    def warm_up_state(self, run_id: str) -> str | None:
        rows = self.sql(
            "SELECT state FROM task_instance WHERE dag_id = %s AND run_id = %s", WARMUP_DAG_ID, run_id
        )
        return str(rows[0][0]) if rows else None

    def warm_up_ran_on(self, run_id: str) -> str | None:
        """The triggerer whose trigger ended a warm-up run (from the event the task resumed with)."""
        rows = self.sql(
            "SELECT value::text FROM xcom WHERE dag_id = %s AND run_id = %s AND task_id = 'warm_up' "
            "AND key = 'return_value'",
            WARMUP_DAG_ID,
            run_id,
        )
        if not rows:
            return None
        value = json.loads(rows[0][0])
        value = json.loads(value) if isinstance(value, str) else value
        return str(value.get("hostname")) if isinstance(value, dict) else None

    def pause(self, name: str, quiet: bool = False) -> None:
        """SIGSTOP every process of a service: alive but silent (no heartbeat, no request), as in a long GC
        pause, a frozen VM or a network partition. It holds its DB sessions and sockets meanwhile."""
        service = self.services[name]
        if service.process is None:
            raise RuntimeError(f"{name} is not running")
        if not quiet:
            log(f"SIGSTOP to every process of {name} (pid {service.process.pid})")
        self.paused.add(name)
        signal_session(service.process.pid, signal.SIGSTOP)

    def resume(self, name: str, quiet: bool = False) -> None:
        """SIGCONT every process of a service paused by :meth:`pause`."""
        service = self.services[name]
        if service.process is None:
            raise RuntimeError(f"{name} is not running")
        if not quiet:
            log(f"SIGCONT to every process of {name} (pid {service.process.pid})")
        signal_session(service.process.pid, signal.SIGCONT)
        self.paused.discard(name)

    def triggerer_of(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str | None:
        """
        The triggerer service assigned the trigger of a deferred task instance (None: not deferred, or its
        trigger not assigned yet). From the metadata DB: task_instance.trigger_id -> trigger.triggerer_id ->
        job.hostname (each triggerer's service name, see service_hostname).
        """
        rows = self.sql(
            "SELECT job.hostname FROM task_instance ti JOIN trigger ON trigger.id = ti.trigger_id "
            "JOIN job ON job.id = trigger.triggerer_id "
            "WHERE ti.dag_id = %s AND ti.run_id = %s AND ti.task_id = %s AND ti.map_index = %s",
            dag_id,
            run_id,
            task_id,
            map_index,
        )
        return str(rows[0][0]) if rows else None

    def triggers_by_triggerer(self, dag_id: str, run_id: str) -> dict[str, int]:
        """How many of a DAG run's triggers each triggerer service is assigned."""
        rows = self.sql(
            "SELECT job.hostname, count(*) FROM task_instance ti JOIN trigger ON trigger.id = ti.trigger_id "
            "JOIN job ON job.id = trigger.triggerer_id WHERE ti.dag_id = %s AND ti.run_id = %s "
            "GROUP BY job.hostname",
            dag_id,
            run_id,
        )
        return {str(hostname): int(count) for hostname, count in rows}

    def running_on(self, worker: Service) -> set[str]:
        """The task instance ids running on a worker (its task processes: 'airflow supervisor: <id>')."""
        import psutil

        found: set[str] = set()
        if worker.process is None:
            return found
        for pid in session_pids(worker.process.pid):
            with contextlib.suppress(psutil.Error):
                title = " ".join(psutil.Process(pid).cmdline())
                if title.startswith("airflow supervisor: "):
                    found.add(title.split(": ", 1)[1].strip())
        return found

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        run_id = f"cluster-{int(time.time() * 1000)}"
        self.api(
            f"dags/{dag_id}/dagRuns",
            # A logical date: the content pipeline's keys and prompts use {{ ds }}.
            {"dag_run_id": run_id, "logical_date": datetime.now(UTC).isoformat(), "conf": conf or {}},
            method="POST",
        )
        return run_id

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        while True:
            page = self.api(f"dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100&offset={len(found)}")
            found += page["task_instances"]
            if not page["task_instances"] or len(found) >= page["total_entries"]:
                return found

    def wait_run(self, dag_id: str, run_id: str, timeout: float) -> str:
        def finished() -> str | None:
            state = str(self.api(f"dags/{dag_id}/dagRuns/{run_id}")["state"])
            return state if state in ("success", "failed") else None

        return str(wait_until(f"end of run {run_id}", finished, timeout, list(self.services.values()), 2))


def airflow_env(
    work: Path, dags_folder: Path, pg_port: int, redis_port: int, api_port: int, emulator_url: str, s3: str
) -> dict[str, str]:
    database = f"airflow@127.0.0.1:{pg_port}/airflow"
    return {
        **{key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "IMGGEN_"))},
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        # Workers and the triggerer import the provider (and a hostname helper) from this checkout.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])),
        "PYTHONUNBUFFERED": "1",
        "AIRFLOW_HOME": str(work / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{database}",
        "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://{database}",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",  # user admin, role admin
        # A task whose worker died is failed (and retried) after 30 s without a heartbeat, not 5 min.
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        # A task sent to a worker that dies before the task starts stays queued (no heartbeat to miss):
        # the scheduler sends it again after this many seconds, not 10 min.
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "60",
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "10",
        # Trigger failover within about 7 s instead of 35: a triggerer that misses heartbeats for the
        # health threshold (default 30 s) is dead to the others, which take its triggers at their next
        # loop. The benchmarks kill and pause triggerers in runs whose generations take 4 s; a 30 s gap
        # would measure Airflow's default patience rather than what the provider does on a failover, and
        # the window in which two triggerers run one trigger (one paused past the threshold, then resumed)
        # could not be reached in a short run. Heartbeats every second keep a live triggerer on this loaded
        # 2-core machine well inside the threshold (its loop beats about once a second anyway).
        "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": str(TRIGGERER_HEARTBEAT_SECONDS),
        "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": str(TRIGGERER_HEALTH_SECONDS),
        "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": "False",
        "AIRFLOW_CONN_IMGGEN_DEFAULT": json.dumps(
            {
                "conn_type": "imggen",
                "host": emulator_url,
                "password": API_KEY,
                # The billing ledger: every send claimed there first, from a worker or from a triggerer.
                "extra": {"api_style": "dashscope", "default_model": MODEL, "ledger": LEDGER},
            }
        ),
        "AIRFLOW_CONN_" + LEDGER_CONN_ID.upper(): json.dumps(
            {
                "conn_type": "postgres",
                "host": "127.0.0.1",
                "port": pg_port,
                "login": "airflow",
                "schema": LEDGER_DATABASE,
            }
        ),
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
            {
                "conn_type": "aws",
                "login": "cluster",
                "password": "cluster-secret",
                "extra": {"endpoint_url": s3, "region_name": "us-east-1"},
            }
        ),
    }


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="cluster",
        aws_secret_access_key="cluster-secret",
    )


def create_bucket(endpoint: str) -> None:
    """The pipeline's bucket exists before any DAG runs, as in a real account."""
    s3_client(endpoint).create_bucket(Bucket=BUCKET)


def create_celery_result_tables(database_url: str) -> None:
    """
    Celery's result tables, created once before the workers start: each worker creates them lazily
    otherwise, and two at once collide (PostgreSQL: duplicate key on ``CREATE SEQUENCE task_id_sequence``).
    """
    from celery.backends.database.models import ResultModelBase
    from sqlalchemy import create_engine

    engine = create_engine(database_url)
    try:
        ResultModelBase.metadata.create_all(engine)
    finally:
        engine.dispose()


def start_postgres(work: Path, port: int, services: list[Service]) -> Service:
    """initdb a throw-away cluster and run ``postgres`` on loopback, as the postgres user when root."""
    pg_bin = postgres_bin()
    data, run_dir = work / "postgres", work / "postgres-run"
    data.mkdir()
    run_dir.mkdir()
    user = None
    if os.geteuid() == 0:  # postgres refuses to run as root
        user = "postgres"
        entry = pwd.getpwnam(user)
        for path in (data, run_dir):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    with (work / "logs" / "initdb.log").open("wb") as output:
        subprocess.run(
            [
                str(pg_bin / "initdb"),
                "-D",
                str(data),
                "-U",
                "airflow",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            user=user,
            check=True,
            timeout=120,
        )
    service = Service(
        "postgres",
        [
            str(pg_bin / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-k",
            str(run_dir),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=300",
            # A throw-away DB: durability buys nothing here and costs the shared machine's disk.
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ],
        work / "logs" / "postgres.log",
        env,
        user=user,
        stop_signal=signal.SIGINT,  # "fast" shutdown: does not wait for the clients to disconnect
    )
    services.append(service)
    service.start()
    ready = [str(pg_bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)]
    wait_until("PostgreSQL", lambda: subprocess.run(ready, check=False).returncode == 0, 60, [service])
    for database in ("airflow", LEDGER_DATABASE):  # the metadata DB; the billing ledger's, apart from it
        subprocess.run(
            [str(pg_bin / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "airflow", database],
            check=True,
            timeout=60,
        )
    return service


@contextlib.contextmanager
def cluster(
    *,
    workers: int = 2,
    worker_concurrency: int = 2,
    triggerers: int = 1,
    dags_folder: Path | None = None,
    emulator_args: tuple[str, ...] = (),
    extra_env: dict[str, str] | None = None,
    keep: bool = False,
    start_timeout: float = 420,
) -> Iterator[Cluster]:
    """
    Bring the deployment up, yield it, bring it down: every process started is stopped on the way out.

    ``triggerers``: how many triggerer processes (``triggerer``, ``triggerer-2``, ...) share the triggers.
    ``dags_folder``: default a temp dir holding the content pipeline. ``emulator_args``: more emulator
    options (its quotas are on, at the service's values). The work dir (logs, DB) is removed unless
    ``keep`` or the block raised.
    """
    ensure_dependencies()
    work = Path(tempfile.mkdtemp(prefix="imggen-cluster-"))
    work.chmod(0o755)  # the postgres user must reach its data dir
    (work / "logs").mkdir()
    (work / "airflow").mkdir()
    if dags_folder is None:
        dags_folder = work / "dags"
        dags_folder.mkdir()
        # Unscheduled: runs come from triggers only (a daily schedule would start one as the DAG appears).
        source = PIPELINE_DAG.read_text()
        unscheduled = source.replace('schedule="@daily"', "schedule=None")
        if unscheduled == source:
            raise RuntimeError(f'{PIPELINE_DAG} has no schedule="@daily" to turn off')
        (dags_folder / PIPELINE_DAG.name).write_text(unscheduled)
    ports = {name: free_port() for name in ("postgres", "redis", "api", "emulator", "s3")}
    emulator_url = f"http://127.0.0.1:{ports['emulator']}"
    s3 = f"http://127.0.0.1:{ports['s3']}"
    if triggerers > 1:  # see WARMUP_DAG
        (dags_folder / WARMUP_DAG_FILE).write_text(WARMUP_DAG)
    env = airflow_env(work, dags_folder, ports["postgres"], ports["redis"], ports["api"], emulator_url, s3)
    env.update(extra_env or {})
    # The admin's password, known before the api-server starts (SimpleAuthManager keeps what it finds).
    password = secrets.token_urlsafe(12)
    (work / "airflow" / "simple_auth_manager_passwords.json.generated").write_text(
        json.dumps({"admin": password})
    )
    started: list[Service] = []
    logs = work / "logs"
    failed = True

    # SIGTERM unwinds like Ctrl-C, so that the `finally` below stops everything (pytest and a plain
    # script die on SIGTERM without running it otherwise).
    previous_sigterm = None
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):

        def interrupt(signum: int, frame: object) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            previous_sigterm = signal.signal(signal.SIGTERM, interrupt)
    log(f"work dir {work}; logs in {logs}")
    try:
        begun = time.monotonic()
        start_postgres(work, ports["postgres"], started)
        redis = Service(
            "redis",
            [
                "redis-server",
                "--port",
                str(ports["redis"]),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            logs / "redis.log",
            dict(os.environ),
        )
        emulator = Service(
            "emulator",
            [*emulator_command(ports["emulator"], API_KEY, *emulator_args, quotas=True)],
            logs / "emulator.log",
            # The emulator of this checkout, as the Airflow processes' provider (PYTHONPATH in env).
            {**os.environ, "PYTHONPATH": env["PYTHONPATH"]},
        )
        moto = Service(
            "moto",
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(ports["s3"])],
            logs / "moto.log",
            dict(os.environ),
        )
        for service in (redis, emulator, moto):
            started.append(service)
            service.start()
        wait_until("Redis", lambda: redis_ping(ports["redis"]), 60, started)
        wait_until("the emulator", lambda: http_json(f"{emulator_url}/_emulator/faults"), 60, started)
        wait_until(
            "moto_server", lambda: urllib.request.urlopen(f"{s3}/", timeout=2).close() or True, 60, started
        )
        create_bucket(s3)
        log(
            f"PostgreSQL, Redis, emulator and moto_server up in {time.monotonic() - begun:.0f} s; "
            "airflow db migrate"
        )
        with (logs / "db-migrate.log").open("wb") as output:
            subprocess.run(
                [str(BIN / "airflow"), "db", "migrate"],
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                check=True,
                timeout=300,
            )
        create_celery_result_tables(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        airflow = str(BIN / "airflow")
        components = [
            Service(name, [airflow, name], logs / f"{name}.log", env)
            for name in ("api-server", *AIRFLOW_COMPONENTS)
        ]
        for index in range(1, triggerers + 1):
            name = "triggerer" if index == 1 else f"triggerer-{index}"
            components.append(
                Service(
                    name,
                    # The workers' and the triggerers' log servers listen on every interface: not started.
                    # Task and trigger logs are files under AIRFLOW_HOME/logs here, read by the api-server.
                    [airflow, "triggerer", "--skip-serve-logs"],
                    logs / f"{name}.log",
                    {
                        **env,
                        SERVICE_NAME_VARIABLE: name,
                        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "benchmarks.cluster.service_hostname",
                    },
                )
            )
        for index in range(1, workers + 1):
            components.append(
                Service(
                    f"worker-{index}",
                    [
                        airflow,
                        "celery",
                        "worker",
                        "--celery-hostname",
                        f"worker-{index}@127.0.0.1",
                        "--concurrency",
                        str(worker_concurrency),
                        "--without-mingle",
                        "--without-gossip",
                        "--skip-serve-logs",
                    ],
                    logs / f"worker-{index}.log",
                    env,
                )
            )
        for service in components:
            started.append(service)
            service.start()
        result = Cluster(
            work,
            env,
            f"http://127.0.0.1:{ports['api']}",
            emulator_url,
            s3,
            {s.name: s for s in started},
            password,
        )
        deadline = time.monotonic() + start_timeout

        def healthy() -> bool:
            health = http_json(f"{result.api_url}/api/v2/monitor/health")
            return all(
                (health.get(name) or {}).get("status") == "healthy"
                for name in ("metadatabase", "scheduler", "triggerer", "dag_processor")
            )

        wait_until(
            "healthy api-server, scheduler, triggerer, dag-processor", healthy, start_timeout, started, 1
        )
        wait_until(
            "a heartbeat of every triggerer",
            lambda: set(result.triggerer_heartbeats()) >= {t.name for t in result.triggerers},
            max(deadline - time.monotonic(), 10),
            started,
            1,
        )
        result.token = http_json(
            f"{result.api_url}/auth/token", {"username": "admin", "password": password}, method="POST"
        )["access_token"]
        for worker in result.workers:
            result.wait_worker_ready(worker, max(deadline - time.monotonic(), 10))
        if result.warm_triggerers:
            for triggerer in result.triggerers:
                result.warm_triggerer(triggerer.name, max(deadline - time.monotonic(), 60))
        log(f"cluster ready in {time.monotonic() - begun:.0f} s: {result.api_url} (admin / {password})")
        failed = False
        yield result
    except BaseException as error:
        # Ctrl-C ends `make cluster`: not a failure whose logs are worth keeping.
        failed = not isinstance(error, KeyboardInterrupt)
        raise
    finally:
        stopping = time.monotonic()
        # A second Ctrl-C or SIGTERM must not cut the clean-up short.
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            airflow_side = [service for service in started if service.name not in ("postgres", "redis")]
            stop_services(list(reversed(airflow_side)))
            stop_services([service for service in started if service.name in ("postgres", "redis")])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if previous_sigterm is not None:  # ours was installed above: back to what was there before
                signal.signal(signal.SIGTERM, previous_sigterm)
        log(f"stopped {len(started)} services in {time.monotonic() - stopping:.0f} s")
        if failed or keep:
            log(f"kept the work dir: {work} (logs in {logs})")
        else:
            shutil.rmtree(work, ignore_errors=True)


# --- the smoke run ---------------------------------------------------------------------------------------


SMOKE_SUBJECTS = [
    "a ceramic coffee mug on a wooden table, morning light",
    "a pair of running shoes on wet asphalt, neon reflections",
    "a bouquet of tulips in a glass vase, pastel background",
    "a leather backpack on a mountain trail, golden hour",
]
SMOKE_IMAGES_PER_PROMPT = 2  # the content pipeline's n


@dataclass
class SmokeResult:
    run_state: str
    task_states: dict[str, int]
    killed_worker: str
    submissions: int
    billed_images: int
    stored_keys: list[str]
    seconds: float
    problems: list[str]


def smoke(c: Cluster, *, run_timeout: float = 360, generation_seconds: float = 8) -> SmokeResult:
    """
    The content pipeline through the scheduler; one Celery worker killed (SIGKILL) while a generation runs
    on it, then restarted. Checks: run and every task succeeded, each image billed once and stored once.
    """
    begun = time.monotonic()
    s3 = s3_client(c.s3_endpoint)
    c.emulator("faults", {"task_pending_ms": 0, "task_duration_ms": generation_seconds * 1000}, method="PUT")
    c.emulator("requests", method="DELETE")
    wait_until(
        f"DAG {PIPELINE_DAG_ID} parsed",
        lambda: c.api(f"dags/{PIPELINE_DAG_ID}")["dag_id"],
        120,
        list(c.services.values()),
        1,
    )
    run_id = c.trigger(PIPELINE_DAG_ID, {"subjects": SMOKE_SUBJECTS})
    log(
        f"triggered {PIPELINE_DAG_ID} run {run_id}: {len(SMOKE_SUBJECTS)} prompts x {SMOKE_IMAGES_PER_PROMPT}"
    )

    def generation_running_on_a_worker() -> Service | None:
        """
        A worker whose running generate tasks all have their generation accepted by the service. A task
        killed between its recorded intent and its send fails closed by design (its retry cannot prove the
        request never left: crash point ``after_intent``, tested on its own); this run kills a generation.
        """
        accepted = [
            str(entry.get("prompt"))
            for entry in c.emulator("requests")["requests"]
            if (entry["method"], entry["path"], entry.get("outcome")) == ("POST", NATIVE_SUBMIT_PATH, "ok")
        ]
        generating = {
            instance["id"]: SMOKE_SUBJECTS[instance["map_index"]]
            for instance in c.task_instances(PIPELINE_DAG_ID, run_id)
            if instance["task_id"] == "generate" and instance["state"] == "running"
        }
        for worker in c.workers:
            subjects = [generating[ti] for ti in c.running_on(worker) if ti in generating]
            if subjects and all(any(subject in prompt for prompt in accepted) for subject in subjects):
                return worker
        return None

    victim = wait_until(
        "a generation running on a worker", generation_running_on_a_worker, 180, c.workers, 0.5
    )
    c.kill_worker(victim)
    time.sleep(2)
    c.restart_worker(victim)
    state = c.wait_run(PIPELINE_DAG_ID, run_id, max(run_timeout - (time.monotonic() - begun), 30))
    instances = c.task_instances(PIPELINE_DAG_ID, run_id)
    task_states: dict[str, int] = {}
    for instance in instances:
        task_states[instance["state"]] = task_states.get(instance["state"], 0) + 1
    requests_log = c.emulator("requests")
    submissions = sum(
        1
        for entry in requests_log["requests"]
        if entry["method"] == "POST" and entry["path"] == NATIVE_SUBMIT_PATH and entry["billed"]
    )
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    expected = len(SMOKE_SUBJECTS) * SMOKE_IMAGES_PER_PROMPT
    problems = []
    if state != "success" or set(task_states) != {"success"}:
        problems.append(f"run {state}, task states {task_states}")
    if submissions != len(SMOKE_SUBJECTS) or int(requests_log["billed_images"]) != expected:
        problems.append(
            f"{submissions} billed submissions, {requests_log['billed_images']} billed images "
            f"for {len(SMOKE_SUBJECTS)} prompts x {SMOKE_IMAGES_PER_PROMPT}"
        )
    if len(keys) != expected or len(set(keys)) != len(keys):
        problems.append(f"{len(keys)} objects stored for {expected} images: {keys}")
    retried = [
        f"{i['task_id']}[{i['map_index']}] try {i['try_number']}" for i in instances if i["try_number"] > 1
    ]
    if not retried:
        problems.append("no task was retried: the worker kill hit no running task")
    log(f"run {state}; tasks {task_states}; retried after the kill: {retried or 'none'}")
    return SmokeResult(
        state,
        task_states,
        victim.name,
        submissions,
        int(requests_log["billed_images"]),
        keys,
        time.monotonic() - begun,
        problems,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument(
        "--smoke", action="store_true", help="run the content pipeline with a worker kill, exit"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2, help="task slots per Celery worker")
    parser.add_argument("--triggerers", type=int, default=1, help="triggerer processes")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, DB) after a clean exit")
    args = parser.parse_args()
    # Ctrl-C stops the cluster even when started from a shell that had SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with cluster(
            workers=args.workers,
            worker_concurrency=args.concurrency,
            triggerers=args.triggerers,
            keep=args.keep,
        ) as c:
            for name, value in versions().items():
                log(f"  {name} {value}")
            for name, service in c.services.items():
                log(f"  {name:<14} pid {service.process and service.process.pid:<8} log {service.log_path}")
            if args.smoke:
                result = smoke(c)
                log(
                    f"smoke: {result.seconds:.0f} s, worker killed {result.killed_worker}, "
                    f"{result.submissions} submissions, {result.billed_images} images billed, "
                    f"{len(result.stored_keys)} stored"
                )
                for problem in result.problems:
                    log(f"FAILED: {problem}")
                return 1 if result.problems else 0
            log(
                f"UI and REST API: {c.api_url} (admin / {c.password}); emulator {c.emulator_url}; "
                f"S3 {c.s3_endpoint}"
            )
            log("Ctrl-C stops every process")
            while True:
                c.check_alive()
                time.sleep(2)
    except KeyboardInterrupt:
        log("interrupted: every process started was stopped")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
