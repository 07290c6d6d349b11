"""
Throughput at the account's quota on the cluster: N prompts through the content pipeline at volume.

Brings up benchmarks/cluster.py's deployment (CeleryExecutor, PostgreSQL, Redis, two Celery workers of 2
slots, a triggerer; the emulator with the real quota: 2 submissions per second, 2 concurrent tasks), sets
the README's pool (``imggen_quota``: 2 slots, deferred tasks counted) and runs benchmarks/bench_scale_dag.py:
N deferrable generations of G seconds (emulated), each image stored in S3. During the run one Celery worker
running a generation is killed (SIGKILL, every process of it) and restarted once a third of the prompts
were submitted, and the triggerer is killed and restarted at two thirds.

The quota's limit is N x G / 2 seconds (2 generations at a time). Prints the wall time (DAG run queued to
finished) and its ratio to that limit, worker-slot seconds per image (from the workers' "Workload
finished" lines: the generate tasks', and every task's), 429s seen, images billed, stored, billed twice
(billed submissions beyond one per prompt) and failed tasks. Exits 1 when an image is lost, one is billed
twice, a task failed or the run did not succeed.

    python benchmarks/bench_scale.py [--prompts 200] [--generation-seconds 4] [--no-faults] [--keep]
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR.parent) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR.parent))

from benchmarks.cluster import (  # noqa: E402
    BUCKET,
    NATIVE_SUBMIT_PATH,
    Cluster,
    cluster,
    log,
    s3_client,
    wait_until,
)

DAG_FILE = BENCH_DIR / "bench_scale_dag.py"
DAG_ID = "bench_scale"
POOL = "imggen_quota"
QUOTA_CONCURRENT = 2
WORKLOAD_LINE = re.compile(
    r"Workload finished .*?duration=(?P<duration>[\d.]+).*?workload_id=(?P<ti_id>[\w-]+)"
)


def accepted_submissions(c: Cluster) -> int:
    return sum(
        1
        for entry in c.emulator("requests")["requests"]
        if entry["method"] == "POST" and entry["path"] == NATIVE_SUBMIT_PATH and entry["outcome"] == "ok"
    )


def kill_a_generating_worker(c: Cluster, run_id: str) -> str:
    """SIGKILL a worker that runs a generate task (wait for one), then restart it."""

    def generating_worker() -> object:
        running = {
            instance["id"]
            for instance in c.task_instances(DAG_ID, run_id)
            if instance["task_id"] == "generate" and instance["state"] == "running"
        }
        return next((worker for worker in c.workers if c.running_on(worker) & running), None)

    victim = wait_until("a worker running a generation", generating_worker, 300, c.workers, 0.2)
    c.kill_worker(victim)
    time.sleep(2)
    c.restart_worker(victim)
    return str(victim.name)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--generation-seconds", type=float, default=4.0)
    parser.add_argument("--no-faults", dest="faults", action="store_false", help="no worker kill, no restart")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, DB)")
    parser.add_argument(
        "--pool-slots",
        type=int,
        default=QUOTA_CONCURRENT,
        help="slots of the quota pool (default: the account's concurrent tasks, the README's recipe)",
    )
    args = parser.parse_args()
    limit = args.prompts * args.generation_seconds / QUOTA_CONCURRENT
    dags = Path(tempfile.mkdtemp(prefix="imggen-bench-scale-dags-"))
    shutil.copy(DAG_FILE, dags / DAG_FILE.name)
    try:
        with cluster(dags_folder=dags, keep=args.keep) as c:
            return run(c, args, limit)
    except KeyboardInterrupt:
        log("interrupted: every process started was stopped")
        return 130
    finally:
        shutil.rmtree(dags, ignore_errors=True)


def run(c: Cluster, args: argparse.Namespace, limit: float) -> int:
    c.airflow(
        "pools", "set", POOL, str(args.pool_slots), "the account's concurrent tasks", "--include-deferred"
    )
    c.emulator(
        "faults", {"task_pending_ms": 0, "task_duration_ms": args.generation_seconds * 1000}, method="PUT"
    )
    c.emulator("requests", method="DELETE")
    wait_until(f"DAG {DAG_ID} parsed", lambda: c.api(f"dags/{DAG_ID}")["dag_id"], 120, c.workers, 1)
    run_id = c.trigger(DAG_ID, {"prompts": args.prompts})
    log(
        f"triggered {DAG_ID} {run_id}: {args.prompts} prompts x {args.generation_seconds:g} s; "
        f"limit {limit:.0f} s"
    )
    faults: list[str] = []
    if args.faults:
        wait_until(
            "a third of the prompts submitted",
            lambda: accepted_submissions(c) >= max(1, args.prompts // 3),
            limit * 4 + 600,
            list(c.services.values()),
            1,
        )
        faults.append(f"killed {kill_a_generating_worker(c, run_id)}")
        wait_until(
            "two thirds of the prompts submitted",
            lambda: accepted_submissions(c) >= max(2, 2 * args.prompts // 3),
            limit * 4 + 600,
            list(c.services.values()),
            1,
        )
        c.restart_triggerer()
        faults.append("restarted the triggerer")
    state = c.wait_run(DAG_ID, run_id, limit * 4 + 600)
    run = c.api(f"dags/{DAG_ID}/dagRuns/{run_id}")
    from datetime import datetime

    wall = (
        datetime.fromisoformat(run["end_date"]) - datetime.fromisoformat(run["queued_at"])
    ).total_seconds()
    instances = c.task_instances(DAG_ID, run_id)
    generate_ids = {instance["id"] for instance in instances if instance["task_id"] == "generate"}
    failed = [instance for instance in instances if instance["state"] != "success"]
    workloads: list[tuple[str, float]] = []
    for worker in c.workers:
        text = worker.log_path.read_text(errors="replace")
        workloads += [(match["ti_id"], float(match["duration"])) for match in WORKLOAD_LINE.finditer(text)]
    slot_generate = sum(duration for ti_id, duration in workloads if ti_id in generate_ids)
    slot_all = sum(duration for _, duration in workloads)
    requests_log = c.emulator("requests")
    entries = requests_log["requests"]
    throttled = sum(1 for entry in entries if entry["status"] == 429)
    billed_submissions = sum(
        1 for entry in entries if entry["billed"] and entry["path"] == NATIVE_SUBMIT_PATH
    )
    billed_images = int(requests_log["billed_images"])
    keys = [
        item["Key"]
        for page in s3_client(c.s3_endpoint)
        .get_paginator("list_objects_v2")
        .paginate(Bucket=BUCKET, Prefix=f"scale/{run_id}/")
        for item in page.get("Contents", [])
    ]
    billed_twice = max(0, billed_submissions - args.prompts)
    print()
    print(
        f"{args.prompts} prompts x {args.generation_seconds:g} s, deferrable ending in the triggerer, pool "
        f"{POOL} of {args.pool_slots} (deferred counted; quota {QUOTA_CONCURRENT} concurrent tasks), "
        f"CeleryExecutor 2 workers x 2 slots; faults: "
        f"{', '.join(faults) or 'none'}"
    )
    print(
        f"run {state}: wall {wall:.1f} s, quota limit {limit:.0f} s, "
        f"ratio {wall / limit:.2f}x (goal <= 1.15x)"
    )
    print(
        f"worker-slot s per image: {slot_generate / args.prompts:.2f} (generate tasks), "
        f"{slot_all / args.prompts:.2f} (every task); {len(workloads)} worker runs (goal <= 1 s)"
    )
    print(
        f"429s {throttled}; images billed {billed_images}, stored {len(keys)}, billed twice {billed_twice}; "
        f"failed tasks {len(failed)}"
    )
    problems = []
    if state != "success" or failed:
        problems.append(f"run {state}, {len(failed)} task(s) not successful")
    if len(keys) != args.prompts or billed_images != args.prompts:
        problems.append(f"{args.prompts} images expected: {billed_images} billed, {len(keys)} stored")
    if billed_twice:
        problems.append(f"{billed_twice} prompt(s) billed twice")
    for problem in problems:
        print("FAILED:", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
