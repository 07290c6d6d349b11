"""
Downloading one image into a temporary file: under the result-URL policy, within a deadline, retried when
the failure is transient, and kept only when it is one complete, well-formed image.

Errors name the image, its masked source and the rule or check that failed; they never quote the body.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow_provider_imggen.exceptions import (
    ImageResultExpiredError,
    ImageTransferError,
    ImageTransferRejectedError,
)
from airflow_provider_imggen.http_client import user_agent
from airflow_provider_imggen.retry_policy import Failure, RetryPolicy, TransientAPIError, classify_error
from airflow_provider_imggen.transfers.fetch import fetch
from airflow_provider_imggen.transfers.image_check import (
    ImageCheckError,
    ImageInfo,
    StreamingImageCheck,
    sniff,
)
from airflow_provider_imggen.transfers.sources import Source
from airflow_provider_imggen.transfers.url_policy import ResultUrlPolicy

# Bytes per piece received, queued to the check and written: with two pieces queued and one in each hand,
# a download holds about 1 MB, which the S3 client's models (about 12 MB) are built beside.
CHUNK_BYTES = 256 * 1024
# Longest backoff between download attempts, in seconds.
MAX_RETRY_WAIT = 30.0
_SNIFF_BYTES = 12


@dataclass(frozen=True)
class Downloaded:
    source: Source
    path: Path
    size: int
    sha256: str
    content_type: str
    ext: str
    width: int
    height: int
    seconds: float


class Cancelled(Exception):
    """Another image failed: this one stops early (its own outcome no longer matters)."""


class Downloader:
    """
    Downloads images for one transfer.

    :param policy: the result-URL policy every URL and redirect is checked against
    :param max_image_bytes: largest image accepted
    :param download_timeout: seconds one download attempt may take in all
    :param retries: further attempts after a transient failure
    :param retry_wait: first backoff, doubled per attempt
    """

    def __init__(
        self,
        *,
        policy: ResultUrlPolicy,
        max_image_bytes: int,
        download_timeout: float,
        retries: int,
        retry_wait: float,
        log: Any,
        total: int,
    ) -> None:
        self.policy = policy
        self.max_image_bytes = max_image_bytes
        self.download_timeout = download_timeout
        self.retries = retries
        self.retry_wait = retry_wait
        self.log = log
        self.total = total

    def download(self, source: Source, workdir: Path, stop: threading.Event) -> Downloaded:
        """Download one image into ``workdir``, retrying transient failures; check it is a whole image."""
        from tenacity import RetryCallState, Retrying

        # The hooks' retry policy, for an idempotent request: connection failures, timeouts, dropped or
        # truncated bodies, 408, 429 and 5xx are retried, with jittered exponential backoff or the wait a
        # Retry-After asks for (up to max_retry_after; a longer one stops at once).
        policy = RetryPolicy(
            max_retries=self.retries, wait_initial=self.retry_wait, wait_max=MAX_RETRY_WAIT, billable=False
        )
        path = workdir / f"{source.position:06d}"

        def log_retry(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            self.log.warning(
                "Image %d/%d: download from %s failed (attempt %d of %d): %s; retrying in %.2fs",
                source.position + 1,
                self.total,
                source.shown_source,
                state.attempt_number,
                policy.max_attempts,
                error,
                state.next_action.sleep if state.next_action else 0.0,
            )

        started = time.monotonic()
        attempts = 0
        try:
            for attempt in Retrying(**policy.tenacity_kwargs(log_retry)):
                with attempt:
                    attempts += 1
                    if stop.is_set():
                        raise Cancelled()
                    if source.location:
                        size, sha256, info = self._read_location(source, path, stop)
                    else:
                        size, sha256, info = self._fetch_url(source, path, stop)
        except TransientAPIError as error:
            raise ImageTransferError(
                f"Could not download {source.label} from {source.shown_source} after {attempts} "
                f"attempt(s): {error}. Nothing was stored; a task retry downloads again (no new generation)"
            ) from None
        except ImageCheckError as error:
            raise ImageTransferRejectedError(
                f"{source.label} from {source.shown_source} is not a complete image ({error}). "
                "Nothing was stored"
            ) from None
        seconds = time.monotonic() - started
        self.log.info(
            "Image %d/%d downloaded: %d bytes in %.2fs (%.1f MB/s) from %s (%s, %dx%d)",
            source.position + 1,
            self.total,
            size,
            seconds,
            size / 1e6 / seconds if seconds > 0 else 0.0,
            source.shown_source,
            info.content_type,
            info.width,
            info.height,
        )
        return Downloaded(
            source, path, size, sha256, info.content_type, info.ext, info.width, info.height, seconds
        )

    def _fetch_url(self, source: Source, path: Path, stop: threading.Event) -> tuple[int, str, ImageInfo]:
        """One HTTP download attempt: no API key, no cookies, no proxy, the policy on every hop."""
        if source.fetch_url is None:
            raise ImageTransferError(f"{source.label}: its result URL was not resolved (a bug)")
        deadline = time.monotonic() + self.download_timeout
        with fetch(
            self.policy,
            source.fetch_url,
            deadline=deadline,
            user_agent=user_agent(),
            chunk_bytes=CHUNK_BYTES,
        ) as answer:
            self._check_status(source, answer.status, answer.retry_after)
            if answer.content_length is not None and answer.content_length > self.max_image_bytes:
                raise self._too_large(source, answer.content_length)
            return self._receive(answer.chunks, path, source, stop, answer.content_length)

    def _check_status(self, source: Source, status: int, retry_after: float | None = None) -> None:
        # Only 200 carries the image: a 1xx taken as final (103 Early Hints) or a 204 has no body to store.
        if status == 200:
            return
        if status == 403:
            raise ImageResultExpiredError(
                f"The result URL of {source.label} was refused (HTTP 403, {source.shown_source}): signed "
                "result URLs expire after about 24 h. Re-run the generation task for fresh URLs, then this "
                "task. Nothing was stored"
            )
        failure = classify_error(status, None)
        if failure is not None:
            raise TransientAPIError(f"HTTP {status}", failure=failure, retry_after=retry_after)
        raise ImageTransferRejectedError(
            f"Downloading {source.label} from {source.shown_source} failed with HTTP {status}"
            + (": the result is gone; re-run the generation task" if status in (404, 410) else "")
            + ". Nothing was stored"
        )

    def _read_location(self, source: Source, path: Path, stop: threading.Event) -> tuple[int, str, ImageInfo]:
        """One attempt at reading an image its generation task wrote to object storage."""
        from airflow.sdk import ObjectStoragePath

        location = str(source.location)
        try:
            storage_path = ObjectStoragePath(location if "://" in location else f"file://{location}")
            with storage_path.open("rb") as stream:
                chunks = iter(lambda: stream.read(CHUNK_BYTES), b"")
                size, sha256, info = self._receive(chunks, path, source, stop, None)
        except FileNotFoundError:
            raise ImageTransferRejectedError(
                f"{source.label}: {location} does not exist. Nothing was stored"
            ) from None
        except OSError as error:
            raise TransientAPIError(
                f"reading {location} failed: {type(error).__name__}", failure=Failure.DROPPED
            ) from None
        except ImageCheckError as error:
            if not source.expected_sha256:
                raise
            # The generation recorded the sha256 of the complete image it wrote: this is not that content
            # (still being written, or changed since), which another read may find whole.
            raise TransientAPIError(
                f"the content's sha256 differs from the one the generation recorded ({error})",
                failure=Failure.DROPPED,
            ) from None
        if source.expected_bytes is not None and size != source.expected_bytes:
            raise TransientAPIError(
                f"read {size} bytes, the generation wrote {source.expected_bytes}", failure=Failure.DROPPED
            )
        if source.expected_sha256 and sha256 != source.expected_sha256:
            raise TransientAPIError(
                "the content's sha256 differs from the one the generation recorded", failure=Failure.DROPPED
            )
        return size, sha256, info

    def _receive(
        self,
        chunks: Iterable[bytes],
        path: Path,
        source: Source,
        stop: threading.Event,
        expected_length: int | None,
    ) -> tuple[int, str, ImageInfo]:
        """
        Write chunks to ``path`` (constant memory) while checking and hashing them in a second thread;
        refuse a non-image early. Its size, sha256, type and dimensions.
        """
        size = 0
        head = b""
        with StreamingImageCheck() as check, open(path, "wb") as out:
            for chunk in chunks:
                if stop.is_set():
                    raise Cancelled()
                if not chunk:
                    continue
                size += len(chunk)
                if size > self.max_image_bytes:
                    raise self._too_large(source, size, at_least=True)
                if len(head) < _SNIFF_BYTES:
                    head += chunk[: _SNIFF_BYTES - len(head)]
                    if len(head) >= _SNIFF_BYTES:
                        # Refuse an error page at its first bytes instead of downloading all of it.
                        self._check_kind(head, source)
                check.feed(chunk)
                out.write(chunk)
            if expected_length is not None and size < expected_length:
                raise TransientAPIError(
                    f"truncated download: {size} of {expected_length} bytes arrived", failure=Failure.DROPPED
                )
            self._check_kind(head, source)
            info, sha256 = check.finish()
        return size, sha256, info

    @staticmethod
    def _check_kind(head: bytes, source: Source) -> None:
        if sniff(head) is None:
            # Never the bytes themselves: they are whatever the other end chose to answer.
            raise ImageTransferRejectedError(
                f"{source.label} from {source.shown_source} is not a PNG, JPEG or WebP image. "
                "Nothing was stored"
            )

    def _too_large(self, source: Source, size: int, *, at_least: bool = False) -> ImageTransferRejectedError:
        return ImageTransferRejectedError(
            f"{source.label} from {source.shown_source} is {'over ' if at_least else ''}{size} bytes, more "
            f"than max_image_bytes={self.max_image_bytes}. Nothing was stored"
        )


def check_expiry(sources: Iterable[Source]) -> None:
    """Refuse, before any download, result URLs known to have expired."""
    now = datetime.now(UTC)
    expired = [
        source
        for source in sources
        if source.url and not source.location and source.url_expires_at and source.url_expires_at <= now
    ]
    if expired:
        shown = ", ".join(
            f"{source.label} at {source.url_expires_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"
            for source in expired
            if source.url_expires_at
        )
        raise ImageResultExpiredError(
            f"The result URL expired for {len(expired)} image(s) ({shown}); result URLs are valid for "
            "about 24 h. Re-run the generation task for fresh URLs, then this task. Nothing was stored"
        )
