"""
The error table and the billing-safe retry policy, shared by the blocking and the asyncio hooks.

Money first. A *billable* request (the gateway's ``POST /v1/images/generations``, a native task
submission) is re-sent only when the service provably did nothing with it:

- the connection was never opened (refused, unresolvable, connect timeout);
- the service throttled it (HTTP 429 with a rate-limit code): throttled requests are not processed;
- the service answered that the generation failed (an upstream task failure relayed as HTTP 200): a
  failed generation bills nothing.

Anything else after sending (HTTP 5xx or 408, a read timeout, a connection lost after sending) leaves the
outcome unknown: the service may have generated and billed the images. The hook does not re-send it and
raises :class:`~airflow_provider_imggen.exceptions.ImageGenerationOutcomeUnknownError`, which Airflow does
not retry either; the connection extra ``retry_unknown_outcome`` opts back into retries (paying twice is
then possible). An answer the hook cannot read is never retried. Idempotent requests (status queries,
cancels, the task list) are retried on every transient failure.

A server-requested wait (``Retry-After``) longer than ``max_retry_after`` is never shortened: the request
fails at once with :class:`~airflow_provider_imggen.exceptions.ImageGenerationThrottledError` carrying the
wait, for the operator (or Airflow) to honour without holding the worker.

Only tenacity (which Airflow ships) loops: :meth:`RetryPolicy.tenacity_kwargs` feeds ``Retrying`` and
``AsyncRetrying`` alike.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_imggen.exceptions import (
    ImageGenerationAPIError,
    ImageGenerationMalformedResponseError,
    ImageGenerationOutcomeUnknownError,
    ImageGenerationSubmissionUnknownError,
    ImageGenerationThrottledError,
    billed_note,
)
from airflow_provider_imggen.utils import mask_url

if TYPE_CHECKING:
    from tenacity import RetryCallState

__all__ = [
    "FREE_QUOTA_MESSAGE",
    "PERMANENT_ERROR_CODES",
    "RATE_LIMIT_CODES",
    "BillableRequest",
    "Failure",
    "RetryPolicy",
    "TransientAPIError",
    "classify_error",
    "give_up",
    "httpx_failure",
    "is_permanent_code",
    "requests_failure",
    "retry_after_seconds",
]

# The error-code table (api-notes §4, corrected by §6: the 2026 documentation stands).
# Rate limits: throttled, not processed, retried with backoff.
RATE_LIMIT_CODES = frozenset(
    {
        "Throttling",
        "Throttling.RateQuota",
        "Throttling.AllocationQuota",
        "Throttling.User",
        "rate_limit_exceeded",
        "rate_limit_error",
    }
)
# Throttling.AllocationQuota's permanent variant: the free quota is used up, waiting will not bring it back.
FREE_QUOTA_MESSAGE = "free allocated quota exceeded"
# Codes no retry can fix (billing, quota, missing model, key, content, parameters), whatever the status.
PERMANENT_ERROR_CODES = frozenset(
    {
        "Arrearage",
        "insufficient_quota",
        "CommodityNotPurchased",
        "model_not_found",
        "ModelNotFound",
        "InvalidApiKey",
        "invalid_api_key",
        "DataInspectionFailed",
        "InvalidParameter",
        "invalid_request_error",
    }
)
PERMANENT_CODE_PREFIXES = ("AccessDenied", "BadRequest", "InvalidParameter")
PERMANENT_CODE_SUFFIXES = ("BillOverdue",)
# A relayed upstream task failure (HTTP 200 + error body): the generation failed, nothing was billed.
UPSTREAM_FAILURE_PREFIXES = ("InternalError", "RequestTimeOut")


class Failure(enum.Enum):
    """Why one attempt failed, as far as money goes."""

    NOT_SENT = "the connection could not be opened"
    THROTTLED = "throttled"
    NOT_PROCESSED = "the service reported the generation failed"
    SERVER_ERROR = "server error"
    READ_TIMEOUT = "read timeout"
    DROPPED = "connection lost after sending"
    MALFORMED = "unreadable answer"


# Failures after which the service provably did nothing: a billable request may be sent again.
SAFE_TO_RESEND = frozenset({Failure.NOT_SENT, Failure.THROTTLED, Failure.NOT_PROCESSED})


class TransientAPIError(ImageGenerationAPIError):
    """
    One failed attempt that another attempt may fix; the hooks retry it per :class:`RetryPolicy` and turn
    it into a public error (:func:`give_up`) when they stop.

    :param failure: why it failed
    :param retry_after: the wait the server asked for, in seconds
    """

    def __init__(
        self, message: str, *, failure: Failure, retry_after: float | None = None, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.failure = failure
        self.retry_after = retry_after


def is_permanent_code(code: str | None, message: str | None = None) -> bool:
    """Whether an API error code means no retry can help (the free-quota variant included)."""
    if not code:
        return False
    if code == "Throttling.AllocationQuota":
        return FREE_QUOTA_MESSAGE in (message or "").lower()
    return (
        code in PERMANENT_ERROR_CODES
        or code.startswith(PERMANENT_CODE_PREFIXES)
        or code.endswith(PERMANENT_CODE_SUFFIXES)
    )


def classify_error(
    status: int, code: str | None, message: str | None = None, should_retry: str | None = None
) -> Failure | None:
    """
    What an error answer means: a :class:`Failure` another attempt may fix, or ``None`` when permanent.

    :param status: the HTTP status (200 for an error body behind HTTP 200, a gateway quirk)
    :param code: the API's error code, in either body shape
    :param should_retry: the ``x-should-retry`` header, when sent
    """
    if is_permanent_code(code, message):
        return None
    if code in RATE_LIMIT_CODES or status == 429:
        # Rate limited (a 429 with a code the table does not know too: rate limiting is what 429 means).
        return Failure.THROTTLED
    if should_retry == "false":
        return None
    if status == 200:
        if code is not None and code.startswith(UPSTREAM_FAILURE_PREFIXES):
            return Failure.NOT_PROCESSED
        return None
    if status in (408, 409) or status >= 500 or should_retry == "true":
        return Failure.SERVER_ERROR
    return None


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The server's requested wait: ``retry-after-ms``, else ``Retry-After`` in seconds or as an HTTP date."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(tz=UTC)).total_seconds())


def requests_failure(error: BaseException) -> Failure:
    """
    Classify a ``requests`` exception: never sent (connect timeout, refused or unresolvable, also when
    connecting to a proxy), read timeout, or lost after sending (reset, truncated answer; TLS errors and
    proxy failures after connecting count as sent).
    """
    import requests
    from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, ProxyError

    if isinstance(error, requests.exceptions.ConnectTimeout):
        return Failure.NOT_SENT
    if isinstance(error, requests.exceptions.ReadTimeout):
        return Failure.READ_TIMEOUT
    reason = error.args[0] if error.args else None
    cause = reason.reason if isinstance(reason, MaxRetryError) else None
    # urllib3 reports refused and unresolvable connections as a ConnectTimeoutError (NewConnectionError);
    # a proxy that could not be reached wraps one in its ProxyError.
    if isinstance(cause, ProxyError):
        cause = getattr(cause, "original_error", None)
    if isinstance(cause, ConnectTimeoutError):
        return Failure.NOT_SENT
    return Failure.DROPPED


def httpx_failure(error: BaseException) -> Failure:
    """Classify an ``httpx`` exception, as :func:`requests_failure` does."""
    import httpx

    if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return Failure.NOT_SENT
    if isinstance(error, httpx.ReadTimeout):
        return Failure.READ_TIMEOUT
    return Failure.DROPPED


@dataclass(frozen=True)
class BillableRequest:
    """
    What a billable request risks, for the outcome-unknown error.

    :param model: the model
    :param images: how many images it asked for (what may have been billed)
    :param submitted_at: when the (last) attempt was sent, UTC
    :param native: a native task submission (else a gateway generation)
    """

    model: str
    images: int
    submitted_at: datetime
    native: bool = False


@dataclass(frozen=True)
class RetryPolicy:
    """
    When to send a request again, and how long to wait first.

    :param max_retries: further attempts after the first
    :param wait_initial: first backoff in seconds (doubled each retry, up to ``wait_max``, plus jitter)
    :param wait_max: longest backoff in seconds
    :param max_retry_after: longest server-requested wait honoured in process; a longer one stops at once
    :param billable: the request bills: re-send only after failures in :data:`SAFE_TO_RESEND`
    :param retry_unknown_outcome: re-send a billable request after any transient failure but an
        unreadable answer (the user accepts paying twice)
    """

    max_retries: int
    wait_initial: float = 0.5
    wait_max: float = 8.0
    max_retry_after: float = 60.0
    billable: bool = False
    retry_unknown_outcome: bool = False

    @property
    def max_attempts(self) -> int:
        return self.max_retries + 1

    def should_retry(self, error: BaseException | None) -> bool:
        """Whether another attempt may follow ``error`` (the attempt budget aside)."""
        if not isinstance(error, TransientAPIError):
            return False
        if error.retry_after is not None and error.retry_after > self.max_retry_after:
            return False
        if not self.billable or error.failure in SAFE_TO_RESEND:
            return True
        return self.retry_unknown_outcome and error.failure is not Failure.MALFORMED

    def risks_paying_twice(self, error: BaseException | None) -> bool:
        """Whether retrying ``error`` may bill the same request twice (to warn about it)."""
        return self.billable and isinstance(error, TransientAPIError) and error.failure not in SAFE_TO_RESEND

    def wait(self, retry_state: RetryCallState) -> float:
        """Retry-After when the server sent one (within budget), else exponential backoff with jitter."""
        from tenacity import wait_exponential, wait_random

        error = retry_state.outcome.exception() if retry_state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None and 0 <= retry_after <= self.max_retry_after:
            return float(retry_after)
        # wait_initial * 2**n capped at wait_max, plus up to wait_initial of jitter so that many workers
        # throttled at once do not retry in lockstep.
        backoff = wait_exponential(multiplier=self.wait_initial, max=self.wait_max) + wait_random(
            0, self.wait_initial
        )
        return float(backoff(retry_state))

    def tenacity_kwargs(self, before_sleep: Callable[[RetryCallState], None]) -> dict[str, Any]:
        """Keyword arguments for tenacity's ``Retrying`` and ``AsyncRetrying`` alike."""
        from tenacity import retry_if_exception, stop_after_attempt

        return {
            "stop": stop_after_attempt(self.max_attempts),
            "wait": self.wait,
            "retry": retry_if_exception(self.should_retry),
            "before_sleep": before_sleep,
            "reraise": True,
        }


