"""
Command line: run the emulator in the foreground.

``python -m airflow_provider_imggen.emulator --port 8000 --api-key sk-test [--rate-429 0.2 ...]``

Prints ``imggen emulator listening on http://HOST:PORT`` once it accepts connections (scripts wait for
that line; with ``--port 0`` it names the port actually bound) and exits with status 0 on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from collections.abc import Sequence
from types import FrameType

import uvicorn

from airflow_provider_imggen.emulator.app import EmulatorConfig, FaultConfig, create_app


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_imggen.emulator",
        description="Offline emulator of the image generation API (and of its signed result URLs).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--api-key", default="sk-test", help="the only Bearer key accepted")
    parser.add_argument("--url-ttl", type=float, default=86400.0, help="result URL lifetime, seconds")
    faults = parser.add_argument_group("fault injection (rates are probabilities in [0, 1])")
    faults.add_argument("--latency-ms", type=float, default=0.0, help="added to every generation request")
    faults.add_argument("--download-latency-ms", type=float, default=0.0)
    faults.add_argument("--rate-429", type=float, default=0.0)
    faults.add_argument("--rate-500", type=float, default=0.0)
    faults.add_argument("--rate-503", type=float, default=0.0)
    faults.add_argument("--rate-drop", type=float, default=0.0, help="close the connection, no response")
    faults.add_argument("--rate-truncate", type=float, default=0.0, help="downloads stop half-way")
    faults.add_argument("--rate-200-error", type=float, default=0.0, help="HTTP 200 with an error body")
    faults.add_argument("--retry-after", type=float, default=1.0, help="seconds advertised with 429s")
    faults.add_argument("--error-style", choices=("openai", "dashscope"), default="openai")
    faults.add_argument("--fault-seed", type=int, default=0, help="seed of the fault RNG")
    tasks = parser.add_argument_group("native task API (DashScope's asynchronous flow)")
    tasks.add_argument("--task-pending-ms", type=float, default=0.0, help="PENDING time after submission")
    tasks.add_argument("--task-duration-ms", type=float, default=0.0, help="then RUNNING, then done")
    tasks.add_argument("--task-ttl-ms", type=float, default=86_400_000.0, help="older task ids read UNKNOWN")
    return parser.parse_args(argv)


class _AnnouncingServer(uvicorn.Server):
    """uvicorn server that prints the listening line once it accepts connections."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            print(f"imggen emulator listening on http://{shown}:{port}", flush=True)


def _exit_quietly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        faults = FaultConfig(
            latency_ms=args.latency_ms,
            download_latency_ms=args.download_latency_ms,
            rate_429=args.rate_429,
            rate_500=args.rate_500,
            rate_503=args.rate_503,
            rate_drop=args.rate_drop,
            rate_truncate=args.rate_truncate,
            rate_200_error=args.rate_200_error,
            retry_after_seconds=args.retry_after,
            error_style=args.error_style,
            seed=args.fault_seed,
            task_pending_ms=args.task_pending_ms,
            task_duration_ms=args.task_duration_ms,
            task_ttl_ms=args.task_ttl_ms,
        ).validated()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = EmulatorConfig(api_key=args.api_key, url_ttl_seconds=args.url_ttl, faults=faults)
    app = create_app(config)
    server = _AnnouncingServer(
        uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    )
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal with the previous handler
    # restored; these handlers turn that into a clean exit (status 0, no traceback).
    signal.signal(signal.SIGINT, _exit_quietly)
    signal.signal(signal.SIGTERM, _exit_quietly)
    try:
        server.run()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
