"""
Claims on the billing ledger: who pays for a request, and what a run that finds it already paid for does.

Before paying, a generation claims the request's fingerprint (:func:`ledger_fingerprint`) by compare-and-set
(:class:`~airflow_provider_imggen.ledger.store.LedgerStore`): the one run whose ``create`` (or ``replace`` of
a released entry) wins pays; every other run asking for the same fingerprint meanwhile waits for the
winner's images to be stored and reuses them. A request whose images are ``stored`` is not paid for again.
The claim moves ``claimed`` → ``billed`` (the service answered; its task or request id recorded) →
``stored`` (the transfer landed the images; :func:`record_stored`), or → ``released`` when nothing was billed.

The triggerer's submissions (a later issue) claim through the same calls: each is one blocking store call,
run off the event loop with ``asyncio.to_thread``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from airflow_provider_imggen.exceptions import ImageGenerationError
from airflow_provider_imggen.ledger.entry import LedgerEntry, StoredImage, utc_now

if TYPE_CHECKING:
    from airflow_provider_imggen.connection_settings import ConnectionSettings
    from airflow_provider_imggen.ledger.store import LedgerStore, Version

# How long a run waits for another run's claim on the same request to be stored before giving up.
DEFAULT_CLAIM_WAIT = 900.0
# A claim older than this whose owner never sent anything is taken over: its task died before paying. Longer
# than the operator's default quota wait (an hour) with its request timeout: its owner may still send.
STALE_CLAIM_SECONDS = 7200.0
# A billed entry not stored after this long never will be (no transfer stores it): there is nothing to
# reuse, and a run asking for the request pays for it (an S3 transfer takes seconds to minutes).
BILLED_UNSTORED_SECONDS = 900.0
_POLL_SECONDS = 2.0


class LedgerClaimHeldError(ImageGenerationError):
    """
    Another run holds the claim on this request and did not store its images in time. Nothing was billed
    by this run; Airflow may retry (the images may be stored by then). ``reuse=False`` pays again instead.
    """


def account_digest(settings: ConnectionSettings) -> str:
    """Whose account a connection sends to (base URL, workspace, the key's digest), as one sha256."""
    account = hashlib.sha256(settings.api_key.encode()).hexdigest()
    identity = {"base_url": settings.base_url, "workspace": settings.workspace, "account": account}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def ledger_fingerprint(send_fingerprint: str, settings: ConnectionSettings) -> str:
    """
    The ledger's key of a request: what is sent (endpoint and body, with model, every parameter and the
    seed) and to whom (the API's base URL, the workspace, and the key's digest: another account's images
    are another account's).
    """
    account = hashlib.sha256(settings.api_key.encode()).hexdigest()
    identity = {
        "send": send_fingerprint,
        "base_url": settings.base_url,
        "workspace": settings.workspace,
        "account": account,
    }
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def task_key(settings: ConnectionSettings, generation_task_id: str) -> str:
    """The ledger's key of a native task's record (which request created it)."""
    canonical = json.dumps({"task": generation_task_id, "base_url": settings.base_url}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Claim:
    """This run's claim on a fingerprint: the entry it wrote and the store's version of it."""

    entry: LedgerEntry
    version: Version


@dataclass(frozen=True)
class Stored:
    """The request's images are stored already (verify them before reuse), at the store's version."""

    entry: LedgerEntry
    version: Version


def _same_task_instance(owner: str, other: str) -> bool:
    """Whether two owners are tries of one task instance (``dag/run/task/map/try``: all but the try)."""
    return owner.rsplit("/", 1)[0] == other.rsplit("/", 1)[0]


def _same_run(owner: str, other: str) -> bool:
    """Whether two owners are tasks of one DAG run (``dag/run/...``)."""
    return owner.split("/", 2)[:2] == other.split("/", 2)[:2]


def _age_seconds(timestamp: str) -> float:
    from datetime import UTC, datetime

    return (datetime.now(tz=UTC) - datetime.fromisoformat(timestamp.replace("Z", "+00:00"))).total_seconds()


class LedgerClaims:
    """
    One run's dealings with the ledger for one request.

    :param store: the ledger store (the connection's ``ledger`` setting)
    :param owner: this task instance, ``dag_id/run_id/task_id/map_index/try_number``
    :param log: where to say what was decided
    :param wait: how long to wait for another run's claim to be stored, in seconds
    """

    def __init__(self, *, store: LedgerStore, owner: str, log: Any, wait: float = DEFAULT_CLAIM_WAIT) -> None:
        self.store = store
        self.owner = owner
        self.log = log
        self.wait = wait

    def claim(self, fingerprint: str, request: dict[str, Any]) -> Claim | Stored | None:
        """
        Claim ``fingerprint`` for this run (then pay), the stored entry (then reuse), or None (pay without
        the ledger: another task of this very run asks for the same request, and waiting for it could
        deadlock a transfer that needs both). Waits while another run holds a live claim.

        - ``claimed`` by another run: waited for; taken over once ``STALE_CLAIM_SECONDS`` old (its owner
          died before paying: a send marks the claim ``billed`` first).
        - ``billed`` by another run: waited for (its images are on their way to S3), up to ``wait``; once
          ``BILLED_UNSTORED_SECONDS`` old it is taken over: that run paid and delivered its images without
          storing them (no transfer, the sensor, end_from_trigger), so there is nothing to reuse.
        - this task instance's own earlier try: ``claimed`` or ``released`` is taken; ``billed`` is kept as
          it is (the try's billing journal says what it paid for; the caller checks it is durable).

        :raises LedgerClaimHeldError: another run held the claim for longer than ``wait``
        """
        deadline = time.monotonic() + self.wait
        said = False
        while True:
            found = self.store.read(fingerprint)
            if found is None:
                version = self.store.create(self._entry(fingerprint, "claimed", request))
                if version is not None:
                    return Claim(self._entry(fingerprint, "claimed", request), version)
                continue  # another run created it first: read what it wrote
            entry, version = found
            if entry.state == "stored":
                return Stored(entry, version)
            mine = _same_task_instance(entry.owner, self.owner)
            if mine and entry.state == "billed":
                return Claim(entry, version)
            if not mine and _same_run(entry.owner, self.owner):
                self.log.warning(
                    "Another task of this run (%s) asks for the very same request: paid for again, without "
                    "the ledger (waiting for it could deadlock a transfer that needs both)",
                    entry.owner,
                )
                return None
            age = _age_seconds(entry.updated_at)
            takeable = (
                entry.state == "released"
                or mine
                or (entry.state == "claimed" and age > STALE_CLAIM_SECONDS)
                or (entry.state == "billed" and age > BILLED_UNSTORED_SECONDS)
            )
            if takeable:
                taken = self._entry(fingerprint, "claimed", request)
                new_version = self.store.replace(taken, version)
                if new_version is not None:
                    return Claim(taken, new_version)
                continue
            if time.monotonic() > deadline:
                raise LedgerClaimHeldError(
                    f"The ledger shows this request {entry.state} by {entry.owner} since {entry.claimed_at}, "
                    f"not stored after {self.wait:.0f}s of waiting: nothing was billed by this run. A retry "
                    "reuses the images once stored; reuse=False pays for them again"
                )
            if not said:
                self.log.info(
                    "The same request is %s by %s (since %s): waiting for its images to be stored instead "
                    "of paying again",
                    entry.state,
                    entry.owner,
                    entry.claimed_at,
                )
                said = True
            time.sleep(_POLL_SECONDS)

    def take_over(self, stored: Stored, request: dict[str, Any]) -> Claim | None:
        """
        Claim a stored entry whose images no longer verify, at the version read: None when another run
        changed it meanwhile (the caller claims again, and waits for that run).
        """
        taken = self._entry(stored.entry.fingerprint, "claimed", request)
        version = self.store.replace(taken, stored.version)
        return Claim(taken, version) if version is not None else None

    def take(self, fingerprint: str, request: dict[str, Any]) -> Claim:
        """Claim ``fingerprint`` whatever the ledger holds (``reuse=False``: this run pays again)."""
        while True:
            entry = self._entry(fingerprint, "claimed", request)
            found = self.store.read(fingerprint)
            version = self.store.create(entry) if found is None else self.store.replace(entry, found[1])
            if version is not None:
                return Claim(entry, version)

    def record_task(self, task_key: str, generation_task_id: str, fingerprint: str) -> None:
        """
        Record that this run's request (``fingerprint``) created a native task: another run's recovery of
        a lost submission with the same prompt never adopts it (:meth:`owns_elsewhere`).
        """
        if not record_task(self.store, self.owner, task_key, generation_task_id, fingerprint):
            self.log.warning("The ledger already records task %s for another request", generation_task_id)

    def owns_elsewhere(self, task_key: str, fingerprint: str) -> bool:
        """Whether the ledger records the task behind ``task_key`` for a request other than ours."""
        return owns_elsewhere(self.store, task_key, fingerprint)

    def billed(self, claim: Claim, *, generation_task_id: str | None, request_id: str | None) -> Claim:
        """Record that the claim's request was paid for (best effort: the journal is the safety net)."""
        entry = replace(
            claim.entry,
            state="billed",
            generation_task_id=generation_task_id,
            request_id=request_id,
            updated_at=utc_now(),
        )
        return self._replace(claim, entry, "billed")

    def release(self, claim: Claim) -> None:
        """Give the claim up: nothing was billed (another run may claim it at once)."""
        self._replace(claim, replace(claim.entry, state="released", updated_at=utc_now()), "released")

    def _replace(self, claim: Claim, entry: LedgerEntry, what: str) -> Claim:
        version = self.store.replace(entry, claim.version)
        if version is None:
            self.log.warning("The ledger entry changed under this run's claim: not recorded as %s", what)
            return claim
        return Claim(entry, version)

    def _entry(self, fingerprint: str, state: str, request: dict[str, Any]) -> LedgerEntry:
        now = utc_now()
        return LedgerEntry(
            fingerprint=fingerprint,
            state=state,  # type: ignore[arg-type]
            owner=self.owner,
            claimed_at=now,
            updated_at=now,
            request=request,
        )


def record_task(
    store: LedgerStore, owner: str, task_key: str, generation_task_id: str, fingerprint: str
) -> bool:
    """
    Record in the ledger that the request ``fingerprint`` (or a batch's slot) created a native task; False
    when the ledger already records it for another request.
    """
    now = utc_now()
    entry = LedgerEntry(
        fingerprint=task_key,
        state="billed",
        owner=owner,
        claimed_at=now,
        updated_at=now,
        generation_task_id=generation_task_id,
        request={"for": fingerprint},
    )
    if store.create(entry) is not None:
        return True
    return not owns_elsewhere(store, task_key, fingerprint)


def owns_elsewhere(store: LedgerStore, task_key: str, fingerprint: str) -> bool:
    """Whether the ledger records the task behind ``task_key`` for a request other than ``fingerprint``."""
    found = store.read(task_key)
    return found is not None and found[0].request.get("for") != fingerprint


def images_statement(fingerprint: str, images: tuple[StoredImage, ...]) -> str:
    """What the deployment vouches for with its Fernet key: these objects hold this request's images."""
    return json.dumps(
        {"fingerprint": fingerprint, "images": [image.to_dict() for image in images]},
        sort_keys=True,
        separators=(",", ":"),
    )


def record_stored(
    store: LedgerStore,
    fingerprint: str,
    images: tuple[StoredImage, ...],
    *,
    request_id: str | None,
    generation_task_id: str | None,
    log: Any,
) -> bool:
    """
    Record, after a transfer stored a generation's images, that the request's images are in S3.

    Only an entry billed for this very answer (the request id and task id the generation recorded when it
    was billed) is completed: a fingerprint read from an XCom, which anyone can edit, cannot point another
    request's entry at these images. Returns whether the entry was recorded.
    """
    for _ in range(5):
        found = store.read(fingerprint)
        if found is None:
            log.warning("The ledger has no entry for this generation: its stored images are not recorded")
            return False
        entry, version = found
        if entry.state == "stored" and entry.images == images and entry.request.get("images_sealed"):
            return True
        # A native task is its id (a deferred generation's XCom carries the status query's request id, not
        # the submission's); a gateway answer is its request id. Neither known: nothing proves it.
        if generation_task_id is not None:
            same_answer = entry.generation_task_id == generation_task_id
        else:
            same_answer = request_id is not None and entry.request_id == request_id
        if entry.state not in ("billed", "stored") or not same_answer:
            log.warning(
                "The ledger entry of this request is %s by %s for another answer: the stored images are "
                "not recorded",
                entry.state,
                entry.owner,
            )
            return False
        from airflow_provider_imggen.sealed_urls import seal_text

        # Sealed with the deployment's Fernet key: someone who can edit the ledger, but is not the
        # deployment, cannot point a request at other objects (a reuse checks the seal).
        sealed = seal_text(images_statement(fingerprint, images))
        request = {**entry.request, "images_sealed": sealed} if sealed else entry.request
        stored = replace(entry, state="stored", images=images, updated_at=utc_now(), request=request)
        if store.replace(stored, version) is not None:
            return True
    log.warning("The ledger entry of this generation kept changing: its stored images are not recorded")
    return False
