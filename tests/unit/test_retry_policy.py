"""The error table and the billing-safe retry policy, as pure functions (no HTTP)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from airflow.sdk.exceptions import AirflowFailException
from tenacity import RetryError, Retrying

from airflow_provider_imggen.exceptions import (
    ImageGenerationAPIError,
    ImageGenerationMalformedResponseError,
    ImageGenerationOutcomeUnknownError,
    ImageGenerationSubmissionUnknownError,
    ImageGenerationThrottledError,
)
from airflow_provider_imggen.retry_policy import (
    SAFE_TO_RESEND,
    BillableRequest,
    Failure,
    RetryPolicy,
    TransientAPIError,
    classify_error,
    give_up,
    httpx_failure,
    is_permanent_code,
    requests_failure,
    retry_after_seconds,
)

# (HTTP status, code, message) -> what it means. One row per line of api-notes §4 and §6 (§6 wins).
ERROR_TABLE = [
    (429, "Throttling", "Requests throttling triggered.", Failure.THROTTLED),
    (429, "Throttling.RateQuota", "Requests rate limit exceeded, please try again later.", Failure.THROTTLED),
    (
        429,
        "Throttling.AllocationQuota",
        "Allocated quota exceeded, please try again later.",
        Failure.THROTTLED,
    ),
    (429, "Throttling.AllocationQuota", "Free allocated quota exceeded.", None),
    (429, "CommodityNotPurchased", "Commodity has not purchased yet.", None),
    (429, "insufficient_quota", "You exceeded your current quota.", None),
    (429, "Arrearage.BillOverdue", "The account is overdue.", None),
    (400, "Arrearage", "Access denied, please make sure your account is in good standing.", None),
    (429, "PrepaidBillOverdue", "The prepaid bill is overdue.", None),
    (404, "model_not_found", "The model does not exist.", None),
    (503, "model_not_found", "No available channel for model qwen-image.", None),
    (404, "ModelNotFound", "Model not exist.", None),
    (401, "InvalidApiKey", "Invalid API-key provided.", None),
    (401, "invalid_api_key", "Incorrect API key provided.", None),
    (403, "AccessDenied", "current user api does not support synchronous calls", None),
    (403, "AccessDenied.Unpurchased", "Access to model denied.", None),
    (400, "DataInspectionFailed", "Input data may contain inappropriate content.", None),
    (400, "InvalidParameter", "The size is not match the allowed size.", None),
    (400, "BadRequest.TooLarge", "Payload too large.", None),
    (500, "InternalError", "An internal error has occurred.", Failure.SERVER_ERROR),
    (500, "RequestTimeOut", "Request timed out.", Failure.SERVER_ERROR),
    (408, None, "HTTP 408", Failure.SERVER_ERROR),
    (502, None, "HTTP 502 Bad Gateway", Failure.SERVER_ERROR),
    (503, "ModelUnavailable", "Model is unavailable, please try again later.", Failure.SERVER_ERROR),
    (504, None, "HTTP 504 Gateway Timeout", Failure.SERVER_ERROR),
    (429, None, "HTTP 429 Too Many Requests", Failure.THROTTLED),
    (200, "InternalError.Algo", "upstream task failed", Failure.NOT_PROCESSED),
    (200, "InternalError.Timeout", "upstream task timed out", Failure.NOT_PROCESSED),
    (200, "Throttling.RateQuota", "relayed rate limit", Failure.THROTTLED),
    (200, "DataInspectionFailed", "relayed moderation", None),
    (200, None, "an error without a code", None),
]


@pytest.mark.parametrize(("status", "code", "message", "expected"), ERROR_TABLE)
def test_error_table(status: int, code: str | None, message: str, expected: Failure | None) -> None:
    assert classify_error(status, code, message) is expected


def test_x_should_retry_decides_for_codes_the_table_does_not_know() -> None:
    assert classify_error(500, "Weird", "x", should_retry="false") is None
    assert classify_error(400, "Weird", "x", should_retry="true") is Failure.SERVER_ERROR
    # ...but never over the table: a permanent code stays permanent, a rate limit stays one.
    assert classify_error(429, "insufficient_quota", "x", should_retry="true") is None
    assert classify_error(429, "Throttling", "x", should_retry="false") is Failure.THROTTLED


def test_permanent_codes() -> None:
    assert is_permanent_code("Throttling.AllocationQuota", "FREE ALLOCATED QUOTA EXCEEDED")
    assert not is_permanent_code("Throttling.AllocationQuota", None)
    assert not is_permanent_code(None) and not is_permanent_code("Throttling")


def test_retry_after_headers() -> None:
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after_seconds({"retry-after": "86400"}) == 86400
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({"retry-after": "-5"}) == 0
    assert retry_after_seconds({}) is None
    in_a_year = datetime.now(tz=UTC) + timedelta(days=365)
    seconds = retry_after_seconds({"retry-after": format_datetime(in_a_year, usegmt=True)})
    assert seconds is not None and abs(seconds - 365 * 86400) < 5


def failed(
    failure: Failure, retry_after: float | None = None, status: int | None = None
) -> TransientAPIError:
    return TransientAPIError("it failed", failure=failure, retry_after=retry_after, status=status)


@pytest.mark.parametrize("failure", list(Failure))
def test_what_a_billable_request_retries(failure: Failure) -> None:
    billable = RetryPolicy(max_retries=3, billable=True)
    opted_in = RetryPolicy(max_retries=3, billable=True, retry_unknown_outcome=True)
    idempotent = RetryPolicy(max_retries=3)

    assert billable.should_retry(failed(failure)) is (failure in SAFE_TO_RESEND)
    assert opted_in.should_retry(failed(failure)) is (failure is not Failure.MALFORMED)
    assert idempotent.should_retry(failed(failure)) is True
    assert billable.risks_paying_twice(failed(failure)) is (failure not in SAFE_TO_RESEND)
    assert idempotent.risks_paying_twice(failed(failure)) is False


def test_only_transient_errors_are_retried() -> None:
    policy = RetryPolicy(max_retries=3)
    assert not policy.should_retry(ImageGenerationAPIError("rejected"))
    assert not policy.should_retry(ValueError("a bug"))
    assert not policy.should_retry(None)


def test_retry_after_beyond_the_budget_stops_at_once() -> None:
    policy = RetryPolicy(max_retries=5, max_retry_after=60)
    assert policy.should_retry(failed(Failure.THROTTLED, retry_after=60))
    assert not policy.should_retry(failed(Failure.THROTTLED, retry_after=61))


def run(policy: RetryPolicy, errors: list[BaseException]) -> tuple[int, list[float]]:
    """Drive tenacity with ``policy`` over a scripted list of failures; the attempts made and waits."""
    waits: list[float] = []
    attempts = 0
    kwargs = policy.tenacity_kwargs(
        lambda state: waits.append(state.next_action.sleep if state.next_action else 0)
    )
    kwargs["sleep"] = lambda seconds: None
    try:
        for attempt in Retrying(**kwargs):
            with attempt:
                attempts += 1
                if errors:
                    raise errors.pop(0)
    except (TransientAPIError, RetryError):
        pass
    return attempts, waits


def test_waits_honour_retry_after_else_back_off_with_jitter() -> None:
    policy = RetryPolicy(max_retries=4, wait_initial=0.5, wait_max=8, max_retry_after=60)
    attempts, waits = run(
        policy,
        [
            failed(Failure.THROTTLED, retry_after=7),
            failed(Failure.THROTTLED),
            failed(Failure.THROTTLED),
            failed(Failure.THROTTLED),
        ],
    )
    assert attempts == 5
    assert waits[0] == 7
    assert 1.0 <= waits[1] <= 1.5 and 2.0 <= waits[2] <= 2.5 and 4.0 <= waits[3] <= 4.5


def test_the_budget_counts_attempts() -> None:
    attempts, waits = run(RetryPolicy(max_retries=2), [failed(Failure.SERVER_ERROR)] * 5)
    assert (attempts, len(waits)) == (3, 2)
    attempts, waits = run(RetryPolicy(max_retries=2, billable=True), [failed(Failure.SERVER_ERROR)] * 5)
    assert (attempts, waits) == (1, [])


SENT_AT = datetime(2026, 11, 29, 10, 40, 0, tzinfo=UTC)


def test_give_up_on_an_unknown_outcome_names_what_may_be_billed_and_how_to_check() -> None:
    error = TransientAPIError("HTTP 502", failure=Failure.SERVER_ERROR, status=502, request_id="req-1")
    policy = RetryPolicy(max_retries=3, billable=True)
    gateway = give_up(
        error,
        attempts=1,
        method="POST",
        url="https://gw.example.com/v1/images/generations",
        policy=policy,
        billable=BillableRequest(model="wan2.2-t2i-flash", images=4, submitted_at=SENT_AT),
    )
    assert type(gateway) is ImageGenerationOutcomeUnknownError and isinstance(gateway, AirflowFailException)
    assert (gateway.model, gateway.images_at_risk, gateway.submitted_at, gateway.request_id) == (
        "wan2.2-t2i-flash",
        4,
        SENT_AT,
        "req-1",
    )
    text = str(gateway)
    assert "billed up to 4 image(s) of wan2.2-t2i-flash" in text and "2026-11-29 10:40:00 UTC" in text
    assert "request id req-1" in text and "usage" in text and "not sent again" in text

    native = give_up(
        failed(Failure.READ_TIMEOUT),
        attempts=1,
        method="POST",
        url="https://dashscope.example.com/api/v1/services/aigc/text2image/image-synthesis",
        policy=policy,
        billable=BillableRequest(model="qwen-image", images=1, submitted_at=SENT_AT, native=True),
    )
    assert type(native) is ImageGenerationSubmissionUnknownError
    assert "GET /api/v1/tasks" in str(native) and "model_name=qwen-image" in str(native)


def test_give_up_counts_the_attempts_made() -> None:
    policy = RetryPolicy(max_retries=3, billable=True, retry_unknown_outcome=True)
    error = give_up(
        failed(Failure.DROPPED),
        attempts=2,
        method="POST",
        url="https://gw/v1/images/generations",
        policy=policy,
        billable=BillableRequest(model="m", images=1, submitted_at=SENT_AT),
    )
    assert isinstance(error, ImageGenerationOutcomeUnknownError) and "sent 2 time(s)" in str(error)
    plain = give_up(failed(Failure.READ_TIMEOUT), attempts=4, method="GET", url="https://h/t", policy=policy)
    assert type(plain) is ImageGenerationAPIError and "after 4 attempt(s)" in str(plain)
    refused = give_up(
        failed(Failure.NOT_SENT),
        attempts=3,
        method="POST",
        url="https://gw/v1/images/generations",
        policy=RetryPolicy(max_retries=2, billable=True),
        billable=BillableRequest(model="m", images=1, submitted_at=SENT_AT),
    )
    assert type(refused) is ImageGenerationAPIError, "nothing was sent: Airflow may retry"
    assert "after 3 attempt(s)" in str(refused) and "nothing was sent" in str(refused)


def test_give_up_when_throttled_or_unreadable() -> None:
    policy = RetryPolicy(max_retries=2, max_retry_after=60)
    throttled = give_up(failed(Failure.THROTTLED, 3, 429), attempts=3, method="POST", url="u", policy=policy)
    assert type(throttled) is ImageGenerationThrottledError and throttled.retry_after == 3
    assert not isinstance(throttled, AirflowFailException) and "after 3 attempt(s)" in str(throttled)
    too_long = give_up(
        failed(Failure.THROTTLED, 86400, 429), attempts=1, method="POST", url="u", policy=policy
    )
    assert isinstance(too_long, ImageGenerationThrottledError) and "86400s" in str(too_long)

    malformed = give_up(
        failed(Failure.MALFORMED, status=200),
        attempts=1,
        method="POST",
        url="u",
        policy=policy,
        billable=BillableRequest(model="m", images=1, submitted_at=SENT_AT),
    )
    assert type(malformed) is ImageGenerationMalformedResponseError and isinstance(
        malformed, AirflowFailException
    )


def test_transport_failures_of_both_clients() -> None:
    import httpx
    import requests
    from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

    refused = requests.ConnectionError(MaxRetryError(None, "/", NewConnectionError(None, "refused")))  # type: ignore[arg-type]
    assert requests_failure(refused) is Failure.NOT_SENT
    assert requests_failure(requests.exceptions.ConnectTimeout()) is Failure.NOT_SENT
    assert requests_failure(requests.exceptions.ReadTimeout()) is Failure.READ_TIMEOUT
    assert requests_failure(requests.ConnectionError(ProtocolError("Connection aborted."))) is Failure.DROPPED
    assert requests_failure(requests.exceptions.ChunkedEncodingError()) is Failure.DROPPED
    assert requests_failure(requests.exceptions.SSLError()) is Failure.DROPPED

    assert httpx_failure(httpx.ConnectError("refused")) is Failure.NOT_SENT
    assert httpx_failure(httpx.ConnectTimeout("slow")) is Failure.NOT_SENT
    assert httpx_failure(httpx.ReadTimeout("slow")) is Failure.READ_TIMEOUT
    assert httpx_failure(httpx.RemoteProtocolError("closed")) is Failure.DROPPED
    assert httpx_failure(httpx.WriteTimeout("half sent")) is Failure.DROPPED
