"""What the generation operator hands the triggerer when it defers the wait for its native task."""

from __future__ import annotations

import dataclasses
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_imggen.connections import trigger_connection_problem
from airflow_provider_imggen.metadata import request_fields

if TYPE_CHECKING:
    from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator
    from airflow_provider_imggen.request import GenerationRequest
    from airflow_provider_imggen.triggers.image_generation import ImageGenerationTaskTrigger

# The defer timeout leaves the trigger this long past its own deadline to report "timeout" itself.
DEFER_GRACE_SECONDS = 120.0


def task_deferral(
    operator: ImageGenerationOperator, generation_task_id: str, request: GenerationRequest
) -> dict[str, Any]:
    """The keyword arguments of ``operator.defer()`` waiting for ``generation_task_id`` in the triggerer."""
    from airflow_provider_imggen.triggers.image_generation import ImageGenerationTaskTrigger

    ends_in_triggerer = ends_in_the_triggerer(operator)
    operator.log.info(
        "Deferring until task %s ends (the worker slot is free meanwhile)%s",
        generation_task_id,
        "; on success the triggerer ends this task with its XCom" if ends_in_triggerer else "",
    )
    wait_timeout = operator.wait_timeout
    trigger: ImageGenerationTaskTrigger = ImageGenerationTaskTrigger(
        generation_task_id=generation_task_id,
        imggen_conn_id=operator.imggen_conn_id,
        poll_interval=operator.poll_interval,
        max_poll_interval=operator.max_poll_interval,
        end_time=time.time() + wait_timeout if wait_timeout is not None else None,
        # This task paid for it: a user killing the deferred task cancels it while still PENDING.
        cancel_on_kill=True,
        end_from_trigger=ends_in_triggerer,
        # The trigger only has the task id: the XCom's request fields come from here.
        request_fields=request_fields(request) if ends_in_triggerer else None,
        do_xcom_push=operator.do_xcom_push,
        multiple_outputs=operator.multiple_outputs,
    )
    return {
        "trigger": trigger,
        "method_name": "execute_complete",
        # Input images by sha256 only: a presigned URL or a data URI does not belong in the trigger table.
        "kwargs": {
            "request": dataclasses.asdict(request.for_record()),
            # Which send created the task: its budget reservation and payment are settled on resuming.
            "spend": _send_of(operator, generation_task_id),
        },
        "timeout": timedelta(seconds=wait_timeout + DEFER_GRACE_SECONDS)
        if wait_timeout is not None
        else None,
    }


def _send_of(operator: ImageGenerationOperator, generation_task_id: str) -> dict[str, str] | None:
    from airflow_provider_imggen.operators.task_spending import send_of_task

    sent = send_of_task(operator._journal, generation_task_id)
    return None if sent is None else {"task": generation_task_id, "key": sent[0], "at": sent[1].isoformat()}


def trigger_problem(operator: ImageGenerationOperator) -> str | None:
    """Why the trigger's code could not load the operator's connection in this worker; None when it can."""
    problem = trigger_connection_problem(operator.imggen_conn_id)
    if problem is not None:
        operator.log.warning(
            "The trigger's code cannot read connection %r here (%s): this generation will wait in the worker "
            "instead of deferring",
            operator.imggen_conn_id,
            problem,
        )
    return problem


def ends_in_the_triggerer(operator: ImageGenerationOperator) -> bool:
    """Whether the trigger may end the task on success (``end_from_trigger``, where Airflow allows)."""
    if not operator.end_from_trigger:
        return False
    reason = worker_must_finish(operator)
    if reason is not None:
        operator.log.info("end_from_trigger: the worker finishes this task after all: %s", reason)
        return False
    return True


def worker_must_finish(operator: ImageGenerationOperator) -> str | None:
    """What only a worker finishing the task does and this task needs; None when nothing."""
    if operator.outlets:
        return "it has outlets, whose asset events Airflow records only when a worker finishes a task"
    if operator.has_dag() and next(operator.iter_mapped_dependants(), None) is not None:
        return (
            "a mapped task downstream expands over its XCom, whose length Airflow records only when a "
            "worker pushes it"
        )
    return None
