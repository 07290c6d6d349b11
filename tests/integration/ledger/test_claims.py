"""
Claims on the ledger (``ledger/claims.py``) against both stores: who pays, who waits, who takes over, and
when a run pays without the ledger. Entries from the past are written as they would have been then.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from airflow_provider_imggen.ledger import StoredImage, make_owner
from airflow_provider_imggen.ledger.claims import Claim, LedgerClaimHeldError, LedgerClaims, Stored
from tests.integration.ledger.conftest import Ledger, claim, fingerprint

LOG = logging.getLogger(__name__)
REQUEST = {"model": "wan2.2-t2i-flash", "prompt": "a lighthouse", "n": 2}
LONG_AGO = "2026-01-01T00:00:00+00:00"


def claims(
    ledger: Ledger, run: str = "scheduled__2026-01-02", task: str = "generate", **kwargs: float
) -> LedgerClaims:
    owner = make_owner("content", run, task, -1, 1)
    return LedgerClaims(store=ledger.open(), owner=owner, log=LOG, **kwargs)


def test_one_claim_wins_and_the_other_run_waits_then_gives_up_without_paying(ledger: Ledger) -> None:
    fp = fingerprint()
    assert isinstance(claims(ledger).claim(fp, REQUEST), Claim)
    with pytest.raises(LedgerClaimHeldError, match="nothing was billed by this run"):
        claims(ledger, run="scheduled__2026-01-03", wait=0.5).claim(fp, REQUEST)


def test_another_task_of_the_same_run_pays_without_the_ledger(ledger: Ledger) -> None:
    fp = fingerprint()
    claims(ledger, task="generate_a").claim(fp, REQUEST)
    # Waiting could deadlock: a transfer of this run may need both tasks done before it stores either.
    assert claims(ledger, task="generate_b", wait=0.5).claim(fp, REQUEST) is None


def test_a_billed_entry_never_stored_is_taken_over_once_old(ledger: Ledger) -> None:
    fp = fingerprint()
    ledger.store.create(claim(fp, state="billed", request_id="r-1"))
    # Billed long ago by a run that delivered its images without storing them: nothing to reuse.
    taken = claims(ledger, wait=0.5).claim(fp, REQUEST)
    assert isinstance(taken, Claim) and taken.entry.state == "claimed"


def test_a_fresh_billed_entry_is_waited_for(ledger: Ledger) -> None:
    fp = fingerprint()
    first = claims(ledger, run="scheduled__2026-01-01")
    claimed = first.claim(fp, REQUEST)
    assert isinstance(claimed, Claim)
    first.billed(claimed, generation_task_id=None, request_id="r-1")
    with pytest.raises(LedgerClaimHeldError, match="billed by"):
        claims(ledger, wait=0.5).claim(fp, REQUEST)


def test_a_stale_claim_is_taken_over_and_a_fresh_one_is_not(ledger: Ledger) -> None:
    stale, fresh = fingerprint(), fingerprint()
    ledger.store.create(claim(stale, updated_at=LONG_AGO))
    assert isinstance(claims(ledger).claim(stale, REQUEST), Claim)
    claims(ledger, run="scheduled__2026-01-01").claim(fresh, REQUEST)
    with pytest.raises(LedgerClaimHeldError):
        claims(ledger, wait=0.5).claim(fresh, REQUEST)


def test_of_two_runs_finding_stored_images_gone_one_pays(ledger: Ledger) -> None:
    fp = fingerprint()
    image = StoredImage(index=0, bucket="imggen-bucket", key="gone.png", sha256="0" * 64, bytes=10)
    ledger.store.create(claim(fp, state="stored", images=(image,), request_id="r-1"))
    first, second = claims(ledger), claims(ledger, run="scheduled__2026-01-03", wait=0.5)
    seen_first, seen_second = first.claim(fp, REQUEST), second.claim(fp, REQUEST)
    assert isinstance(seen_first, Stored) and isinstance(seen_second, Stored)
    # Both fail to verify the images; both try to take the entry over at the version they read.
    assert first.take_over(seen_first, REQUEST) is not None
    assert second.take_over(seen_second, REQUEST) is None
    with pytest.raises(LedgerClaimHeldError):
        second.claim(fp, REQUEST)


def test_an_earlier_try_of_the_same_task_instance_keeps_its_billed_entry(ledger: Ledger) -> None:
    fp = fingerprint()
    try_1 = LedgerClaims(store=ledger.open(), owner=make_owner("content", "r", "generate", -1, 1), log=LOG)
    claimed = try_1.claim(fp, REQUEST)
    assert isinstance(claimed, Claim)
    try_1.billed(claimed, generation_task_id="task-1", request_id=None)
    try_2 = LedgerClaims(store=ledger.open(), owner=make_owner("content", "r", "generate", -1, 2), log=LOG)
    again = try_2.claim(fp, REQUEST)
    # Not taken over: the try's billing journal decides what the earlier try paid for.
    assert isinstance(again, Claim) and again.entry.state == "billed"
    assert again.entry == replace(again.entry, generation_task_id="task-1")
