"""
The provider's metrics, sent through Airflow's own: whatever the deployment configured under ``[metrics]``
(StatsD, Datadog, OpenTelemetry) receives them, under its prefix (StatsD: ``[metrics] statsd_prefix``, by
default ``airflow``, so ``airflow.imggen.images_billed``). Airflow's task metrics say nothing of what a paid
image service costs; these do. The task runner and the triggerer already call ``stats.initialize(...)`` from
``[metrics]``; this module only emits, and imports ``airflow.sdk.observability`` inside each function, since
DAG files import the provider and its import must stay light.

Every function is best effort: it never raises (a failure is logged at debug), because a metrics failure
must never fail a generation that was already billed. Names are bounded: nothing from the service or a user
becomes part of a name unless a fixed list below has it, so a hostile service cannot create new series.

The names (Markdown, as the README shows them; timers are in milliseconds):

| name | type | what |
|---|---|---|
| `imggen.images_billed` | counter | images billed; tag `model` |
| `imggen.images_reused` | counter | images reused instead of paid for again; tag `model` |
| `imggen.cost.<kind>.<currency>` | counter | money in micro-units (× 1,000,000, half-even), see `cost` |
| `imggen.budget_refused` | counter | billable sends a budget refused |
| `imggen.budget_refused.<scope>` | counter | by scope: `dag_run`, `dag_per_day`, `connection_per_day` |
| `imggen.throttled_wait` | timer | time spent waiting out the service's rate limits |
| `imggen.failures` | counter | failed generations |
| `imggen.failures.<code>` | counter | by code: one of `KNOWN_ERROR_CODES`, else `other`; `none` if none |
| `imggen.task_latency` | timer | time from submission to result |
"""

from __future__ import annotations

import logging
import math
import re
from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

log = logging.getLogger(__name__)

PREFIX = "imggen"
COST_KINDS = frozenset({"estimated", "billed"})
COST_CURRENCIES = frozenset({"CNY", "USD"})
BUDGET_SCOPES = frozenset({"dag_run", "dag_per_day", "connection_per_day"})
MICRO = Decimal(1_000_000)
# The error codes a failure metric may be named after: DashScope's error-code page and the codes relays and
# OpenAI-compatible gateways send (api-notes §4, §6, §7; retry_policy.py, batch/outcomes.py, the emulator),
# and the provider's own. Any other code is counted as ``other``: the service chooses it, not this list.
# fmt: off
KNOWN_ERROR_CODES = frozenset({
    # DashScope
    "AccessDenied", "AccessDenied.Unpurchased", "Arrearage", "BadRequest", "CommodityNotPurchased",
    "DataInspectionFailed", "IPInfringementSuspect", "InternalError", "InternalError.Algo",
    "InternalError.Timeout", "InvalidApiKey", "InvalidParameter", "LimitRequests", "Model.AccessDenied",
    "ModelNotFound", "ModelUnavailable", "PostpaidBillOverdue", "PrepaidBillOverdue", "RequestTimeOut",
    "SystemError", "Throttling", "Throttling.AllocationQuota", "Throttling.RateQuota", "Throttling.User",
    "Workspace.AccessDenied",
    # OpenAI-compatible gateways and relays
    "data_inspection_failed", "insufficient_quota", "invalid_api_key", "invalid_request_error",
    "model_not_found", "rate_limit_error", "rate_limit_exceeded",
    # The provider's own
    "connection_unreadable", "late_answer", "unreadable",
})
# fmt: on
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_.-]")
_TAG_MAX = 64


def _name_part(value: str) -> str:
    """``value`` as StatsD accepts it in a name: characters outside ``[A-Za-z0-9_.-]`` become ``_``."""
    return _NOT_IN_NAME.sub("_", value)


def _incr(stat: str, count: int = 1, tags: dict[str, Any] | None = None) -> None:
    from airflow.sdk.observability import stats

    stats.incr(f"{PREFIX}.{stat}", count, tags=tags)


def _timing(stat: str, seconds: float) -> None:
    if not math.isfinite(seconds) or seconds < 0:
        log.debug("metric %s.%s dropped: %s seconds is not a duration", PREFIX, stat, seconds)
        return
    from airflow.sdk.observability import stats

    # Every backend (StatsD, Datadog, OpenTelemetry) turns a timedelta into milliseconds itself.
    stats.timing(f"{PREFIX}.{stat}", timedelta(seconds=seconds))


