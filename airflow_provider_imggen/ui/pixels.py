"""
Where a tile's pixels come from: the S3 object a transfer's XCom names, or a generation's result URL.

- Stored images are read through the amazon provider's ``S3Hook`` with the task's own AWS connection
  (so MinIO, moto and other endpoints work), and only the bucket/key the XCom names.
- Results not yet stored are fetched from their sealed result URL, opened here with Airflow's Fernet key,
  under the same result-URL policy the transfer applies (:class:`~airflow_provider_imggen.transfers.
  url_policy.ResultUrlPolicy` of the generation's ``imggen`` connection: trusted API origin, allowed hosts,
  public addresses, every redirect checked), with a deadline, and never with the API key.

Either way at most ``MAX_SOURCE_BYTES`` are read, into a spooled temporary file (memory up to
``SPOOL_BYTES``, then disk), and nothing of it is served unless it has the sha256 the XCom recorded. An S3
object is read only with a sha256 to check it against: the XCom names the object, and can be edited, so
only the digest proves it is the image the transfer (or the edit) recorded. A result, which no task has
stored yet, has no recorded digest: its proof of origin is the seal (Fernet is authenticated encryption:
whoever edits XCom cannot make one) and the result-URL policy; a digest recorded with it is checked too.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
import time
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING, Any

from airflow_provider_imggen.ui.tiles import Tile
from airflow_provider_imggen.utils import is_sha256

if TYPE_CHECKING:
    from airflow_provider_imggen.transfers.url_policy import ResultUrlPolicy

MAX_SOURCE_BYTES = 64 * 1024 * 1024  # the transfer's default max_image_bytes
SPOOL_BYTES = 4 * 1024 * 1024
CHUNK_BYTES = 256 * 1024
FETCH_TIMEOUT = 30.0
FETCH_SLOTS = 4
# boto3 clients are thread-safe and costly to build (tens of ms of CPU): one per AWS connection, renewed
# after a while so that an edited connection is picked up.
CLIENT_TTL = 300.0

_fetching = threading.BoundedSemaphore(FETCH_SLOTS)
_clients: dict[str | None, tuple[float, Any]] = {}
_clients_lock = threading.Lock()


class PixelsUnavailableError(Exception):
    """The image could not be read; the message is safe to show (no URL, no credential)."""


class ResultExpiredError(PixelsUnavailableError):
    """The result URL expired (or the store refused it): the image was never stored."""


def open_pixels(tile: Tile) -> IO[bytes]:
    """The tile's image bytes in a rewound temporary file (the caller closes it)."""
    if not tile.has_pixels:
        raise PixelsUnavailableError(tile.failure or "no image")
    # The request and the read both under the semaphore: a page of 50 tiles sends 50 requests at once,
    # and the API server's thread pool would otherwise run up to 40 S3 requests side by side.
    with _fetching:
        if tile.from_s3:
            return _spool(_s3_chunks(tile), tile.sha256, tile.bytes)
        return _spool(_result_chunks(tile), tile.sha256, tile.bytes, sealed_result=True)


def _spool(
    chunks: Iterable[bytes], sha256: str | None, expected_bytes: int | None, *, sealed_result: bool = False
) -> IO[bytes]:
    """
    The bytes, bounded, in a rewound temporary file, only if they have exactly the ``sha256`` recorded
    (and ``expected_bytes``, when recorded).

    :param sealed_result: the bytes come from a sealed result URL, the one source that may have no
        recorded sha256 (see the module's docstring); without one, anything else is refused unread
    """
    if sha256 is None and not sealed_result:
        raise PixelsUnavailableError("no sha256 recorded to check the content against: not read")
    if sha256 is not None and not is_sha256(sha256):  # "" or upper case included: nothing to match
        raise PixelsUnavailableError("the sha256 recorded in XCom is not one: not read")
    # Returned open: the caller reads and closes it.
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115
    digest = hashlib.sha256()
    size = 0
    try:
        for chunk in chunks:
            size += len(chunk)
            if size > MAX_SOURCE_BYTES:
                raise PixelsUnavailableError(f"the image is over {MAX_SOURCE_BYTES} bytes")
            digest.update(chunk)
            spool.write(chunk)
        if sha256 is not None and digest.hexdigest() != sha256:
            raise PixelsUnavailableError("the content's sha256 differs from the one recorded in XCom")
        if expected_bytes is not None and size != expected_bytes:
            raise PixelsUnavailableError("the content's size differs from the one recorded in XCom")
        spool.seek(0)
        return spool
    except BaseException:
        spool.close()
        raise


