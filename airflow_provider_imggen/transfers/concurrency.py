"""Running one step of a transfer over its images, a bounded number at a time; the first error stops all."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Generic, TypeVar

_T = TypeVar("_T")
_R = TypeVar("_R")


def run_concurrently(
    function: Callable[[_T], _R],
    items: Sequence[_T],
    *,
    max_concurrency: int,
    stop: threading.Event | None = None,
) -> list[_R]:
    """``function`` over ``items``, ``max_concurrency`` at a time; the first error stops the rest."""
    stop = stop or threading.Event()
    if len(items) <= 1 or max_concurrency == 1:
        # Nothing to overlap: no thread (each new thread costs its own malloc arena).
        return [function(item) for item in items]
    with ThreadPoolExecutor(
        max_workers=min(max_concurrency, len(items)), thread_name_prefix="imggen-to-s3"
    ) as pool:

        def guarded(item: _T) -> _R:
            try:
                return function(item)
            except BaseException:
                # Set here, in the worker, so that queued items see it before they start.
                stop.set()
                raise

        futures = [pool.submit(guarded, item) for item in items]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        if any(future.exception() for future in done):
            stop.set()
            for future in futures:
                future.cancel()
            wait(futures)
            # The earliest item that failed, whichever thread failed first: the same error every run.
            error = next(
                future.exception()
                for future in futures
                if not future.cancelled() and future.exception() is not None
            )
            assert error is not None
            raise error
    return [future.result() for future in futures]


class Background(Generic[_R]):
    """
    ``function`` running in a thread of its own from now on, beside the caller's work.

    ``result`` waits for it and returns its value or raises its error; ``join`` only waits, for at most
    ``timeout`` seconds (a caller leaving on its own error gives it a moment to end, never its whole time:
    the thread is a daemon).
    """

    def __init__(self, function: Callable[[], _R], *, name: str) -> None:
        self._value: _R | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(function,), name=name, daemon=True)
        self._thread.start()

    def _run(self, function: Callable[[], _R]) -> None:
        try:
            self._value = function()
        except BaseException as error:  # handed to the caller by result()
            self._error = error

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def result(self) -> _R:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]
