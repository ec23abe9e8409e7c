"""The frontier: link -> request decisions, and the agent through ``test_context``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from crawlstream.errors import RecordError
from crawlstream.records import CrawlRequest, DeadLetter, LinkRecord
from streams.frontier import decide, decode_link, refusal, requested
from tests.unit.streams.harness import FETCHED, Harness, run, sample, settings_with

A = "https://example.org/a"
LINK = LinkRecord(
    url=A + "?utm_source=x", canonical_url=A, host="example.org", source_url="https://example.org/", depth=2
)
FETCHED_ENTRY = {"h": "x", "f": FETCHED.isoformat(), "l": FETCHED.isoformat(), "i": 3600.0}


def test_an_unknown_link_is_requested_once() -> None:
    request = decide(LINK, None, None, FETCHED)
    assert request == CrawlRequest(url=LINK.url, canonical_url=A, host="example.org", depth=2, reason="link")
    assert decide(LINK, None, FETCHED.isoformat(), FETCHED + timedelta(days=1)) is None


def test_a_fetched_page_is_requested_again_when_its_interval_has_passed() -> None:
    assert decide(LINK, FETCHED_ENTRY, None, FETCHED + timedelta(minutes=59)) is None
    due = FETCHED + timedelta(hours=1)
    request = decide(LINK, FETCHED_ENTRY, None, due)
    assert request is not None
    assert request.reason == "recrawl"
    # Requested since it fell due: not again until the crawler fetches it (moving "l").
    assert decide(LINK, FETCHED_ENTRY, due.isoformat(), due + timedelta(hours=5)) is None
    # Requested before it fell due (as a new link): due now.
    assert decide(LINK, FETCHED_ENTRY, FETCHED.isoformat(), due) is not None


@pytest.mark.parametrize(
    ("key", "value"), [(A.encode(), b"{"), (b"https://other/", LINK.to_bytes()), (A.encode(), None)]
)
def test_decode_link_rejects_bad_records(key: bytes, value: bytes | None) -> None:
    with pytest.raises(RecordError):
        decode_link(key, value)


def test_agent_requests_new_links_once_keyed_by_host_and_dead_letters_poison() -> None:
    other = LINK.model_copy(update={"url": "https://example.org/b", "canonical_url": "https://example.org/b"})

    async def scenario(h: Harness, agent: Any) -> None:
        await agent.put(LINK.to_bytes(), key=A.encode(), partition=0)
        await agent.put(LINK.to_bytes(), key=A.encode(), partition=0)
        await agent.put(b"{not json", key=b"k", partition=0)
        await agent.put(other.to_bytes(), key=other.canonical_url.encode(), partition=0)

    h = run(lambda h: h.frontier.agent, scenario)
    requests = [(key, CrawlRequest.model_validate_json(value)) for key, value in h.on("requests")]
    assert [(key, r.canonical_url, r.reason) for key, r in requests] == [
        (b"example.org", A, "link"),
        (b"example.org", "https://example.org/b", "link"),
    ]
    [(_, letter)] = h.on("dead_letter")
    assert DeadLetter.model_validate_json(letter).reason == "invalid_link"


def test_agent_requests_a_fetched_page_only_when_due() -> None:
    async def scenario(h: Harness, agent: Any) -> None:
        h.changes.urls.data[A] = FETCHED_ENTRY  # as detect_changes left it (the store, no changelog)
        await agent.put(LINK.to_bytes(), key=A.encode(), partition=0)

    h = run(lambda h: h.frontier.agent, scenario)
    # FETCHED is in the past by far more than the initial interval: the link asks for a recrawl.
    assert [CrawlRequest.model_validate_json(v).reason for _, v in h.on("requests")] == ["recrawl"]


def test_requested_reads_entries_with_and_without_offsets() -> None:
    assert requested(None) == (None, -1)
    assert requested("2026-11-25T10:00:00+00:00") == ("2026-11-25T10:00:00+00:00", -1)
    assert requested({"t": "2026-11-25T10:00:00+00:00", "o": 12}) == ("2026-11-25T10:00:00+00:00", 12)


def test_agent_requests_again_a_link_replayed_after_a_crash() -> None:
    """The table remembers a request whose delivery a crash may have lost; the replayed link
    (same offset) asks again, a later link of the same URL does not."""

    async def scenario(h: Harness, agent: Any) -> None:
        await agent.put(LINK.to_bytes(), key=A.encode(), partition=0)
        agent.sent_offset = 0  # restart from the last committed offset
        await agent.put(LINK.to_bytes(), key=A.encode(), partition=0)
        await agent.put(LINK.to_bytes(), key=A.encode(), partition=0)

    h = run(lambda h: h.frontier.agent, scenario)
    assert [CrawlRequest.model_validate_json(v).reason for _, v in h.on("requests")] == ["link", "link"]
    assert h.frontier.seen[A]["o"] == 0


def test_refusal_by_depth_length_and_scheme() -> None:
    deep = LINK.model_copy(update={"depth": 17})
    assert refusal(deep, max_depth=16, max_url_length=2048) == "too_deep"
    assert refusal(deep, max_depth=0, max_url_length=2048) is None  # 0: no depth limit
    assert refusal(LINK.model_copy(update={"depth": 16}), max_depth=16, max_url_length=2048) is None
    long_url = A + "?q=" + "x" * 3000
    assert refusal(LINK.model_copy(update={"url": long_url}), 16, 2048) == "url_too_long"
    assert refusal(LINK.model_copy(update={"canonical_url": long_url}), 16, 2048) == "url_too_long"
    assert refusal(LINK.model_copy(update={"url": long_url}), 16, 0) is None  # 0: no length limit
    for url, reason in [
        ("javascript:alert(1)", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("ftp://example.org/x", "scheme"),
        ("http://[invalid/", "invalid_url"),
        ("http://example.org/\x00", "invalid_url"),
        ("http:///path", "no_host"),
    ]:
        assert refusal(LINK.model_copy(update={"url": url}), 16, 2048) == reason, url


def test_agent_refuses_links_past_the_limits_counts_them_and_remembers_nothing() -> None:
    settings = settings_with(max_depth=3, max_url_length=100)
    refused = {
        "too_deep": LINK.model_copy(update={"depth": 4}),
        "url_too_long": LINK.model_copy(update={"url": A + "?q=" + "x" * 100}),
        "scheme": LINK.model_copy(update={"url": "javascript:alert(1)"}),
        "invalid_url": LINK.model_copy(update={"url": "http://[::1/x"}),
        "no_host": LINK.model_copy(update={"url": "http:///x"}),
    }
    before = {reason: sample("streams_frontier_refused_total", reason=reason) for reason in refused}

    async def scenario(h: Harness, agent: Any) -> None:
        for link in refused.values():
            await agent.put(link.to_bytes(), key=A.encode(), partition=0)
        await agent.put(LINK.model_copy(update={"depth": 3}).to_bytes(), key=A.encode(), partition=0)

    h = run(lambda h: h.frontier.agent, scenario, settings)
    counted = {
        reason: sample("streams_frontier_refused_total", reason=reason) - before[reason] for reason in refused
    }
    assert counted == dict.fromkeys(refused, 1.0)
    assert h.on("dead_letter") == []  # refused by policy, not garbage: counted, not dead-lettered
    # Only the link within the limits became a request; refused links left no "seen" entry
    # (one refused at depth 4 would otherwise hide the same URL found later at depth 3).
    assert [CrawlRequest.model_validate_json(v).depth for _, v in h.on("requests")] == [3]
    assert h.frontier.seen[A]["o"] == len(refused)
