"""
Command line: run the emulator in the foreground.

``python -m airflow_provider_imggen.emulator --port 8000 --api-key sk-test [--rate-429 0.2 ...]``;
``--extra-key sk-2`` adds a key of the same account, ``--extra-key sk-3=other`` one of another account.

Every :class:`~airflow_provider_imggen.emulator.state.FaultConfig` field is a flag (``--rate-billed-500 0.1``,
``--no-quotas``, ``--fail-next billed_500,partial``); flags not given keep FaultConfig's defaults.

Prints ``imggen emulator listening on http://HOST:PORT`` once it accepts connections (scripts wait for
that line; with ``--port 0`` it names the port actually bound) and exits with status 0 on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import socket
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

import uvicorn

from airflow_provider_imggen.emulator.accounts import MAIN_ACCOUNT
from airflow_provider_imggen.emulator.app import create_app
from airflow_provider_imggen.emulator.state import DEFAULT_URL_TTL_SECONDS, EmulatorConfig, FaultConfig

_HELP = {
    "latency_ms": "added to every generation request",
    "rate_drop": "close the connection, no response",
    "rate_truncate": "downloads stop half-way",
    "rate_200_error": "HTTP 200 with an error body",
    "rate_billed_500": "bill, then answer 500 (a relay's long poll timing out)",
    "rate_billed_502": "bill, then a proxy's 502",
    "rate_billed_504": "bill, then a proxy's 504",
    "rate_billed_drop": "bill, then close the connection",
    "rate_billed_stall": "bill, then hold the answer --stall-ms, then 504",
    "hold_ms": "bill every billable request at once, then hold its answer this long",
    "rate_partial": "gateway: some items empty (only real items billed)",
    "rate_malformed": "gateway: a billed 200 body of one of --malformed-kinds",
    "retry_after_seconds": "seconds advertised with injected 429s",
    "error_200_type": "upstream_error or ali_error (a relay's shape)",
    "quotas": "enforce per (account, model) quotas (default: on, as the service does)",
    "concurrency_overflow": "refuse (429) or queue (PENDING until a slot frees) beyond the concurrency quota",
    "quota_status_queries_per_second": "status queries (task status, task list) per second per account",
    "gateway_models": "comma-separated model names the gateway serves besides the model table's",
    "rate_relay_fetch_fail": "nested relay: a b64_json result it fails to fetch (item dropped)",
    "relay_retries": "nested relay: retries of an upstream 5xx (each attempt billed)",
    "multimodal_text_item": "synchronous answers add a {text} content item",
    "unparsable_result_urls": "the first K images of every answer get a URL no parser accepts (billed)",
    "answer_nesting_depth": "wrap every answer's image list in this many more JSON arrays (billed)",
    "invalid_native_params": "fail_task (accept, then the task FAILS) or reject (400)",
    "task_pending_ms": "PENDING time after submission",
    "task_duration_ms": "then RUNNING, then done",
    "task_ttl_ms": "older task ids read UNKNOWN",
    "input_download_timeout_ms": "the service's wait for an input image URL, then 400 (timed out)",
    "fail_next": "comma-separated scripted faults for the next API calls",
    "fail_next_tasks": "comma-separated failure codes (or none) of the next tasks",
    "fail_next_task_images": "JSON list of lists: failing image indexes of the next tasks",
    "malformed_kinds": "comma-separated kinds drawn by --rate-malformed",
}
# Older spellings kept for scripts: --retry-after, --fault-seed.
_ALIASES = {"retry_after_seconds": ("--retry-after",), "seed": ("--fault-seed",)}


def _list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_imggen.emulator",
        description="Offline emulator of the image generation API (and of its signed result URLs).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--api-key", default="sk-test", help="the only Bearer key accepted")
    parser.add_argument(
        "--url-ttl", type=float, default=DEFAULT_URL_TTL_SECONDS, help="result URL lifetime, seconds (7 days)"
    )
    parser.add_argument(
        "--extra-key",
        action="append",
        default=[],
        metavar="KEY[=ACCOUNT]",
        help="another accepted key, of --api-key's account or of ACCOUNT (repeatable); quotas and the task "
        "list are per account",
    )
    parser.add_argument(
        "--workspaces",
        type=_list,
        default=(),
        help="comma-separated workspace ids the key may name in X-DashScope-WorkSpace (default: any)",
    )
    faults = parser.add_argument_group(
        "faults and service behaviours (every FaultConfig field; rates are probabilities in [0, 1])"
    )
    defaults = FaultConfig()
    for item in dataclasses.fields(FaultConfig):
        flags = (*_ALIASES.get(item.name, ()), f"--{item.name.replace('_', '-')}")
        default = getattr(defaults, item.name)
        help_text = f"{_HELP.get(item.name, '')} (default: {default!r})".strip()
        kwargs: dict[str, Any] = {"dest": item.name, "default": None, "help": help_text}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif item.name == "fail_next_task_images":
            kwargs["type"] = json.loads
        elif isinstance(default, tuple):
            kwargs["type"] = _list
        elif isinstance(default, str):
            kwargs["type"] = str
        elif item.name in (
            "seed",
            "quota_concurrent_tasks",
            "relay_retries",
            "unparsable_result_urls",
            "answer_nesting_depth",
        ):
            kwargs["type"] = int
        else:
            kwargs["type"] = float
        faults.add_argument(*flags, **kwargs)
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
        given = {
            item.name: getattr(args, item.name)
            for item in dataclasses.fields(FaultConfig)
            if getattr(args, item.name) is not None
        }
        faults = FaultConfig(**given).validated()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    extra_keys = {}
    for entry in args.extra_key:
        key, _, account = entry.partition("=")
        extra_keys[key.strip()] = account.strip() or MAIN_ACCOUNT
    config = EmulatorConfig(
        api_key=args.api_key,
        url_ttl_seconds=args.url_ttl,
        faults=faults,
        workspaces=tuple(args.workspaces),
        extra_keys=extra_keys,
    )
    app = create_app(config)
    server = _AnnouncingServer(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level="warning",
            access_log=False,
            # Stalled answers (--rate-billed-stall) must not hold a shutdown for --stall-ms.
            timeout_graceful_shutdown=2,
        )
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