def give_up(
    error: TransientAPIError,
    *,
    attempts: int,
    method: str,
    url: str,
    policy: RetryPolicy,
    billable: BillableRequest | None = None,
) -> ImageGenerationAPIError:
    """
    The public error once the hook stops retrying ``error`` after ``attempts`` attempts.

    - throttled: :class:`ImageGenerationThrottledError` (nothing billed; Airflow may retry);
    - a billable request whose outcome is unknown: :class:`ImageGenerationOutcomeUnknownError`
      (:class:`ImageGenerationSubmissionUnknownError` for a native submission), saying what may have been
      billed and how to check; an unreadable answer: :class:`ImageGenerationMalformedResponseError`;
    - otherwise a plain :class:`ImageGenerationAPIError` (Airflow may retry).
    """
    where = f"{method} {mask_url(url)}"
    tried = f"after {attempts} attempt(s)"
    if error.failure is Failure.THROTTLED:
        if error.retry_after is not None and error.retry_after > policy.max_retry_after:
            reason = (
                f"the service asked to wait {error.retry_after:.0f}s, longer than max_retry_after "
                f"({policy.max_retry_after:.0f}s): nothing was billed, retry after that wait"
            )
        else:
            reason = f"still throttled {tried}: nothing was billed, retry later"
        return ImageGenerationThrottledError(
            f"{where}: {error.message}; {reason}",
            retry_after=error.retry_after,
            status=error.status,
            code=error.code,
            request_id=error.request_id,
        )
    if billable is not None and error.failure is Failure.MALFORMED:
        return ImageGenerationMalformedResponseError(
            f"{where}: {error.message}. {billed_note(billable.model, billable.images)}",
            status=error.status,
            request_id=error.request_id,
            model=billable.model,
            images_at_risk=billable.images,
        )
    if billable is not None and error.failure not in SAFE_TO_RESEND:
        return outcome_unknown(error, attempts=attempts, where=where, billable=billable, policy=policy)
    if error.failure is Failure.NOT_SENT:
        never_sent = ImageGenerationAPIError(
            f"{where} failed {tried}: {error.message} (the connection never opened: nothing was sent)"
        )
        never_sent.nothing_sent = True
        return never_sent
    if error.failure in (Failure.READ_TIMEOUT, Failure.DROPPED, Failure.MALFORMED):
        return ImageGenerationAPIError(f"{where} failed {tried}: {error.message}")
    return ImageGenerationAPIError(
        f"{error.message} (gave up {tried})",
        status=error.status,
        code=error.code,
        request_id=error.request_id,
        param=error.param,
    )


