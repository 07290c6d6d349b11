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
    from collections.abc import Callable

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
        # The journal's key of the request (what is sent) and the ledger's (what is sent, and to whom).
        self.send_fingerprint = hook.billable_send(request).fingerprint
        self.fingerprint = ledger_fingerprint(self.send_fingerprint, hook.settings)
        owner = make_owner(ti.dag_id, ti.run_id, ti.task_id, _map_index(ti), int(ti.try_number or 1))
        self.claims: LedgerClaims = LedgerClaims(store=open_ledger_store(setting), owner=owner, log=log)
        self._request_fields = request_fields(request)
        self.claim: Claim | None = None
        # Whether this try's billing journal survives it (the task state store): see enter().
        self.durable_journal = True

    @classmethod
    def open(cls, *, durable_journal: bool, **kwargs: Any) -> LedgerGate | None:
        """
        The gate of a request, or None when there is nothing for the ledger to do: the connection keeps
        none, or the operator delivers what reuse cannot (``b64_json`` files below ``output_path``, a task
        id for the sensor with ``wait_for_completion=False``).
        """
        hook: ImageGenerationHook = kwargs["hook"]
        request: GenerationRequest = kwargs["request"]
        if not hook.settings.ledger or request.response_format != "url" or not kwargs.pop("waits", True):
            return None
        gate = cls(**kwargs)
        gate.durable_journal = durable_journal
        return gate

    def enter(self) -> dict[str, Any] | None:
        """The XCom of the request's stored images (nothing to send), or None once claimed for this run."""
        from airflow_provider_imggen.ledger.claims import Stored

        if not self.reuse:
            self.claim = self.claims.take(self.fingerprint, self._request_fields)
            self.log.info("reuse=False: paying for this request again, whatever the ledger holds")
            return None
        while True:
            outcome = self.claims.claim(self.fingerprint, self._request_fields)
            if not isinstance(outcome, Stored):
                break
            reused = self._verified_xcom(outcome.entry)
            if reused is not None:
                return reused
            # At the version read: of several runs finding the same objects gone, one pays, the rest wait.
            taken = self.claims.take_over(outcome, self._request_fields)
            if taken is not None:
                outcome = taken
                break
        if outcome is not None and outcome.entry.state == "billed" and not self.durable_journal:
            from airflow_provider_imggen.exceptions import ImageGenerationOutcomeUnknownError

            raise ImageGenerationOutcomeUnknownError(
                "The ledger shows this request billed by an earlier try of this task "
                f"({outcome.entry.owner}), and without a task state store (durable=False, or Airflow before "
                "3.3) nothing shows what came of it: not sent again (reuse=False pays again)",
                model=self.request.model,
                images_at_risk=self.request.n,
                request_id=outcome.entry.request_id,
                generation_task_id=outcome.entry.generation_task_id,
            )
        self.claim = outcome
        return None

    def close(self) -> None:
        """Let the store's connection go (a task may wait hours for its generation after claiming)."""
        try:
            self.claims.store.close()
        except Exception as error:
            self.log.debug("Closing the ledger store: %s", error)

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
            if self.claim is not None and self.claim.entry.state != "billed":
                # Paid from now on: the claim is no longer one a stale-claim rule may take over.
                self.claim = self.claims.billed(
                    self.claim, generation_task_id=generation_task_id, request_id=None
                )
            self.claims.record_task(
                task_key(self.settings, generation_task_id), generation_task_id, self.fingerprint
            )
        except Exception as error:
            self.log.warning("Could not record task %s in the ledger: %s", generation_task_id, error)

    def billed(self, xcom: dict[str, Any]) -> dict[str, Any]:
        """Record that the request was paid for; the XCom, naming the ledger entry for the transfer."""
        if self.claim is not None:
            try:
                self.claim = self.claims.billed(
                    self.claim,
                    generation_task_id=_text(xcom.get("generation_task_id")),
                    request_id=_text(xcom.get("request_id")),
                )
            except Exception as error:  # the images are paid for and in hand: deliver them
                self.log.error("Could not record the billed generation in the ledger: %s", error)
        return {**xcom, "ledger_fingerprint": self.fingerprint}

    def generate_through(
        self, journal: BillingJournal, generate: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        """
        ``generate()``'s XCom, unless the ledger holds the request's images (their XCom then, nothing
        sent); the claim is settled whatever ``generate`` does, a deferral included.
        """
        try:
            reused = self.enter()
            if reused is not None:
                return reused
            self.attach(journal)
            try:
                xcom = generate()
            except BaseException:
                # A deferral too: the journal says whether anything was billed before it.
                self.failed(journal)
                raise
            return self.billed(xcom)
        finally:
            self.close()

    def failed(self, journal: BillingJournal) -> None:
        """
        After a failed generation: release the claim when the journal proves nothing was billed, else
        mark it billed (outcome unknown counts as paid: no other run may take it over and pay again).
        """
        if self.claim is None:
            return
        attempt = journal.last_for(self.send_fingerprint)
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

        from airflow_provider_imggen.ledger.claims import images_statement
        from airflow_provider_imggen.sealed_urls import opens_to

        if not opens_to(
            entry.request.get("images_sealed"), images_statement(entry.fingerprint, entry.images)
        ):
            # Written by someone without this deployment's Fernet key (or by a worker without one).
            self.log.warning(
                "The ledger's stored images of this request are not sealed with this deployment's Fernet "
                "key: not reused. Paying again"
            )
            return None
        s3 = S3Hook(aws_conn_id=self.aws_conn_id).get_conn()
        for image in entry.images:
            where = f"s3://{image.bucket}/{image.key}"
            try:
                answer = s3.get_object(Bucket=image.bucket, Key=image.key)
                if int(answer.get("ContentLength") or -1) != image.bytes:
                    answer["Body"].close()
                    self._not_reusable(image.index, where, "its size is not the recorded one")
                    return None
                digest = hashlib.sha256()
                while chunk := answer["Body"].read(1 << 20):
                    digest.update(chunk)
            except Exception as error:
                if _missing(error):
                    self._not_reusable(image.index, where, "it is gone")
                    return None
                from airflow_provider_imggen.ledger.store import LedgerStoreError

                # Throttled, unreachable, forbidden: nothing is billed, and a retry may read it.
                raise LedgerStoreError(
                    f"Stored image {image.index} ({where}) of this request could not be read back to verify "
                    f"it ({type(error).__name__}): nothing was billed. Check aws_conn_id "
                    f"({self.aws_conn_id}); a retry tries again"
                ) from None
            if digest.hexdigest() != image.sha256:
                self._not_reusable(image.index, where, "it no longer has the recorded sha256")
                return None
        self.log.info(
            "The ledger holds this request's %d image(s), stored by %s and verified by sha256: reused, "
            "nothing billed",
            len(entry.images),
            entry.owner,
        )
        from airflow_provider_imggen import metrics

        metrics.images_reused(self.request.model, len(entry.images))
        return reused_xcom(entry, self.request, self.aws_conn_id, self.fingerprint)

    def _not_reusable(self, index: int, where: str, why: str) -> None:
        self.log.warning(
            "Stored image %d (%s) of this request is not reused: %s. Paying again", index, where, why
        )


def _missing(error: BaseException) -> bool:
    """Whether S3 said the object (or its bucket) does not exist."""
    response = getattr(error, "response", None)
    code = str((response or {}).get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""
    return code in ("NoSuchKey", "404", "NoSuchBucket", "NotFound")


def with_ledger_fingerprint(
    metadata: dict[str, Any], hook: ImageGenerationHook, request: GenerationRequest
) -> dict[str, Any]:
    """``metadata`` naming its ledger entry when the connection keeps a ledger (for the transfer)."""
    if not hook.settings.ledger:
        return metadata
    from airflow_provider_imggen.ledger.claims import ledger_fingerprint

    return {
        **metadata,
        "ledger_fingerprint": ledger_fingerprint(hook.billable_send(request).fingerprint, hook.settings),
    }


def reused_xcom(
    entry: LedgerEntry, request: GenerationRequest, aws_conn_id: str | None, fingerprint: str
) -> dict[str, Any]:
    """The generation XCom of images the ledger holds: their S3 locations, sizes and sha256."""
    from airflow_provider_imggen.metadata import request_fields
    from airflow_provider_imggen.prices import cost_record
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
        # Nothing billed by this run: the images were paid for by the run that stored them.
        cost=cost_record(None, asked=request.n, billed_images=0),
    ).to_dict()
    return {**record, "reused": True, "ledger_fingerprint": fingerprint}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _map_index(ti: Any) -> int:
    index = getattr(ti, "map_index", -1)
    return index if isinstance(index, int) else -1
