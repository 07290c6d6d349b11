"""
Shared parts of the transfer benchmarks: moto_server, a loopback image server, test images, and running one
operator in a fresh child process that reports its wall time and peak RSS over its own baseline.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def png_of_size(total: int, seed: int = 0) -> bytes:
    """A valid PNG (64x64 header and pixels) padded to ``total`` bytes with a private ancillary chunk."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (seed % 256, 80, 160)).save(buffer, format="PNG")
    small = buffer.getvalue()
    iend = small[-12:]
    filler_length = total - len(small) - 12
    # Incompressible filler, cheap to make: one random MiB repeated, varied per image by the seed.
    block = os.urandom(MiB)
    filler = (block * (filler_length // MiB + 1))[:filler_length]
    kind = b"prVt"
    chunk = struct.pack(">I", filler_length) + kind + filler + struct.pack(">I", zlib.crc32(kind + filler))
    data = small[:-12] + chunk + iend
    assert len(data) == total
    return data


class ImageServer:
    """Serves fixed bodies over HTTP on loopback, in 1 MiB writes, optionally after a delay."""

    def __init__(self, bodies: dict[str, bytes], delay_seconds: float = 0.0) -> None:
        self.bodies = bodies
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                body = server.bodies.get(self.path.split("?", 1)[0])
                if delay_seconds:
                    time.sleep(delay_seconds)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                view = memoryview(body)
                for start in range(0, len(body), MiB):
                    self.wfile.write(view[start : start + MiB])

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class MotoServer:
    """moto_server in a subprocess (a real S3 endpoint on loopback)."""

    def __init__(self) -> None:
        import requests

        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{self.endpoint_url}/moto-api/data.json", timeout=1)
                return
            except requests.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.05)

    def client(self) -> Any:
        """A boto3 S3 client of this server (the benchmark's own setup, not what is measured)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def child_env(moto: MotoServer, image_server: ImageServer) -> dict[str, str]:
    import tempfile

    return {
        **os.environ,
        "AIRFLOW_HOME": os.environ.get("AIRFLOW_HOME") or tempfile.mkdtemp(prefix="bench-transfer-"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"endpoint_url": moto.endpoint_url, "region_name": "us-east-1"},
            }
        ),
        # The image server stands in for the API serving its own results (as the emulator does): the
        # transfer's result-URL policy trusts the imggen connection's origin.
        "AIRFLOW_CONN_IMGGEN_DEFAULT": json.dumps(
            {"conn_type": "imggen", "host": f"http://127.0.0.1:{image_server.port}/v1", "password": "bench"}
        ),
        "AIRFLOW_CONN_BENCH_HTTP": json.dumps(
            {"conn_type": "http", "host": "127.0.0.1", "port": image_server.port, "schema": "http"}
        ),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }


def run_rounds(
    script: Path, modes: Sequence[str], rounds: int, args: list[str], env: dict[str, str]
) -> dict[str, list[dict[str, Any]]]:
    """Each mode in a fresh child, ``rounds`` times, the order reversed every other round."""
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    for round_number in range(rounds):
        for mode in modes if round_number % 2 == 0 else tuple(reversed(modes)):
            runs[mode].append(run_child(script, [mode, *args], env))
    return runs


def run_child(script: Path, args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``script --child ...`` in a fresh interpreter; it prints one JSON line of results last."""
    finished = subprocess.run(
        [sys.executable, str(script), "--child", *args], env=env, capture_output=True, text=True, timeout=600
    )
    if finished.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{finished.stdout[-3000:]}\n{finished.stderr[-3000:]}")
    return dict(json.loads(finished.stdout.strip().splitlines()[-1]))


class PeakRss:
    """Peak RSS of this process while the block runs: a sampling thread plus ru_maxrss as a cross-check."""

    def __init__(self, interval: float = 0.002) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.baseline = 0
        self.peak = 0

    def rss(self) -> int:
        return int(self._process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        import resource

        self._maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.baseline = self.peak = self.rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self._interval)

    def __exit__(self, *exc: object) -> None:
        import resource

        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())
        maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        # ru_maxrss is a high-water mark: it says something only when this block raised it.
        if maxrss_after > self._maxrss_before:
            self.peak = max(self.peak, maxrss_after)

    @property
    def over_baseline(self) -> int:
        return self.peak - self.baseline


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


class StubTaskInstance:
    map_index = -1
    dag_id = "bench"
    run_id = "bench"
    task_id = "bench"

    def xcom_push(self, key: str, value: Any) -> None:
        pass


def context() -> dict[str, Any]:
    ti = StubTaskInstance()
    return {"ti": ti, "task_instance": ti}


def preload_operator_imports() -> None:
    """What both operators import lazily inside execute: module import is not the transfer's memory."""
    import importlib

    import boto3  # noqa: F401
    import botocore  # noqa: F401
    import PIL.Image
    import PIL.PngImagePlugin  # noqa: F401
    import requests  # noqa: F401
    import tenacity  # noqa: F401
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook  # noqa: F401
    from airflow.providers.amazon.aws.transfers.http_to_s3 import HttpToS3Operator  # noqa: F401
    from airflow.providers.http.hooks.http import HttpHook  # noqa: F401

    import airflow_provider_imggen.transfers._s3  # noqa: F401
    from airflow_provider_imggen.transfers.image_generation_to_s3 import (  # noqa: F401
        ImageGenerationToS3Operator,
    )

    # What S3Hook imports on its first upload, for both operators: hook lineage (plugins manager, asset
    # classes), and boto3's S3 methods.
    for module in (
        "airflow.plugins_manager",
        "airflow.sdk.lineage",
        "airflow.providers.amazon.aws.assets.s3",
        "airflow.providers.amazon.aws.assets.redshift",
        "airflow.sdk.execution_time.cache",
        "airflow.providers.common.io.assets.file",
        "airflow.sdk.execution_time.supervisor",
        "boto3.s3.inject",
    ):
        importlib.import_module(module)
