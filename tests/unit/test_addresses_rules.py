"""Address-guard rules test_addresses.py leaves open (found by `make mutate`): zone ids and brackets,
deprecated IPv4-compatible addresses, an embedded public IPv4 does not clear a forbidden IPv6
form, allow-list entries at the edges of the port range, and what a refusal says."""

from __future__ import annotations

import ipaddress

import pytest

from crawlstream.addresses import (
    AddressPolicy,
    AddressRefused,
    allowed_pairs,
    forbidden_reason,
    parse_address,
    resolve,
)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("fe80::1%eth0", "fe80::1"),  # the zone id is dropped, not kept as a scope
        ("2606:4700:4700::1111%2", "2606:4700:4700::1111"),
        ("[2606:4700:4700::1111]", "2606:4700:4700::1111"),
        ("8.8.8.8", "8.8.8.8"),
    ],
)
def test_an_address_is_parsed_without_its_zone_id_and_brackets(text: str, address: str) -> None:
    parsed = parse_address(text)
    assert parsed == ipaddress.ip_address(address)
    assert str(parsed) == address


@pytest.mark.parametrize("text", ["x8.8.8.8", "8.8.8.8 ", " 8.8.8.8", "X8.8.8.8X", "8.8.8.8]x"])
def test_text_around_an_address_makes_it_invalid(text: str) -> None:
    assert forbidden_reason(text) == "invalid"


def test_a_public_zoned_or_bracketed_ipv6_address_is_public() -> None:
    assert forbidden_reason("[2606:4700:4700::1111]") is None
    assert forbidden_reason("2606:4700:4700::1111%eth0") is None


def test_a_deprecated_ipv4_compatible_address_is_judged_by_its_ipv4_address() -> None:
    assert forbidden_reason("::2") == "ipv4_embedded_private"  # 0.0.0.2 (this network)
    assert forbidden_reason("::a00:1") == "ipv4_embedded_private"  # ::10.0.0.1
    assert forbidden_reason("::7f00:1") == "ipv4_embedded_loopback"  # ::127.0.0.1
    assert forbidden_reason("::1") == "loopback"  # the IPv6 loopback itself


def test_an_ipv6_form_forbidden_itself_stays_forbidden_whatever_ipv4_it_reaches() -> None:
    teredo_to_public = "2001:0:4136:e378:8000:63bf:f7f7:f7f7"  # Teredo, client 8.8.8.8
    assert forbidden_reason(teredo_to_public) == "private"
    assert forbidden_reason("::ffff:8.8.8.8") is None  # mapped: it is 8.8.8.8
    assert forbidden_reason("2002:808:808::1") is None  # 6to4 of a public address, a global prefix


@pytest.mark.parametrize(
    ("entry", "pairs"),
    [
        ("[::1]", {("::1", 80), ("::1", 443)}),
        ("[2001:db8::5]", {("2001:db8::5", 80), ("2001:db8::5", 443)}),
        ("Xen.Example:8080", {("xen.example", 8080)}),
        ("XX:1", {("xx", 1)}),
        ("host:65535", {("host", 65535)}),
    ],
)
def test_allow_entries_at_the_edges(entry: str, pairs: set[tuple[str, int]]) -> None:
    assert allowed_pairs(entry) == pairs


@pytest.mark.parametrize("entry", ["host:0", "host:65536", "host:00"])
def test_allow_entries_with_a_port_out_of_range_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="port out of range"):
        allowed_pairs(entry)


def test_an_ip_literal_resolves_to_itself() -> None:
    assert resolve("127.0.10.7", 80) == ["127.0.10.7"]
    assert resolve("::1", 443) == ["::1"]


def test_a_refusal_names_its_reason_host_port_and_address() -> None:
    with pytest.raises(AddressRefused) as caught:
        AddressPolicy().check_address("intranet.example", 8080, "10.1.2.3")

    refused = caught.value
    assert refused.reason == "private"
    assert refused.detail == "intranet.example:8080 is 10.1.2.3 (private)"
    assert str(refused) == f"private: {refused.detail}"


@pytest.mark.parametrize("address", ["fec0::1", "feff:ffff::1", "[fec0::a%eth0]"])
def test_deprecated_ipv6_site_local_addresses_are_forbidden(address: str) -> None:
    # Python 3.11's ipaddress calls fec0::/10 global; it is a private range all the same.
    assert forbidden_reason(address) == "site_local"


def test_an_ipv4_address_has_no_site_local_kind() -> None:
    assert forbidden_reason("10.0.0.1") == "private"
    assert forbidden_reason("8.8.8.8") is None


# A refused URL is named in the refusal (shown in dead letters and configuration errors), cut at
# 200 characters so that a huge URL does not flood them.
LONG_PATH = "/" + "p" * 300


@pytest.mark.parametrize(
    ("url", "reason", "after"),
    [
        ("http://a.example:99999" + LONG_PATH, "invalid_url", ": "),  # then urllib's words
        ("ftp://a.example" + LONG_PATH, "scheme", ": only http and https"),
        ("http://" + LONG_PATH, "no_host", " has no host"),
    ],
)
def test_a_refused_url_is_named_cut_at_200_characters(url: str, reason: str, after: str) -> None:
    with pytest.raises(AddressRefused) as refused:
        AddressPolicy().check_url(url)
    assert refused.value.reason == reason
    assert f"{url[:200]!r}{after}" in refused.value.detail
    assert url[:201] not in refused.value.detail


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        ("ftp://a.example/", "ftp scheme in 'ftp://a.example/': only http and https"),
        ("a.example/path", "no scheme in 'a.example/path': only http and https"),
        ("http://a.example:x/", "'http://a.example:x/': "),  # then urllib's words
        ("http:///path", "'http:///path' has no host"),
    ],
)
def test_a_refused_url_says_what_is_wrong_with_it(url: str, detail: str) -> None:
    with pytest.raises(AddressRefused) as refused:
        AddressPolicy().check_url(url)
    assert refused.value.detail.startswith(detail)
