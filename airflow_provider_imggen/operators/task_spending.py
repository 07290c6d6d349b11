"""
What a native task spent, once its results are read on the worker: its budgets' reservation settled at the
images the service billed, and the billed-images, cost and latency metrics. (The gateway and the
synchronous endpoint settle in the hook, with the answer: :mod:`~airflow_provider_imggen.hooks.spending`.)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    hook: ImageGenerationHook, request: GenerationRequest, state: TaskState, delivered: int, log: Any
) -> None:
    """Settle the task's reservation and emit its metrics; best effort (an open reservation over-counts)."""
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
    latency = _submission_to_end(state)
    if latency is not None:
        metrics.task_latency(latency)
    guard = hook.budget_guard
    if guard is None:
        return
    try:
        guard.settle(hook.billable_send(request).fingerprint, billed, price, since=datetime.now(UTC))
    except Exception as error:
        log.warning("Could not settle task %s's budget reservation: %s", state.generation_task_id, error)


def _submission_to_end(state: TaskState) -> float | None:
    """Seconds from the task's submission to its end, both by the service's clock (same zone)."""
    if state.submit_time is None or state.end_time is None:
        return None
    try:
        seconds = (
            datetime.fromisoformat(state.end_time) - datetime.fromisoformat(state.submit_time)
        ).total_seconds()
    except (TypeError, ValueError):
        return None
    return seconds if 0 <= seconds < 86400 else None
