"""
What one billable send spends: its budgets' reservation (:mod:`~airflow_provider_imggen.budgets`) and its
metrics (:mod:`~airflow_provider_imggen.metrics`), around :meth:`~airflow_provider_imggen.hooks.billable.
BillableSendHook._send_billable`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datetime import datetime

    from airflow_provider_imggen.hooks.billable import BillableSend, BillableSendHook
    from airflow_provider_imggen.request import GenerationRequest


class SpendAccount:
    """
    One send's budgets and metrics (the hook's ``budget_guard``, :mod:`~airflow_provider_imggen.budgets`):
    reserve before the intent, settle what the answer billed, release only what provably was not processed.
    A native task's reservation stays until its results are read (the operator settles it then). Settling
    and metrics are best effort: the answer is paid for and in hand, and a reservation left open only ever
    over-counts.
    """

    def __init__(self, hook: BillableSendHook, request: GenerationRequest, sending: BillableSend) -> None:
        from airflow_provider_imggen.prices import price_for

        self.hook, self.request, self.sending = hook, request, sending
        self.guard = hook.budget_guard
        self.price = price_for(hook.settings, request.model, request.prompt_upsampling)
        self.reserved_at: datetime | None = None
        self.sent_at: float | None = None

    def reserve(self) -> None:
        if self.guard is not None:
            self.reserved_at = self.guard.reserve(self.request, self.sending.fingerprint, self.price)

    def about_to_send(self) -> None:
        from airflow_provider_imggen import metrics

        self.sent_at = time.monotonic()
        if self.price is not None:
            metrics.cost("estimated", self.price.currency, self.price.times(self.request.n))

    def release(self) -> None:
        if self.guard is None or self.reserved_at is None:
            return
        try:
            self.guard.release(self.sending.fingerprint, since=self.reserved_at)
        except Exception as error:
            self.hook.log.warning("Could not give back the budget reservation of this send: %s", error)

    def failed(self, code: str | None, *, processed: bool) -> None:
        from airflow_provider_imggen import metrics

        metrics.failure(code)
        if not processed:
            self.release()

    def answered(self, answer: object) -> None:
        """An answer with its images (the gateway, the synchronous endpoint): settle what it billed."""
        from airflow_provider_imggen import metrics
        from airflow_provider_imggen.prices import billed_image_count

        usage = getattr(answer, "usage", None)
        images = getattr(answer, "images", ())
        billed = billed_image_count(usage if isinstance(usage, dict) else {}, len(images), self.request.n)
        metrics.images_billed(self.request.model, billed)
        if self.price is not None:
            metrics.cost("billed", self.price.currency, self.price.times(billed))
        if self.sent_at is not None:
            metrics.task_latency(time.monotonic() - self.sent_at)
        if self.guard is not None and self.reserved_at is not None:
            try:
                self.guard.settle(self.sending.fingerprint, billed, self.price, since=self.reserved_at)
            except Exception as error:
                self.hook.log.warning("Could not settle this send's budget reservation: %s", error)
