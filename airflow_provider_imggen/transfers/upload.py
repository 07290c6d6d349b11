"""
The upload side of a transfer: what to do at each key (upload, overwrite, skip, conflict), and the upload.

With ``replace=False`` every write is conditional (``If-None-Match: *``): of two concurrent writers of one
key exactly one creates the object; the other compares checksums with what is there: the same bytes are a
skip, different bytes an :class:`ImageTransferRejectedError` naming the key. Every S3 call goes through the
amazon provider's S3Hook.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow_provider_imggen.exceptions import (
    ImageGenerationValidationError,
    ImageTransferError,
    ImageTransferRejectedError,
)
from airflow_provider_imggen.records import StoredImageRecord
from airflow_provider_imggen.transfers.download import CHUNK_BYTES, Downloaded
from airflow_provider_imggen.transfers.sources import Source

if TYPE_CHECKING:
    from airflow_provider_imggen.transfers._s3 import ImageS3Hook


@dataclass(frozen=True)
class Planned:
    """A downloaded image, its destination and what to do there."""

    image: Downloaded
    bucket: str
    key: str
    action: str  # "upload", "overwrite", "skip" (identical content there) or "conflict"

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class UploadArgs:
    """``extra_upload_args`` split for S3Hook."""

    hook_args: dict[str, Any]
    metadata: dict[str, str]
    encrypt: bool
    acl_policy: str | None


def upload_args(extra_upload_args: dict[str, Any] | None) -> UploadArgs:
    """
    Check and split ``extra_upload_args``: what ``S3Hook.load_file`` takes itself (AES256 encryption, a
    canned ACL) goes through its arguments, the rest through the hook's ``extra_args``.
    """
    args = dict(extra_upload_args or {})
    if "ContentType" in args:
        raise ImageGenerationValidationError(
            "extra_upload_args['ContentType']",
            args["ContentType"],
            "the content type is taken from each image's magic number; remove it",
        )
    metadata = args.pop("Metadata", None) or {}
    if not isinstance(metadata, dict):
        raise ImageGenerationValidationError(
            "extra_upload_args['Metadata']", type(metadata).__name__, "expected a dict of strings"
        )
    if args:
        from boto3.s3.transfer import S3Transfer

        unknown = sorted(set(args) - set(S3Transfer.ALLOWED_UPLOAD_ARGS))
        if unknown:
            raise ImageGenerationValidationError(
                "extra_upload_args",
                unknown,
                "unknown upload argument(s); allowed: " + ", ".join(S3Transfer.ALLOWED_UPLOAD_ARGS),
            )
    encrypt = args.get("ServerSideEncryption") == "AES256"
    if encrypt:
        del args["ServerSideEncryption"]
    acl_policy = args.pop("ACL", None)
    return UploadArgs(args, {str(name): str(value) for name, value in metadata.items()}, encrypt, acl_policy)


class Uploader:
    """The S3 steps of one transfer, through ``hook``."""

    def __init__(
        self, hook: ImageS3Hook, bucket: str, *, replace: bool, args: UploadArgs, log: Any, total: int
    ) -> None:
        self.hook = hook
        self.bucket = bucket
        self.replace = replace
        self.args = args
        self.log = log
        self.total = total

    def stored_already(self, key: str, source: Source) -> StoredImageRecord | None:
        """The record for ``key`` when it already holds this very image (by its recorded identity)."""
        head = self._head(key)
        if head is None:
            return None
        metadata = head.get("Metadata") or {}
        sha256 = metadata.get("sha256")
        same = bool(sha256) and (
            (source.expected_sha256 is not None and sha256 == source.expected_sha256)
            or (
                source.request_id is not None
                and source.seed is not None
                and metadata.get("request-id") == ascii_header(source.request_id)
                and metadata.get("seed") == str(source.seed)
                and source.model is not None
                and metadata.get("model") == ascii_header(source.model)
            )
        )
        if not same:
            return None
        return xcom_entry(
            self.bucket,
            key,
            source,
            size=int(head.get("ContentLength") or 0),
            sha256=str(sha256),
            content_type=head.get("ContentType"),
            width=_int_or_none(metadata.get("width")),
            height=_int_or_none(metadata.get("height")),
            skipped=True,
        )

    def plan(self, image: Downloaded, key: str) -> Planned:
        """What to do at ``key``: upload, overwrite, skip (same content there) or conflict."""
        if self.replace:
            return Planned(image, self.bucket, key, "overwrite")
        stored_sha256 = self._stored_sha256(key)
        if stored_sha256 is None:
            return Planned(image, self.bucket, key, "upload")
        return Planned(image, self.bucket, key, "skip" if stored_sha256 == image.sha256 else "conflict")

    def upload(self, plan: Planned) -> bool:
        """Store ``plan``'s image; False when a concurrent writer stored the same bytes first (a skip)."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        from airflow_provider_imggen.transfers._s3 import is_conflict

        image, source = plan.image, plan.image.source
        metadata = {
            **self.args.metadata,
            "sha256": image.sha256,
            "width": str(image.width),
            "height": str(image.height),
        }
        for name, value in (
            ("model", source.model),
            ("seed", source.seed),
            ("request-id", source.request_id),
            ("prompt-sha256", hashlib.sha256(source.prompt.encode()).hexdigest() if source.prompt else None),
            # What an edited image was made from: its inputs' sha256, in order.
            ("input-sha256", ",".join(source.input_sha256s) or None),
            # What one image cost: its generation's validated price (never the XCom's raw text).
            ("cost-per-image", source.cost_per_image),
            ("cost-currency", source.cost_currency),
        ):
            if value is not None:
                metadata[name] = ascii_header(str(value))
        started = time.monotonic()
        try:
            with self.hook.upload_args({"ContentType": image.content_type, "Metadata": metadata}):
                # From the file's name, not an open file object: boto3 reads each multipart part of a file
                # object into memory (8 MiB, up to 10 at once), but streams parts of a named file from disk.
                # replace=True for S3Hook: its own existence check is not atomic; with self.replace False
                # the hook makes the write itself conditional.
                self.hook.load_file(
                    image.path,
                    key=plan.key,
                    bucket_name=plan.bucket,
                    replace=True,
                    encrypt=self.args.encrypt,
                    acl_policy=self.args.acl_policy,
                )
        except (BotoCoreError, ClientError, Boto3Error) as error:
            if not self.replace and is_conflict(error):
                return self._lost_race(plan)
            # boto3 has retried already; a task retry starts again from the still-valid result URLs.
            raise ImageTransferError(f"Uploading {source.label} to {plan.uri} failed: {error}") from None
        seconds = time.monotonic() - started
        self.log.info(
            "Image %d/%d stored: %d bytes, %s -> %s (download %.1f MB/s, upload %.1f MB/s)",
            source.position + 1,
            self.total,
            image.size,
            source.shown_source,
            plan.uri,
            _mb_per_second(image.size, image.seconds),
            _mb_per_second(image.size, seconds),
        )
        return True

    def _lost_race(self, plan: Planned) -> bool:
        """Another writer created ``plan.key`` first: the same bytes are a skip, other bytes an error."""
        stored = None
        for _ in range(5):
            stored = self._stored_sha256(plan.key)
            if stored is not None:
                break
            time.sleep(0.2)  # 409 ConditionalRequestConflict: the other write is still completing
        if stored == plan.image.sha256:
            self.log.info(
                "Image %d/%d skipped: %s was stored concurrently with identical content (sha256 %s)",
                plan.image.source.position + 1,
                self.total,
                plan.uri,
                plan.image.sha256,
            )
            return False
        raise ImageTransferRejectedError(
            f"{plan.uri} was created by another writer while {plan.image.source.label} was being stored "
            f"(replace=False), and its checksum differs (sha256 {stored or 'unknown'}, this image "
            f"{plan.image.sha256}): not overwritten"
        )

    def _stored_sha256(self, key: str) -> str | None:
        """The sha256 of the object at ``key`` (from its metadata, else computed); None when there is none."""
        head = self._head(key)
        if head is None:
            return None
        recorded = (head.get("Metadata") or {}).get("sha256")
        if recorded:
            return str(recorded)
        # Not written by this operator: compare the content itself.
        digest = hashlib.sha256()
        body = self.hook.get_key(key, self.bucket).get()["Body"]
        for chunk in body.iter_chunks(CHUNK_BYTES):
            digest.update(chunk)
        return digest.hexdigest()

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.hook.head_object(key, self.bucket)
        except (BotoCoreError, ClientError) as error:
            raise ImageTransferError(f"Checking s3://{self.bucket}/{key} failed: {error}") from None


