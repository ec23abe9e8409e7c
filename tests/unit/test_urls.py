"""Canonical URLs: the key of page records and of the dedup table."""

from __future__ import annotations

import pytest

from crawlstream.urls import canonical_url, host_of, is_tracking_param


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("HTTP://Example.COM/a", "http://example.com/a"),
        ("http://example.com:80/a", "http://example.com/a"),
        ("https://example.com:443/a", "https://example.com/a"),
        ("http://example.com:8080/a", "http://example.com:8080/a"),
        ("http://example.com/a#section", "http://example.com/a"),
        ("http://example.com", "http://example.com/"),
        ("http://example.com/a?b=2&a=1", "http://example.com/a?a=1&b=2"),
        ("http://example.com/a?utm_source=x&utm_medium=y&id=3", "http://example.com/a?id=3"),
        ("http://example.com/a?fbclid=abc&gclid=def", "http://example.com/a"),
        ("http://example.com/a%7Eb", "http://example.com/a~b"),
        ("http://127.0.0.1:8000/x.html?UTM_Campaign=z#top", "http://127.0.0.1:8000/x.html"),
    ],
)
def test_canonical_url(raw: str, canonical: str) -> None:
    assert canonical_url(raw) == canonical


def test_canonical_url_is_idempotent() -> None:
    url = "HTTP://Example.com:80/p/q?z=1&utm_source=a&b=2#f"
    assert canonical_url(canonical_url(url)) == canonical_url(url)


def test_tracking_params_and_host() -> None:
    assert is_tracking_param("utm_term")
    assert is_tracking_param("FBCLID")
    assert not is_tracking_param("page")
    assert host_of("http://Docs.Example.org:8080/x") == "docs.example.org"
