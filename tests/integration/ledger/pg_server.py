"""
A throw-away PostgreSQL server for the ledger's tests and benchmark: ``initdb`` in a temp dir, ``postgres``
on a free loopback port, stopped and removed by :meth:`PostgresServer.stop`.

As root it runs as the ``postgres`` user (PostgreSQL refuses to run as root), as benchmarks/cluster.py does.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.s3_fixtures import free_port

USER = "ledger"
DATABASE = "postgres"  # the database initdb creates: nothing more to create
_START_TIMEOUT_SECONDS = 60.0


def find_initdb() -> Path | None:
    """``initdb`` on PATH, else the newest of Debian's (which keeps it off PATH); ``None`` if absent."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve()
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    return Path(found[-1]) if found else None


class PostgresServer:
    """A PostgreSQL server started on construction, for ``USER`` without a password (trust, loopback)."""

    def __init__(self) -> None:
        initdb = find_initdb()
        if initdb is None:
            raise FileNotFoundError("initdb (PostgreSQL) is not installed")
        bin_dir = initdb.parent
        self.port = free_port()
        self.work = Path(tempfile.mkdtemp(prefix="imggen-ledger-pg-"))
        self.work.chmod(0o755)  # the postgres user must reach its data dir
        data, sockets = self.work / "data", self.work / "run"
        data.mkdir()
        sockets.mkdir()
        user = None
        if os.geteuid() == 0:
            user = "postgres"
            entry = pwd.getpwnam(user)
            for path in (data, sockets):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        env = {**os.environ, "LC_ALL": "C.UTF-8"}
        self.log_path = self.work / "postgres.log"
        subprocess.run(
            [str(initdb), "-D", str(data), "-U", USER, "-A", "trust", "-E", "UTF8", "--no-sync"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            user=user,
            check=True,
            timeout=120,
        )
        with self.log_path.open("wb") as output:
            self.process = subprocess.Popen(
                [
                    str(bin_dir / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(self.port),
                    "-k",
                    str(sockets),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    # A throw-away DB on a shared machine: durability buys nothing and costs disk writes.
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                user=user,
                start_new_session=True,
            )
        ready = [str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while subprocess.run(ready, check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"PostgreSQL did not start; see {self.log_path}")
            time.sleep(0.1)

    def connection_json(self) -> str:
        """An Airflow ``postgres`` connection to the server, as AIRFLOW_CONN_<ID> takes it."""
        return json.dumps(
            {
                "conn_type": "postgres",
                "host": "127.0.0.1",
                "port": self.port,
                "login": USER,
                "schema": DATABASE,
            }
        )

    def connect(self) -> object:
        """A plain psycopg connection (autocommit) for the tests' own checks, apart from the code tested."""
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=USER, dbname=DATABASE, autocommit=True)

    def stop(self) -> None:
        """Stop the server ("fast" shutdown: clients are disconnected) and remove its files."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.work, ignore_errors=True)
