"""
Issue 25: an IPv6 address that carries an IPv4 one is judged by the IPv4 one it carries.

Python's ``ipaddress`` (3.11) calls ``64:ff9b::a9fe:a9fe`` (NAT64 of the metadata address),
``2002:a9fe:a9fe::1`` (6to4) and ``::127.0.0.1`` (IPv4-compatible) global: a result host resolving to one of
them reached the address it embeds through a translator or a relay.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

import pytest

from airflow_provider_imggen.addresses import allowed, embedded_ipv4
from airflow_provider_imggen.exceptions import ImageResultUrlRefusedError
from airflow_provider_imggen.transfers.url_policy import ResultUrlPolicy
from tests.integration.security.conftest import Names, Server, gateway_answer, image
from tests.integration.security.test_result_urls import PNG, transfer
from tests.s3_fixtures import S3Bucket

# Each form of each internal address: link-local (the cloud metadata service), loopback, private.
HIDDEN_INTERNAL = {
    "NAT64 well-known, link-local": "64:ff9b::a9fe:a9fe",
    "NAT64 well-known, loopback": "64:ff9b::7f00:1",
    "NAT64 well-known, private": "64:ff9b::a00:1",
    "NAT64 local-use": "64:ff9b:1::808:808",
    "6to4, link-local": "2002:a9fe:a9fe::1",
    "6to4, loopback": "2002:7f00:1::1",
    "6to4, private": "2002:c0a8:101::1",
    "IPv4-compatible, loopback": "::127.0.0.1",
    "IPv4-compatible, link-local": "::169.254.169.254",
    "IPv4-mapped, link-local": "::ffff:169.254.169.254",
    "IPv4-translated, loopback": "::ffff:0:127.0.0.1",
    "Teredo, private client": "2001:0:4136:e378:8000:63bf:f5ff:fefe",
    "site-local (deprecated, still routed locally)": "fec0::1",
}
EMBEDDED_PUBLIC = {
    "NAT64 well-known": "64:ff9b::808:808",
    "6to4": "2002:808:808::1",
    "IPv4-mapped": "::ffff:8.8.8.8",
}


@pytest.mark.parametrize("address", HIDDEN_INTERNAL.values(), ids=HIDDEN_INTERNAL.keys())
def test_an_internal_ipv4_address_carried_by_ipv6_is_refused(address: str) -> None:
    assert not allowed(address, allow_private=False)
    policy = ResultUrlPolicy(
        origin=None, result_hosts=["store.example"], resolver=lambda host, port: [address]
    )
    with pytest.raises(ImageResultUrlRefusedError) as raised:
        policy.check("https://store.example/a.png")
    assert raised.value.rule == "public address"


@pytest.mark.parametrize("address", EMBEDDED_PUBLIC.values(), ids=EMBEDDED_PUBLIC.keys())
def test_a_public_ipv4_address_carried_by_ipv6_stays_allowed(address: str) -> None:
    assert allowed(address, allow_private=False)


def test_the_opt_in_for_private_hosts_covers_the_carried_forms_but_never_multicast() -> None:
    for address in ("64:ff9b::7f00:1", "2002:c0a8:101::1", "::127.0.0.1", "64:ff9b:1::1"):
        assert allowed(address, allow_private=True), address
    for address in ("64:ff9b::e000:1", "::ffff:224.0.0.1", "2002:e000:1::1", "64:ff9b::", "ff02::1", "x"):
        assert not allowed(address, allow_private=True), address


def test_the_embedded_address_is_read_where_each_form_puts_it() -> None:
    import ipaddress

    def carried(text: str) -> list[str]:
        return [str(a) for a in embedded_ipv4(ipaddress.IPv6Address(text))]

    assert carried("64:ff9b::a9fe:a9fe") == ["169.254.169.254"]
    assert carried("2002:a9fe:a9fe:1234::1") == ["169.254.169.254"]
    assert carried("::10.0.0.1") == ["10.0.0.1"]
    # Teredo: the server, then the client (stored inverted, RFC 4380).
    assert carried("2001:0:4136:e378:8000:63bf:3fff:fdd2") == ["65.54.227.120", "192.0.2.45"]
    assert carried("::1") == [] and carried("::") == [] and carried("2001:4860:4860::8888") == []


def test_the_transfer_never_connects_to_a_nat64_form_of_the_metadata_address(
    monkeypatch: pytest.MonkeyPatch,
    servers: Callable[..., Server],
    tls: ssl.SSLContext,
    names: Names,
    s3: S3Bucket,
) -> None:
    store = servers({"/a.png": image(PNG)}, host="127.0.0.2", tls=tls)
    names.table["store.imggen.test"] = ["64:ff9b::a9fe:a9fe"]
    gateway = servers({}, post=gateway_answer([store.url("/a.png?Signature=s1gn", "store.imggen.test")]))

    with pytest.raises(ImageResultUrlRefusedError) as raised:
        transfer(monkeypatch, gateway, s3, result_hosts=[f"store.imggen.test:{store.port}"])

    assert raised.value.rule == "public address"
    assert "a9fe" not in str(raised.value), "the address resolved is not echoed"
    assert store.requests == [] and s3.object_keys() == []
