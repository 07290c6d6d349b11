"""
Memory and wall time of storing one 64 MiB image in S3: ImageGenerationToS3Operator against the anchor,
the amazon provider's HttpToS3Operator (which holds the whole body in memory), in the same run.

A loopback HTTP server serves the image; moto_server is the S3 endpoint. The image is a real PNG whose
64 MiB are image data (``--image pixels``, the default): the transfer's check inflates all of it, about
76 MB of scanlines, so its cost is measured; ``--image padded`` is the earlier 64x64 PNG padded to 64 MiB
with a private chunk (nothing to inflate).

Preloaded (the figures of the targets): each operator runs in a fresh child process, which executes it
twice (to different keys): the first execute is "cold" (it also builds the boto3 client and loads its
service model), the second "warm" (what each further image costs). The figure is the peak RSS, sampled
every 2 ms, over the RSS just before that execute; the lazily imported modules of both operators are
imported before the first baseline.

As a task meets them (also run by default; ``--no-as-task`` skips it): a fresh process per measurement
that only imported the operator's class, as a DAG file does, then executes it once on a 60 MB PNG (real
image data too): every module the transfer imports on first use counts. The figure is that process's peak
RSS over its RSS before the execute. The floor is measured the same way: such a process importing S3Hook,
building its client and sending one HEAD, which any upload through S3Hook does before its first byte
(HttpToS3Operator's module imports S3Hook, so its process has the imports before the baseline).

Rounds alternate the order of the two operators; figures are medians over --rounds.
Targets: ours <= 20 MB over baseline (cold and warm), and wall time <= 1.0x HttpToS3Operator.

    python benchmarks/bench_transfer_memory.py [--rounds 5] [--image pixels|padded] [--no-as-task] [--check]
"""

from __future__ import annotations

import argparse
import random
import statistics
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import transfer_bench_common as common

SIZE = 64 * common.MiB
TASK_SIZE = 60 * 1000 * 1000
BUCKET = "bench-memory"
TARGET_MEMORY_MB = 20.0
TARGET_WALL_RATIO = 1.0
_WIDTH = 4096  # RGB pixels a scanline


def png_of_pixels(total: int, seed: int = 0) -> bytes:
    """
    A valid RGB PNG of exactly ``total`` bytes that are nearly all image data: noise of 7 bits a byte,
    which deflate codes at about 7/8 (so inflating it is real Huffman decoding, not a copy), then a small
    private chunk to reach the size exactly.
    """
    rng = random.Random(seed)
    seven_bits = bytes(value & 0x7F for value in range(256))
    deflater = zlib.compressobj(1)
    compressed: list[bytes] = []
    size = height = 0
    # Stop with room for the headers, the deflate stream's end and the padding chunk's 12 bytes.
    while size < total - 2 * common.MiB:
        line = b"\x00" + rng.randbytes(3 * _WIDTH).translate(seven_bits)
        piece = deflater.compress(line)
        compressed.append(piece)
        size += len(piece)
        height += 1
    compressed.append(deflater.flush())
    data = b"".join(compressed)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", _WIDTH, height, 8, 2, 0, 0, 0))
    idats = b"".join(chunk(b"IDAT", data[i : i + common.MiB]) for i in range(0, len(data), common.MiB))
    end = chunk(b"IEND", b"")
    padding = total - len(header) - len(idats) - len(end) - 12
    assert padding >= 0
    result = header + idats + chunk(b"prVt", bytes(padding)) + end
    assert len(result) == total
    return result


def make_operator(mode: str, url: str, phase: str) -> Any:
    key = f"{mode}-{phase}.png"
    if mode.startswith("ours"):
        from airflow_provider_imggen.transfers.image_generation_to_s3 import ImageGenerationToS3Operator

        return ImageGenerationToS3Operator(
            task_id=f"ours_{phase}", generation=url, s3_bucket=BUCKET, s3_key=key, replace=True
        )
    from airflow.providers.amazon.aws.transfers.http_to_s3 import HttpToS3Operator

    return HttpToS3Operator(
        task_id=f"anchor_{phase}",
        http_conn_id="bench_http",
        endpoint="/" + url.rsplit("/", 1)[1],
        method="GET",
        s3_bucket=BUCKET,
        s3_key=key,
        replace=True,
    )


def s3_floor() -> None:
    """What any upload through S3Hook pays before its first byte: the import, the client, one request."""
    from airflow_provider_imggen.transfers._s3 import ImageS3Hook

    ImageS3Hook(aws_conn_id="aws_default").get_conn().head_bucket(Bucket=BUCKET)


