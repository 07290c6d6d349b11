"""
HTTP(S) downloads of result URLs under the result-URL policy: pinned addresses, manual redirects, deadline.

Each hop is checked by :class:`~airflow_provider_imggen.transfers.url_policy.ResultUrlPolicy` and the
connection goes to an address that check accepted, while TLS still verifies the certificate for the URL's
host name (SNI and Host header keep the name). Redirects are followed one at a time, at most
``MAX_REDIRECTS``. Bodies of error answers are never read. No API key, cookie or ``.netrc`` credential is
ever sent, and no proxy is used (a proxy would resolve host names itself, out of the policy's reach).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urljoin

from airflow_provider_imggen.exceptions import ImageResultUrlRefusedError, ImageTransferError
from airflow_provider_imggen.http_client import ca_locations
from airflow_provider_imggen.retry_policy import Failure, TransientAPIError, retry_after_seconds
from airflow_provider_imggen.transfers.url_policy import (
    MAX_REDIRECTS,
    ResultUrlPolicy,
    Target,
    UnresolvableHostError,
)

if TYPE_CHECKING:
    import urllib3

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class TransientFetchError(TransientAPIError):
    """
    A failure worth another attempt (no connection, dropped or truncated body, read timeout), classified
    as the hooks' failures are (:class:`~airflow_provider_imggen.retry_policy.Failure`) so that one
    :class:`~airflow_provider_imggen.retry_policy.RetryPolicy` decides for both.
    """

    def __init__(self, message: str, *, failure: Failure = Failure.DROPPED) -> None:
        super().__init__(message, failure=failure)


class DeadlineExceededError(ImageTransferError):
    """The whole download took longer than ``download_timeout``."""


@dataclass(frozen=True)
class Answer:
    """The final (non-redirect) answer: its status, declared length, and a chunk iterator for its body."""

    status: int
    content_length: int | None
    chunks: Iterator[bytes]
    target: Target
    retry_after: float | None = None  # the wait a 429 or 503 asked for (Retry-After), in seconds


@contextmanager
def fetch(
    policy: ResultUrlPolicy, url: str, *, deadline: float, user_agent: str, chunk_bytes: int
) -> Iterator[Answer]:
    """
    GET ``url`` under ``policy``, following redirects (each hop checked); the body streams until ``deadline``.

    :param deadline: ``time.monotonic()`` value by which the whole body must have arrived
    """
    response: urllib3.BaseHTTPResponse | None = None
    pools: list[urllib3.HTTPConnectionPool] = []
    try:
        for _ in range(MAX_REDIRECTS + 1):
            try:
                target = policy.check(url)
            except UnresolvableHostError as error:
                raise TransientFetchError(str(error), failure=Failure.NOT_SENT) from None
            response = _request(target, deadline, user_agent, pools)
            if response.status not in _REDIRECTS:
                length = response.headers.get("Content-Length")
                yield Answer(
                    status=response.status,
                    content_length=int(length) if length and length.isdigit() else None,
                    chunks=_chunks(response, deadline, chunk_bytes),
                    target=target,
                    retry_after=retry_after_seconds(response.headers),
                )
                return
            location = response.headers.get("Location")
            response.release_conn()
            response.close()
            response = None
            if not location:
                raise ImageResultUrlRefusedError(
                    "Result URL refused by the result-URL policy (redirects): a redirect without a "
                    "Location. Nothing was fetched",
                    rule="redirects",
                )
            url = urljoin(url, location.strip())
        raise ImageResultUrlRefusedError(
            f"Result URL refused by the result-URL policy (redirects): more than {MAX_REDIRECTS} "
            "redirects. Nothing was fetched",
            rule="redirects",
        )
    finally:
        if response is not None:
            response.close()
        for pool in pools:
            pool.close()


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DeadlineExceededError("The download did not finish within download_timeout. Nothing was stored")
    return remaining


def _request(
    target: Target, deadline: float, user_agent: str, pools: list[urllib3.HTTPConnectionPool]
) -> urllib3.BaseHTTPResponse:
    """One GET to the first of the target's (checked) addresses that accepts a connection."""
    import urllib3

    headers = {
        "Host": target.host_header,
        "User-Agent": user_agent,
        "Accept": "image/png, image/jpeg, image/webp",
        "Accept-Encoding": "identity",
    }
    reason = "no address to connect to"
    for address in target.addresses:
        remaining = _remaining(deadline)
        timeout = urllib3.Timeout(connect=min(CONNECT_TIMEOUT, remaining), read=min(READ_TIMEOUT, remaining))
        pool: urllib3.HTTPConnectionPool
        if target.scheme == "https":
            ca_certs, ca_cert_dir = ca_locations()
            pool = urllib3.HTTPSConnectionPool(
                address,
                target.port,
                timeout=timeout,
                maxsize=1,
                retries=False,
                cert_reqs="CERT_REQUIRED",
                ca_certs=ca_certs,
                ca_cert_dir=ca_cert_dir,
                server_hostname=target.host,
                assert_hostname=target.host,
            )
        else:
            pool = urllib3.HTTPConnectionPool(address, target.port, timeout=timeout, maxsize=1, retries=False)
        pools.append(pool)
        try:
            return pool.urlopen(
                "GET",
                target.request_target,
                headers=headers,
                redirect=False,
                retries=False,
                preload_content=False,
                decode_content=False,
                assert_same_host=False,
            )
        except (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError) as error:
            reason = f"could not connect ({type(error).__name__})"
            continue
        except urllib3.exceptions.HTTPError as error:
            # TLS failures, a dropped connection, a read timeout before the headers. The text of these
            # errors can quote the URL: only the type is shown.
            raise TransientFetchError(
                f"the request failed ({type(error).__name__})",
                failure=Failure.READ_TIMEOUT
                if isinstance(error, urllib3.exceptions.ReadTimeoutError)
                else Failure.DROPPED,
            ) from None
    raise TransientFetchError(reason, failure=Failure.NOT_SENT)


def _chunks(response: urllib3.BaseHTTPResponse, deadline: float, chunk_bytes: int) -> Iterator[bytes]:
    """The body in chunks of at most ``chunk_bytes``; each read waits at most until ``deadline``."""
    import urllib3

    connection = getattr(response, "connection", None)
    sock: socket.socket | None = getattr(connection, "sock", None)
    while True:
        remaining = _remaining(deadline)
        if sock is not None:
            # A read returns as soon as some bytes arrive: a server dripping bytes is stopped by the deadline,
            # one that stalls by the read timeout, whichever comes first.
            sock.settimeout(min(READ_TIMEOUT, remaining))
        try:
            chunk = response.read1(chunk_bytes)
        except urllib3.exceptions.ReadTimeoutError:
            # The socket timeout was cut to the deadline: at (or within a hair of) it, say so.
            _remaining(deadline - 0.1)
            raise TransientFetchError(
                "no data arrived within the read timeout", failure=Failure.READ_TIMEOUT
            ) from None
        except urllib3.exceptions.ProtocolError as error:
            raise TransientFetchError(
                f"truncated download: the connection closed before the whole body arrived "
                f"({type(error).__name__})"
            ) from None
        except urllib3.exceptions.HTTPError as error:
            raise TransientFetchError(f"the download failed ({type(error).__name__})") from None
        if not chunk:
            return
        yield chunk
