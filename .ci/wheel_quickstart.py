#!/usr/bin/env python3
"""
The README's "Quick start", run as a user would from an empty directory.

Run by ``make matrix`` with the python of a fresh venv holding only the built wheel with its ``emulator``
extra and ``moto[server]``; the current directory is empty. It takes the DAG from the README (the
python block after ``<!-- quickstart-dag -->``), so the README's DAG is the one that is run, and does
what the README says, checking each step:

1. ``airflow providers list`` shows the provider;
2. the emulator and ``moto_server`` (a local S3) start on free loopback ports;
3. ``airflow connections add`` creates the ``imggen`` connections (gateway and DashScope native) and the
   ``aws`` one in the metadata DB, and ``airflow connections get`` reads them back as type ``imggen``
   (an Airflow that does not know the provider saves them as ``generic``);
4. ``airflow dags test imggen_quickstart``: a generation and a deferrable native generation, both stored
   in S3, with the connections from the metadata DB; then the objects, the billing and the deferral are
   checked.

Servers are stopped on the way out; everything else lives in the current directory.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

API_KEY = "sk-quickstart"
BUCKET = "imggen-quickstart"
DAG_ID = "imggen_quickstart"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def say(*command: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command as the README shows it, printing it; fail with its output when it fails."""
    print(f"$ {' '.join(command)}", flush=True)
    finished = subprocess.run(command, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if finished.returncode != 0:
        output = f"{finished.stdout[-4000:]}\n{finished.stderr[-4000:]}"
        raise SystemExit(f"failed ({finished.returncode}):\n{output}")
    return finished


@contextmanager
def server(command: list[str], probe: str, log: Path) -> Iterator[None]:
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(probe, timeout=2).close()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"{command[0]} did not start: {log.read_text()[-2000:]}") from None
                    time.sleep(0.2)
            yield
        finally:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def cli_json(stdout: str) -> object:
    """What ``--output json`` printed, after any log lines Airflow wrote to stdout before it."""
    for start in (i for i, char in enumerate(stdout) if char in "[{"):
        try:
            return json.loads(stdout[start:])
        except json.JSONDecodeError:
            continue
    raise SystemExit(f"no JSON in: {stdout[-2000:]}")


def readme_dag(readme: Path) -> str:
    text = readme.read_text()
    found = re.search(r"<!-- quickstart-dag -->\s*```python\n(.*?)```", text, re.DOTALL)
    if not found:
        raise SystemExit(f"no quickstart DAG (<!-- quickstart-dag --> then a python block) in {readme}")
    return found.group(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--readme", type=Path, required=True)
    args = parser.parse_args()

    here = Path.cwd()
    airflow = str(BIN / "airflow")
    os.environ |= {
        "AIRFLOW_HOME": str(here / "airflow-home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(here / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    (here / "dags").mkdir()
    (here / "dags" / f"{DAG_ID}.py").write_text(readme_dag(args.readme))

    say(airflow, "db", "migrate")
    listed = say(airflow, "providers", "list", "--output", "json")
    mine = [p for p in cli_json(listed.stdout) if p["package_name"] == "airflow-provider-imggen"]
    assert mine, "airflow providers list does not show airflow-provider-imggen"
    print(f"  listed: airflow-provider-imggen {mine[0]['version']}")

    emulator_port, s3_port = free_port(), free_port()
    emulator, s3 = f"http://127.0.0.1:{emulator_port}", f"http://127.0.0.1:{s3_port}"
    with ExitStack() as servers:
        emulator_command = [
            str(BIN / "python"), "-m", "airflow_provider_imggen.emulator", "--host", "127.0.0.1",
            "--port", str(emulator_port), "--api-key", API_KEY, "--task-duration-ms", "3000",
        ]  # fmt: skip
        print(f"$ {' '.join(emulator_command)} &", flush=True)
        servers.enter_context(server(emulator_command, f"{emulator}/_emulator/faults", here / "emulator.log"))
        moto_command = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)]
        print(f"$ {' '.join(moto_command)} &", flush=True)
        servers.enter_context(server(moto_command, f"{s3}/", here / "moto.log"))

        say(airflow, "connections", "add", "imggen_default", "--conn-type", "imggen",
            "--conn-host", f"{emulator}/v1", "--conn-password", API_KEY)  # fmt: skip
        say(airflow, "connections", "add", "imggen_dashscope", "--conn-type", "imggen",
            "--conn-host", emulator, "--conn-password", API_KEY,
            "--conn-extra", json.dumps({"api_style": "dashscope"}))  # fmt: skip
        say(airflow, "connections", "add", "aws_default", "--conn-type", "aws",
            "--conn-login", "quickstart", "--conn-password", "quickstart-secret",
            "--conn-extra", json.dumps({"endpoint_url": s3, "region_name": "us-east-1"}))  # fmt: skip
        for conn_id in ("imggen_default", "imggen_dashscope"):
            saved = cli_json(say(airflow, "connections", "get", conn_id, "--output", "json").stdout)
            assert saved[0]["conn_type"] == "imggen", f"{conn_id} saved as {saved[0]['conn_type']!r}"
            print(f"  {conn_id}: conn_type imggen, in the metadata DB")

        import boto3  # the amazon provider's dependency

        client = boto3.client(
            "s3",
            endpoint_url=s3,
            region_name="us-east-1",
            aws_access_key_id="quickstart",
            aws_secret_access_key="quickstart-secret",
        )
        client.create_bucket(Bucket=BUCKET)

        started = time.monotonic()
        run = subprocess.run([airflow, "dags", "test", DAG_ID], capture_output=True, text=True, timeout=600)
        print(f"$ airflow dags test {DAG_ID}   ({time.monotonic() - started:.0f} s, exit {run.returncode})")
        log = run.stdout + run.stderr
        (here / "dags-test.log").write_text(log)
        if run.returncode != 0:
            raise SystemExit(f"airflow dags test failed:\n{log[-5000:]}")

        keys = sorted(obj["Key"] for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", []))
        for key in keys:
            body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            assert body.startswith(b"\x89PNG"), key
            print(f"  s3://{BUCKET}/{key}  {len(body):,} bytes")
        with urllib.request.urlopen(f"{emulator}/_emulator/requests", timeout=10) as answer:
            billed = json.load(answer)["billed_images"]
        assert [key.split("/")[0] for key in keys] == ["gateway"] * 2 + ["native"] * 2, keys
        assert billed == 4, f"billed {billed} images for 4 stored"
        assert "Deferring until task" in log, "the native generation did not defer"
        assert "the trigger reported task" in log and "success" in log, "the trigger did not report success"
        assert "isn't defined" not in log
    print(f"Quick start from the wheel: OK ({len(keys)} images in s3://{BUCKET}, {billed} billed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
