"""
What a native task spent, once its results are read on the worker: its reservation settled at the images
the service billed, its payment recorded, and the billed-images, cost and latency metrics. (The gateway and
the synchronous endpoint settle in the hook, with the answer: :mod:`~airflow_provider_imggen.hooks.spending`.)

The send is found in the billing journal (its ``spend_key`` and intent time): a try that reconnects to a task
an earlier try submitted settles that try's reservation.
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
    journal: BillingJournal | None,
) -> None:
    """
    Settle the task's reservation, record its payment and emit its metrics (once per send); best effort:
    a reservation left open only over-counts.

    :param journal: the task instance's billing journal (None: this process does not know the send)
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
    sent = journal.last_for(hook.billable_send(request).fingerprint) if journal is not None else None
    first = True
    try:
        guard = hook.spend_guard()
    except Exception as error:  # billed already: never fail the delivery over the budget's bookkeeping
        log.warning("Could not open this task's budgets to settle them: %s", error)
        guard = None
    if guard is not None and sent is not None and sent.spend_key is not None:
        try:
            guard.settle(key=sent.spend_key, at=sent.sent_at, images=billed, price=price)
        except Exception as error:
            log.warning("Could not settle task %s's budget reservation: %s", state.generation_task_id, error)
        first = guard.record_payment(
            request, price, key=sent.spend_key, at=sent.sent_at, billed=billed, outcome="billed"
        )
    if not first:
        return  # this send's results were read (and counted) before
    metrics.images_billed(request.model, billed)
    if price is not None:
        metrics.cost("billed", price.currency, price.times(billed))
    if sent is not None:
        metrics.task_latency((datetime.now(UTC) - sent.sent_at).total_seconds())
