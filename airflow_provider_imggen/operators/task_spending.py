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


def send_of_task(
    journal: BillingJournal | None, generation_task_id: str, deferred: object = None
) -> tuple[str, datetime] | None:
    """
    The send that created (or adopted) ``generation_task_id``: its spend key and intent time, from the
    billing journal, else from the deferral's kwargs (a journal kept in memory is gone after a deferral);
    None when neither says (then nothing is settled: an open reservation only over-counts).
    """
    import re

    for attempt in reversed(journal.attempts if journal is not None else ()):
        if attempt.generation_task_id == generation_task_id and attempt.spend_key is not None:
            return attempt.spend_key, attempt.sent_at
    if isinstance(deferred, dict) and deferred.get("task") == generation_task_id:
        key, at = deferred.get("key"), deferred.get("at")
        if isinstance(key, str) and re.fullmatch(r"[0-9a-f]{32}", key) and isinstance(at, str):
            try:
                moment = datetime.fromisoformat(at)
            except ValueError:
                return None
            return (key, moment) if moment.tzinfo is not None else None
    return None


def settle_task(
    hook: ImageGenerationHook,
    request: GenerationRequest,
    state: TaskState,
    delivered: int,
    log: Any,
    *,
    sent: tuple[str, datetime] | None,
) -> None:
    """
    Settle the task's reservation, record its payment and emit its metrics (once per send); best effort:
    a reservation left open only over-counts.

    :param sent: the send that created the task (:func:`send_of_task`): its key and intent time
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
    first = True
    try:
        guard = hook.spend_guard()
    except Exception as error:  # billed already: never fail the delivery over the budget's bookkeeping
        log.warning("Could not open this task's budgets to settle them: %s", error)
        guard = None
    if guard is not None and sent is not None:
        key, at = sent
        try:
            guard.settle(key=key, at=at, images=billed, price=price)
        except Exception as error:
            log.warning("Could not settle task %s's budget reservation: %s", state.generation_task_id, error)
        first = guard.record_payment(request, price, key=key, at=at, billed=billed, outcome="billed")
    if not first:
        return  # this send's results were read (and counted) before
    metrics.images_billed(request.model, billed)
    if price is not None:
        metrics.cost("billed", price.currency, price.times(billed))
    if sent is not None:
        metrics.task_latency((datetime.now(UTC) - sent[1]).total_seconds())
