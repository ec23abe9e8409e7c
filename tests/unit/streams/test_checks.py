"""What the stage accepts of a record's URLs, fetch time and latency (streams.checks)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from crawlstream.errors import RecordError
from streams.checks import MAX_FUTURE_S, check_fetch_time, check_page, url_refusal
from tests.unit.streams.harness import page


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://example.org/a?b=1", None),
        ("http://[::1]:8080/x", None),
        ("http://xn--bcher-kva.example/", None),
        ("https://example.org/" + "a" * 2000, None),
        ("https://example.org/" + "a" * 2100, "url_too_long"),
        ("javascript:alert(1)", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("data:text/html,hi", "scheme"),
        ("example.org/no-scheme", "scheme"),
        ("http:///no-host", "no_host"),
        ("http://[invalid/", "invalid_url"),
        ("http://example.org:99999/", "invalid_url"),
        ("http://exa\u2100mple.org/", "invalid_url"),
        ("http://example.org/\x00", "invalid_url"),
        ("http://example.org/a\tb", "invalid_url"),
        (" http://example.org/", "invalid_url"),
        (f"http://{'a' * 254}/", "invalid_url"),
    ],
)
def test_url_refusal(url: str, reason: str | None) -> None:
    refused = url_refusal(url, 2048)
    assert (refused[0] if refused else None) == reason


def test_no_length_limit_when_zero() -> None:
    assert url_refusal("https://example.org/" + "a" * 100_000, 0) is None


def test_fetch_time_bounds() -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    assert check_fetch_time(now, now) == now.timestamp()
    assert check_fetch_time(now.replace(tzinfo=None), now) == now.timestamp()  # naive is UTC
    check_fetch_time(now + timedelta(seconds=MAX_FUTURE_S), now)
    for bad in (
        now + timedelta(seconds=MAX_FUTURE_S + 1),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1, 1, 1),
    ):
        with pytest.raises(RecordError) as info:
            check_fetch_time(bad, now)
        assert info.value.reason == "invalid_time"


def test_check_page_looks_at_every_url_and_the_latency() -> None:
    good = page("https://example.org/a")
    check_page(good, 2048)
    for update, reason in [
        ({"url": "javascript:x"}, "scheme"),
        ({"final_url": "http://[x"}, "invalid_url"),
        ({"canonical_url": "https://example.org/" + "x" * 3000}, "url_too_long"),
        ({"fetch_latency_s": float("inf")}, "invalid_record"),
        ({"fetch_latency_s": float("nan")}, "invalid_record"),
    ]:
        with pytest.raises(RecordError) as info:
            check_page(good.model_copy(update=update), 2048)
        assert info.value.reason == reason, update
