"""
What a native task spent, once its results are read on the worker: its budgets' reservation settled at the
images the service billed, and the billed-images, cost and latency metrics. (The gateway and the
synchronous endpoint settle in the hook, with the answer: :mod:`~airflow_provider_imggen.hooks.spending`.)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_imggen.billing_journal import BillingJournal
    from airflow_provider_imggen.hooks.image_generation import ImageGenerationHook
    from airflow_provider_imggen.request import GenerationRequest
    from airflow_provider_imggen.results import TaskState


def billed_by_task(state: TaskState, delivered: int, asked: int) -> int | None:
    """
    The images a finished task billed: its usage's count (or ``task_metrics.SUCCEEDED``), never fewer
    than it delivered; None when a task that delivered nothing does not say (then it may have billed).
    """
    from airflow_provider_imggen.prices import billed_image_count

    usage = dict(state.usage) if isinstance(state.usage, dict) else {}
    succeeded = state.task_metrics.get("SUCCEEDED") if isinstance(state.task_metrics, dict) else None
    if "image_count" not in usage and isinstance(succeeded, int) and not isinstance(succeeded, bool):
        usage["image_count"] = succeeded
    if delivered == 0 and not isinstance(usage.get("image_count"), int):
        return None
    return billed_image_count(usage, delivered, asked)


def settle_task(
    hook: ImageGenerationHook,
    request: GenerationRequest,
    state: TaskState,
    delivered: int,
    log: Any,
    *,
    journal: BillingJournal | None = None,
) -> None:
    """
    Settle the task's reservation and emit its metrics; best effort (an open reservation over-counts).

    :param journal: the task instance's billing journal: when its submission was sent (the latency's start)
    """
    from airflow_provider_imggen import metrics
    from airflow_provider_imggen.prices import price_for

    billed = billed_by_task(state, delivered, request.n)
    if billed is None:
        log.warning(
            "Task %s ended without saying what it billed: its budget reservation stays counted",
            state.generation_task_id,
        )
        return
    price = price_for(hook.settings, request.model, request.prompt_upsampling)
    metrics.images_billed(request.model, billed)
    if price is not None:
        metrics.cost("billed", price.currency, price.times(billed))
    fingerprint = hook.billable_send(request).fingerprint
    submitted = journal.last_for(fingerprint) if journal is not None else None
    if submitted is not None:
        metrics.task_latency((datetime.now(UTC) - submitted.sent_at).total_seconds())
    guard = hook.budget_guard
    if guard is None:
        return
    try:
        guard.settle(fingerprint, billed, price, since=datetime.now(UTC))
    except Exception as error:
        log.warning("Could not settle task %s's budget reservation: %s", state.generation_task_id, error)
