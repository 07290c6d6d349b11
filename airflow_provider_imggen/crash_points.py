"""
A test-only switch that stops the process at a chosen step of a billable request, so that every crash
point of the billing journal (:mod:`~airflow_provider_imggen.billing_journal`) can be hit on purpose.

Set ``IMGGEN_TEST_CRASH_AT=<point>:<how>`` in the environment of the process to stop (a test DAG sets it in
its first try only). Unset, each point costs one dictionary lookup. Points, in the order a request meets
them:

- ``after_intent``: the intent is recorded, nothing sent yet;
- ``after_send``: the request is on the wire, its answer not read (an alarm fires ``IMGGEN_TEST_CRASH_DELAY``
  seconds, default 0.5, after the intent: hold the answer back longer, e.g. the emulator's ``hold_ms``);
- ``after_answer``: the answer is read, its outcome not recorded;
- ``after_record``: the outcome is recorded, nothing delivered yet;
- ``during_result_write``: writing a ``b64_json`` image below ``output_path``;
- ``trigger_event`` (in the triggerer): the native task ended, the trigger's event not sent yet.

How: ``sigkill`` (the process dies at once, as on an OOM kill), ``timeout`` (``AirflowTaskTimeout``, as
``execution_timeout`` raises it) or ``exception`` (:class:`SimulatedCrash`, a bug anywhere).
"""

from __future__ import annotations

import os
import signal
from typing import Any

ENV = "IMGGEN_TEST_CRASH_AT"
DELAY_ENV = "IMGGEN_TEST_CRASH_DELAY"
POINTS = (
    "after_intent",
    "after_send",
    "after_answer",
    "after_record",
    "during_result_write",
    "trigger_event",
)
HOWS = ("sigkill", "timeout", "exception")


class SimulatedCrash(RuntimeError):
    """The ``exception`` crash: an error no code path expects."""


def reach(point: str) -> None:
    """Crash here if the switch names this point (once per process: the switch is then cleared)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    where, _, how = spec.partition(":")
    if point == "after_intent" and where == "after_send":
        # The request is about to leave: crash while it is in flight, whatever the client is doing then.
        # Airflow's execution_timeout uses the same alarm: it is given back once the answer is read.
        del os.environ[ENV]
        _armed["previous"] = signal.signal(signal.SIGALRM, lambda *_: _fire(how))
        _armed["timer"] = signal.setitimer(signal.ITIMER_REAL, float(os.environ.get(DELAY_ENV, "0.5")))
        return
    if point == "after_answer" and "previous" in _armed:
        # The answer came before the alarm: this run did not crash where it was asked to.
        signal.setitimer(signal.ITIMER_REAL, *_armed.pop("timer"))
        signal.signal(signal.SIGALRM, _armed.pop("previous"))
        print("imggen crash switch: the answer came before after_send fired (hold it back longer)")  # noqa: T201
        return
    if where == point:
        del os.environ[ENV]
        crash(how, point)


# The alarm handler and timer the after_send switch displaced.
_armed: dict[str, Any] = {}


def _fire(how: str) -> None:
    """The after_send alarm: give the alarm back to its owner, then crash."""
    signal.signal(signal.SIGALRM, _armed.pop("previous", signal.SIG_DFL))
    _armed.pop("timer", None)
    crash(how, "after_send")


def crash(how: str, point: str, *_: Any) -> None:
    """Stop the process the way ``how`` says."""
    print(f"imggen crash switch: {how} at {point}", flush=True)  # noqa: T201 - the test reads it in the log
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "timeout":
        from airflow.sdk.exceptions import AirflowTaskTimeout

        raise AirflowTaskTimeout(f"simulated execution_timeout at {point}")
    raise SimulatedCrash(f"simulated crash at {point}")
