"""
What one billable send spends, around :meth:`~airflow_provider_imggen.hooks.billable.BillableSendHook.
_send_billable`: its intent with a key of its own, its budgets' reservation under that key
(:mod:`~airflow_provider_imggen.budgets`), its payment record, and its metrics
(:mod:`~airflow_provider_imggen.metrics`).

After the reservation, the money rules decide: an answer settles what it billed; a native task keeps its
reservation until its results are read (the operator settles it then); a send the service provably did
nothing with gives it back; any other failure counts the images asked as spent (outcome unknown), for good.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_provider_imggen.billing_journal import Attempt, BillingJournal
    from airflow_provider_imggen.budgets.guard import BudgetGuard
    from airflow_provider_imggen.hooks.billable import BillableSend, BillableSendHook
    from airflow_provider_imggen.request import GenerationRequest


class SpendAccount:
    """One send's spending (see the module)."""

    def __init__(
        self,
        hook: BillableSendHook,
        request: GenerationRequest,
        sending: BillableSend,
        journal: BillingJournal,
    ) -> None:
        from airflow_provider_imggen.prices import price_for

        self.hook, self.request, self.sending, self.journal = hook, request, sending, journal
        self.guard: BudgetGuard | None = hook.spend_guard()
        self.price = price_for(hook.settings, request.model, request.prompt_upsampling)
        self.attempt: Attempt | None = None
        self.sent_at: float | None = None
        self.counted: set[str] = set()  # the keys of sends already counted as failed

    def intent(self) -> Attempt:
        """
        Reserve the send's estimate under a new key, then record its intent with that key and moment. A
        refusal leaves no intent (nothing was about to leave: no retry is stopped, no earlier attempt
        hidden); an intent that cannot be recorded gives the reservation back.
        """
        key, at = secrets.token_hex(16), datetime.now(UTC)
        if self.guard is not None:
            self.guard.reserve(self.request, self.price, key=key, at=at)
        try:
            attempt = self.journal.record_intent(
                fingerprint=self.sending.fingerprint,
                endpoint=self.sending.endpoint,
                model=self.request.model,
                images=self.request.n,
                spend_key=key,
                at=at,
            )
        except BaseException:
            if self.guard is not None:
                self.guard.release(key=key, at=at)
            raise
        self.attempt = attempt
        return attempt

    def about_to_send(self) -> None:
        self.sent_at = time.monotonic()

    def release(self) -> None:
        """Nothing left, or the service provably did nothing: the reservation goes back."""
        attempt = self.attempt
        if self.guard is None or attempt is None or attempt.spend_key is None:
            return
        self.guard.release(key=attempt.spend_key, at=attempt.sent_at)

    def failed(self, code: str | None, *, processed: bool, throttled: bool = False) -> None:
        """
        The send failed: given back when provably not processed, else counted as spent for good (once per
        send: a 5xx resent under ``retry_unknown_outcome`` is counted before the resend, not again after).

        :param throttled: a 429 (counted by the quota wait's metric, not as a failure)
        """
        from airflow_provider_imggen import metrics

        key = self.attempt.spend_key if self.attempt is not None else None
        if key is not None and key in self.counted:
            return
        if key is not None:
            self.counted.add(key)
        if not processed:
            if not throttled:
                metrics.failure(code)
            self.release()
            return
        metrics.failure(code)
        self._spent(self.request.n, outcome="unknown")

    def throttled(self) -> None:
        """A 429 (nothing billed) before the next send: the reservation goes back until then."""
        self.release()

    def answered(self, answer: object) -> None:
        """An answer with its images (the gateway, the synchronous endpoint): settle what it billed."""
        from airflow_provider_imggen.prices import billed_image_count

        usage = getattr(answer, "usage", None)
        images = getattr(answer, "images", ())
        billed = billed_image_count(usage if isinstance(usage, dict) else {}, len(images), self.request.n)
        self._spent(billed, outcome="billed")

    def submitted(self) -> None:
        """A native task was created: its reservation waits for its results (the operator settles it)."""
        from airflow_provider_imggen import metrics

        if self.price is not None:
            metrics.cost("estimated", self.price.currency, self.price.times(self.request.n))

    def _spent(self, images: int, *, outcome: str) -> None:
        """Settle, record the payment and count the metrics (once per send); best effort."""
        from airflow_provider_imggen import metrics

        first = True
        attempt = self.attempt
        if self.guard is not None and attempt is not None and attempt.spend_key is not None:
            try:
                self.guard.settle(key=attempt.spend_key, at=attempt.sent_at, images=images, price=self.price)
            except Exception as error:  # still reserved: over-counts, never under-counts
                self.hook.log.warning("Could not settle this send's budget reservation: %s", error)
            first = self.guard.record_payment(
                self.request,
                self.price,
                key=attempt.spend_key,
                at=attempt.sent_at,
                billed=images,
                outcome=outcome,
            )
        if not first:
            return
        if self.price is not None:
            metrics.cost("estimated", self.price.currency, self.price.times(self.request.n))
        if outcome == "billed":
            metrics.images_billed(self.request.model, images)
            if self.price is not None:
                metrics.cost("billed", self.price.currency, self.price.times(images))
            if self.sent_at is not None:
                metrics.task_latency(time.monotonic() - self.sent_at)
