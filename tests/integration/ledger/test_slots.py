"""
A batch's send slots (``ledger/slots.py``): against both stores, the moves a slot makes; against PostgreSQL
(whose compare-and-set is atomic, unlike moto's), copies of a trigger racing for one slot: one sender.
"""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_imggen.ledger.postgres import PostgresLedgerStore
from airflow_provider_imggen.ledger.slots import SendSlots, slot_key
from tests.integration.ledger.conftest import Ledger, fingerprint
from tests.integration.ledger.test_postgres import ROUNDS, race

OWNER = "content/manual__1/generate/-1/1"


def slots(store: Any, copy: str = "a") -> SendSlots:
    return SendSlots(store=store, owner=OWNER, copy=copy)


def test_the_slot_key_names_the_task_instance_the_position_and_the_request() -> None:
    request = fingerprint()
    key = slot_key("content/run/generate/-1", 0, request)
    assert key == slot_key("content/run/generate/-1", 0, request)
    assert (
        len(
            {
                key,
                slot_key("content/run/generate/-1", 1, request),
                slot_key("content/run2/generate/-1", 0, request),
                slot_key("content/run/generate/-1", 0, fingerprint()),
            }
        )
        == 4
    )


def test_a_slot_moves_from_claimed_to_billed_and_only_its_claimer_writes_it(ledger: Ledger) -> None:
    key = fingerprint()
    mine, other = slots(ledger.store, "a"), slots(ledger.open(), "b")
    held = mine.claim(key, None, index=0, model="wan2.2-t2i-flash", images=1)
    assert held is not None and held.state == "claimed" and held.copy == "a" and held.attempt == 1
    # Another copy neither creates it again nor claims a claimed slot.
    assert other.claim(key, None, index=0, model="wan2.2-t2i-flash", images=1) is None
    assert other.claim(key, other.read(key), index=0, model="wan2.2-t2i-flash", images=1) is None
    billed = mine.settle(held, "billed", generation_task_id="task-1")
    assert billed is not None and billed.entry.generation_task_id == "task-1"
    # A write over a version read before is refused: the claimer's stale view loses.
    assert mine.settle(held, "unknown", reason="late") is None
    assert mine.read(key).state == "billed"  # type: ignore[union-attr]


def test_a_released_slot_is_claimed_again_and_keeps_its_failed_tasks(ledger: Ledger) -> None:
    key = fingerprint()
    store = slots(ledger.store)
    held = store.claim(key, None, index=3, model="wan2.2-t2i-flash", images=1)
    assert held is not None
    billed = store.settle(held, "billed", generation_task_id="task-failed")
    assert billed is not None
    released = store.settle(billed, "released", reason="task FAILED unbilled")
    assert released is not None and released.earlier_tasks == ("task-failed",)
    again = store.claim(key, released, index=3, model="wan2.2-t2i-flash", images=1)
    assert again is not None and again.attempt == 2 and again.earlier_tasks == ("task-failed",)


def test_recovery_takes_a_claim_over_without_changing_when_it_was_claimed(ledger: Ledger) -> None:
    key = fingerprint()
    dead = slots(ledger.store, "dead").claim(key, None, index=0, model="wan2.2-t2i-flash", images=1)
    assert dead is not None
    taken = slots(ledger.open(), "alive").take_for_recovery(dead)
    assert taken is not None and taken.copy == "alive" and taken.entry.request["recovering"] is True
    assert taken.entry.claimed_at == dead.entry.claimed_at
    # The dead copy, waking up, cannot write over it.
    assert slots(ledger.store, "dead").settle(dead, "billed", generation_task_id="t") is None


def test_copies_racing_for_one_slot_have_exactly_one_sender(racers: list[PostgresLedgerStore]) -> None:
    for round_number in range(ROUNDS):
        key = fingerprint()

        def claim(i: int, store: PostgresLedgerStore, key: str = key) -> object:
            return slots(store, f"copy-{i}").claim(key, None, index=0, model="wan2.2-t2i-flash", images=1)

        winners = [held for held in race(racers, claim) if held is not None]
        assert len(winners) == 1, round_number
        # Released (a 429), the slot is raced for again from the version every copy read: one sender.
        released = slots(racers[0], winners[0].copy).settle(winners[0], "released", reason="throttled")
        assert released is not None
        seen = [slots(store).read(key) for store in racers]

        def claim_again(i: int, store: PostgresLedgerStore, seen: list = seen, key: str = key) -> object:
            return slots(store, f"copy-{i}").claim(key, seen[i], index=0, model="wan2.2-t2i-flash", images=1)

        assert len([held for held in race(racers, claim_again) if held is not None]) == 1


def test_copies_racing_to_record_one_outcome_have_exactly_one_writer(
    racers: list[PostgresLedgerStore],
) -> None:
    for _ in range(ROUNDS // 5):
        key = fingerprint()
        held = slots(racers[0]).claim(key, None, index=0, model="wan2.2-t2i-flash", images=1)
        assert held is not None

        # Every copy saw the claim go stale and tries to take it over for recovery at once.
        def take(i: int, store: PostgresLedgerStore, held: Any = held) -> object:
            return slots(store, f"copy-{i}").take_for_recovery(held)

        assert len([taken for taken in race(racers, take) if taken is not None]) == 1


@pytest.mark.parametrize("state", ["unknown", "failed"])
def test_final_states_are_never_claimed(ledger: Ledger, state: str) -> None:
    key = fingerprint()
    store = slots(ledger.store)
    held = store.claim(key, None, index=0, model="wan2.2-t2i-flash", images=1)
    assert held is not None
    final = store.settle(held, state, reason="test")
    assert final is not None
    assert store.claim(key, final, index=0, model="wan2.2-t2i-flash", images=1) is None
