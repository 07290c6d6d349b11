"""
The content pipeline on a real CeleryExecutor deployment, a Celery worker killed in the middle of it.

benchmarks/cluster.py brings up PostgreSQL, Redis, the scheduler, api-server, dag-processor, triggerer,
two Celery workers, the emulator with the account's real quota and moto_server, all on loopback (installing
what is missing: `make cluster-deps` does the apt-get part). The pipeline generates 4 prompts x 2 images
through the scheduler; while a generation runs on a worker, every process of that worker gets SIGKILL and
the worker is restarted. The killed tasks are failed by the scheduler's heartbeat timeout and retried on a
worker, where they reconnect to their generation: each image billed once and stored once, no failed task.
About 2 minutes; every wait is bounded, and every process started is stopped, also on failure.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from airflow_provider_imggen.crash_points import ENV as CRASH_ENV
from benchmarks.cluster import LEDGER_DATABASE, NATIVE_SUBMIT_PATH, REPO, cluster, smoke, wait_until

BATCH_DAG = REPO / "benchmarks" / "bench_scale_batch_dag.py"

pytestmark = pytest.mark.cluster


def test_content_pipeline_survives_a_celery_worker_kill() -> None:
    with cluster(start_timeout=300) as deployment:
        result = smoke(deployment, run_timeout=300)
    print(
        f"smoke: {result.seconds:.0f} s, killed {result.killed_worker}, {result.submissions} submissions, "
        f"{result.billed_images} images billed, {len(result.stored_keys)} stored, tasks {result.task_states}"
    )
    assert result.problems == []


# Where a batch's trigger is killed, in the order one batch meets them (see crash_points): each restart of the
# triggerer arms the next one, so one DAG run goes through all of them in a real triggerer.
TRIGGERER_CRASH_POINTS = ("after_intent", "after_send", "after_answer", "after_record", "trigger_event")
BATCH_PROMPTS = 8


def test_batch_trigger_killed_at_every_crash_point_in_a_real_triggerer(tmp_path: Path) -> None:
    """
    The batch DAG of benchmarks/bench_scale.py (8 prompts) with its trigger SIGKILLed by the crash switch at
    every point of a billable send, one after the other, in the cluster's triggerer: the trigger runner dies,
    the triggerer job exits, and the triggerer started again (armed at the next point) takes the trigger
    over. No prompt is ever sent twice: the send killed before it left (after_intent) cannot be proven and
    is reported as outcome unknown, the task failing on it alone; every other prompt is billed once and
    recovered, answered or resumed from the ledger.
    """
    dags = tmp_path / "dags"
    dags.mkdir()
    shutil.copy(BATCH_DAG, dags / BATCH_DAG.name)
    with cluster(dags_folder=dags, start_timeout=300) as c:
        triggerer = c.services["triggerer"]
        # A held claim is recovered once stale: the connection's 5 s request timeout + 30 s, not 90 s.
        connection = json.loads(c.env["AIRFLOW_CONN_IMGGEN_DEFAULT"])
        connection["extra"]["request_timeout"] = 5
        quick = {"AIRFLOW_CONN_IMGGEN_DEFAULT": json.dumps(connection)}
        c.emulator("faults", {"task_pending_ms": 0, "task_duration_ms": 1500}, method="PUT")
        c.restart_triggerer(env={**quick, CRASH_ENV: f"{TRIGGERER_CRASH_POINTS[0]}:sigkill"})
        wait_until("DAG bench_scale_batch parsed", lambda: c.api("dags/bench_scale_batch"), 180, c.workers, 1)
        run_id = c.trigger("bench_scale_batch", {"prompts": BATCH_PROMPTS})
        for index, point in enumerate(TRIGGERER_CRASH_POINTS):
            wait_until(f"the triggerer killed at {point}", lambda: not triggerer.alive, 300, c.workers, 0.5)
            said = triggerer.log_path.read_text(errors="replace")
            assert f"imggen crash switch: sigkill at {point}" in said, said[-3000:]
            following = TRIGGERER_CRASH_POINTS[index + 1 : index + 2]
            # after_send fires 0.5 s after the intent: the emulator bills at once and answers later.
            c.emulator("faults", {"hold_ms": 1500 if following == ("after_send",) else 0}, method="PUT")
            armed = {CRASH_ENV: f"{following[0]}:sigkill"} if following else {}
            c.restart_triggerer(env={**quick, **armed}, may_die=bool(armed))
        state = c.wait_run("bench_scale_batch", run_id, 600)
        instances = c.task_instances("bench_scale_batch", run_id)
        generate = next(i for i in instances if i["task_id"] == "generate")
        entries = c.emulator("requests")["requests"]
        problems = c.api(
            f"dags/bench_scale_batch/dagRuns/{run_id}/taskInstances/generate/xcomEntries/problems"
        )["value"]
    submitted = Counter(
        entry.get("fingerprint")
        for entry in entries
        if entry["billed"] and entry["method"] == "POST" and entry["path"] == NATIVE_SUBMIT_PATH
    )
    print(f"crash points: run {state}, generate {generate['state']}, billed submissions {dict(submitted)}")
    print(f"crash points: problems {problems}")
    assert max(submitted.values()) == 1, "a prompt was sent twice"
    # The after_intent send is the one prompt never billed and never sent again.
    assert len(submitted) == BATCH_PROMPTS - 1
    assert generate["state"] == "failed"
    problems = json.loads(problems) if isinstance(problems, str) else problems
    (problem,) = problems
    assert problem["status"] == "unknown" and problem["billed"] is None, problem


def test_two_live_triggerers_running_one_batch_send_each_prompt_once(tmp_path: Path) -> None:
    """
    Two triggerers run the same batch trigger at once: the one running it is paused (SIGSTOP) past the
    health threshold until the other is assigned the trigger and starts its copy, then resumed; until its
    next loop cancels its own copy, both send from the same ledger. Every prompt is billed once, the run
    succeeds.
    """
    from benchmarks.bench_scale import RunResult, pause_until_taken_over, wait_submitted

    prompts = 40
    dags = tmp_path / "dags"
    dags.mkdir()
    shutil.copy(BATCH_DAG, dags / BATCH_DAG.name)
    with cluster(dags_folder=dags, triggerers=2, start_timeout=300) as c:
        c.emulator("faults", {"task_pending_ms": 0, "task_duration_ms": 2000}, method="PUT")
        wait_until("DAG bench_scale_batch parsed", lambda: c.api("dags/bench_scale_batch"), 180, c.workers, 1)
        run_id = c.trigger("bench_scale_batch", {"prompts": prompts})
        assert wait_submitted(c, "bench_scale_batch", run_id, 8, "a fifth of the prompts sent", 300)
        result = RunResult("batch", "refuse", prompts, 2.0)
        pause_until_taken_over(c, "bench_scale_batch", run_id, result)
        state = c.wait_run("bench_scale_batch", run_id, 600)
        entries = c.emulator("requests")["requests"]
        copies = c.sql(
            "SELECT count(DISTINCT entry->'request'->>'copy') FROM imggen_ledger "
            "WHERE entry->>'owner' LIKE %s AND entry->'request' ? 'index'",
            f"bench_scale_batch/{run_id}/%",
            database=LEDGER_DATABASE,
        )[0][0]
    submitted = Counter(
        entry.get("fingerprint")
        for entry in entries
        if entry["billed"] and entry["method"] == "POST" and entry["path"] == NATIVE_SUBMIT_PATH
    )
    print(f"two triggerers: {result.faults}, run {state}, {copies} copies wrote the ledger")
    assert result.faults and result.faults[0].endswith("then both ran it"), result.faults
    assert state == "success"
    assert len(submitted) == prompts and max(submitted.values()) == 1
    assert copies >= 2
