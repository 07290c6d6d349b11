"""
The generation operator's side of the billing ledger (the connection's ``ledger`` setting): claim the
request before paying, reuse images already stored, record what was billed.

:class:`LedgerGate` wraps one generation: :meth:`LedgerGate.enter` returns the XCom of reused images (then
nothing is sent) or claims the request for this run; :meth:`LedgerGate.billed` and
:meth:`LedgerGate.failed` record what came of it. Stored images are reused only once their bytes, read
back from S3, have the sha256 the ledger recorded: the ledger, like XCom, can be edited.
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_imggen.billing_journal import BillingJournal
    from airflow_provider_imggen.hooks.image_generation import ImageGenerationHook
    from airflow_provider_imggen.ledger.claims import Claim, LedgerClaims
    from airflow_provider_imggen.ledger.entry import LedgerEntry
    from airflow_provider_imggen.request import GenerationRequest


class LedgerGate:
    """
    One generation's passage through the ledger.

    :param hook: the operator's hook (its connection names the ledger)
    :param request: the validated request
    :param ti: the running task instance (the claim's owner)
    :param reuse: reuse stored images (False: pay again, and record the new ones)
    :param aws_conn_id: the aws connection that reads stored images back to verify them
    :param log: the operator's log
    """

    def __init__(
        self,
        *,
        hook: ImageGenerationHook,
        request: GenerationRequest,
        ti: Any,
        reuse: bool,
        aws_conn_id: str | None,
        log: Any,
    ) -> None:
        from airflow_provider_imggen.ledger import make_owner, open_ledger_store
        from airflow_provider_imggen.ledger.claims import LedgerClaims, ledger_fingerprint
        from airflow_provider_imggen.metadata import request_fields

        setting = hook.settings.ledger
        assert setting is not None, "LedgerGate.open() checks the connection first"
        self.request = request
        self.settings = hook.settings
        self.reuse = reuse
        self.aws_conn_id = aws_conn_id
        self.log = log
        self.fingerprint = ledger_fingerprint(hook.billable_send(request).fingerprint, hook.settings)
        owner = make_owner(ti.dag_id, ti.run_id, ti.task_id, _map_index(ti), int(ti.try_number or 1))
        self.claims: LedgerClaims = LedgerClaims(store=open_ledger_store(setting), owner=owner, log=log)
        self._request_fields = request_fields(request)
        self.claim: Claim | None = None

    @classmethod
    def open(cls, **kwargs: Any) -> LedgerGate | None:
        """The gate of a request, or None when the connection keeps no ledger."""
        hook: ImageGenerationHook = kwargs["hook"]
        return cls(**kwargs) if hook.settings.ledger else None

    def enter(self) -> dict[str, Any] | None:
        """The XCom of the request's stored images (nothing to send), or None once claimed for this run."""
        from airflow_provider_imggen.ledger.claims import Stored

        if not self.reuse:
            self.claim = self.claims.take(self.fingerprint, self._request_fields)
            self.log.info("reuse=False: paying for this request again, whatever the ledger holds")
            return None
        outcome = self.claims.claim(self.fingerprint, self._request_fields)
        if isinstance(outcome, Stored):
            reused = self._verified_xcom(outcome.entry)
            if reused is not None:
                return reused
            self.claim = self.claims.take(self.fingerprint, self._request_fields)
            return None
        self.claim = outcome
        return None

    def attach(self, journal: BillingJournal) -> None:
        """Let the journal's recoveries skip native tasks the ledger records for other requests."""
        from airflow_provider_imggen.ledger.claims import task_key

        journal.foreign_task = lambda generation_task_id: self.claims.owns_elsewhere(
            task_key(self.settings, generation_task_id), self.fingerprint
        )

    def record_task(self, generation_task_id: str) -> None:
        """Record the native task this request created (best effort: recoveries fail closed without)."""
        from airflow_provider_imggen.ledger.claims import task_key

        try:
            self.claims.record_task(
                task_key(self.settings, generation_task_id), generation_task_id, self.fingerprint
            )
        except Exception as error:
            self.log.warning("Could not record task %s in the ledger: %s", generation_task_id, error)

    def billed(self, xcom: dict[str, Any]) -> dict[str, Any]:
        """Record that the request was paid for; the XCom, naming the ledger entry for the transfer."""
        if self.claim is not None:
            self.claim = self.claims.billed(
                self.claim,
                generation_task_id=_text(xcom.get("generation_task_id")),
                request_id=_text(xcom.get("request_id")),
            )
        return {**xcom, "ledger_fingerprint": self.fingerprint}

    def failed(self, journal: BillingJournal, fingerprint: str) -> None:
        """
        After a failed generation: release the claim when the journal proves nothing was billed, else
        mark it billed (outcome unknown counts as paid: no other run may take it over and pay again).
        """
        if self.claim is None:
            return
        attempt = journal.last_for(fingerprint)
        try:
            if attempt is None or attempt.outcome == "not_processed":
                self.claims.release(self.claim)
            else:
                self.claims.billed(
                    self.claim, generation_task_id=attempt.generation_task_id, request_id=attempt.request_id
                )
        except Exception as error:  # the generation's own error is the one to raise
            self.log.warning("Could not record the failed generation in the ledger: %s", error)

    def _verified_xcom(self, entry: LedgerEntry) -> dict[str, Any] | None:
        """The XCom of ``entry``'s images when every one reads back from S3 with its sha256, else None."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        s3 = S3Hook(aws_conn_id=self.aws_conn_id)
        for image in entry.images:
            try:
                body = s3.get_conn().get_object(Bucket=image.bucket, Key=image.key)["Body"]
                digest, size = hashlib.sha256(), 0
                while chunk := body.read(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
            except Exception as error:
                self.log.warning(
                    "Stored image %d (s3://%s/%s) of this request cannot be read back (%s): paying again",
                    image.index,
                    image.bucket,
                    image.key,
                    type(error).__name__,
                )
                return None
            if digest.hexdigest() != image.sha256 or size != image.bytes:
                self.log.warning(
                    "Stored image %d (s3://%s/%s) of this request no longer has the recorded sha256: "
                    "paying again",
                    image.index,
                    image.bucket,
                    image.key,
                )
                return None
        self.log.info(
            "The ledger holds this request's %d image(s), stored by %s and verified by sha256: reused, "
            "nothing billed",
            len(entry.images),
            entry.owner,
        )
        return reused_xcom(entry, self.request, self.aws_conn_id, self.fingerprint)


def reused_xcom(
    entry: LedgerEntry, request: GenerationRequest, aws_conn_id: str | None, fingerprint: str
) -> dict[str, Any]:
    """The generation XCom of images the ledger holds: their S3 locations, sizes and sha256."""
    from airflow_provider_imggen.metadata import request_fields
    from airflow_provider_imggen.records import REQUEST_FIELDS, GenerationRecord, ImageRecord
    from airflow_provider_imggen.request import MAX_SEED

    fields = {name: value for name, value in request_fields(request).items() if name in REQUEST_FIELDS}
    seed = request.seed
    created_at = datetime.fromisoformat(entry.claimed_at.replace("Z", "+00:00"))
    connection = f"{aws_conn_id}@" if aws_conn_id else ""
    record = GenerationRecord(
        **fields,
        response_format=request.response_format,
        created=int(created_at.timestamp()),
        created_at=created_at.isoformat(),
        request_id=entry.request_id,
        images=tuple(
            ImageRecord(
                index=image.index,
                seed=None if seed is None else (seed + image.index) % (MAX_SEED + 1),
                location=f"s3://{connection}{image.bucket}/{image.key}",
                bytes=image.bytes,
                sha256=image.sha256,
            )
            for image in entry.images
        ),
        generation_task_id=entry.generation_task_id,
        warnings=(
            f"Reused from the billing ledger: stored by {entry.owner}, verified by sha256; nothing billed "
            f"(reuse=False pays again) at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
        ),
    ).to_dict()
    return {**record, "reused": True, "ledger_fingerprint": fingerprint}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _map_index(ti: Any) -> int:
    index = getattr(ti, "map_index", -1)
    return index if isinstance(index, int) else -1
