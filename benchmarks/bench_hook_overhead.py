"""
Per-request overhead of ImageGenerationHook.generate_images against the in-process emulator.

The same request is sent --requests times by three clients, in interleaved rounds so machine noise hits
all alike: the anchor (a bare ``requests.Session().post``, no validation, parsing or retries), the hook,
and the official openai client. Targets: hook <= 1.10x the anchor, and faster than the openai client.

    python benchmarks/bench_hook_overhead.py [--requests 200] [--rounds 5] [--check]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="bench-hook-"))

API_KEY = "sk-bench"
PROMPT = "A C4D-style e-commerce promotion poster in blue tones, presenting a fresh and lively vibe"
BODY = {
    "model": "wan2.2-t2i-flash",
    "prompt": PROMPT,
    "n": 1,
    "size": "1024x1024",
    "response_format": "url",
    "seed": "42",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--requests", type=int, default=200, help="requests per client (split over rounds)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()

    import requests
    from openai import OpenAI

    from airflow_provider_imggen.emulator import EmulatorConfig, EmulatorServer, FaultConfig
    from airflow_provider_imggen.hooks.image_generation import ImageGenerationHook

    # Quotas off: this measures client overhead over back-to-back requests, not the service's quota.
    with EmulatorServer(EmulatorConfig(api_key=API_KEY, faults=FaultConfig(quotas=False))) as emulator:
        os.environ["AIRFLOW_CONN_IMGGEN_DEFAULT"] = json.dumps(
            {"conn_type": "imggen", "host": f"{emulator.base_url}/v1", "password": API_KEY}
        )

        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {API_KEY}"
        url = f"{emulator.base_url}/v1/images/generations"

        def bare() -> None:
            response = session.post(url, json=BODY, timeout=30)
            response.raise_for_status()
            response.json()

        # Not a target, shown for transparency: requests without its per-request environment lookups
        # (proxies, CA bundle, ~/.netrc), which the hook does once per host. The gap to this row is the
        # hook's own work: validation, retry bookkeeping, result parsing and its log line.
        plain_session = requests.Session()
        plain_session.trust_env = False
        plain_session.headers["Authorization"] = f"Bearer {API_KEY}"

        def bare_without_env() -> None:
            response = plain_session.post(url, json=BODY, timeout=30)
            response.raise_for_status()
            response.json()

        hook = ImageGenerationHook()

        def via_hook() -> None:
            hook.generate_images(PROMPT, model="wan2.2-t2i-flash", n=1, size="1024x1024", seed=42)

        client = OpenAI(base_url=f"{emulator.base_url}/v1", api_key=API_KEY, max_retries=0)

        def via_openai() -> None:
            client.images.generate(
                prompt=PROMPT,
                model="wan2.2-t2i-flash",
                n=1,
                size="1024x1024",
                response_format="url",
                extra_body={"seed": "42"},
            )

        clients: dict[str, Callable[[], None]] = {
            "anchor: bare requests.Session().post": bare,
            "ImageGenerationHook.generate_images": via_hook,
            "openai client images.generate": via_openai,
            "info: bare requests, trust_env=False": bare_without_env,
        }
        # In a task, logs go to the task's log file, not a terminal: send this process's output to a file
        # for the measurement, so that the hook's one log line per request costs what it costs in Airflow.
        saved_stdout, saved_stderr = os.dup(1), os.dup(2)
        log_file = os.open(os.path.join(os.environ["AIRFLOW_HOME"], "bench.log"), os.O_WRONLY | os.O_CREAT)
        os.dup2(log_file, 1)
        os.dup2(log_file, 2)
        for call in clients.values():  # warm connections and code paths
            for _ in range(5):
                call()
        per_round = max(1, args.requests // args.rounds)
        totals: dict[str, list[float]] = {label: [] for label in clients}
        for _ in range(args.rounds):
            for label, call in clients.items():
                started = time.perf_counter()
                for _ in range(per_round):
                    call()
                totals[label].append(time.perf_counter() - started)
        billed = emulator.billed_images()
        sys.stdout.flush()
        os.dup2(saved_stdout, 1)
        os.dup2(saved_stderr, 2)

    anchor_label = next(iter(clients))
    anchor = statistics.median(totals[anchor_label])
    hook_ratio = statistics.median(totals["ImageGenerationHook.generate_images"]) / anchor
    openai_ratio = statistics.median(totals["openai client images.generate"]) / anchor
    print(
        f"{per_round * args.rounds} sequential requests per client, {args.rounds} interleaved rounds; "
        f"{billed} images billed by the emulator"
    )
    for label, values in totals.items():
        median = statistics.median(values)
        print(f"{label:<40} {median / per_round * 1000:7.2f} ms/request  {median / anchor:5.3f}x")
    hook_ok = hook_ratio <= 1.10
    faster = hook_ratio < openai_ratio
    print(
        f"hook <= 1.10x anchor: {'ok' if hook_ok else 'MISSED'} ({hook_ratio:.3f}x); "
        f"hook faster than openai client: {'ok' if faster else 'MISSED'} "
        f"({hook_ratio:.3f}x vs {openai_ratio:.3f}x)"
    )
    return 1 if args.check and not (hook_ok and faster) else 0


if __name__ == "__main__":
    raise SystemExit(main())
