"""
``make demo``: run the example content pipeline end to end, offline, and show where the images landed; then
the product shots example, which edits a product photo into three scenes, shown beside their source.

A developer's tool of this repository, not part of the package: it needs the checkout's example DAGs and
moto_server (the ``test`` extra). Someone who installed the wheel follows the README's quick start instead.

Starts the API emulator and a local S3 endpoint (moto_server) on free loopback ports, points the
``imggen_default`` and ``aws_default`` connections at them through the environment, runs the pipeline with
``airflow dags test`` on a throw-away SQLite metadata DB, copies the stored objects to the output folder
and prints each S3 URI, size, dimensions and checksum. The servers it started are stopped and its temp dir
is removed on the way out (the temp dir is kept, and named, when something failed, or with ``--keep``).
``offline_stack`` is reused by benchmarks/bench_pipeline_faults.py; the process helpers by tests and
benchmarks.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEMO_API_KEY = "sk-demo-emulator"
REPO_ROOT = Path(__file__).resolve().parent.parent
DAG_ID = "example_content_pipeline"
EDIT_DAG_ID = "example_product_shots"
BUCKET = "imggen-content"
PRODUCT_KEY = "products/mug.png"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def emulator_command(port: int, api_key: str, *args: str, quotas: bool = False) -> list[str]:
    """
    The command line of the emulator on loopback (``args``: more options, such as fault rates).

    ``quotas``: the emulator enforces the service's per-model quotas by default (2 submissions per second,
    2 concurrent tasks); the demo and the benchmarks built on it run without them unless asked.
    """
    return [
        sys.executable,
        "-m",
        "airflow_provider_imggen.emulator",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--api-key",
        api_key,
        "--quotas" if quotas else "--no-quotas",
        *args,
    ]


@contextmanager
def background(
    command: list[str],
    probe_url: str,
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    start_timeout: float = 60,
) -> Iterator[subprocess.Popen[bytes]]:
    """
    Run a server in its own process group until the block ends; wait until ``probe_url`` answers first.

    On the way out the whole group is stopped (SIGTERM, then SIGKILL for what is left): servers such as
    ``airflow standalone`` leave children behind when only their parent is signalled.
    """
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            deadline = time.monotonic() + start_timeout
            while True:
                try:
                    urllib.request.urlopen(probe_url, timeout=2).close()
                    break
                except OSError as error:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"{command[0]} did not start (see {log_path})") from error
                    time.sleep(0.2)
            yield process
        finally:
            stop_process_group(process)


def stop_process_group(process: subprocess.Popen[bytes], grace_seconds: float = 20) -> None:
    """SIGTERM the process group led by ``process``; SIGKILL whatever still runs after the grace period."""
    deadline = time.monotonic() + grace_seconds
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_seconds)
    # Children may outlive the leader for a moment while they shut down.
    with suppress(ProcessLookupError):
        while time.monotonic() < deadline:
            os.killpg(process.pid, 0)
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@dataclass(frozen=True)
class OfflineStack:
    """The emulator, moto_server and an Airflow environment (SQLite) wired together through env vars."""

    work: Path
    dags_folder: Path
    env: dict[str, str]
    emulator_url: str
    s3_endpoint: str

    def emulator_admin(self, path: str, body: dict[str, Any] | None = None, method: str = "GET") -> Any:
        """Call the emulator's admin API (``/_emulator/...``)."""
        request = urllib.request.Request(
            f"{self.emulator_url}/_emulator/{path}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.load(answer)

    def run_dag(
        self,
        dag_id: str,
        log_path: Path,
        conf: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """
        ``airflow dags test`` one DAG of the dags folder, its output written to ``log_path`` (``env``:
        variables set for this run only, such as another connection).
        """
        command = [
            str(Path(sys.executable).parent / "airflow"),
            "dags",
            "test",
            dag_id,
            "--dagfile-path",
            str(self.dags_folder / f"{dag_id}.py"),
        ]
        if conf is not None:
            command += ["--conf", json.dumps(conf)]
        with log_path.open("w") as log:
            return subprocess.run(
                command, env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT
            )


@contextmanager
def offline_stack(
    dags_folder: Path,
    *,
    emulator_args: Sequence[str] = (),
    extra_env: dict[str, str] | None = None,
    keep: bool = False,
) -> Iterator[OfflineStack]:
    """
    Start the emulator and moto_server on free ports and migrate a fresh SQLite metadata DB.

    Also sets the connections in this process's environment, so that S3Hook here reads the same bucket.
    The work dir (Airflow home, SQLite DB, server logs) is removed on the way out, unless ``keep`` or the
    block failed: then it is left for its logs, and its path printed.
    """
    bin_dir = Path(sys.executable).parent
    work = Path(tempfile.mkdtemp(prefix="imggen-demo-"))
    emulator_port, s3_port = free_port(), free_port()
    emulator_url = f"http://127.0.0.1:{emulator_port}"
    s3_endpoint = f"http://127.0.0.1:{s3_port}"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(work / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{work}/airflow.db",
        "AIRFLOW_CONN_IMGGEN_DEFAULT": json.dumps(
            {"conn_type": "imggen", "host": f"{emulator_url}/v1", "password": DEMO_API_KEY}
        ),
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
            {
                "conn_type": "aws",
                "login": "demo",
                "password": "demo-secret",
                "extra": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"},
            }
        ),
        **(extra_env or {}),
    }
    os.environ.update(env)
    try:
        with ExitStack() as servers:
            servers.enter_context(
                background(
                    emulator_command(emulator_port, DEMO_API_KEY, *emulator_args),
                    f"{emulator_url}/_emulator/faults",
                    work / "emulator.log",
                )
            )
            servers.enter_context(
                background(
                    [str(bin_dir / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
                    f"{s3_endpoint}/",
                    work / "moto.log",
                )
            )
            subprocess.run(
                [str(bin_dir / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True
            )
            yield OfflineStack(work, dags_folder, env, emulator_url, s3_endpoint)
    except BaseException:
        print(f"Kept the work dir for its logs: {work}", file=sys.stderr)
        raise
    if keep:
        print(f"Kept the work dir: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def product_photo() -> bytes:
    """The demo's product: a drawn mug on a plain background (what a product photo in S3 would be)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (768, 768), (236, 232, 226))
    draw = ImageDraw.Draw(image)
    draw.ellipse((214, 600, 554, 660), fill=(200, 196, 190))  # shadow
    draw.rounded_rectangle((234, 250, 494, 630), radius=36, fill=(32, 92, 160))  # body
    draw.ellipse((234, 226, 494, 274), fill=(24, 70, 124))  # rim
    draw.arc((444, 330, 574, 520), start=-80, end=80, fill=(32, 92, 160), width=28)  # handle
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def edit_product_photo(stack: OfflineStack, s3: Any, output: Path) -> None:
    """
    Run example_product_shots on DashScope's native API (editing needs it): the product photo in S3 ->
    three edited scenes -> S3; then put each scene beside its source in one picture.
    """
    from PIL import Image

    photo = product_photo()
    s3.load_bytes(photo, key=PRODUCT_KEY, bucket_name=BUCKET, replace=True)
    dashscope = {
        "AIRFLOW_CONN_IMGGEN_DEFAULT": json.dumps(
            {
                "conn_type": "imggen",
                "host": stack.emulator_url,
                "password": DEMO_API_KEY,
                "extra": {"api_style": "dashscope"},
            }
        )
    }
    run_log = stack.work / "product-shots.log"
    print(f"\nRunning {EDIT_DAG_ID}: s3://{BUCKET}/{PRODUCT_KEY} -> three edited scenes (log: {run_log})...")
    finished = stack.run_dag(EDIT_DAG_ID, run_log, env=dashscope)
    if finished.returncode != 0:
        print(run_log.read_text()[-4000:])
        print(f"The product shots failed (exit {finished.returncode}); full log: {run_log}")
        raise SystemExit(finished.returncode)
    source = Image.open(io.BytesIO(photo)).convert("RGB")
    scenes = []
    for key in sorted(s3.list_keys(bucket_name=BUCKET, prefix="product-shots/") or []):
        data = s3.get_key(key, bucket_name=BUCKET).get()["Body"].read()
        scene = Image.open(io.BytesIO(data))
        derived_from = json.loads(scene.info.get("imggen:inputs", "[]"))
        print(
            f"  s3://{BUCKET}/{key}  {scene.width}x{scene.height}  made from input sha256 "
            f"{', '.join(digest[:16] + '...' for digest in derived_from)}"
        )
        scenes.append(scene.convert("RGB"))
    height = 512
    tiles = [tile.resize((round(tile.width * height / tile.height), height)) for tile in [source, *scenes]]
    side_by_side = Image.new("RGB", (sum(tile.width for tile in tiles) + 16 * len(tiles), height), "white")
    left = 0
    for tile in tiles:
        side_by_side.paste(tile, (left, 0))
        left += tile.width + 16
    picture = output / "product-shots-side-by-side.png"
    picture.parent.mkdir(parents=True, exist_ok=True)
    side_by_side.save(picture)
    print(
        f"  source sha256 {hashlib.sha256(photo).hexdigest()[:16]}...; the source beside its "
        f"{len(scenes)} scenes: {picture.resolve()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("demo-output"), help="where to copy the images")
    parser.add_argument("--dags-folder", type=Path, default=REPO_ROOT / "example_dags")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (Airflow home, logs)")
    args = parser.parse_args(argv)

    print("Starting the emulator and S3 (moto_server) on free loopback ports, migrating SQLite...")
    with offline_stack(args.dags_folder.resolve(), keep=args.keep) as stack:
        print(f"Emulator: {stack.emulator_url}  S3: {stack.s3_endpoint}  work dir: {stack.work}")
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        s3 = S3Hook(aws_conn_id="aws_default")
        s3.create_bucket(bucket_name=BUCKET)

        run_log = stack.work / "dag-run.log"
        print(f"Running {DAG_ID} with airflow dags test (task logs: {run_log})...")
        finished = stack.run_dag(DAG_ID, run_log)
        if finished.returncode != 0:
            print(run_log.read_text()[-4000:])
            print(f"The pipeline failed (exit {finished.returncode}); full log: {run_log}")
            raise SystemExit(finished.returncode)  # leaves the stack: the work dir and its logs are kept

        from PIL import Image

        if args.output.exists():
            shutil.rmtree(args.output)
        keys = sorted(s3.list_keys(bucket_name=BUCKET) or [])
        print(f"\n{len(keys)} images landed in s3://{BUCKET}:")
        for key in keys:
            obj = s3.get_key(key, bucket_name=BUCKET)
            data = obj.get()["Body"].read()
            local = args.output / key
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)
            width, height = Image.open(io.BytesIO(data)).size
            print(
                f"  s3://{BUCKET}/{key}  {len(data):>9,} bytes  {width}x{height}  {obj.content_type}  "
                f"sha256={hashlib.sha256(data).hexdigest()}"
            )
            print(f"    metadata {obj.metadata}")
        edit_product_photo(stack, s3, args.output)
        billed = stack.emulator_admin("requests")["billed_images"]
        print(f"\nImages billed by the emulator: {billed}. Copies of the objects: {args.output.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
