"""
Which result URLs the transfer may fetch, and at which address: one policy for every download and hop.

A URL on the API's own origin (scheme, host and port of the ``imggen`` connection's base URL) is trusted as
the API is. Any other URL must be https, on a result-store host the connection allows (extra
``result_hosts``; by default the DashScope result stores), and resolve to public addresses only: private,
loopback and link-local addresses are refused unless the connection sets ``allow_private_result_hosts``.
The addresses checked are the ones connected to (:class:`Target` carries them): no second DNS lookup can
swap in another address between the check and the connection.

A refusal names the rule and happens before any connection to the refused target, so its message is the
same whatever that target would have answered.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from airflow_provider_imggen import addresses
from airflow_provider_imggen.exceptions import ImageGenerationValidationError, ImageResultUrlRefusedError

# The DashScope result stores: dashscope-result-bj.oss-cn-beijing.aliyuncs.com and, since 2026, buckets named
# "dashscope-" and four hex digits on the accelerated and regional endpoints, e.g.
# dashscope-7c2c.oss-accelerate.aliyuncs.com and dashscope-7c2c.oss-cn-shanghai.aliyuncs.com (api-notes §7).
# "?" (exactly one character) keeps those buckets to their four-character names.
DEFAULT_RESULT_HOSTS: tuple[str, ...] = (
    "dashscope-result-*.oss-*.aliyuncs.com",
    "dashscope-????.oss-accelerate.aliyuncs.com",
    "dashscope-????.oss-cn-*.aliyuncs.com",
)
MAX_REDIRECTS = 5
_DEFAULT_PORTS = {"http": 80, "https": 443}

Resolver = Callable[[str, int], Sequence[str]]


class UnresolvableHostError(Exception):
    """The host of an allowed URL did not resolve (worth another attempt later)."""


@dataclass(frozen=True)
class Target:
    """A URL the policy allowed, and the addresses to connect to (already checked)."""

    scheme: str
    host: str
    port: int
    request_target: str  # path and query, as sent in the request line
    addresses: tuple[str, ...]
    trusted_origin: bool

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (TCP), in the resolver's order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise UnresolvableHostError(f"the host did not resolve ({type(error).__name__})") from None
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]
        if address not in addresses:
            addresses.append(address)
    return addresses


class ResultUrlPolicy:
    """
    The result-URL policy of one transfer.

    :param origin: ``(scheme, host, port)`` of the API's base URL, trusted as the API is; None: no API origin
    :param result_hosts: host patterns other URLs must match; ``*`` stands for part of one DNS label, and a
        pattern without ``:port`` matches port 443 only
    :param allow_private: also accept private, loopback and link-local addresses for result hosts
    :param resolver: host, port → addresses (tests and the policy share :func:`resolve` by default)
    """

    def __init__(
        self,
        *,
        origin: tuple[str, str, int] | None,
        result_hosts: Sequence[str] = DEFAULT_RESULT_HOSTS,
        allow_private: bool = False,
        resolver: Resolver | None = None,
    ) -> None:
        self.origin = origin
        self.result_hosts = tuple(result_hosts)
        self.allow_private = allow_private
        self._resolver = resolver or resolve
        self._patterns = [_compile(pattern) for pattern in self.result_hosts]

    @classmethod
    def from_connection(cls, conn_id: str | None) -> ResultUrlPolicy:
        """The policy an ``imggen`` connection sets (None: no trusted origin and the defaults)."""
        if conn_id is None:
            return cls(origin=None)
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            conn = BaseHook.get_connection(conn_id)
        except AirflowNotFoundException:
            raise ImageGenerationValidationError(
                "imggen_conn_id",
                conn_id,
                "no such connection; its base URL and extras set which result URLs may be fetched (None: "
                "no trusted API origin, only https result hosts of the default list)",
            ) from None
        # The connection's extras are read in one place, for the hooks and this policy alike.
        from airflow_provider_imggen.connection_settings import parse_connection

        settings = parse_connection(conn)
        parts = urlsplit(settings.base_url)
        scheme = parts.scheme.lower()
        origin = (scheme, (parts.hostname or "").lower().rstrip("."), parts.port or _DEFAULT_PORTS[scheme])
        return cls(
            origin=origin,
            result_hosts=settings.result_hosts or DEFAULT_RESULT_HOSTS,
            allow_private=settings.allow_private_result_hosts,
        )

    def check(self, url: str) -> Target:
        """The target to connect to for ``url``; raises :class:`ImageResultUrlRefusedError` when refused."""
        try:
            parts = urlsplit(url)
            scheme = parts.scheme.lower()
            host = (parts.hostname or "").lower().rstrip(".")
            port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
        except ValueError:
            raise _refused("scheme", "not a valid http(s) URL") from None
        if scheme not in _DEFAULT_PORTS or not host:
            raise _refused("scheme", "only http(s) URLs are fetched")
        if parts.username is not None or parts.password is not None:
            raise _refused("scheme", "URLs with user credentials are not fetched")
        request_target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if self.origin is not None and (scheme, host, port) == self.origin:
            addresses = tuple(self._resolver(host, port))
            return Target(scheme, host, port, request_target, addresses, trusted_origin=True)
        if scheme != "https":
            raise _refused(
                "scheme", f"{_shown(host)} is not the API's origin, and only https is allowed there"
            )
        if not any(pattern.match(f"{host}:{port}") for pattern in self._patterns):
            raise _refused(
                "result_hosts",
                f"{_shown(host)}:{port} is not an allowed result host (connection extra result_hosts)",
            )
        addresses = tuple(self._resolver(host, port))
        if not addresses:
            raise UnresolvableHostError("the host resolved to no address")
        for address in addresses:
            if not self._address_allowed(address):
                raise _refused(
                    "public address",
                    f"{_shown(host)} resolves to a non-public address (connection extra "
                    "allow_private_result_hosts opts in to private, loopback and link-local addresses)",
                )
        return Target(scheme, host, port, request_target, addresses, trusted_origin=False)

    def _address_allowed(self, text: str) -> bool:
        return addresses.allowed(text, allow_private=self.allow_private)


def _compile(pattern: str) -> re.Pattern[str]:
    host, _, port = pattern.lower().partition(":")
    # "*" never crosses a dot: "dashscope-result-*.oss-*.aliyuncs.com" cannot match "evil.com/x.aliyuncs.com";
    # "?" stands for exactly one letter, digit or hyphen.
    regex = r"\.".join(_label_regex(part) for part in host.split("."))
    return re.compile(f"^{regex}:{port or 443}$")


def _label_regex(label: str) -> str:
    return "[a-z0-9-]*".join(
        "[a-z0-9-]".join(re.escape(piece) for piece in part.split("?")) for part in label.split("*")
    )


def _shown(host: str) -> str:
    """A host name safe to log: printable, bounded."""
    cleaned = re.sub(r"[^a-z0-9.:\[\]-]", "?", host)
    return repr(cleaned if len(cleaned) <= 80 else f"{cleaned[:77]}...")


def _refused(rule: str, detail: str) -> ImageResultUrlRefusedError:
    return ImageResultUrlRefusedError(
        f"Result URL refused by the result-URL policy ({rule}): {detail}. Nothing was fetched", rule=rule
    )
