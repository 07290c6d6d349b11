"""The transfer's two ways of running work beside other work: over images, and one step in the background."""

from __future__ import annotations

import threading
import time

import pytest

from airflow_provider_imggen.transfers.concurrency import Background, run_concurrently


def test_background_runs_beside_the_caller_and_hands_over_its_value() -> None:
    started = threading.Event()
    release = threading.Event()

    def step() -> str:
        started.set()
        release.wait(5)
        return threading.current_thread().name

    background = Background(step, name="imggen-test-step")
    assert started.wait(5), "it started before the caller asked for its result"
    release.set()
    assert background.result() == "imggen-test-step"


def test_background_raises_its_error_in_the_caller_and_join_does_not() -> None:
    def failing() -> None:
        raise ValueError("no client")

    background = Background(failing, name="imggen-test-failing")
    background.join()
    with pytest.raises(ValueError, match="no client"):
        background.result()


def test_join_waits_for_the_step_to_end() -> None:
    ended = threading.Event()

    def slow() -> None:
        time.sleep(0.2)
        ended.set()

    Background(slow, name="imggen-test-slow").join()
    assert ended.is_set()


def test_run_concurrently_keeps_the_order_and_raises_the_earliest_failure() -> None:
    assert run_concurrently(lambda item: item * 2, [1, 2, 3], max_concurrency=2) == [2, 4, 6]

    def fail_on_odd(item: int) -> int:
        if item % 2:
            raise ValueError(f"item {item}")
        return item

    with pytest.raises(ValueError, match="item 1"):
        run_concurrently(fail_on_odd, [0, 1, 2, 3], max_concurrency=2)