def child(mode: str, url: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if mode == "floor-task":
        from airflow_provider_imggen.transfers.image_generation_to_s3 import (
            ImageGenerationToS3Operator,
        )

        with common.PeakRss() as memory:
            seconds = common.timed(s3_floor)
        return {"task_mb": memory.over_baseline / 1e6, "task_s": seconds}
    if mode.endswith("-task"):
        # Only the operator's class, as a DAG file imports it: what execute imports on first use counts.
        if mode.startswith("ours"):
            from airflow_provider_imggen.transfers.image_generation_to_s3 import (  # noqa: F401
                ImageGenerationToS3Operator,
            )
        else:
            from airflow.providers.amazon.aws.transfers.http_to_s3 import HttpToS3Operator  # noqa: F401
        phases = ("task",)
    else:
        common.preload_operator_imports()
        phases = ("cold", "warm")
    for phase in phases:
        operator = make_operator(mode, url, phase)
        with common.PeakRss() as memory:
            seconds = common.timed(lambda operator=operator: operator.execute(common.context()))
        results[f"{phase}_mb"] = memory.over_baseline / 1e6
        results[f"{phase}_s"] = seconds
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--image", choices=("pixels", "padded"), default="pixels")
    parser.add_argument("--no-as-task", action="store_true", help="skip the as-a-task measurement")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import json

        print(json.dumps(child(*args.child)))
        return 0

    image = png_of_pixels(SIZE) if args.image == "pixels" else common.png_of_size(SIZE)
    bodies = {"/big.png": image}
    if not args.no_as_task:
        bodies["/task.png"] = png_of_pixels(TASK_SIZE, seed=1)
    moto = common.MotoServer()
    server = common.ImageServer(bodies)
    try:
        moto.create_bucket(BUCKET)
        env = common.child_env(moto, server)
        script = Path(__file__)
        runs = common.run_rounds(script, ("ours", "anchor"), args.rounds, [server.url("/big.png")], env)
        if not args.no_as_task:
            runs |= common.run_rounds(
                script,
                ("ours-task", "anchor-task", "floor-task"),
                args.rounds,
                [server.url("/task.png")],
                env,
            )
    finally:
        server.close()
        moto.stop()

    def median(mode: str, field: str) -> float:
        return statistics.median(run[field] for run in runs[mode])

    print(
        f"One {SIZE / common.MiB:.0f} MiB PNG ({args.image}), loopback HTTP -> moto_server; "
        f"medians of {args.rounds} rounds"
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
    if not args.no_as_task:
        print(
            "\nAs a task meets them: a fresh process that only imported the operator, one "
            f"{TASK_SIZE / 1e6:.0f} MB PNG (image data); peak RSS over its RSS before execute, and wall time"
        )
        for mode, label in (
            ("anchor-task", "anchor: HttpToS3Operator"),
            ("ours-task", "ImageGenerationToS3Operator"),
        ):
            print(f"{label:34}{median(mode, 'task_mb'):>9.1f} MB{median(mode, 'task_s'):>11.3f}s")
        task_wall = median("ours-task", "task_s") / median("anchor-task", "task_s")
        task_memory = median("ours-task", "task_mb") / median("anchor-task", "task_mb")
        task_memory_ok = median("ours-task", "task_mb") <= TARGET_MEMORY_MB
        print(
            f"ratio ours/anchor: memory {task_memory:.2f}x; "
            f"wall {task_wall:.2f}x; ours <= {TARGET_MEMORY_MB:g} MB: {'met' if task_memory_ok else 'MISSED'}"
        )
        # What no transfer through S3Hook can go below in such a process: importing boto3 and the hook, and
        # building the client (botocore parses its endpoint and S3 models), before any image byte moves.
        floor = median("floor-task", "task_mb")
        print(
            f"floor: S3Hook imported, its client built, one HEAD: {floor:.1f} MB in "
            f"{median('floor-task', 'task_s'):.3f}s; ours over that floor: "
            f"{median('ours-task', 'task_mb') - floor:.1f} MB"
        )
        wall_ok = wall_ok and task_wall <= TARGET_WALL_RATIO
        memory_ok = memory_ok and task_memory_ok
    print(
        f"target: ours <= {TARGET_MEMORY_MB:g} MB over baseline: {'met' if memory_ok else 'MISSED'}; "
        f"wall <= {TARGET_WALL_RATIO:g}x anchor: {'met' if wall_ok else 'MISSED'}"
    )
    return 1 if args.check and not (memory_ok and wall_ok) else 0


if __name__ == "__main__":
    sys.exit(main())
