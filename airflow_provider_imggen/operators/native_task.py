"""
ImageGenerationOperator's native task, through Airflow's ``ResumableJobMixin``: submit (or reconnect to) a
task, read its status, wait for it in the worker or defer to the triggerer, and build its XCom. A module of
its own so the operator's module stays one read: the operator's methods of those names call these functions
with itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import Context
    from pydantic import JsonValue

    from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator


def submit_job(operator: ImageGenerationOperator, context: Context) -> JsonValue:
    from airflow_provider_imggen.operators import task_record
    from airflow_provider_imggen.operators.deferral import trigger_problem

    request = operator._submitting_request
    if operator.deferrable and operator.wait_for_completion:
        # Before anything is billed: a wait the trigger could not do would otherwise start after it.
        operator._trigger_connection_problem = trigger_problem(operator)
    journal = operator._journal
    submitted = operator._billable(
        lambda: operator.hook.submit(request, journal=journal, reuse=operator.reuse),
        request,
        deferrable=operator.deferrable,
    )
    operator._generation_task_id = submitted.generation_task_id
    if operator._ledger_gate is not None:
        operator._ledger_gate.record_task(submitted.generation_task_id)
    operator.log.info(
        "Submitted task %s (request_id=%s): model=%s n=%d size=%s seed=%s",
        submitted.generation_task_id,
        submitted.request_id,
        request.model,
        request.n,
        request.size,
        request.seed,
    )
    return task_record.record(submitted.generation_task_id, request)


def get_job_status(operator: ImageGenerationOperator, external_id: JsonValue, context: Context) -> str:
    """The remembered task's status, or a pseudo-status saying why it cannot be reused."""
    from airflow_provider_imggen.operators import task_record

    generation_task_id = task_record.remembered_generation_task_id(external_id)
    if generation_task_id is None:
        operator.log.warning("Ignoring an unreadable task record from an earlier try: %r", external_id)
        return "UNREADABLE"
    if task_record.superseded(external_id, operator._submitting_request):
        operator.log.info(
            "An earlier try submitted task %s for other parameters (the rendered request changed): "
            "submitting this request",
            generation_task_id,
        )
        return "SUPERSEDED"
    state = operator.hook.get_task(generation_task_id)
    if state.status == "SUCCEEDED" and not operator.reuse:
        operator.log.info("Task %s already succeeded; reuse=False: submitting again", generation_task_id)
        return "REUSE_DISABLED"
    operator._generation_task_id, operator._state = generation_task_id, state
    task_record.log_remembered(operator.log, external_id, generation_task_id, state)
    return state.status


def is_job_active(operator: ImageGenerationOperator, status: str) -> bool:
    # SUSPENDED counts as running: an earlier try's suspended task is reconnected to, not paid again.
    from airflow_provider_imggen.polling import TASK_ACTIVE_STATUSES

    return status in TASK_ACTIVE_STATUSES


def is_job_succeeded(operator: ImageGenerationOperator, status: str) -> bool:
    return status == "SUCCEEDED"


def poll_until_complete(operator: ImageGenerationOperator, external_id: JsonValue, context: Context) -> Any:
    """
    Wait for the task: defer to the triggerer, or poll here; return the XCom metadata.

    ResumableJobMixin returns this method's value as the task's result when it reconnects to a task
    that is still running, so it returns the metadata (and keeps it for :meth:`get_job_result`).
    """
    from airflow_provider_imggen.operators import task_record
    from airflow_provider_imggen.operators.xcom import submitted_xcom
    from airflow_provider_imggen.prices import price_for

    generation_task_id = task_record.remembered_generation_task_id(external_id) or str(external_id)
    operator._generation_task_id = generation_task_id
    if not operator.wait_for_completion:
        status = operator._state.status if operator._state is not None else "PENDING"
        request = operator._submitting_request
        operator._metadata_result = submitted_xcom(
            request,
            generation_task_id,
            status,
            operator.log,
            price=price_for(operator.hook.settings, request.model, request.prompt_upsampling),
        )
        return operator._metadata_result
    if operator.deferrable and operator._trigger_connection_problem is None:
        defer_to_trigger(operator, generation_task_id)
    operator._metadata_result = wait_in_worker(operator, generation_task_id)
    return operator._metadata_result


def wait_in_worker(operator: ImageGenerationOperator, generation_task_id: str) -> dict[str, Any]:
    """Poll the task from this worker until it ends: its XCom (a timeout cancels it while PENDING)."""
    from airflow_provider_imggen.exceptions import ImageGenerationTaskTimeoutError

    try:
        state = operator.hook.wait_for_task(
            generation_task_id,
            poll_interval=operator.poll_interval,
            max_poll_interval=operator.max_poll_interval,
            timeout=operator.wait_timeout,
        )
    except ImageGenerationTaskTimeoutError:
        operator._cancel_pending(generation_task_id)
        raise
    return operator._task_metadata(state)


def get_job_result(
    operator: ImageGenerationOperator, external_id: JsonValue, context: Context
) -> dict[str, Any]:
    if operator._metadata_result is not None:
        return operator._metadata_result
    # The earlier try's task already SUCCEEDED: get_job_status read its state.
    assert operator._state is not None
    return operator._task_metadata(operator._state)


def defer_to_trigger(operator: ImageGenerationOperator, generation_task_id: str) -> None:
    from airflow_provider_imggen.operators.deferral import task_deferral

    operator.defer(**task_deferral(operator, generation_task_id, operator._submitting_request))
