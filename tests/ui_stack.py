"""
The Images view's real stack, for tests/system/test_ui_images.py and benchmarks/bench_ui_gallery.py.

``airflow standalone`` (own AIRFLOW_HOME, SQLite, free loopback ports, the test auth manager of
tests/ui_auth_manager.py) next to two emulators (result URLs valid for a day / for a few seconds) and
moto_server; the DAGs are the example content pipeline (unscheduled: the caller triggers its runs) and
tests/ui_images_dags. Everything is stopped when the block ends.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from airflow_provider_imggen.emulator import EmulatorConfig, EmulatorServer, FaultConfig
from benchmarks.demo import background, free_port

REPO = Path(__file__).resolve().parent.parent
AIRFLOW_BIN = Path(sys.executable).with_name("airflow")
CONTENT_DAG = "example_content_pipeline"
UNSTORED_DAG = "imggen_ui_unstored"
BUCKET = "imggen-content"
PRODUCT_KEY = "inputs/product.png"
API_KEY = "sk-test-ui-images-5c1d"
FERNET_KEY = "x1Sn0hD8nL4p1ZkN0r3Jb2m9bQ8K6wEo2o3cY4f5T7E="
SHORT_URL_TTL = 8.0
START_TIMEOUT = 300
RUN_TIMEOUT = 300


@dataclass
class Stack:
    url: str
    home: Path
    env: dict[str, str]
    passwords: dict[str, str]
    emulator: EmulatorServer
    moto_endpoint: str
    process: subprocess.Popen[bytes]

    tokens: dict[str, str] = field(default_factory=dict)

    def token(self, user: str = "admin") -> str:
        """A JWT for ``user`` (one per user for the stack's lifetime)."""
        if user in self.tokens:
            return self.tokens[user]
        answer = requests.post(
            f"{self.url}/auth/token",
            json={"username": user, "password": self.passwords[user]},
            timeout=60,
        )
        answer.raise_for_status()
        self.tokens[user] = str(answer.json()["access_token"])
        return self.tokens[user]

    def api(self, method: str, path: str, *, user: str | None = "admin", **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if user is not None:
            headers["Authorization"] = f"Bearer {self.token(user)}"
        return requests.request(method, f"{self.url}{path}", headers=headers, timeout=120, **kwargs)

    def wait_for_dag(self, dag_id: str) -> None:
        deadline = time.monotonic() + RUN_TIMEOUT
        while self.api("GET", f"/api/v2/dags/{dag_id}").status_code != 200:
            assert time.monotonic() < deadline, f"the DAG processor never parsed {dag_id}"
            time.sleep(1)

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        self.wait_for_dag(dag_id)
        answer = self.api(
            "POST",
            f"/api/v2/dags/{dag_id}/dagRuns",
            # A logical date: the content pipeline's templates use {{ ds }}.
            json={"logical_date": datetime.now(UTC).isoformat(), "conf": conf or {}},
        )
        assert answer.status_code == 200, answer.text
        return str(answer.json()["dag_run_id"])

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = RUN_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        state = None
        while state not in ("success", "failed"):
            assert time.monotonic() < deadline, f"{dag_id} run still {state} after {timeout} s"
            time.sleep(1)
            state = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json()["state"]
        return str(state)

    def xcom(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Any:
        answer = self.api(
            "GET",
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value",
            params={"map_index": map_index, "deserialize": "true"},
        )
        answer.raise_for_status()
        return answer.json()["value"]

    @contextmanager
    def denying_api_server(self) -> Iterator[Stack]:
        """
        A second API server on the same metadata DB with tests/ui_auth_manager.py's auth manager, which
        refuses ``outsider`` the content pipeline (``airflow standalone`` forces SimpleAuthManager).
        """
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            **self.env,
            "AIRFLOW__CORE__AUTH_MANAGER": "tests.ui_auth_manager.DagDenyingAuthManager",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": url,
            "AIRFLOW__API__WORKERS": "1",
        }
        with background(
            [str(AIRFLOW_BIN), "api-server", "--host", "127.0.0.1", "--port", str(port)],
            f"{url}/api/v2/monitor/health",
            self.home / "api-server-denying.log",
            env=env,
            start_timeout=START_TIMEOUT,
        ) as process:
            yield Stack(
                url=url,
                home=self.home,
                env=env,
                passwords=self.passwords,
                emulator=self.emulator,
                moto_endpoint=self.moto_endpoint,
                process=process,
            )

    def api_server_pids(self) -> list[int]:
        """The API server's processes (its uvicorn master and workers), found in the standalone's group."""
        import psutil

        found = []
        for child in psutil.Process(self.process.pid).children(recursive=True):
            try:
                command = " ".join(child.cmdline())
            except psutil.Error:
                continue
            if "api-server" in command or "api_server" in command or "uvicorn" in command:
                found.append(child.pid)
        return found


def unscheduled_content_pipeline(dags: Path) -> None:
    """The example content pipeline, with no schedule: the scheduler creates no run of its own."""
    source = (REPO / "example_dags" / "example_content_pipeline.py").read_text()
    unscheduled, count = re.subn(r'schedule="@daily"', "schedule=None", source)
    assert count == 1, "example_content_pipeline.py no longer has schedule='@daily'"
    (dags / "example_content_pipeline.py").write_text(unscheduled)


@contextmanager
def images_stack(home: Path, *, parallelism: int = 4) -> Iterator[Stack]:
    """Start everything; the admin and ``outsider`` (viewer, refused the content pipeline) can log in."""
    dags = home / "dags"
    dags.mkdir(parents=True)
    unscheduled_content_pipeline(dags)
    shutil.copy(REPO / "tests" / "ui_images_dags" / "imggen_ui_unstored.py", dags)
    with ExitStack() as stack:
        emulator = stack.enter_context(
            EmulatorServer(EmulatorConfig(api_key=API_KEY, faults=FaultConfig(quotas=False)))
        )
        short = stack.enter_context(
            EmulatorServer(
                EmulatorConfig(
                    api_key=API_KEY, url_ttl_seconds=SHORT_URL_TTL, faults=FaultConfig(quotas=False)
                )
            )
        )
        moto_port = free_port()
        moto_endpoint = f"http://127.0.0.1:{moto_port}"
        stack.enter_context(
            background(
                [str(AIRFLOW_BIN.with_name("moto_server")), "-H", "127.0.0.1", "-p", str(moto_port)],
                f"{moto_endpoint}/moto-api/data.json",
                home / "moto.log",
            )
        )
        import boto3

        from tests.input_images import png

        s3 = boto3.client(
            "s3",
            endpoint_url=moto_endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        s3.create_bucket(Bucket=BUCKET)
        # The product photo imggen_ui_unstored's edit reads (a real PNG).
        s3.put_object(Bucket=BUCKET, Key=PRODUCT_KEY, Body=png(640, 480, seed=41))

        def imggen(server: EmulatorServer) -> str:
            extra = {"default_model": "wan2.2-t2i-flash", "max_retries": 3}
            return json.dumps(
                {"conn_type": "imggen", "host": f"{server.base_url}/v1", "password": API_KEY, "extra": extra}
            )

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            **{key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")},
            "PATH": f"{AIRFLOW_BIN.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            # The test auth manager lives in tests/.
            "PYTHONPATH": str(REPO),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__FERNET_KEY": FERNET_KEY,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,outsider:viewer",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": url,
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW_CONN_IMGGEN_DEFAULT": imggen(emulator),
            "AIRFLOW_CONN_IMGGEN_SHORT": imggen(short),
            "AIRFLOW_CONN_IMGGEN_DASHSCOPE": json.dumps(
                {
                    "conn_type": "imggen",
                    "host": emulator.base_url,
                    "password": API_KEY,
                    "extra": {"api_style": "dashscope", "max_retries": 3},
                }
            ),
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
                {
                    "conn_type": "aws",
                    "login": "testing",
                    "password": "testing",
                    "extra": {"endpoint_url": moto_endpoint, "region_name": "us-east-1"},
                }
            ),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
        env.pop("AWS_PROFILE", None)
        process = stack.enter_context(
            background(
                [str(AIRFLOW_BIN), "standalone"],
                f"{url}/api/v2/monitor/health",
                home / "standalone.log",
                env=env,
                start_timeout=START_TIMEOUT,
            )
        )
        passwords = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())
        yield Stack(
            url=url,
            home=home,
            env=env,
            passwords=passwords,
            emulator=emulator,
            moto_endpoint=moto_endpoint,
            process=process,
        )