def _model_tags(model: str) -> dict[str, Any]:
    return {"model": _name_part(str(model))[:_TAG_MAX]}


def images_billed(model: str, count: int) -> None:
    """
    Count images the service billed (``imggen.images_billed``, tagged with the model).

    :param model: the model that made them
    :param count: how many were billed
    """
    try:
        _incr("images_billed", int(count), _model_tags(model))
    except Exception as error:
        log.debug("metric imggen.images_billed not sent: %s", error)


def images_reused(model: str, count: int) -> None:
    """
    Count images reused instead of generated (and paid for) again (``imggen.images_reused``).

    :param model: the model that made them
    :param count: how many were reused
    """
    try:
        _incr("images_reused", int(count), _model_tags(model))
    except Exception as error:
        log.debug("metric imggen.images_reused not sent: %s", error)


def cost(kind: str, currency: str, amount: Decimal) -> None:
    """
    Add money to ``imggen.cost.<kind>.<currency>``, in micro-units (StatsD counters are integers and money
    is never a float): ``Decimal("0.6")`` CNY billed adds 600000 to ``imggen.cost.billed.CNY``. Another kind
    or currency, or an amount that is negative or not finite, is dropped (logged at debug).

    :param kind: ``estimated`` (before a billable send) or ``billed`` (what the service said it made)
    :param currency: ``CNY`` or ``USD``
    :param amount: the amount, a ``Decimal``; rounded half-even to a micro-unit
    """
    try:
        if kind not in COST_KINDS or currency not in COST_CURRENCIES:
            log.debug("metric imggen.cost dropped: unknown kind %r or currency %r", kind, currency)
            return
        micro = (Decimal(amount) * MICRO).to_integral_value(rounding=ROUND_HALF_EVEN)
        if not micro.is_finite() or micro < 0:
            log.debug("metric imggen.cost dropped: %s is not an amount", amount)
            return
        _incr(f"cost.{kind}.{currency}", int(micro))
    except Exception as error:
        log.debug("metric imggen.cost not sent: %s", error)


def budget_refused(scope: str) -> None:
    """
    Count a billable send a budget refused (``imggen.budget_refused``, and ``imggen.budget_refused.<scope>``
    for a known scope).

    :param scope: ``dag_run``, ``dag_per_day`` or ``connection_per_day``; another is counted only in total
    """
    try:
        _incr("budget_refused")
        if scope in BUDGET_SCOPES:
            _incr(f"budget_refused.{scope}")
        else:
            log.debug("metric imggen.budget_refused: unknown scope %r counted in total only", scope)
    except Exception as error:
        log.debug("metric imggen.budget_refused not sent: %s", error)


def throttled_wait(seconds: float) -> None:
    """
    Time spent waiting out the service's rate limits (timer ``imggen.throttled_wait``, milliseconds).

    :param seconds: the wait, in seconds
    """
    try:
        _timing("throttled_wait", float(seconds))
    except Exception as error:
        log.debug("metric imggen.throttled_wait not sent: %s", error)


def failure(code: str | None) -> None:
    """
    Count a failed generation (``imggen.failures``) and its code (``imggen.failures.<code>``): a code in
    :data:`KNOWN_ERROR_CODES`, ``other`` for any other (the service chooses it), ``none`` without one.

    :param code: the service's error code, untrusted
    """
    try:
        _incr("failures")
        if code is None:
            part = "none"
        elif isinstance(code, str) and code in KNOWN_ERROR_CODES:
            part = _name_part(code)
        else:
            part = "other"
        _incr(f"failures.{part}")
    except Exception as error:
        log.debug("metric imggen.failures not sent: %s", error)


def task_latency(seconds: float) -> None:
    """
    Time from submission to result (timer ``imggen.task_latency``, milliseconds).

    :param seconds: the latency, in seconds
    """
    try:
        _timing("task_latency", float(seconds))
    except Exception as error:
        log.debug("metric imggen.task_latency not sent: %s", error)
