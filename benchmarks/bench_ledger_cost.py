"""
The ledger store's cost: milliseconds per create + read + replace cycle, for S3 (moto_server) and PostgreSQL.

Each is set against an anchor measured in the same run, on the same server, through the same Airflow
connection: one S3 ``head_object`` round trip, one PostgreSQL ``SELECT 1``. A cycle is three round trips,
so about 3x its anchor is all protocol and server; more is the store's own work (JSON, checks, the
entry's size on the wire). Anchor and store alternate in rounds, so machine noise hits both alike; medians
of the rounds are printed. Starts moto_server and a throw-away PostgreSQL (as the tests do) and stops them.

Then the cost per generation: ``--generations`` gateway generations through ``ImageGenerationOperator``
against the emulator (in-process, loopback), without a ledger (the anchor), with the S3 ledger and with the
PostgreSQL ledger (claim, generation, billed: three store calls), alternating in rounds; each generation a
prompt of its own, so nothing is reused. Printed: ms per generation and the ledger's added ms.

    python benchmarks/bench_ledger_cost.py [--cycles 200] [--rounds 5] [--generations 60]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python benchmarks/bench_ledger_cost.py` imports the tests' servers
    sys.path.insert(0, str(REPO))
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="bench-ledger-"))
# Gateway result URLs are sealed with the Fernet key before they reach XCom (the generation part).
os.environ.setdefault("AIRFLOW__CORE__FERNET_KEY", "0" * 43 + "=")

from tests.integration.ledger.pg_server import PostgresServer  # noqa: E402
from tests.s3_fixtures import MotoServer, aws_connection  # noqa: E402

PG_CONN_ID = "bench_ledger_pg"


def per_call_ms(call: Callable[[], object], count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        call()
    return (time.perf_counter() - started) * 1000 / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--cycles", type=int, default=200, help="cycles per store (split over rounds)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--generations", type=int, default=60, help="per ledger setting (0: skip)")
    args = parser.parse_args()
    per_round = max(1, args.cycles // args.rounds)

    from airflow_provider_imggen.ledger import LedgerEntry, LedgerStore, make_owner, open_ledger_store

    def entry(fp: str, state: str = "claimed") -> LedgerEntry:
        return LedgerEntry(
            fingerprint=fp,
            state=state,  # type: ignore[arg-type]
            owner=make_owner("content", "scheduled__2026-01-01T00:00:00+00:00", "generate", -1, 1),
            claimed_at="2026-01-01T00:00:00+00:00",
            updated_at="2026-01-01T00:00:01+00:00",
            request_id="req-1" if state == "billed" else None,
            request={
                "model": "wan2.2-t2i-flash",
                "prompt": "a lighthouse at dusk",
                "n": 4,
                "size": "1024*1024",
            },
        )

    def cycle(store: LedgerStore) -> None:
        fp = uuid.uuid4().hex * 2
        version = store.create(entry(fp))
        found = store.read(fp)
        assert version is not None and found is not None and found[1] == version
        assert store.replace(entry(fp, "billed"), version) is not None

    def local(fp: str) -> None:
        LedgerEntry.from_json(entry(fp).to_json())
        entry(fp, "billed").to_json()

    moto = MotoServer()
    postgres = None
    try:
        postgres = PostgresServer()
        os.environ["AWS_ACCESS_KEY_ID"] = os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
        os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = aws_connection(moto.endpoint_url)
        os.environ[f"AIRFLOW_CONN_{PG_CONN_ID.upper()}"] = postgres.connection_json()
        moto.client().create_bucket(Bucket="imggen-ledger")

        from airflow.providers.amazon.aws.hooks.s3 import S3Hook
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        s3 = S3Hook(aws_conn_id="aws_default").get_conn()
        s3.put_object(Bucket="imggen-ledger", Key="anchor", Body=b"{}")
        pg = PostgresHook(postgres_conn_id=PG_CONN_ID).get_conn()
        pg.autocommit = True  # type: ignore[union-attr]  # as the store runs its statements
        pg_cursor = pg.cursor()

        def select_1() -> None:
            pg_cursor.execute("SELECT 1")
            pg_cursor.fetchone()

        # The same three statements, bytes prepared beforehand, through a bare cursor: the server's part.
        claimed, billed = entry("0" * 64).to_json(), entry("0" * 64, "billed").to_json()
        pg_cursor.execute(
            "CREATE TABLE raw_ledger (fingerprint text PRIMARY KEY, version bigint NOT NULL, "
            "entry jsonb NOT NULL, updated_at timestamptz)"
        )

        def raw_sql_cycle() -> None:
            fp = uuid.uuid4().hex * 2
            pg_cursor.execute(
                "INSERT INTO raw_ledger VALUES (%s, 1, %s::jsonb, %s::timestamptz) "
                "ON CONFLICT (fingerprint) DO NOTHING RETURNING version",
                (fp, claimed, "2026-01-01T00:00:01+00:00"),
            )
            pg_cursor.fetchone()
            pg_cursor.execute("SELECT version, entry::text FROM raw_ledger WHERE fingerprint = %s", (fp,))
            pg_cursor.fetchone()
            pg_cursor.execute(
                "UPDATE raw_ledger SET version = version + 1, entry = %s::jsonb, "
                "updated_at = %s::timestamptz WHERE fingerprint = %s AND version = %s RETURNING version",
                (billed, "2026-01-01T00:00:01+00:00", fp, 1),
            )
            pg_cursor.fetchone()

        pairs = {
            "S3 (moto_server)": (
                open_ledger_store("s3://aws_default@imggen-ledger/ledger"),
                "head_object",
                lambda: s3.head_object(Bucket="imggen-ledger", Key="anchor"),
            ),
            "PostgreSQL": (open_ledger_store(f"postgres://{PG_CONN_ID}/imggen_ledger"), "SELECT 1", select_1),
        }
        for store, _, anchor in pairs.values():  # warm up: clients, connections, the table
            for _ in range(10):
                cycle(store)
                anchor()

        results: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in pairs}
        raw_sql: list[float] = []
        for _ in range(args.rounds):
            raw_sql.append(per_call_ms(raw_sql_cycle, per_round))
            for name, (store, _, anchor) in pairs.items():
                results[name][0].append(per_call_ms(anchor, per_round))
                results[name][1].append(per_call_ms(lambda store=store: cycle(store), per_round))

        print(f"{per_round} cycles x {args.rounds} rounds per store; medians of the rounds")
        print(f"{'store':<18} {'anchor':<12} {'anchor ms':>10} {'cycle ms':>10} {'cycle/anchor':>13}")
        for name, (_, anchor_name, _) in pairs.items():
            anchor_ms = statistics.median(results[name][0])
            cycle_ms = statistics.median(results[name][1])
            ratio = cycle_ms / anchor_ms
            print(f"{name:<18} {anchor_name:<12} {anchor_ms:>10.2f} {cycle_ms:>10.2f} {ratio:>12.1f}x")
        raw_ms = statistics.median(raw_sql)
        print(f"PostgreSQL, the cycle's three statements through a bare cursor: {raw_ms:.2f} ms")
        # The part of a cycle spent on entries alone, no store: two built and written, one read back.
        local_ms = per_call_ms(lambda: local(uuid.uuid4().hex * 2), per_round * args.rounds)
        print(f"of each cycle, entries built, written and read back (no I/O): {local_ms:.3f} ms")
        for store, _, _ in pairs.values():
            store.close()
        pg.close()
        if args.generations:
            generation_costs(args.generations, args.rounds)
    finally:
        moto.stop()
        if postgres is not None:
            postgres.stop()
    return 0


def generation_costs(generations: int, rounds: int) -> None:
    """Milliseconds per operator generation without a ledger and with each store (servers already up)."""
    import json
    import logging
    from types import SimpleNamespace

    import pendulum
    from airflow.sdk import DAG

    from airflow_provider_imggen.emulator import EmulatorConfig, EmulatorServer, FaultConfig
    from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator

    logging.getLogger("airflow").setLevel(logging.WARNING)
    settings = {
        "none": None,
        "S3 ledger": "s3://aws_default@imggen-ledger/generations",
        "PostgreSQL ledger": f"postgres://{PG_CONN_ID}/imggen_generations",
    }
    counter = iter(range(10**9))
    with EmulatorServer(EmulatorConfig(api_key="sk-bench", faults=FaultConfig(quotas=False))) as emulator:

        def one(conn_id: str) -> None:
            number = next(counter)
            with DAG(dag_id="bench", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
                operator = ImageGenerationOperator(
                    task_id="generate",
                    prompt=f"bench generation {number}",
                    size="512x512",
                    seed=number,
                    imggen_conn_id=conn_id,
                    durable=False,
                )
            ti = SimpleNamespace(
                dag_id="bench",
                run_id=f"run_{number}",
                task_id="generate",
                map_index=-1,
                try_number=1,
                stats_tags={},
                start_date=None,
            )
            context = {"ti": ti, "task_instance": ti, "params": {}, "ds": "2026-01-01"}
            operator.render_template_fields(context)  # type: ignore[arg-type]
            operator.execute(context)  # type: ignore[arg-type]

        for name, setting in settings.items():
            extra: dict[str, object] = {"default_model": "wan2.2-t2i-flash"}
            if setting:
                extra["ledger"] = setting
            os.environ[f"AIRFLOW_CONN_BENCH_{abs(hash(name))}"] = json.dumps(
                {
                    "conn_type": "imggen",
                    "host": f"{emulator.base_url}/v1",
                    "password": "sk-bench",
                    "extra": extra,
                }
            )
        conn_ids = {name: f"bench_{abs(hash(name))}" for name in settings}
        for conn_id in conn_ids.values():  # warm up: imports, clients, tables
            for _ in range(3):
                one(conn_id)
        per_round = max(1, generations // rounds)
        timings: dict[str, list[float]] = {name: [] for name in settings}
        for _ in range(rounds):
            for name, conn_id in conn_ids.items():
                timings[name].append(per_call_ms(lambda conn_id=conn_id: one(conn_id), per_round))
    anchor = statistics.median(timings["none"])
    print(f"\nper generation ({per_round} x {rounds} rounds each, gateway, n=1, medians of the rounds)")
    print(f"{'ledger':<18} {'ms':>8} {'added ms':>9} {'ratio':>7}")
    for name, values in timings.items():
        ms = statistics.median(values)
        print(f"{name:<18} {ms:>8.2f} {ms - anchor:>9.2f} {ms / anchor:>6.2f}x")


if __name__ == "__main__":
    sys.exit(main())
