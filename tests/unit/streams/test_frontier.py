"""The frontier: link -> request decisions, and the agent through ``test_context``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from crawlstream.errors import RecordError
from crawlstream.records import CrawlRequest, DeadLetter, LinkRecord
from streams.frontier import decide, decode_link, requested
from tests.unit.streams.harness import FETCHED, Harness, run

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
