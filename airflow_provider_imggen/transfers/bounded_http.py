"""
The connections :func:`~airflow_provider_imggen.transfers.fetch.fetch` opens: every wait on their socket
ends by one wall-clock deadline, and the head of an answer (status line and headers) is bounded in size.

A socket timeout bounds one wait, not a download: http.client reads the status line and headers with as
many ``recv`` calls as the server cares to need, and each gets the whole timeout again, so a server
dripping one header line a second held a download for as long as it liked. Here each wait is given at
most the time left:

- the connect: ``min(CONNECT_TIMEOUT, time left)``;
- the TLS handshake: the socket timeout once connected, cut to the time left (CPython bounds a whole
  handshake by the socket timeout, not each of its reads);
- sending the request, and every ``recv`` of the status line, the headers and the body:
  ``min(READ_TIMEOUT, time left)``, set again before each one.

Once the time is up, the next wait raises :class:`~airflow_provider_imggen.transfers.deadline.
DeadlineExceededError` instead of starting, and a wait cut short by the deadline raises it too.

Chosen over a watchdog thread closing the socket at the deadline: no thread per download, no socket shut
down from another thread while urllib3 may be closing it (and the OS handing its number to another
download's socket), and the error is the deadline's own, raised where the time ran out, rather than
whatever a socket closed under http.client makes urllib3 report.

Imported on the first download (it brings urllib3): importing the operator stays light.
"""

from __future__ import annotations

import http.client
import io
import socket
from typing import Any

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import HeaderParsingError
from urllib3.util.response import assert_header_parsing

from airflow_provider_imggen.transfers.deadline import (
    CONNECT_TIMEOUT,
    MAX_HEADER_BYTES,
    MAX_HEADER_LINES,
    READ_TIMEOUT,
    Deadline,
    DeadlineExceededError,
    MalformedResponseHeadersError,
    ResponseHeadersTooLargeError,
)

_END_OF_HEAD = (b"\r\n", b"\n", b"")


class DeadlineHTTPConnection(HTTPConnection):
    """
    A urllib3 connection whose every wait ends by ``deadline``.

    :param deadline: when the whole download must be over
    """

    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def _new_conn(self) -> socket.socket:
        self.timeout = self.deadline.cap(CONNECT_TIMEOUT)
        sock = super()._new_conn()
        # What follows on this socket before the request is sent (the TLS handshake) waits until the
        # deadline at the latest, however long the connect took.
        sock.settimeout(self.deadline.cap(CONNECT_TIMEOUT))
        return sock

    def send(self, data: Any) -> None:
        if self.sock is not None:
            self.sock.settimeout(self.deadline.cap(READ_TIMEOUT))
        super().send(data)

    def response_class(self, sock: socket.socket, method: str | None = None) -> http.client.HTTPResponse:  # type: ignore[override]
        # http.client builds each answer with self.response_class(sock, method=...): a method here hands the
        # answer this connection's deadline.
        return BoundedHTTPResponse(sock, method=method, deadline=self.deadline)


class DeadlineHTTPSConnection(DeadlineHTTPConnection, HTTPSConnection):
    """:class:`DeadlineHTTPConnection` over TLS (certificate and host name checked as urllib3 does)."""


class BoundedHTTPResponse(http.client.HTTPResponse):
    """
    An answer read through :class:`_DeadlineReader` and :class:`_HeadReader`: each read waits at most
    until the deadline, and its head is refused past ``MAX_HEADER_BYTES`` or ``MAX_HEADER_LINES``, or
    when it has lines that are not headers.
    """

    def __init__(
        self,
        sock: socket.socket,
        debuglevel: int = 0,
        method: str | None = None,
        url: str | None = None,
        *,
        deadline: Deadline,
    ) -> None:
        super().__init__(sock, debuglevel, method, url)
        # The raw reader of http.client's buffer (from sock.makefile: it keeps the socket open once the
        # connection hands the answer over), under our deadline and our buffer.
        raw = self.fp.detach()
        self._head_reader = _HeadReader(_DeadlineReader(raw, sock, deadline))
        self.fp = self._head_reader

    def begin(self) -> None:
        super().begin()
        # The head is in: the body's lines (chunk sizes) are not header lines.
        self._head_reader.reading_head = False
        try:
            assert_header_parsing(self.msg)
        except HeaderParsingError:
            # urllib3 would log the request's URL, signature included, and the unparsed lines: refused
            # here, before it can.
            raise MalformedResponseHeadersError() from None


class _DeadlineReader(io.RawIOBase):
    """
    The raw reader under an answer: each ``recv`` waits at most ``min(READ_TIMEOUT, time left)``.

    :param raw: the socket's raw reader
    :param sock: its socket, whose timeout is set before each read
    :param deadline: when the whole download must be over
    """

    def __init__(self, raw: io.RawIOBase, sock: socket.socket, deadline: Deadline) -> None:
        super().__init__()
        self._raw = raw
        self._socket = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        self._socket.settimeout(self._deadline.cap(READ_TIMEOUT))
        try:
            return self._raw.readinto(buffer)
        except TimeoutError:
            if self._deadline.reached():
                raise DeadlineExceededError() from None
            raise

    def fileno(self) -> int:
        return self._raw.fileno()

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _HeadReader(io.BufferedReader):
    """
    The answer's buffer. While the head is read, its lines count: bytes of every line (status lines of
    interim 1xx answers included) up to ``MAX_HEADER_BYTES``, and header lines (each block's blank end line
    included, as http.client counts them) up to ``MAX_HEADER_LINES`` over all blocks. A line is never read
    past what the budget has left, so a refused head costs at most ``MAX_HEADER_BYTES`` (plus a buffer).
    """

    def __init__(self, raw: io.RawIOBase) -> None:
        super().__init__(raw)
        self.reading_head = True
        self._head_bytes = 0
        self._header_lines = 0
        self._status_line_next = True

    def readline(self, size: int | None = -1) -> bytes:
        if not self.reading_head:
            return super().readline(size)
        budget = MAX_HEADER_BYTES - self._head_bytes + 1
        line = super().readline(budget if size is None or size < 0 else min(size, budget))
        self._head_bytes += len(line)
        if self._status_line_next:
            self._status_line_next = False
        else:
            self._header_lines += 1
            # After a blank line comes the status line of the next answer (after an interim 1xx one).
            self._status_line_next = line in _END_OF_HEAD
        if self._head_bytes > MAX_HEADER_BYTES or self._header_lines > MAX_HEADER_LINES:
            raise ResponseHeadersTooLargeError()
        return line
