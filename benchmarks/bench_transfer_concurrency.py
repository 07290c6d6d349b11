"""
Storing 16 images of 4 MiB whose downloads each take 200 ms to start (a loopback server sleeping before it
answers, standing in for a distant object store): ImageGenerationToS3Operator, which transfers the images
of a task concurrently, against the anchor measured in the same run: the amazon provider's
HttpToS3Operator run once per image, one after the other.

Each contender runs in a fresh child process; the figure is the wall time of its execute calls (the
anchor's 16 summed). Rounds alternate the order; figures are medians over --rounds. moto_server is S3.
Target: ours (max_concurrency=4, the default, and 8) >= 3x faster than the anchor.

    python benchmarks/bench_transfer_concurrency.py [--rounds 5] [--check]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import transfer_bench_common as common

IMAGES = 16
SIZE = 4 * common.MiB
LATENCY_SECONDS = 0.2
BUCKET = "bench-concurrency"
TARGET_SPEEDUP = 3.0


def child(mode: str, base_url: str) -> dict[str, Any]:
    common.preload_operator_imports()
    from airflow.providers.amazon.aws.transfers.http_to_s3 import HttpToS3Operator

    from airflow_provider_imggen.transfers.image_generation_to_s3 import ImageGenerationToS3Operator

    if mode == "anchor":
        operators = [
            HttpToS3Operator(
                task_id=f"anchor_{i}",
                http_conn_id="bench_http",
                endpoint=f"/img/{i}.png",
                method="GET",
                s3_bucket=BUCKET,
                s3_key=f"anchor/{i}.png",
                replace=True,
            )
            for i in range(IMAGES)
        ]
        seconds = sum(common.timed(lambda op=op: op.execute(common.context())) for op in operators)
    else:
        concurrency = int(mode.removeprefix("ours-"))
        operator = ImageGenerationToS3Operator(
            task_id="ours",
            generation=[f"{base_url}/img/{i}.png" for i in range(IMAGES)],
            s3_bucket=BUCKET,
            s3_key=f"ours-{concurrency}/{{generation}}.{{ext}}",
            replace=True,
            max_concurrency=concurrency,
        )
        seconds = common.timed(lambda: operator.execute(common.context()))
    return {"seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "BASE_URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0

    bodies = {f"/img/{i}.png": common.png_of_size(SIZE, seed=i) for i in range(IMAGES)}
    moto = common.MotoServer()
    server = common.ImageServer(bodies, delay_seconds=LATENCY_SECONDS)
    modes = ["anchor", "ours-4", "ours-8"]
    try:
        moto.create_bucket(BUCKET)
        env = common.child_env(moto, server)
        runs: dict[str, list[float]] = {mode: [] for mode in modes}
        for round_number in range(args.rounds):
            order = modes if round_number % 2 == 0 else modes[::-1]
            for mode in order:
                result = common.run_child(Path(__file__), [mode, server.url("")], env)
                runs[mode].append(result["seconds"])
    finally:
        server.close()
        moto.stop()

    medians = {mode: statistics.median(values) for mode, values in runs.items()}
    anchor = medians["anchor"]
    print(
        f"{IMAGES} images of {SIZE / common.MiB:.0f} MiB, {LATENCY_SECONDS * 1000:.0f} ms before each "
        f"download starts, loopback HTTP -> moto_server; medians of {args.rounds} rounds"
    )
    print(f"{'anchor: HttpToS3Operator x16, sequential':48}{anchor:8.3f}s   1.00x")
    met = True
    for mode, label in (
        ("ours-4", "ImageGenerationToS3Operator, max_concurrency=4"),
        ("ours-8", "ImageGenerationToS3Operator, max_concurrency=8"),
    ):
        speedup = anchor / medians[mode]
        met &= speedup >= TARGET_SPEEDUP
        print(f"{label:48}{medians[mode]:8.3f}s {speedup:6.2f}x faster")
    print(f"target: >= {TARGET_SPEEDUP:g}x faster than the anchor: {'met' if met else 'MISSED'}")
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
