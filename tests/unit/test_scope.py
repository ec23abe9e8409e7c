"""crawlstream.scope: registrable domains (public suffix list, offline) and link scope decisions."""

from __future__ import annotations

import pytest

from crawlstream.records import Scope
from crawlstream.scope import link_refusal, registrable_domain


@pytest.mark.parametrize(
    ("host", "domain"),
    [
        ("www.example.com", "example.com"),
        ("a.b.example.co.uk", "example.co.uk"),
        ("foo.github.io", "foo.github.io"),  # a private suffix: each user's site is its own domain
        ("x.site1.test", "site1.test"),  # unknown suffix: the default rule "*"
        ("127.0.10.5", "127.0.10.5"),
        ("localhost", "localhost"),
        ("co.uk", "co.uk"),
    ],
)
def test_registrable_domain(host: str, domain: str) -> None:
    assert registrable_domain(host) == domain


def test_follow_modes_compare_the_link_with_its_page() -> None:
    page = "http://www.example.co.uk/index"
    same_domain, other = "http://shop.example.co.uk/a", "http://www.other.co.uk/"
    host = Scope(follow="same-host", max_depth=0)
    assert link_refusal(same_domain, page, 1, host) == "offsite_host"
    assert link_refusal("http://www.example.co.uk/b", page, 1, host) is None
    domain = Scope(follow="same-domain", max_depth=0)
    assert link_refusal(same_domain, page, 1, domain) is None
    assert link_refusal(other, page, 1, domain) == "offsite_domain"
    assert link_refusal(other, page, 1, Scope(follow="any", max_depth=0)) is None
    assert link_refusal(other, "", 0, host) is None  # a seed is always in scope


def test_depth_and_allow_deny() -> None:
    scope = Scope(follow="any", max_depth=2, allow=[r"/docs/"], deny=[r"\.pdf$"])
    assert link_refusal("http://a.test/docs/x", "http://a.test/", 2, scope) is None
    assert link_refusal("http://a.test/docs/x", "http://a.test/", 3, scope) == "too_deep"
    assert link_refusal("http://a.test/blog/x", "http://a.test/", 1, scope) == "filtered"
    assert link_refusal("http://a.test/docs/x.pdf", "http://a.test/", 1, scope) == "filtered"
