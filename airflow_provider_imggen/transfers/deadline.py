"""
The bounds of one download: its deadline and timeouts, the largest answer head, and the errors of crossing
them. Shared by :mod:`~airflow_provider_imggen.transfers.fetch`, which drives a download, and
:mod:`~airflow_provider_imggen.transfers.bounded_http`, whose connections enforce them on the socket.
"""

from __future__ import annotations

import time

from airflow_provider_imggen.exceptions import ImageResultUrlRefusedError, ImageTransferError
from airflow_provider_imggen.retry_policy import Failure, TransientAPIError

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
# The head of an answer (status line and headers, interim 1xx answers included): result stores send about
# 1 KiB. http.client alone allows 100 lines of 64 KiB each, 6.4 MB held in memory per download.
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADER_LINES = 100  # as http.client counts them: each block's blank end line included
# A wait cut to the deadline that ends this close to it ended because of it (timers wake a hair early).
_CUT_SLACK = 0.1


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

    def __init__(
        self, message: str = "The download did not finish within download_timeout. Nothing was stored"
    ) -> None:
        super().__init__(message)


class ResponseHeadersTooLargeError(ImageResultUrlRefusedError):
    """
    An answer's head was over ``MAX_HEADER_BYTES`` or ``MAX_HEADER_LINES``: refused, its body unread.

    Not transient: the head is what the server chose to answer, not an accident of the transport, and the
    same request gets the same head again; retrying would only let a hostile host hold the download longer.
    Its message never quotes the head.
    """

    def __init__(self) -> None:
        super().__init__(
            "Result URL refused by the result-URL policy (header size): its answer's headers are over "
            f"{MAX_HEADER_BYTES} bytes or {MAX_HEADER_LINES} lines, and its body was not read. Nothing was "
            "stored",
            rule="header size",
        )


class MalformedResponseHeadersError(ImageResultUrlRefusedError):
    """
    An answer's head has lines that are not headers: refused, its body unread.

    http.client stops parsing at the first such line (the headers after it, Content-Length among them, are
    lost), and urllib3 would log the request's URL, signature included, with the unparsed lines. Not
    transient, as for :class:`ResponseHeadersTooLargeError`. Its message never quotes the head.
    """

    def __init__(self) -> None:
        super().__init__(
            "Result URL refused by the result-URL policy (malformed headers): its answer's head has lines "
            "that are not headers, and its body was not read. Nothing was stored",
            rule="malformed headers",
        )


class Deadline:
    """
    When a download must be over (a ``time.monotonic()`` value): the time left, and waits cut to it.

    :param at: the ``time.monotonic()`` value by which the last byte must have arrived
    """

    __slots__ = ("at",)

    def __init__(self, at: float) -> None:
        self.at = at

    def left(self) -> float:
        """Seconds left; :class:`DeadlineExceededError` when none are."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise DeadlineExceededError()
        return left

    def cap(self, timeout: float) -> float:
        """``timeout`` cut to the time left (for one wait)."""
        return min(timeout, self.left())

    def reached(self) -> bool:
        """Whether the deadline has come (a wait that just timed out was cut by it)."""
        return time.monotonic() >= self.at - _CUT_SLACK
