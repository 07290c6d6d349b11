"""
The emulator's mutable state: fault settings and their seeded RNGs, quotas, native tasks, the request log,
the registry of issued images. One :class:`EmulatorState` per emulator, shared by every route and by
:class:`~airflow_provider_imggen.emulator.server.EmulatorServer` (which calls it from the test thread while
the server thread serves), hence one lock around everything.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import hashlib
import hmac
import logging
import math
import random
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from airflow_provider_imggen.emulator.models import MAX_SEED, ValidRequest, limits_of

log = logging.getLogger(__name__)

ErrorStyle = Literal["openai", "dashscope"]
# Faults that answer in place of the service, before it does anything (nothing billed).
REFUSING_FAULTS = ("429", "500", "503", "drop", "200_error", "moderation", "throttle")
# Faults of billable requests: the work is done and billed, then the answer fails.
BILLED_FAULTS = ("billed_500", "billed_502", "billed_504", "billed_drop", "billed_stall")
# Gateway-only faults of a billed 200 answer.
MALFORMED_KINDS = (
    "url_not_string",
    "data_strings",
    "bad_base64",
    "created_string",
    "too_many_images",
    "not_json",
)
ANSWER_FAULTS = ("partial", *(f"malformed:{kind}" for kind in MALFORMED_KINDS))
# What FaultConfig.fail_next may script; "none" scripts a normal answer.
SCRIPTABLE_FAULTS = (*REFUSING_FAULTS, *BILLED_FAULTS, *ANSWER_FAULTS, "none")
_BILLABLE_ONLY = frozenset((*BILLED_FAULTS, *ANSWER_FAULTS))
ERROR_200_TYPES = ("upstream_error", "ali_error")
INVALID_NATIVE_PARAMS = ("reject", "fail_task")
# Where the gateway reads DashScope's own fields (seed, negative_prompt, prompt extension, watermark):
# "openai" at the top level (the seed document), "nested" only under parameters/input, dropping them at the
# top level (a relay the issue describes). Fields in the other place are ignored, as real relays do.
GATEWAY_DIALECTS = ("openai", "nested")
# How the gateway returns a rewritten prompt: "text" (revised_prompt), "empty" ("" as one relay sends it) or
# "absent" (no revised_prompt field at all).
GATEWAY_REVISED_PROMPTS = ("text", "empty", "absent")

# Result URLs of evicted images answer 404 NoSuchKey, like objects past their lifecycle in a real bucket.
_MAX_REMEMBERED_IMAGES = 10_000
# Evicted native tasks read as UNKNOWN, like task ids past their 24 h lifetime.
_MAX_REMEMBERED_TASKS = 10_000
SEED_MODULUS = MAX_SEED + 1
# A SUSPENDED task still holds its concurrency slot (it has not ended).
ACTIVE_STATUSES = ("PENDING", "SUSPENDED", "RUNNING")


@dataclass
class FaultConfig:
    """
    Faults and service behaviours the emulator injects. Rates are probabilities in [0, 1].

    API faults are picked by one draw per API call (after auth) against the cumulative rates in the order
    429, 500, 503, drop, 200_error, billed_500, billed_502, billed_504, billed_drop, billed_stall, partial,
    malformed. The billed faults, ``partial`` and ``malformed`` only apply to billable requests (gateway
    generations; native submissions for the billed ones): a draw landing on one of them for another call
    serves it normally, so the sequence stays the same. ``rate_truncate`` applies to image downloads (its
    own RNG). ``fail_next`` scripts the next API calls exactly (``["429", "429"]``); a billable-only name
    waits for the next billable request. ``"moderation"`` (400 DataInspectionFailed) can only be scripted.

    Billed faults: the images are generated and billed, then the client gets a 500 (a relay's long poll
    timing out), a proxy's 502 or 504, a dropped connection, or nothing for ``stall_ms`` then a 504. On the
    native path the task is created, runs and bills; only the submission's answer fails. ``partial``
    replaces some items with empty ones (only the real items billed); ``malformed`` answers 200 with a
    body of one of ``malformed_kinds`` (drawn; ``malformed:<kind>`` scripts one), billed for n images.

    Quotas (``quotas``, on by default as on the real service) per API key and model: submissions per
    second and concurrent tasks from the model table, or ``quota_submissions_per_second`` /
    ``quota_concurrent_tasks`` for every model when set. Gateway generations and native submissions count
    alike; concurrent = native tasks PENDING/RUNNING + gateway generations in flight. Over a limit: 429
    ``Throttling.RateQuota`` or ``Throttling`` (concurrency), not billed, with Retry-After only when
    ``quota_retry_after_seconds`` is set.

    Native tasks read PENDING for ``task_pending_ms`` after submission, then RUNNING for
    ``task_duration_ms``, then SUCCEEDED (or FAILED); each task keeps the timings in force when it was
    submitted. Tasks older than ``task_ttl_ms`` are UNKNOWN. ``fail_next_tasks`` / ``fail_next_task_images``
    script the outcome of the next tasks. ``invalid_native_params``: ``fail_task`` (as the service does:
    a submission with parameters out of the model's limits is accepted, then the task ends FAILED
    InvalidParameter) or ``reject`` (400 at submission).
    """

    latency_ms: float = 0  # added to every generation request
    download_latency_ms: float = 0
    rate_429: float = 0
    rate_500: float = 0
    rate_503: float = 0
    rate_drop: float = 0  # connection dropped, no HTTP response at all
    rate_truncate: float = 0  # download sends the full Content-Length, then about half the body, then closes
    rate_200_error: float = 0  # gateway quirk: HTTP 200 whose JSON body is an error
    rate_billed_500: float = 0
    rate_billed_502: float = 0
    rate_billed_504: float = 0
    rate_billed_drop: float = 0
    rate_billed_stall: float = 0
    rate_partial: float = 0
    rate_malformed: float = 0
    # Sent with injected 429s as Retry-After (ceil, seconds) and retry-after-ms.
    retry_after_seconds: float = 1.0
    error_style: ErrorStyle = "openai"
    error_200_type: str = "upstream_error"  # or "ali_error", as a relay sends it
    malformed_kinds: tuple[str, ...] = MALFORMED_KINDS
    stall_ms: float = 30_000
    seed: int = 0
    fail_next: tuple[str, ...] = ()
    quotas: bool = True
    quota_submissions_per_second: float | None = None
    quota_concurrent_tasks: int | None = None
    quota_retry_after_seconds: float | None = None
    invalid_native_params: str = "fail_task"
    task_pending_ms: float = 0
    task_duration_ms: float = 0
    task_ttl_ms: float = 86_400_000  # DashScope task ids live 24 h
    # A task reads SUSPENDED this long between PENDING and RUNNING (§6: tasks can be SUSPENDED).
    task_suspended_ms: float = 0
    gateway_dialect: str = "openai"
    gateway_revised_prompt: str = "text"
    fail_next_tasks: tuple[str, ...] = ()
    fail_next_task_images: tuple[tuple[int, ...], ...] = ()

    def validated(self) -> FaultConfig:
        """Return a copy with fields coerced, raising ValueError on nonsense values."""
        values: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            values[item.name] = _validated_field(item.name, getattr(self, item.name))
        return FaultConfig(**values)


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return str(value)


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def _names(name: str, value: object, allowed: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ValueError(f"{name} must be a list of names, got {value!r}")
    names = tuple("none" if entry is None else str(entry) for entry in value)
    unknown = [entry for entry in names if entry not in allowed]
    if unknown:
        raise ValueError(f"{name}: unknown name(s) {unknown}; known: {list(allowed)}")
    return names


def _validated_field(name: str, value: Any) -> Any:
    if name == "error_style":
        return _choice(name, value, ("openai", "dashscope"))
    if name == "error_200_type":
        return _choice(name, value, ERROR_200_TYPES)
    if name == "invalid_native_params":
        return _choice(name, value, INVALID_NATIVE_PARAMS)
    if name == "gateway_dialect":
        return _choice(name, value, GATEWAY_DIALECTS)
    if name == "gateway_revised_prompt":
        return _choice(name, value, GATEWAY_REVISED_PROMPTS)
    if name == "fail_next":
        return _names(name, value, SCRIPTABLE_FAULTS)
    if name == "malformed_kinds":
        kinds = _names(name, value, MALFORMED_KINDS)
        if not kinds:
            raise ValueError("malformed_kinds must name at least one kind")
        return kinds
    if name == "fail_next_tasks":
        return _validated_codes(value)
    if name == "fail_next_task_images":
        return _validated_index_lists(value)
    if name == "quotas":
        if not isinstance(value, bool):
            raise ValueError(f"quotas must be true or false, got {value!r}")
        return value
    if name == "seed":
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"seed must be an integer, got {value!r}")
        return int(value)
    if name in ("quota_submissions_per_second", "quota_retry_after_seconds"):
        if value is None:
            return None
        number = _number(name, value)
        if name == "quota_submissions_per_second" and number <= 0:
            raise ValueError(f"{name} must be > 0 (or null for the model table), got {value!r}")
        return number
    if name == "quota_concurrent_tasks":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"{name} must be a whole number >= 1 (or null for the model table), got {value!r}"
            )
        return value
    number = _number(name, value)
    if name.startswith("rate_") and number > 1:
        raise ValueError(f"{name} is a probability and must be <= 1, got {value!r}")
    return number


def _validated_codes(value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ValueError(f"fail_next_tasks must be a list of error codes (or 'none'), got {value!r}")
    codes = tuple("none" if code is None else code for code in value)
    if not all(isinstance(code, str) and code.strip() for code in codes):
        raise ValueError(f"fail_next_tasks: each entry must be an error code (or 'none'), got {value!r}")
    return codes


def _validated_index_lists(value: object) -> tuple[tuple[int, ...], ...]:
    allowed = "fail_next_task_images must be a list of lists of image indexes (whole numbers >= 0)"
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ValueError(f"{allowed}, got {value!r}")
    lists = []
    for indexes in value:
        if isinstance(indexes, str) or not isinstance(indexes, list | tuple):
            raise ValueError(f"{allowed}, got {value!r}")
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indexes):
            raise ValueError(f"{allowed}, got {value!r}")
        lists.append(tuple(indexes))
    return tuple(lists)


@dataclass
class EmulatorConfig:
    """Static configuration of one emulator instance; ``faults`` are the defaults ``reset()`` returns to."""

    api_key: str = field(default="sk-test", repr=False)
    url_ttl_seconds: float = 86400
    # Random per instance: URLs signed by one emulator do not verify on another (as with real stores).
    signing_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    access_key_id: str = "LTAI5tEmulatorKeyId00"
    faults: FaultConfig = field(default_factory=FaultConfig)
    # Model Studio workspaces the key may use through X-DashScope-WorkSpace; empty: any (not checked).
    workspaces: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageParams:
    model: str
    prompt: str
    negative_prompt: str | None
    seed: int
    width: int
    height: int
    watermark: bool = False


@dataclass
class Task:
    """One native task. Its status is a function of the wall clock (see :meth:`status_at`)."""

    task_id: str
    model: str
    n: int
    images: tuple[ImageParams, ...]
    orig_prompt: str
    actual_prompt: str
    submitted_at: float
    pending_s: float
    duration_s: float
    failure_code: str | None
    failed_images: frozenset[int]
    log_entry: dict[str, Any]
    request_id: str = ""
    key_id: str = ""
    failure_message: str | None = None
    canceled_at: float | None = None
    expired: bool = False
    suspended_s: float = 0.0

    @property
    def scheduled_at(self) -> float:
        return self.submitted_at + self.pending_s + self.suspended_s

    @property
    def ended_at(self) -> float:
        return self.scheduled_at + self.duration_s

    @property
    def succeeded_count(self) -> int:
        return 0 if self.failure_code else len(self.images) - len(self.failed_images)

    def status_at(self, now: float, ttl_s: float) -> str:
        if self.expired or now - self.submitted_at > ttl_s:
            return "UNKNOWN"
        if self.canceled_at is not None:
            return "CANCELED"
        if now < self.submitted_at + self.pending_s:
            return "PENDING"
        if now < self.scheduled_at:
            return "SUSPENDED"
        if now < self.ended_at:
            return "RUNNING"
        return "FAILED" if self.failure_code else "SUCCEEDED"

    def billed_at(self, now: float) -> int:
        """Images billed by ``now``: the successful ones once the task ended (never if canceled)."""
        if self.canceled_at is not None or now < self.ended_at:
            return 0
        return self.succeeded_count


def key_id(api_key: str | None) -> str:
    """A short fingerprint of an API key (quotas are per key; the key itself is never stored)."""
    return hashlib.sha256((api_key or "").encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass
class _Bucket:
    tokens: float
    updated: float


class EmulatorState:
    """All mutable state of one emulator (see the module docstring)."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._log: list[dict[str, Any]] = []
        self._images: collections.OrderedDict[str, ImageParams] = collections.OrderedDict()
        self._tasks: collections.OrderedDict[str, Task] = collections.OrderedDict()
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._in_flight: collections.Counter[tuple[str, str]] = collections.Counter()
        self._faults = config.faults.validated()
        self._generation_rng = random.Random(self._faults.seed)
        self._download_rng = random.Random(self._faults.seed + 1)
        self._answer_rng = random.Random(self._faults.seed + 2)

    # Faults -------------------------------------------------------------------------------------------
    @property
    def faults(self) -> FaultConfig:
        with self._lock:
            return self._faults

    def set_faults(self, **fields: Any) -> FaultConfig:
        """Merge ``fields`` into the current faults and restart the RNGs from the (new) seed."""
        known = {item.name for item in dataclasses.fields(FaultConfig)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(
                f"unknown fault field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        with self._lock:
            merged = dataclasses.replace(self._faults, **fields).validated()
            self._faults = merged
            self._generation_rng = random.Random(merged.seed)
            self._download_rng = random.Random(merged.seed + 1)
            self._answer_rng = random.Random(merged.seed + 2)
            return merged

    def draw_api_fault(self, *, billable: bool = False, gateway: bool = False) -> str | None:
        """
        The fault for one API call: the next scripted one, else one RNG draw (in arrival order).

        A billable-only fault (billed_*, partial, malformed:*) never lands on a call that is not
        billable: a scripted one stays queued for the next billable request, a drawn one serves normally.
        ``partial`` and ``malformed`` only apply to gateway generations (``gateway``).
        """
        with self._lock:
            faults = self._faults
            if faults.fail_next:
                scripted = faults.fail_next[0]
                if scripted in _BILLABLE_ONLY and not billable:
                    return None
                self._faults = dataclasses.replace(faults, fail_next=faults.fail_next[1:])
                if scripted in ANSWER_FAULTS and not gateway:
                    return None
                return None if scripted == "none" else scripted
            u = self._generation_rng.random()
            threshold = 0.0
            for name, rate in (
                ("429", faults.rate_429),
                ("500", faults.rate_500),
                ("503", faults.rate_503),
                ("drop", faults.rate_drop),
                ("200_error", faults.rate_200_error),
                ("billed_500", faults.rate_billed_500),
                ("billed_502", faults.rate_billed_502),
                ("billed_504", faults.rate_billed_504),
                ("billed_drop", faults.rate_billed_drop),
                ("billed_stall", faults.rate_billed_stall),
                ("partial", faults.rate_partial),
                ("malformed", faults.rate_malformed),
            ):
                threshold += rate
                if u < threshold:
                    billable_only = name in _BILLABLE_ONLY or name == "malformed"
                    if billable_only and (not billable or (name in ("partial", "malformed") and not gateway)):
                        return None
                    if name == "malformed":
                        kinds = faults.malformed_kinds
                        return f"malformed:{kinds[self._answer_rng.randrange(len(kinds))]}"
                    return name
            return None

    def draw_failed_items(self, n: int) -> list[int]:
        """Indexes of the items a partial answer leaves empty: at least one, drawn (seeded)."""
        with self._lock:
            failed = [index for index in range(n) if self._answer_rng.random() < 0.5]
            if not failed:
                failed = [self._answer_rng.randrange(n)]
            return failed

    def draw_unit(self) -> float:
        """One seeded number in [0, 1) for the shape of a fault's answer."""
        with self._lock:
            return self._answer_rng.random()

    def draw_task_outcome(self) -> tuple[str | None, frozenset[int]]:
        """The scripted outcome of the next submitted task: (failure code or None, failing image indexes)."""
        with self._lock:
            faults = self._faults
            code: str | None = None
            failed: frozenset[int] = frozenset()
            if faults.fail_next_tasks:
                scripted, *rest = faults.fail_next_tasks
                code = None if scripted == "none" else scripted
                faults = dataclasses.replace(faults, fail_next_tasks=tuple(rest))
            if faults.fail_next_task_images:
                indexes, *remaining = faults.fail_next_task_images
                failed = frozenset(indexes)
                faults = dataclasses.replace(faults, fail_next_task_images=tuple(remaining))
            self._faults = faults
            return code, failed

    def draw_truncate(self) -> bool:
        with self._lock:
            return self._download_rng.random() < self._faults.rate_truncate

    # Quotas -------------------------------------------------------------------------------------------
    def _quota_limits(self, model: str) -> tuple[float | None, int | None, float]:
        faults, limits = self._faults, limits_of(model)
        rate = faults.quota_submissions_per_second or limits["submissions_per_second"]
        concurrent = faults.quota_concurrent_tasks or limits["concurrent_tasks"]
        burst = limits.get("burst") if not faults.quota_submissions_per_second else None
        return rate, concurrent, float(burst or max(1.0, rate or 1.0))

    def acquire_submission(self, api_key_id: str, model: str, *, in_flight: bool) -> str | None:
        """
        Count one submission against the (key, model) quota; ``None`` when allowed, else which limit
        refused it (``"rate"`` or ``"concurrency"``). ``in_flight``: a gateway generation, which holds a
        concurrency slot until :meth:`release_generation`.
        """
        with self._lock:
            scope = (api_key_id, model)
            if self._faults.quotas:
                rate, concurrent, capacity = self._quota_limits(model)
                now = time.monotonic()
                bucket = None
                if rate is not None:
                    bucket = self._buckets.setdefault(scope, _Bucket(tokens=capacity, updated=now))
                    bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * rate)
                    bucket.updated = now
                    if bucket.tokens < 1.0:
                        return "rate"
                if concurrent is not None and self._active_count(scope) >= concurrent:
                    return "concurrency"
                if bucket is not None:
                    bucket.tokens -= 1.0
            if in_flight:
                self._in_flight[scope] += 1
            return None

    def release_generation(self, api_key_id: str, model: str) -> None:
        with self._lock:
            scope = (api_key_id, model)
            self._in_flight[scope] -= 1
            if self._in_flight[scope] <= 0:
                del self._in_flight[scope]

    def _active_count(self, scope: tuple[str, str]) -> int:
        now, ttl_s = time.time(), self._faults.task_ttl_ms / 1000
        running = sum(
            1
            for task in self._tasks.values()
            if (task.key_id, task.model) == scope and task.status_at(now, ttl_s) in ACTIVE_STATUSES
        )
        return running + self._in_flight[scope]

    # Request log --------------------------------------------------------------------------------------
    def record(self, entry: dict[str, Any]) -> None:
        entry.setdefault("billed", entry.get("billed_images", 0) > 0)
        with self._lock:
            self._log.append(entry)
        log.debug(
            "%s %s -> %s outcome=%s billed=%s request_id=%s",
            entry["method"],
            entry["path"],
            entry["status"],
            entry.get("outcome"),
            entry["billed_images"],
            entry["request_id"],
        )

    def _settle_task_billing(self) -> None:
        """Bring the log entries of native submissions up to date: billed once their task ended."""
        now = time.time()
        for task in self._tasks.values():
            if task.log_entry:
                billed = task.billed_at(now)
                task.log_entry["billed_images"] = billed
                task.log_entry["billed"] = billed > 0

    def requests_log(self) -> list[dict[str, Any]]:
        with self._lock:
            self._settle_task_billing()
            return [dict(entry) for entry in self._log]

    def billed_images(self) -> int:
        with self._lock:
            self._settle_task_billing()
            return sum(entry["billed_images"] for entry in self._log)

    def billing(self) -> dict[str, Any]:
        """``{"billed_images", "billed_requests", "by_request_id": {request_id: images}}``."""
        with self._lock:
            self._settle_task_billing()
            by_request = {
                entry["request_id"]: entry["billed_images"] for entry in self._log if entry["billed"]
            }
            return {
                "billed_images": sum(by_request.values()),
                "billed_requests": len(by_request),
                "by_request_id": by_request,
            }

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def reset(self) -> None:
        """Faults back to the configured defaults (RNGs reseeded); log, tasks and quotas cleared."""
        self.set_faults(**dataclasses.asdict(self.config.faults))
        self.clear_log()
        with self._lock:
            self._tasks.clear()
            self._buckets.clear()
            self._in_flight.clear()

    # Images -------------------------------------------------------------------------------------------
    def remember_image(self, image_id: str, params: ImageParams) -> None:
        with self._lock:
            self._images[image_id] = params
            self._images.move_to_end(image_id)
            while len(self._images) > _MAX_REMEMBERED_IMAGES:
                self._images.popitem(last=False)

    def lookup_image(self, image_id: str) -> ImageParams | None:
        with self._lock:
            return self._images.get(image_id)

    # Native tasks ---------------------------------------------------------------------------------------
    def add_task(self, task: Task) -> None:
        with self._lock:
            self._tasks[task.task_id] = task
            while len(self._tasks) > _MAX_REMEMBERED_TASKS:
                self._tasks.popitem(last=False)

    def lookup_task(self, task_id: str) -> tuple[Task | None, str]:
        """The task (a snapshot) and its status now; ``(None, "UNKNOWN")`` for an unknown id."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return None, "UNKNOWN"
            return dataclasses.replace(task), task.status_at(time.time(), self._faults.task_ttl_ms / 1000)

    def cancel_task(self, task_id: str) -> str:
        """Cancel a PENDING task (its images are then not billed); returns the status it had."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return "UNKNOWN"
            now = time.time()
            status = task.status_at(now, self._faults.task_ttl_ms / 1000)
            if status == "PENDING":
                task.canceled_at = now
            return status

    def expire_task(self, task_id: str) -> bool:
        """Make a task read as UNKNOWN from now on, as if its 24 h had passed; False if there is none."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is not None:
                task.expired = True
            return task is not None

    def list_tasks(
        self,
        api_key_id: str,
        *,
        start: float | None,
        end: float | None,
        model: str | None,
        status: str | None,
    ) -> list[tuple[Task, str]]:
        """The key's tasks submitted in [start, end] (epoch seconds), newest first, with their status now."""
        with self._lock:
            now, ttl_s = time.time(), self._faults.task_ttl_ms / 1000
            found = []
            for task in reversed(self._tasks.values()):
                task_status = task.status_at(now, ttl_s)
                if (
                    task.key_id != api_key_id
                    or task_status == "UNKNOWN"
                    or (start is not None and task.submitted_at < start)
                    or (end is not None and task.submitted_at > end)
                    or (model is not None and task.model != model)
                    or (status is not None and task_status != status)
                ):
                    continue
                found.append((dataclasses.replace(task), task_status))
            return found

    def tasks(self) -> list[dict[str, Any]]:
        """Every remembered task, oldest first: id, status now, model, n, outcome (for tests and humans)."""
        with self._lock:
            now, ttl_s = time.time(), self._faults.task_ttl_ms / 1000
            return [
                {
                    "task_id": task.task_id,
                    "task_status": task.status_at(now, ttl_s),
                    "model": task.model,
                    "n": task.n,
                    "failure_code": task.failure_code,
                    "failed_images": sorted(task.failed_images),
                    "submitted_at": task.submitted_at,
                    "billed_images": task.billed_at(now),
                    "request_id": task.request_id,
                }
                for task in self._tasks.values()
            ]

    # URL signing (OSS V1 style query-string signature) -------------------------------------------------
    def sign(self, path: str, expires: int) -> str:
        string_to_sign = f"GET\n\n\n{expires}\n{path}"
        digest = hmac.new(self.config.signing_secret, string_to_sign.encode("utf-8"), hashlib.sha1).digest()
        return base64.b64encode(digest).decode("ascii")


# Deterministic image parameters ---------------------------------------------------------------------------
def _digest(*parts: object) -> bytes:
    hasher = hashlib.sha256()
    for part in parts:
        encoded = repr(part).encode("utf-8", "surrogatepass")
        hasher.update(len(encoded).to_bytes(8, "big") + encoded)
    return hasher.digest()


def default_seed(model: str, prompt: str, negative_prompt: str | None, size: str) -> int:
    """The seed used when a request names none: derived from the request so every run repeats."""
    return int.from_bytes(_digest("seed", model, prompt, negative_prompt, size)[:8], "big") % SEED_MODULUS


def image_id(params: ImageParams) -> str:
    parts: tuple[object, ...] = (
        "image",
        params.model,
        params.prompt,
        params.negative_prompt,
        params.seed,
        params.width,
        params.height,
    )
    # A marked image is another object; unmarked ones keep the ids they always had.
    return _digest(*parts, *(("watermark",) if params.watermark else ())).hex()[:32]


def image_params(request: ValidRequest, count: int | None = None) -> list[ImageParams]:
    """One image per index (``count``, default n); image ``i`` uses ``seed + i``."""
    seed = request.seed
    if seed is None:
        seed = default_seed(request.model, request.prompt, request.negative_prompt, request.size)
    return [
        ImageParams(
            model=request.model,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            seed=(seed + index) % SEED_MODULUS,
            width=request.width,
            height=request.height,
            watermark=request.watermark,
        )
        for index in range(request.n if count is None else count)
    ]


def upsampled_prompt(request: ValidRequest) -> str | None:
    """The prompt as the API rewrites it; prompt_upsampling (prompt_extend) defaults to true."""
    return f"{request.prompt}, highly detailed" if request.prompt_upsampling in (None, True) else None
