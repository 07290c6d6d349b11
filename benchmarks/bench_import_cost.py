"""
DAG-parse import cost of the provider's modules, as a ratio to the bare Task SDK import.

Each statement runs in a fresh interpreter; the runs are interleaved so machine noise hits all alike,
and each figure is the median of --runs processes. Target: the hook, operator and transfer modules
(what a DAG file imports) <= 1.02x the anchor. The trigger module is not imported at DAG parse (the worker
imports it when it defers, the triggerer when it runs the trigger): it is shown beside its own base,
``airflow.triggers.base``, which it cannot be lighter than.

    python benchmarks/bench_import_cost.py [--runs 9] [--check]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ANCHOR = "from airflow.sdk import BaseHook"
HOOK_IMPORT = "import airflow_provider_imggen.hooks.image_generation"
# What a DAG file imports: both operators; boto3, requests and Pillow must wait until execute().
OPERATOR_IMPORT = "import airflow_provider_imggen.operators.image_generation"
TRANSFER_IMPORT = "import airflow_provider_imggen.transfers.image_generation_to_s3"
TRIGGER_IMPORT = "import airflow_provider_imggen.triggers.image_generation"
TRIGGER_BASE = "from airflow.triggers.base import BaseTrigger"
STATEMENTS = {
    "anchor: from airflow.sdk import BaseHook": ANCHOR,
    HOOK_IMPORT: HOOK_IMPORT,
    OPERATOR_IMPORT: OPERATOR_IMPORT,
    TRANSFER_IMPORT: TRANSFER_IMPORT,
    "reference: HttpToS3Operator": (
        "from airflow.providers.amazon.aws.transfers.http_to_s3 import HttpToS3Operator"
    ),
    f"reference: {TRIGGER_BASE}": TRIGGER_BASE,
    TRIGGER_IMPORT: TRIGGER_IMPORT,
}
TARGETS = {HOOK_IMPORT: 1.02, OPERATOR_IMPORT: 1.02, TRANSFER_IMPORT: 1.02}


def time_once(statement: str, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], env=env, check=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target ratio is missed")
    args = parser.parse_args()

    env = {
        **os.environ,
        "AIRFLOW_HOME": tempfile.mkdtemp(prefix="bench-import-"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    for statement in STATEMENTS.values():  # warm the OS file cache and byte-code caches
        time_once(statement, env)
    samples: dict[str, list[float]] = {label: [] for label in STATEMENTS}
    for _ in range(args.runs):
        for label, statement in STATEMENTS.items():
            samples[label].append(time_once(statement, env))

    anchor = statistics.median(samples[next(iter(STATEMENTS))])
    missed = False
    print(f"median of {args.runs} fresh processes each")
    for label, values in samples.items():
        median = statistics.median(values)
        ratio = median / anchor
        target = TARGETS.get(label)
        verdict = ""
        if target is not None:
            verdict = f"  target <= {target:.2f}x: {'ok' if ratio <= target else 'MISSED'}"
            missed |= ratio > target
        print(f"{label:<58} {median * 1000:8.1f} ms  {ratio:5.3f}x{verdict}")
    return 1 if missed and args.check else 0


if __name__ == "__main__":
    raise SystemExit(main())
