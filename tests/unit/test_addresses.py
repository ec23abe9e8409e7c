"""The address policy: every representation of a non-public address is refused, public ones pass,
an allowed host is allowed on its own port only, and lookups fail closed."""

from __future__ import annotations

import pytest

from crawlstream.addresses import (
    ADDRESS_REASONS,
    AddressPolicy,
    AddressRefused,
    allowed_pairs,
    forbidden_reason,
    is_forbidden_address,
)

FORBIDDEN = [
    "127.0.0.1",
    "127.255.255.254",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # shared address space (carrier-grade NAT)
    "0.0.0.0",
    "192.0.0.8",
    "198.18.0.1",  # benchmarking
    "240.0.0.1",
    "255.255.255.255",
    "224.0.0.1",
    "::1",
    "::",
    "fe80::1%eth0",
    "fc00::1",
    "2001:db8::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:10.0.0.1",
    "::127.0.0.1",  # IPv4-compatible (deprecated)
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of the metadata address
    "::ffff:0:7f00:1",  # IPv4-translated (SIIT)
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
    "not an address",
]
PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "2002:0808:0808::1",
]


@pytest.mark.parametrize("address", FORBIDDEN)
def test_non_public_addresses_are_forbidden_in_every_form(address: str) -> None:
    assert is_forbidden_address(address), forbidden_reason(address)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert forbidden_reason(address) is None


def test_reasons_name_the_embedded_kind() -> None:
    assert forbidden_reason("::ffff:127.0.0.1") == "ipv4_embedded_loopback"
    assert forbidden_reason("100.64.0.1") == "shared"


def _resolver(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError("Name or service not known")
        return table[host]

    return resolve


def test_allowed_host_is_allowed_on_its_own_port_only() -> None:
    policy = AddressPolicy.allowing(["http://127.0.10.1:8080/start"])
    resolver = _resolver({"127.0.10.1": ["127.0.10.1"]})
    policy.check_url("http://127.0.10.1:8080/page", resolver)
    with pytest.raises(AddressRefused) as info:
        policy.check_url("http://127.0.10.1:5432/", resolver)
    assert info.value.reason == "loopback"


def test_host_entry_without_port_means_default_ports() -> None:
    policy = AddressPolicy.allowing(["intranet.local"])
    assert policy.exempts("intranet.local", 80)
    assert policy.exempts("intranet.local", 443)
    assert not policy.exempts("intranet.local", 22)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "scheme"),
        ("ftp://example.com/x", "scheme"),
        ("gopher://example.com:70/", "scheme"),
        ("http:///nohost", "no_host"),
        ("http://example.com:99999/", "invalid_url"),
        ("http://unknown.invalid/", "unresolvable"),
        ("http://rebind.example/", "private"),
    ],
)
def test_urls_are_refused_with_a_reason_and_lookups_fail_closed(url: str, reason: str) -> None:
    resolver = _resolver({"rebind.example": ["93.184.216.34", "10.0.0.5"]})
    with pytest.raises(AddressRefused) as info:
        AddressPolicy().check_url(url, resolver)
    assert info.value.reason == reason


def test_public_host_passes_and_returns_its_addresses() -> None:
    resolver = _resolver({"example.com": ["93.184.216.34"]})
    assert AddressPolicy().check_url("https://example.com/a", resolver) == ["93.184.216.34"]


@pytest.mark.parametrize(
    ("entry", "pairs"),
    [
        ("127.0.0.1:8080", {("127.0.0.1", 8080)}),
        ("Intranet.Local", {("intranet.local", 80), ("intranet.local", 443)}),
        ("[::1]:9000", {("::1", 9000)}),
        ("::1", {("::1", 80), ("::1", 443)}),  # a bare IPv6 address has no port
        ("https://docs.local/x", {("docs.local", 443)}),
        ("http://127.0.10.1:8000/", {("127.0.10.1", 8000)}),
    ],
)
def test_allow_entries_name_hosts_and_ports(entry: str, pairs: set[tuple[str, int]]) -> None:
    assert allowed_pairs(entry) == pairs
    assert AddressPolicy.allowing([entry]).allowed == pairs


@pytest.mark.parametrize("entry", ["host:99999", "host:port", "a/b:80", "ftp://x/", "http://"])
def test_bad_allow_entries_are_named(entry: str) -> None:
    with pytest.raises(ValueError, match="host"):
        allowed_pairs(entry)


def test_metadata_and_unspecified_addresses_are_named_precisely() -> None:
    assert forbidden_reason("169.254.169.254") == "link_local"
    assert forbidden_reason("0.0.0.0") == "unspecified"
    assert forbidden_reason("::ffff:169.254.169.254") == "ipv4_embedded_link_local"
    assert {forbidden_reason(a) for a in FORBIDDEN} <= ADDRESS_REASONS


def test_a_union_allows_what_either_allows() -> None:
    both = AddressPolicy.allowing(["a.local:1"]).union(AddressPolicy.allowing(["b.local:2"]))
    assert both.exempts("a.local", 1)
    assert both.exempts("B.local", 2)
    assert not both.exempts("a.local", 2)