def outcome_unknown(
    error: TransientAPIError,
    *,
    attempts: int,
    where: str,
    billable: BillableRequest,
    policy: RetryPolicy,
) -> ImageGenerationOutcomeUnknownError:
    """The outcome-unknown error: what happened, what may have been billed, how to check."""
    sent = billable.submitted_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    what = "task" if billable.native else "generation"
    check = (
        "Check the service's task list (GET /api/v1/tasks with start_time/end_time around "
        f"{sent} and model_name={billable.model}) and the console's usage page"
        if billable.native
        else f"Check the console's usage (billing) page for {billable.model} around {sent}"
    )
    # Without retry_unknown_outcome only failures in SAFE_TO_RESEND (a 429, a connection never opened, a
    # reported upstream failure) were followed by another attempt: none of those was billed.
    if policy.retry_unknown_outcome and attempts > 1:
        retried = f"it was sent {attempts} time(s) (retry_unknown_outcome is set)"
    else:
        retried = "it was not sent again, and Airflow will not retry it"
        if attempts > 1:
            retried += (
                f" (the {attempts - 1} earlier attempt(s) were throttled or never processed: not billed)"
            )
    message = (
        f"{where}: {error.failure.value} ({error.message}) after the request was sent at {sent}. The "
        f"service may have run the {what} and billed up to {billable.images} image(s) of "
        f"{billable.model}"
        + (f" (request id {error.request_id})" if error.request_id else "")
        + f"; {retried}. {check} before running it again. The connection extra retry_unknown_outcome=true "
        "retries such failures at the risk of paying twice."
    )
    cls = ImageGenerationSubmissionUnknownError if billable.native else ImageGenerationOutcomeUnknownError
    return cls(
        message,
        model=billable.model,
        images_at_risk=billable.images,
        submitted_at=billable.submitted_at,
        status=error.status,
        code=error.code,
        request_id=error.request_id,
    )


def provably_not_processed(error: ImageGenerationAPIError) -> bool:
    """
    Whether a billable request that failed with ``error`` was provably not processed (nothing billed): it
    was throttled, never sent, or refused with a client error (4xx but 408 and 409) or a relayed failure
    behind HTTP 200. A 5xx never is, whatever its ``x-should-retry`` or error code say.
    """
    from airflow_provider_imggen.exceptions import (
        ImageGenerationMalformedResponseError,
        ImageGenerationOutcomeUnknownError,
    )

    if isinstance(error, ImageGenerationOutcomeUnknownError | ImageGenerationMalformedResponseError):
        return False
    if isinstance(error, ImageGenerationThrottledError):
        return True
    if error.status is None:
        return getattr(error, "nothing_sent", False)
    return error.status == 200 or (400 <= error.status < 500 and error.status not in (408, 409))
