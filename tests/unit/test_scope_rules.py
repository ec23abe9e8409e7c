"""Scope rules test_scope.py leaves open (found by `make mutate`): host names compared without
case or a trailing dot, IP literals as their own domain, ``max_depth`` 0 as no limit, several
allow patterns, and a link's depth at the limit."""

from __future__ import annotations

import pytest

from crawlstream.records import Scope
from crawlstream.scope import host_of, link_refusal, registrable_domain


@pytest.mark.parametrize(
    ("host", "domain"),
    [
        ("WWW.Example.COM", "example.com"),
        ("www.example.com.", "example.com"),  # the root's dot
        ("[::1]", "[::1]"),
        ("2001:db8::1", "2001:db8::1"),
        ("Intranet", "intranet"),
        ("a.b.c.unknown-tld", "c.unknown-tld"),
        ("github.io", "github.io"),  # a public suffix itself
    ],
)
def test_registrable_domains_of_odd_hosts(host: str, domain: str) -> None:
    assert registrable_domain(host) == domain


def test_the_host_of_a_url_is_lower_case() -> None:
    assert host_of("http://WWW.Example.org:8080/A") == "www.example.org"
    assert host_of("not a url") == ""


def test_hosts_are_compared_without_case() -> None:
    page = "http://www.example.org/"
    assert link_refusal("http://WWW.EXAMPLE.org/b", page, 1, Scope(follow="same-host")) is None
    assert link_refusal("http://Shop.Example.org/b", page, 1, Scope(follow="same-domain")) is None


def test_ip_hosts_are_their_own_domain() -> None:
    scope = Scope(follow="same-domain")
    assert link_refusal("http://127.0.0.2/a", "http://127.0.0.1/", 1, scope) == "offsite_domain"
    assert link_refusal("http://127.0.0.1:8080/a", "http://127.0.0.1/", 1, scope) is None


def test_max_depth_zero_is_no_limit_and_the_limit_itself_is_in_scope() -> None:
    assert link_refusal("http://a.test/x", "http://a.test/", 500, Scope(follow="any", max_depth=0)) is None
    assert link_refusal("http://a.test/x", "http://a.test/", 3, Scope(follow="any", max_depth=3)) is None
    assert (
        link_refusal("http://a.test/x", "http://a.test/", 4, Scope(follow="any", max_depth=3)) == "too_deep"
    )


def test_any_allow_pattern_admits_and_any_deny_pattern_refuses() -> None:
    scope = Scope(follow="any", allow=[r"/docs/", r"/blog/"], deny=[r"\.pdf$", r"/private/"])
    page = "http://a.test/"
    assert link_refusal("http://a.test/blog/1", page, 1, scope) is None
    assert link_refusal("http://a.test/docs/private/1", page, 1, scope) == "filtered"
    assert link_refusal("http://a.test/other", page, 1, scope) == "filtered"
    assert (
        link_refusal("http://a.test/anything.pdf", page, 1, Scope(follow="any", deny=[r"\.pdf$"]))
        == "filtered"
    )
    assert link_refusal("http://a.test/anything", page, 1, Scope(follow="any", deny=[r"\.pdf$"])) is None
