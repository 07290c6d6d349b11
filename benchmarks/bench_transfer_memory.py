"""
Memory and wall time of storing one 64 MiB image in S3: ImageGenerationToS3Operator against the anchor,
the amazon provider's HttpToS3Operator (which holds the whole body in memory), in the same run.

A loopback HTTP server serves the image (a valid PNG padded to 64 MiB); moto_server is the S3 endpoint.
Each operator runs in a fresh child process, which executes it twice (to different keys): the first
execute is "cold" (it also builds the boto3 client and loads its service model), the second "warm" (what
each further image costs). The figure is the peak RSS, sampled every 2 ms, over the RSS just before that
execute; the lazily imported modules of both operators are imported before the first baseline. Rounds
alternate the order of the two operators; figures are medians over --rounds.

Targets: ours <= 20 MB over baseline (cold and warm), and wall time <= 1.0x HttpToS3Operator.

    python benchmarks/bench_transfer_memory.py [--rounds 5] [--check]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import transfer_bench_common as common

SIZE = 64 * common.MiB
BUCKET = "bench-memory"
TARGET_MEMORY_MB = 20.0
TARGET_WALL_RATIO = 1.0


def child(mode: str, url: str) -> dict[str, Any]:
    common.preload_operator_imports()
    from airflow.providers.amazon.aws.transfers.http_to_s3 import HttpToS3Operator

    from airflow_provider_imggen.transfers.image_generation_to_s3 import ImageGenerationToS3Operator

    results: dict[str, Any] = {}
    for phase in ("cold", "warm"):
        key = f"{mode}-{phase}.png"
        operator: Any
        if mode == "ours":
            operator = ImageGenerationToS3Operator(
                task_id=f"ours_{phase}", generation=url, s3_bucket=BUCKET, s3_key=key, replace=True
            )
        else:
            operator = HttpToS3Operator(
                task_id=f"anchor_{phase}",
                http_conn_id="bench_http",
                endpoint="/big.png",
                method="GET",
                s3_bucket=BUCKET,
                s3_key=key,
                replace=True,
            )
        with common.PeakRss() as memory:
            seconds = common.timed(lambda operator=operator: operator.execute(common.context()))
        results[f"{phase}_mb"] = memory.over_baseline / 1e6
        results[f"{phase}_s"] = seconds
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import json

        print(json.dumps(child(*args.child)))
        return 0

    image = common.png_of_size(SIZE)
    moto = common.MotoServer()
    server = common.ImageServer({"/big.png": image})
    try:
        moto.create_bucket(BUCKET)
        env = common.child_env(moto, server)
        runs = common.run_rounds(
            Path(__file__), ("ours", "anchor"), args.rounds, [server.url("/big.png")], env
        )
    finally:
        server.close()
        moto.stop()

    def median(mode: str, field: str) -> float:
        return statistics.median(run[field] for run in runs[mode])

    print(
        f"One {SIZE / common.MiB:.0f} MiB PNG, loopback HTTP -> moto_server; medians of {args.rounds} rounds"
    )
    print(f"{'':34}{'peak RSS over baseline':>24}{'wall time of execute':>24}")
    print(f"{'':34}{'cold':>12}{'warm':>12}{'cold':>12}{'warm':>12}")
    for mode, label in (("anchor", "anchor: HttpToS3Operator"), ("ours", "ImageGenerationToS3Operator")):
        print(
            f"{label:34}{median(mode, 'cold_mb'):>9.1f} MB{median(mode, 'warm_mb'):>9.1f} MB"
            f"{median(mode, 'cold_s'):>11.3f}s{median(mode, 'warm_s'):>11.3f}s"
        )
    memory_ratio = {
        phase: median("ours", f"{phase}_mb") / median("anchor", f"{phase}_mb") for phase in ("cold", "warm")
    }
    wall_ratio = {
        phase: median("ours", f"{phase}_s") / median("anchor", f"{phase}_s") for phase in ("cold", "warm")
    }
    print(
        f"ratio ours/anchor: memory {memory_ratio['cold']:.2f}x cold, {memory_ratio['warm']:.2f}x warm; "
        f"wall {wall_ratio['cold']:.2f}x cold, {wall_ratio['warm']:.2f}x warm"
    )
    memory_ok = max(median("ours", "cold_mb"), median("ours", "warm_mb")) <= TARGET_MEMORY_MB
    wall_ok = max(wall_ratio.values()) <= TARGET_WALL_RATIO
    print(
        f"target: ours <= {TARGET_MEMORY_MB:g} MB over baseline: {'met' if memory_ok else 'MISSED'}; "
        f"wall <= {TARGET_WALL_RATIO:g}x anchor: {'met' if wall_ok else 'MISSED'}"
    )
    return 1 if args.check and not (memory_ok and wall_ok) else 0


if __name__ == "__main__":
    sys.exit(main())