def check_conflicts(plans: list[Planned]) -> None:
    conflicts = [plan for plan in plans if plan.action == "conflict"]
    if conflicts:
        shown = "; ".join(f"{plan.uri} ({plan.image.source.label})" for plan in conflicts[:5])
        raise ImageTransferRejectedError(
            f"{len(conflicts)} object(s) already exist with different content and replace=False: "
            f"{shown}{'...' if len(conflicts) > 5 else ''}. Nothing was uploaded. Use other keys "
            "(e.g. with {sha256}), or replace=True to overwrite"
        )


def ascii_header(value: str) -> str:
    """S3 metadata values travel as HTTP headers: percent-encode anything outside printable ASCII."""
    return value if value.isascii() and value.isprintable() else quote(value, safe=" !#$&'()*+,/:;=?@[]~")


def xcom_entry(
    bucket: str,
    key: str,
    source: Source,
    *,
    size: int,
    sha256: str,
    content_type: str | None,
    width: int | None,
    height: int | None,
    skipped: bool,
) -> StoredImageRecord:
    """The transfer's record of one stored image (its XCom entry is :meth:`StoredImageRecord.to_dict`)."""
    return StoredImageRecord(
        s3_uri=f"s3://{bucket}/{key}",
        bucket=bucket,
        key=key,
        bytes=size,
        sha256=sha256,
        content_type=content_type,
        width=width,
        height=height,
        generation=source.generation,
        index=source.index,
        model=source.model,
        seed=source.seed,
        prompt=source.prompt,
        request_id=source.request_id,
        skipped=skipped,
        cost_per_image=source.cost_per_image,
        cost_currency=source.cost_currency,
    )


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def _mb_per_second(size: int, seconds: float) -> float:
    return size / 1e6 / seconds if seconds > 0 else 0.0