def _s3_client(aws_conn_id: str | None) -> Any:
    # Built under the lock: a page of 50 tiles asks for the same client 50 times at once, and 50 boto3
    # clients built in parallel cost seconds of CPU and tens of MB (measured by bench_ui_gallery.py).
    with _clients_lock:
        now = time.monotonic()
        cached = _clients.get(aws_conn_id)
        if cached is not None and now - cached[0] < CLIENT_TTL:
            return cached[1]
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        client = S3Hook(aws_conn_id=aws_conn_id).get_conn()
        _clients[aws_conn_id] = (now, client)
        return client


def _s3_chunks(tile: Tile) -> Iterable[bytes]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client = _s3_client(tile.aws_conn_id)
        answer = client.get_object(Bucket=tile.bucket, Key=tile.key)
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", "error"))
        code = code if code.isalnum() and len(code) <= 64 else "an error"
        raise PixelsUnavailableError(f"S3 answered {code} for the object the XCom names") from None
    except (BotoCoreError, ValueError) as error:
        raise PixelsUnavailableError(f"S3 could not be read ({type(error).__name__})") from None
    except Exception as error:  # AirflowNotFoundException for a missing connection, and the like
        raise PixelsUnavailableError(f"S3 could not be read ({type(error).__name__})") from None
    length = answer.get("ContentLength")
    body = answer["Body"]
    if isinstance(length, int) and length > MAX_SOURCE_BYTES:
        body.close()
        raise PixelsUnavailableError(f"the object is over {MAX_SOURCE_BYTES} bytes")
    if isinstance(length, int) and tile.bytes is not None and length != tile.bytes:
        body.close()  # not the object recorded: not read at all
        raise PixelsUnavailableError("the object's size differs from the one recorded in XCom")

    def chunks() -> Iterable[bytes]:
        try:
            yield from body.iter_chunks(CHUNK_BYTES)
        except (BotoCoreError, OSError) as error:
            raise PixelsUnavailableError(f"reading the object failed ({type(error).__name__})") from None
        finally:
            body.close()

    return chunks()


def _policy(imggen_conn_id: str | None) -> ResultUrlPolicy:
    from airflow_provider_imggen.transfers.url_policy import ResultUrlPolicy

    try:
        return ResultUrlPolicy.from_connection(imggen_conn_id)
    except Exception as error:  # a missing or malformed connection: say which kind, not its content
        raise PixelsUnavailableError(
            f"the result-URL policy of connection {imggen_conn_id!r} could not be read "
            f"({type(error).__name__})"
        ) from None


def _result_chunks(tile: Tile) -> Iterable[bytes]:
    from airflow_provider_imggen.exceptions import ImageResultUrlRefusedError, ResultUrlSealError
    from airflow_provider_imggen.sealed_urls import unseal
    from airflow_provider_imggen.transfers.fetch import fetch
    from airflow_provider_imggen.utils import url_expiry

    if not tile.url_sealed:
        raise PixelsUnavailableError("no sealed result URL")
    try:
        url = unseal(tile.url_sealed, label=f"image {tile.index}")
    except ResultUrlSealError:
        raise PixelsUnavailableError("the sealed result URL cannot be opened with this Fernet key") from None
    expiry = url_expiry(url)
    if expiry is not None and expiry.timestamp() <= time.time():
        raise ResultExpiredError("expired, not stored")
    policy = _policy(tile.imggen_conn_id)

    def chunks() -> Iterable[bytes]:
        from airflow_provider_imggen.http_client import user_agent

        try:
            with fetch(
                policy,
                url,
                deadline=time.monotonic() + FETCH_TIMEOUT,
                user_agent=user_agent(),
                chunk_bytes=CHUNK_BYTES,
            ) as answer:
                if answer.status in (401, 403, 404, 410):
                    raise ResultExpiredError("expired, not stored")
                if answer.status != 200:  # a 1xx taken as final (103 Early Hints), a 204: no image
                    raise PixelsUnavailableError(f"the result store answered HTTP {answer.status}")
                if answer.content_length is not None and answer.content_length > MAX_SOURCE_BYTES:
                    raise PixelsUnavailableError(f"the image is over {MAX_SOURCE_BYTES} bytes")
                yield from answer.chunks
        except PixelsUnavailableError:
            raise
        except ImageResultUrlRefusedError as error:
            raise PixelsUnavailableError(
                f"the result URL was refused by the result-URL policy ({error.rule})"
            ) from None
        except Exception as error:  # dropped connections, timeouts: never the URL in the message
            kind = type(error).__name__
            raise PixelsUnavailableError(f"the result URL could not be read ({kind})") from None

    return chunks()
