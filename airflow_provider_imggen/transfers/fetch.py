"""
HTTP(S) downloads of result URLs under the result-URL policy: pinned addresses, manual redirects, deadline.

Each hop is checked by :class:`~airflow_provider_imggen.transfers.url_policy.ResultUrlPolicy` and the
connection goes to an address that check accepted, while TLS still verifies the certificate for the URL's
host name (SNI and Host header keep the name). Redirects are followed one at a time, at most
``MAX_REDIRECTS``. Bodies of error answers are never read. No API key, cookie or ``.netrc`` credential is
ever sent, and no proxy is used (a proxy would resolve host names itself, out of the policy's reach).

One deadline covers the whole download, redirects included, from the first connect to the last byte of
the body: every wait on the socket (connect, TLS handshake, sending, status line, headers, body) is cut
to the time left (:mod:`~airflow_provider_imggen.transfers.bounded_http`). The head of every answer is
bounded: ``MAX_HEADER_BYTES`` in all and ``MAX_HEADER_LINES`` header lines, and well formed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urljoin

from airflow_provider_imggen.exceptions import ImageResultUrlRefusedError
from airflow_provider_imggen.http_client import ca_locations
from airflow_provider_imggen.retry_policy import Failure, retry_after_seconds
from airflow_provider_imggen.transfers.deadline import (
    CONNECT_TIMEOUT,
    READ_TIMEOUT,
    Deadline,
    DeadlineExceededError,
    TransientFetchError,
)
from airflow_provider_imggen.transfers.url_policy import (
    MAX_REDIRECTS,
    ResultUrlPolicy,
    Target,
    UnresolvableHostError,
)

if TYPE_CHECKING:
    import urllib3

_REDIRECTS = frozenset({301, 302, 303, 307, 308})


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
    GET ``url`` under ``policy``, following redirects (each hop checked), all of it by ``deadline``.

    :param deadline: ``time.monotonic()`` value by which the whole download (connects, TLS handshakes, every
        redirect's answer, the final answer's head and body) must be over
    :raises DeadlineExceededError: when it is not
    :raises ResponseHeadersTooLargeError: when an answer's head is over the bounds
    :raises MalformedResponseHeadersError: when an answer's head has lines that are not headers
    """
    until = Deadline(deadline)
    response: urllib3.BaseHTTPResponse | None = None
    pools: list[urllib3.HTTPConnectionPool] = []
    try:
        for _ in range(MAX_REDIRECTS + 1):
            try:
                target = policy.check(url)
            except UnresolvableHostError as error:
                raise TransientFetchError(str(error), failure=Failure.NOT_SENT) from None
            response = _request(target, until, user_agent, pools)
            if response.status not in _REDIRECTS:
                length = response.headers.get("Content-Length")
                yield Answer(
                    status=response.status,
                    content_length=int(length) if length and length.isdigit() else None,
                    chunks=_chunks(response, until, chunk_bytes),
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


def _request(
    target: Target, deadline: Deadline, user_agent: str, pools: list[urllib3.HTTPConnectionPool]
) -> urllib3.BaseHTTPResponse:
    """One GET to the first of the target's (checked) addresses that accepts a connection."""
    import urllib3

    from airflow_provider_imggen.transfers.bounded_http import DeadlineHTTPConnection, DeadlineHTTPSConnection

    headers = {
        "Host": target.host_header,
        "User-Agent": user_agent,
        "Accept": "image/png, image/jpeg, image/webp",
        "Accept-Encoding": "identity",
    }
    reason = "no address to connect to"
    for address in target.addresses:
        # The connection cuts each of its waits to the deadline; these are only the first values.
        timeout = urllib3.Timeout(connect=deadline.cap(CONNECT_TIMEOUT), read=deadline.cap(READ_TIMEOUT))
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
                deadline=deadline,
            )
            pool.ConnectionCls = DeadlineHTTPSConnection
        else:
            pool = urllib3.HTTPConnectionPool(
                address, target.port, timeout=timeout, maxsize=1, retries=False, deadline=deadline
            )
            pool.ConnectionCls = DeadlineHTTPConnection
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
            _check_deadline(deadline)
            reason = f"could not connect ({type(error).__name__})"
            continue
        except urllib3.exceptions.HTTPError as error:
            _check_deadline(deadline)
            # TLS failures, a dropped connection, a read timeout before the headers. The text of these
            # errors can quote the URL: only the type is shown.
            raise TransientFetchError(
                f"the request failed ({type(error).__name__})",
                failure=Failure.READ_TIMEOUT
                if isinstance(error, urllib3.exceptions.ReadTimeoutError)
                else Failure.DROPPED,
            ) from None
    raise TransientFetchError(reason, failure=Failure.NOT_SENT)


def _check_deadline(deadline: Deadline) -> None:
    """A failure at the deadline is the deadline's: every wait was cut to it (a TLS handshake, a connect)."""
    if deadline.reached():
        raise DeadlineExceededError() from None


def _chunks(response: urllib3.BaseHTTPResponse, deadline: Deadline, chunk_bytes: int) -> Iterator[bytes]:
    """
    The body in chunks of at most ``chunk_bytes``. Each read returns as soon as some bytes arrive and waits
    at most until the deadline (the connection cuts it): a server dripping bytes is stopped by the deadline,
    one that stalls by the read timeout, whichever comes first.
    """
    import urllib3

    while True:
        deadline.left()
        try:
            chunk = response.read1(chunk_bytes)
        except urllib3.exceptions.ReadTimeoutError:
            _check_deadline(deadline)
            raise TransientFetchError(
                "no data arrived within the read timeout", failure=Failure.READ_TIMEOUT
            ) from None
        except urllib3.exceptions.ProtocolError as error:
            _check_deadline(deadline)
            raise TransientFetchError(
                f"truncated download: the connection closed before the whole body arrived "
                f"({type(error).__name__})"
            ) from None
        except urllib3.exceptions.HTTPError as error:
            _check_deadline(deadline)
            raise TransientFetchError(f"the download failed ({type(error).__name__})") from None
        if not chunk:
            return
        yield chunk
