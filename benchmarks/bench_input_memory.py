"""
Memory of reading one 20 MB input image before an edit: the worker's reading and checking of an ``s3://``
input (inputs/resolve.py) against two anchors measured in the same run:

- the transfer's constant-memory figure: ImageGenerationToS3Operator storing an image of the same size
  (what bench_transfer_memory.py holds to <= 20 MB over baseline);
- the naive reading, ``S3Hook.read_key``-style (the whole object in memory), which editing code written on
  an SDK typically does before base64-encoding it into the request.

moto_server is the S3 endpoint; a loopback HTTP server serves the transfer's image. Each mode runs in a
fresh child process, twice (cold: also builds the boto3 client; warm: what each further input costs); the
figure is the peak RSS, sampled every 2 ms, over the RSS just before. The input is a valid PNG padded to
20 MB; the model is one the provider's table does not know (every known model takes at most 10 MB, so a
known one would refuse it before reading a byte: that refusal is measured too, as ``refused``). The child
also checks that nothing of the input reaches the request's record (what XCom gets) or the task log.

Target: reading <= the transfer's figure (and <= 20 MB over baseline), cold and warm.

    python benchmarks/bench_input_memory.py [--rounds 3] [--check]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import transfer_bench_common as common

SIZE = 20 * 1000 * 1000
BUCKET = "bench-inputs"
TARGET_MEMORY_MB = 20.0
MODES = ("ours", "transfer", "naive", "refused")


def child(mode: str, url: str) -> dict[str, Any]:
    common.preload_operator_imports()
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from airflow_provider_imggen.exceptions import ImageGenerationValidationError
    from airflow_provider_imggen.inputs.resolve import resolve_input_images
    from airflow_provider_imggen.request import validate_generation_request
    from airflow_provider_imggen.transfers.image_generation_to_s3 import ImageGenerationToS3Operator

    log = logging.getLogger("bench.inputs")
    captured = io.StringIO()
    log.addHandler(logging.StreamHandler(captured))
    log.setLevel(logging.DEBUG)
    results: dict[str, Any] = {}
    for phase in ("cold", "warm"):
        record: object = None

        def run(phase: str = phase) -> None:
            nonlocal record
            if mode == "transfer":
                ImageGenerationToS3Operator(
                    task_id=f"store_{phase}",
                    generation=url,
                    s3_bucket=BUCKET,
                    s3_key=f"{phase}.png",
                    replace=True,
                ).execute(common.context())
            elif mode == "naive":
                S3Hook(aws_conn_id="aws_default").get_key("input.png", BUCKET).get()["Body"].read()
            else:
                model = "bench-edit-model" if mode == "ours" else "wan2.7-image"
                request = validate_generation_request(
                    model=model, prompt="restyle", images=[f"s3://{BUCKET}/input.png"]
                )
                try:
                    resolved = resolve_input_images(
                        request, aws_conn_id="aws_default", imggen_conn_id=None, log=log
                    )
                except ImageGenerationValidationError:
                    return
                record = [image.record() for image in resolved.images]

        with common.PeakRss() as memory:
            seconds = common.timed(run)
        results[f"{phase}_mb"] = memory.over_baseline / 1e6
        results[f"{phase}_s"] = seconds
        if record is not None:
            results["record_chars"] = len(json.dumps(record))
    results["log_chars"] = len(captured.getvalue())
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0

    image = common.png_of_size(SIZE)
    moto = common.MotoServer()
    server = common.ImageServer({"/big.png": image})
    try:
        moto.create_bucket(BUCKET)
        moto.client().put_object(Bucket=BUCKET, Key="input.png", Body=image)
        env = common.child_env(moto, server)
        runs = common.run_rounds(Path(__file__), MODES, args.rounds, [server.url("/big.png")], env)
    finally:
        server.close()
        moto.stop()

    def median(mode: str, field: str) -> float:
        return statistics.median(run[field] for run in runs[mode])

    print(f"One {SIZE / 1e6:.0f} MB PNG in moto_server's S3; medians of {args.rounds} rounds")
    print(f"{'':44}{'peak RSS over baseline':>24}{'wall time':>24}")
    print(f"{'':44}{'cold':>12}{'warm':>12}{'cold':>12}{'warm':>12}")
    labels = {
        "transfer": "anchor: ImageGenerationToS3Operator (store)",
        "naive": "anchor: whole object read (SDK-style)",
        "ours": "input read and checked (resolve)",
        "refused": "input refused by a 10 MB model",
    }
    for mode in ("transfer", "naive", "ours", "refused"):
        print(
            f"{labels[mode]:44}{median(mode, 'cold_mb'):>9.1f} MB{median(mode, 'warm_mb'):>9.1f} MB"
            f"{median(mode, 'cold_s'):>11.3f}s{median(mode, 'warm_s'):>11.3f}s"
        )
    ratio = {
        phase: median("ours", f"{phase}_mb") / max(median("transfer", f"{phase}_mb"), 0.1)
        for phase in ("cold", "warm")
    }
    print(f"ratio input/transfer memory: {ratio['cold']:.2f}x cold, {ratio['warm']:.2f}x warm")
    record_chars = max(run["record_chars"] for run in runs["ours"])
    log_chars = max(run["log_chars"] for run in runs["ours"])
    print(f"largest XCom record of the input: {record_chars} characters; task log: {log_chars} characters")
    ours = max(median("ours", "cold_mb"), median("ours", "warm_mb"))
    transfer = max(median("transfer", "cold_mb"), median("transfer", "warm_mb"))
    memory_ok = ours <= transfer and ours <= TARGET_MEMORY_MB
    leak_free = record_chars < 1000 and log_chars < 1000
    print(
        f"target: input <= transfer's figure and <= {TARGET_MEMORY_MB:g} MB: "
        f"{'met' if memory_ok else 'MISSED'}; "
        f"nothing of the input in the record or the log: {'met' if leak_free else 'MISSED'}"
    )
    return 1 if args.check and not (memory_ok and leak_free) else 0


if __name__ == "__main__":
    sys.exit(main())
