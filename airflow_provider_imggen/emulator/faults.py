"""
Faults the emulator injects and the service behaviours a test may switch: :class:`FaultConfig` (every field
is also a command-line flag, see ``__main__``) and :class:`FaultDice`, the seeded draws that pick a fault for
each call. Kept apart from the service's rules (:mod:`~airflow_provider_imggen.emulator.backend`): a fault
stands in for the service or spoils its answer, it never changes what the service would have done.
"""

from __future__ import annotations

import dataclasses
import math
import random
import threading
from dataclasses import dataclass
from typing import Any, Literal

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
# Which relay the gateway plays: "openai" reads every field at the top level (the seed document); "nested"
# is new-api's Ali channel (api-notes §7, see relay.py): a ``parameters`` / ``input`` object replaces the
# relay's own, answers carry no usage, a failed task is an HTTP 200 ali_error body.
GATEWAY_DIALECTS = ("openai", "nested")
# How the gateway returns a rewritten prompt: "text" (revised_prompt), "empty" ("" as one relay sends it) or
# "absent" (no revised_prompt field at all).
GATEWAY_REVISED_PROMPTS = ("text", "empty", "absent")
# What the task API does with a submission beyond the account's concurrency quota (§7: unknown whether the
# service refuses it with 429 or queues it PENDING; the Wan reference says created tasks are "queued").
CONCURRENCY_OVERFLOWS = ("refuse", "queue")


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

    Quotas (``quotas``, on by default as on the real service) per account (every key of it) and model:
    submissions per second and concurrent tasks from the model table, or ``quota_submissions_per_second`` /
    ``quota_concurrent_tasks`` for every model when set. Gateway generations and native submissions count
    alike; concurrent = native tasks PENDING/RUNNING + gateway generations of task-API models in flight
    (the synchronous endpoint has no concurrency quota). Over a limit: 429 ``Throttling.RateQuota`` or
    ``Throttling`` (concurrency; with ``concurrency_overflow="queue"`` the task waits PENDING instead), not
    billed, with Retry-After only when ``quota_retry_after_seconds`` is set. Status queries (task status and
    task list): ``quota_status_queries_per_second`` per account.

    Native tasks read PENDING for ``task_pending_ms`` after submission, then RUNNING for
    ``task_duration_ms``, then SUCCEEDED (or FAILED); each task keeps the timings in force when it was
    submitted. Tasks older than ``task_ttl_ms`` are UNKNOWN. ``fail_next_tasks`` / ``fail_next_task_images``
    script the outcome of the next tasks. ``invalid_native_params``: ``fail_task`` (as the service does:
    a submission with parameters out of the model's limits is accepted, then the task ends FAILED
    InvalidParameter) or ``reject`` (400 at submission).

    Spoiled answers of every surface that hands out images (gateway generations in either dialect,
    synchronous generations, the status of a SUCCEEDED task), billed as usual: ``unparsable_result_urls``
    gives the first K images a result URL no URL parser accepts (``https://[host/...``: an unclosed IPv6
    bracket, as a broken rewriting proxy leaves it; the signature is still in it, a credential), the others
    intact; ``answer_nesting_depth`` wraps the answer's image list (``data``, ``output.choices``,
    ``output.results``) in that many more JSON arrays, written out as text (``{"data": [[[...]]]}``): a
    few thousand levels exceed the recursion limit of a JSON parser, a few hundred may pass it and trip the
    code walking the result.
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
    # Every billable request is performed and billed at once, then its (normal) answer is held this long: a
    # slow link or a relay's long poll that ends well. A client cut off meanwhile paid all the same.
    hold_ms: float = 0
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
    # §7: beyond the concurrency quota a submission is refused (429, the emulator's historic answer) or
    # queued PENDING until a slot frees ("queue").
    concurrency_overflow: str = "refuse"
    # §7: status queries (task status, task list) per second per account.
    quota_status_queries_per_second: float = 20.0
    # Model names the gateway serves besides the model table's (a gateway answers model_not_found else).
    gateway_models: tuple[str, ...] = ()
    # nested (new-api) relay: chance that fetching one result for b64_json fails (the item is dropped).
    rate_relay_fetch_fail: float = 0
    # nested (new-api) relay: retries of an upstream 5xx on another channel (each attempt bills).
    relay_retries: int = 0
    # Synchronous answers add a {"text": ...} content item (the rewritten prompt) after the images.
    multimodal_text_item: bool = True
    # The first K images of every answer carrying result URLs get a URL no parser accepts (still billed).
    unparsable_result_urls: int = 0
    # The image list of every answer carrying images, wrapped in this many more JSON arrays (still billed).
    answer_nesting_depth: int = 0
    # How long the service waits for an input image URL (to connect, for each read, then in all), then 400.
    input_download_timeout_ms: float = 10_000

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
    if name == "concurrency_overflow":
        return _choice(name, value, CONCURRENCY_OVERFLOWS)
    if name == "gateway_models":
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ValueError(f"gateway_models must be a list of model names, got {value!r}")
        return tuple(str(entry).strip() for entry in value if str(entry).strip())
    if name in ("relay_retries", "unparsable_result_urls", "answer_nesting_depth"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
        return value
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
    if name in ("quotas", "multimodal_text_item"):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
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
    if name == "quota_status_queries_per_second" and number <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
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


class FaultDice:
    """The current :class:`FaultConfig` and its seeded RNGs: which fault each call gets."""

    def __init__(self, faults: FaultConfig) -> None:
        self._lock = threading.Lock()
        self._faults = faults.validated()
        self._reseed()

    def _reseed(self) -> None:
        seed = self._faults.seed
        self._generation_rng = random.Random(seed)
        self._download_rng = random.Random(seed + 1)
        self._answer_rng = random.Random(seed + 2)

    # Settings -------------------------------------------------------------------------------------------
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
            self._reseed()
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

    def draw_relay_fetch_failure(self) -> bool:
        """Whether the nested relay fails to fetch one result for b64_json (seeded)."""
        with self._lock:
            rate = self._faults.rate_relay_fetch_fail
            return rate > 0 and self._answer_rng.random() < rate
