"""
Which IP addresses a download may connect to, knowing every way an IPv6 address carries an IPv4 one.

A result host that resolves to ``64:ff9b::a9fe:a9fe`` reaches 169.254.169.254 through a NAT64 gateway;
``2002:7f00:1::1`` reaches 127.0.0.1 through a 6to4 relay; ``::127.0.0.1`` is loopback to a stack that still
honours IPv4-compatible addresses. Python's ``ipaddress`` calls all of these global (3.11), so the embedded
IPv4 address is what is judged: every one the address carries must be allowed.

The forms (RFC 4291 §2.5.5, RFC 6052, RFC 8215, RFC 3056, RFC 4380, RFC 2765):

- IPv4-mapped ``::ffff:0:0/96`` and IPv4-translated ``::ffff:0:0:0/96``: the last 32 bits;
- IPv4-compatible ``::/96`` (deprecated; ``::`` and ``::1`` excepted): the last 32 bits;
- NAT64 well-known prefix ``64:ff9b::/96``: the last 32 bits;
- NAT64 local-use prefix ``64:ff9b:1::/48``: a translator of the local network by definition (where the
  IPv4 address sits depends on a prefix length only that network knows): never public;
- 6to4 ``2002::/16``: bits 16 to 48;
- Teredo ``2001::/32``: its server and its (obfuscated) client address, and the address itself.
"""

from __future__ import annotations

import ipaddress

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_LAST_32_BITS = tuple(
    ipaddress.IPv6Network(prefix) for prefix in ("::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96", "::/96")
)
_NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")
_UNSPECIFIED_AND_LOOPBACK = (ipaddress.IPv6Address("::"), ipaddress.IPv6Address("::1"))
# Deprecated site-local addresses (RFC 3879): Python calls them global, some stacks still route them locally.
_SITE_LOCAL = ipaddress.IPv6Network("fec0::/10")


class LocalTranslatorAddress(ValueError):
    """An address of a local network's NAT64 translator: what it reaches is unknown here."""


def embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """
    The IPv4 addresses ``address`` carries (empty when it carries none).

    :raises LocalTranslatorAddress: ``address`` is in the NAT64 local-use prefix
    """
    if address in _NAT64_LOCAL_USE:
        raise LocalTranslatorAddress(str(address))
    if address in _UNSPECIFIED_AND_LOOPBACK:
        return ()
    if any(address in network for network in _LAST_32_BITS):
        return (ipaddress.IPv4Address(int(address) & 0xFFFFFFFF),)
    if address.sixtofour is not None:
        return (address.sixtofour,)
    if address.teredo is not None:
        return address.teredo
    return ()


def allowed(text: str, *, allow_private: bool) -> bool:
    """
    Whether a download may connect to the address ``text``: a public one, or (``allow_private``) a
    private, loopback or link-local one; never multicast or unspecified, never an unparsable text. An IPv6
    address carrying IPv4 ones is allowed only when each of them is.
    """
    try:
        address: Address = ipaddress.ip_address(text)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        try:
            carried = embedded_ipv4(address)
        except LocalTranslatorAddress:
            return allow_private
        if not all(_allowed(embedded, allow_private) for embedded in carried):
            return False
        # A translated form stands for its IPv4 address; a Teredo address is also judged as itself
        # (2001::/32 is not global: a tunnel endpoint is no public download host).
        if carried and address.teredo is None:
            return True
    return _allowed(address, allow_private)


def _allowed(address: Address, allow_private: bool) -> bool:
    if address.is_multicast or address.is_unspecified:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address in _SITE_LOCAL:
        return allow_private
    if address.is_global:
        return True
    return allow_private and (address.is_private or address.is_loopback or address.is_link_local)
