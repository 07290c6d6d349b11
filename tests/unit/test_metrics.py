"""The provider's metrics, received by a real StatsD server (UDP on loopback) through Airflow's metrics."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal

import pytest

from airflow_provider_imggen import metrics
from tests.statsd_listener import StatsdListener, parse_line, statsd_metrics


@pytest.fixture
def statsd() -> Iterator[StatsdListener]:
    with statsd_metrics() as listener:
        yield listener


def test_every_function_arrives_under_airflows_prefix(statsd: StatsdListener) -> None:
    metrics.images_billed("qwen-image", 3)
    metrics.images_reused("qwen-image", 2)
    metrics.cost("estimated", "USD", Decimal("0.035") * 4)
    metrics.cost("billed", "CNY", Decimal("0.25") * 3)
    metrics.budget_refused("dag_per_day")
    metrics.throttled_wait(1.5)
    metrics.failure("Throttling.RateQuota")
    metrics.task_latency(12.25)
    statsd.sync()
    assert statsd.values("airflow.imggen.images_billed") == [3]
    assert statsd.values("airflow.imggen.images_reused") == [2]
    assert statsd.values("airflow.imggen.cost.estimated.USD") == [140000]
    assert statsd.values("airflow.imggen.cost.billed.CNY") == [750000]
    assert statsd.values("airflow.imggen.budget_refused") == [1]
    assert statsd.values("airflow.imggen.budget_refused.dag_per_day") == [1]
    assert statsd.values("airflow.imggen.failures") == [1]
    assert statsd.values("airflow.imggen.failures.Throttling.RateQuota") == [1]
    # Timers in milliseconds, whatever the backend: a timedelta is converted by each.
    assert [(s.value, s.type) for s in statsd.get("airflow.imggen.throttled_wait")] == [(1500.0, "ms")]
    assert [(s.value, s.type) for s in statsd.get("airflow.imggen.task_latency")] == [(12250.0, "ms")]
    counters = {s.name for s in statsd.samples if s.name.startswith("airflow.imggen.")} - {
        "airflow.imggen.throttled_wait",
        "airflow.imggen.task_latency",
    }
    assert all(s.type == "c" for s in statsd.samples if s.name in counters)
    assert not statsd.malformed


def test_the_prefix_is_the_deployments() -> None:
    with statsd_metrics(prefix="prod") as listener:
        metrics.images_billed("wan2.2-t2i-flash", 1)
        assert listener.wait_for("prod.imggen.images_billed") == [1]
        assert "airflow.imggen.images_billed" not in listener.names()


@pytest.mark.parametrize(
    ("amount", "micro"),
    [
        (Decimal("0.2") * 3, 600000),
        (Decimal("0.075") * 7, 525000),
        (Decimal("0.0766") * 3, 229800),
        (Decimal("123456.789012"), 123456789012),
        (Decimal("0.0000005"), 0),  # half-even: a half micro-unit rounds to the even neighbour
        (Decimal("0.0000015"), 2),
        (Decimal("0.0000025"), 2),
        (Decimal("0.00000251"), 3),
        (Decimal(0), 0),
    ],
)
def test_cost_is_exact_micro_units(statsd: StatsdListener, amount: Decimal, micro: int) -> None:
    metrics.cost("billed", "USD", amount)
    assert statsd.wait_for("airflow.imggen.cost.billed.USD") == [micro]
    assert statsd.lines == [f"airflow.imggen.cost.billed.USD:{micro}|c"]


def test_costs_add_up_in_the_counter(statsd: StatsdListener) -> None:
    for _ in range(3):
        metrics.cost("estimated", "CNY", Decimal("0.2"))
    assert sum(statsd.wait_for("airflow.imggen.cost.estimated.CNY", count=3)) == 600000


@pytest.mark.parametrize(
    ("kind", "currency", "amount"),
    [
        ("billed", "EUR", Decimal("1")),
        ("billed", "cny", Decimal("1")),
        ("billed", "CNY.x", Decimal("1")),
        ("spent", "CNY", Decimal("1")),
        ("billed", "CNY", Decimal("-0.2")),
        ("billed", "CNY", Decimal("NaN")),
        ("billed", "CNY", Decimal("Infinity")),
    ],
)
def test_other_currencies_kinds_and_amounts_are_dropped(
    statsd: StatsdListener, kind: str, currency: str, amount: Decimal
) -> None:
    metrics.cost(kind, currency, amount)
    statsd.sync()
    assert not [name for name in statsd.names() if "cost" in name]


def test_budget_refusals_by_known_scope_only(statsd: StatsdListener) -> None:
    for scope in ("dag_run", "dag_per_day", "connection_per_day", "dag_run.x", "per_tenant"):
        metrics.budget_refused(scope)
    statsd.sync()
    assert statsd.values("airflow.imggen.budget_refused") == [1] * 5
    assert {name for name in statsd.names() if name.startswith("airflow.imggen.budget_refused.")} == {
        "airflow.imggen.budget_refused.dag_run",
        "airflow.imggen.budget_refused.dag_per_day",
        "airflow.imggen.budget_refused.connection_per_day",
    }


@pytest.mark.parametrize(
    ("code", "suffix"),
    [
        ("Throttling", "Throttling"),
        ("Throttling.AllocationQuota", "Throttling.AllocationQuota"),
        ("InvalidParameter", "InvalidParameter"),
        ("DataInspectionFailed", "DataInspectionFailed"),
        ("InternalError", "InternalError"),
        ("Arrearage", "Arrearage"),
        ("InvalidApiKey", "InvalidApiKey"),
        ("invalid_api_key", "invalid_api_key"),
        ("rate_limit_exceeded", "rate_limit_exceeded"),
        (None, "none"),
        ("", "other"),
        ("throttling", "other"),  # codes are case-sensitive
        ("Throttling.Whatever", "other"),
        ("NewCode2027", "other"),
    ],
)
def test_failure_codes(statsd: StatsdListener, code: str | None, suffix: str) -> None:
    metrics.failure(code)
    statsd.sync()
    assert statsd.values("airflow.imggen.failures") == [1]
    assert [n for n in statsd.names() if n.startswith("airflow.imggen.failures.")] == [
        f"airflow.imggen.failures.{suffix}"
    ]


@pytest.mark.parametrize(
    "code",
    [
        "x" * 300,
        "a\nb:1|c",
        "Throttling\nairflow.imggen.cost.billed.CNY:999999|c",
        "a b",
        "é",
        "a:b|#c:d",
        42,
    ],
)
def test_a_hostile_code_is_other_and_injects_nothing(statsd: StatsdListener, code: object) -> None:
    metrics.failure(code)  # type: ignore[arg-type]
    statsd.sync()
    assert statsd.values("airflow.imggen.failures.other") == [1]
    assert not statsd.malformed
    line = re.compile(r"airflow\.[A-Za-z0-9_.-]+:1\|c")
    assert all(line.fullmatch(text) for text in statsd.lines), statsd.lines
    assert {name for name in statsd.names() if not name.startswith("airflow.statsd_listener.sync.")} == {
        "airflow.imggen.failures",
        "airflow.imggen.failures.other",
    }


def test_every_known_code_is_a_valid_name_and_the_list_is_bounded() -> None:
    assert 20 <= len(metrics.KNOWN_ERROR_CODES) <= 60
    for code in metrics.KNOWN_ERROR_CODES:
        assert re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", code), code


@pytest.mark.parametrize("seconds", [-1.0, float("nan"), float("inf")])
def test_a_duration_that_is_not_one_is_dropped(statsd: StatsdListener, seconds: float) -> None:
    metrics.throttled_wait(seconds)
    metrics.task_latency(seconds)
    statsd.sync()
    assert not [name for name in statsd.names() if "imggen" in name]


def test_the_model_tag_reaches_a_backend_that_sends_tags() -> None:
    with statsd_metrics(influxdb_tags=True) as listener:
        metrics.images_billed("qwen-image", 4)
        metrics.images_reused("a=b,c|d\ne", 1)  # tag values are normalized too
        listener.sync()
        assert [(s.value, s.tags) for s in listener.get("airflow.imggen.images_billed")] == [
            (4, {"model": "qwen-image"})
        ]
        assert [(s.value, s.tags) for s in listener.get("airflow.imggen.images_reused")] == [
            (1, {"model": "a_b_c_d_e"})
        ]


class _RaisingBackend:
    def __getattr__(self, name: str) -> object:
        def fail(*args: object, **kwargs: object) -> None:
            raise RuntimeError(f"backend {name} is down")

        return fail


def _call_every_function() -> None:
    metrics.images_billed("qwen-image", 1)
    metrics.images_reused("qwen-image", 1)
    metrics.cost("billed", "CNY", Decimal("0.2"))
    metrics.budget_refused("dag_run")
    metrics.throttled_wait(1.0)
    metrics.failure("Throttling")
    metrics.task_latency(1.0)


def _unable_to_start() -> object:
    raise RuntimeError("cannot create the stats client")


@pytest.mark.parametrize("factory", [_RaisingBackend, _unable_to_start])
def test_nothing_raises_when_the_backend_does(factory: object, caplog: pytest.LogCaptureFixture) -> None:
    from airflow.sdk._shared.observability.metrics.base_stats_logger import NoStatsLogger
    from airflow.sdk.observability import stats

    stats.initialize(factory=factory, export_legacy_names=True)  # type: ignore[arg-type]
    try:
        with caplog.at_level(logging.DEBUG, logger=metrics.__name__):
            _call_every_function()
    finally:
        stats.initialize(factory=NoStatsLogger, export_legacy_names=True)
    assert len([r for r in caplog.records if r.name == metrics.__name__]) == 7
    assert all("not sent" in r.getMessage() for r in caplog.records if r.name == metrics.__name__)


def test_nothing_raises_when_airflows_metrics_cannot_be_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "airflow.sdk.observability", None)
    _call_every_function()


def test_importing_the_module_does_not_import_airflows_metrics() -> None:
    code = (
        "import sys, airflow_provider_imggen.metrics; "
        "sys.exit(any(m.startswith(('airflow.sdk.observability', 'airflow.sdk._shared.observability')) "
        "for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("a.b:3|c", ("a.b", 3, "c", 1.0, {})),
        ("a:1.5|ms|@0.5", ("a", 1.5, "ms", 0.5, {})),
        ("a:-2|g|#model:x,env:y", ("a", -2, "g", 1.0, {"model": "x", "env": "y"})),
        ("a,model=x:1|c", ("a", 1, "c", 1.0, {"model": "x"})),
    ],
)
def test_the_listener_parses_statsd_lines(line: str, expected: tuple[object, ...]) -> None:
    sample = parse_line(line)
    assert (sample.name, sample.value, sample.type, sample.rate, sample.tags) == expected


@pytest.mark.parametrize("line", ["b", "a:1", "a:|c", "a:x|c", ":1|c", "a:1|c|junk"])
def test_the_listener_rejects_what_is_not_a_statsd_line(line: str) -> None:
    with pytest.raises(ValueError):
        parse_line(line)
