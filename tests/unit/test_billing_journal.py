"""The billing journal's records: what it writes is what it reads back, and an edited one fails closed."""

from __future__ import annotations

import pytest

from airflow_provider_imggen.billing_journal import (
    MAX_ATTEMPTS,
    Attempt,
    BillingJournal,
    read_attempts,
)
from airflow_provider_imggen.exceptions import (
    BillingJournalUnreadableError,
    ImageGenerationAPIError,
    ImageGenerationOutcomeUnknownError,
    ImageGenerationRejectedError,
    ImageGenerationThrottledError,
)
from airflow_provider_imggen.operators.xcom import delivered_again
from airflow_provider_imggen.retry_policy import provably_not_processed

FINGERPRINT = "a" * 64


def intent(journal: BillingJournal, model: str = "wan2.2-t2i-flash") -> Attempt:
    return journal.record_intent(fingerprint=FINGERPRINT, endpoint="gateway", model=model, images=2)


def test_a_throttled_send_gives_its_slot_to_the_next_one() -> None:
    journal = BillingJournal()
    for _ in range(MAX_ATTEMPTS * 2):
        journal.record_outcome(intent(journal), "not_processed")
    answered = journal.record_outcome(intent(journal), "answered", request_id="r-1")
    assert [a.number for a in journal.attempts] == [1] and answered.outcome == "answered"
    assert read_attempts([a.to_json() for a in journal.attempts]) == journal.attempts


def test_attempts_that_may_have_billed_are_kept_and_capped_before_sending() -> None:
    journal = BillingJournal()
    for _ in range(MAX_ATTEMPTS):
        journal.record_outcome(intent(journal), "unknown")
    with pytest.raises(BillingJournalUnreadableError, match="nothing more is sent"):
        intent(journal)
    assert len(journal.attempts) == MAX_ATTEMPTS


@pytest.mark.parametrize("model", ["black-forest-labs/FLUX.1-schnell", "wan2.2-t2i-flash", "a" * 200])
def test_what_is_written_is_readable(model: str) -> None:
    journal = BillingJournal()
    attempt = intent(journal, model)
    journal.record_outcome(attempt, "task", generation_task_id="task+id=with/odd chars", request_id="r 1")
    assert read_attempts([a.to_json() for a in journal.attempts]) == journal.attempts


def test_a_model_the_journal_could_not_read_back_is_refused_before_sending() -> None:
    with pytest.raises(BillingJournalUnreadableError):
        intent(BillingJournal(), "bad\nmodel")


@pytest.mark.parametrize(
    "edited",
    [
        {"not": "a list"},
        [
            {
                "number": 2,
                "fingerprint": FINGERPRINT,
                "endpoint": "gateway",
                "model": "m",
                "images": 1,
                "intent_at": "2026-01-01T00:00:00+00:00",
            }
        ],
        [
            {
                "number": 1,
                "fingerprint": "xyz",
                "endpoint": "gateway",
                "model": "m",
                "images": 1,
                "intent_at": "2026-01-01T00:00:00+00:00",
            }
        ],
        [
            {
                "number": 1,
                "fingerprint": FINGERPRINT,
                "endpoint": "gateway",
                "model": "m",
                "images": 1,
                "intent_at": "2026-01-01T00:00:00",
            }
        ],
        [
            {
                "number": 1,
                "fingerprint": FINGERPRINT,
                "endpoint": "gateway",
                "model": "m",
                "images": 1,
                "intent_at": "2026-01-01T00:00:00+00:00",
                "outcome": "paid",
                "secret": "sk-leak",
            }
        ],
    ],
)
def test_an_edited_journal_fails_closed_without_echoing_it(edited: object) -> None:
    with pytest.raises(BillingJournalUnreadableError) as raised:
        read_attempts(edited)
    assert "sk-leak" not in str(raised.value) and "imggen_billing" in str(raised.value)


@pytest.mark.parametrize(
    ("error", "nothing_happened"),
    [
        (ImageGenerationThrottledError("429"), True),
        (ImageGenerationRejectedError("bad size", status=400), True),
        (ImageGenerationRejectedError("relayed upstream failure", status=200), True),
        # A 5xx never proves anything, whatever x-should-retry or the error code said.
        (ImageGenerationRejectedError("x-should-retry: false", status=500), False),
        (ImageGenerationRejectedError("conflict", status=409), False),
        (ImageGenerationAPIError("dropped"), False),
        (ImageGenerationOutcomeUnknownError("timeout"), False),
    ],
)
def test_only_what_the_service_refused_is_not_processed(
    error: ImageGenerationAPIError, nothing_happened: bool
) -> None:
    assert provably_not_processed(error) is nothing_happened


def test_a_delivery_is_returned_again_only_as_an_xcom_this_operator_would_push() -> None:
    sealed = {
        "model": "m",
        "images": [{"index": 0, "url": "https://x/a.png?Signature=***", "url_sealed": "gAAA"}],
    }
    assert delivered_again(sealed, None) is not None
    unsealed = {"model": "m", "images": [{"index": 0, "url": "https://x/a.png"}]}
    assert delivered_again(unsealed, None) is None
    elsewhere = {"model": "m", "images": [{"index": 0, "location": "file:///etc/passwd", "sha256": "0" * 64}]}
    assert delivered_again(elsewhere, "/data/images") is None
    below = {"model": "m", "images": [{"index": 0, "location": "file:///data/images/d/r/t/0.png"}]}
    assert delivered_again(below, "/data/images") is not None
    assert delivered_again({"images": "not a list"}, None) is None
