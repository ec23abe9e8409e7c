"""Exact-content and near-duplicate agents: plain functions and agents through ``test_context``."""

from __future__ import annotations

from typing import Any

import pytest

from crawlstream.errors import RecordError
from crawlstream.records import DeadLetter, Enrichment, PageEvent
from streams.fingerprints import band_keys
from streams.near import BUCKET_LIMIT, band_index, closest, remember
from tests.unit.streams.harness import Harness, page, run

A, B, C = (f"https://example.org/{name}" for name in "abc")
SIMHASH = 0x0123456789ABCDEF


def event(url: str, simhash: int = SIMHASH, content: str = "c1") -> PageEvent:
    return PageEvent(
        change="new",
        page=page(url),
        enrichment=Enrichment(text="t", content_hash=content, simhash=simhash, word_count=1),
    )


def test_band_index_parses_and_rejects() -> None:
    assert band_index(b"2:4567", 4) == 2
    for bad in (b"x:1", b"4:00", b"1:zz", None):
        with pytest.raises(RecordError):
            band_index(bad, 4)


def test_closest_picks_the_nearest_other_url_within_distance() -> None:
    bucket = [[A, SIMHASH ^ 0b111], [B, SIMHASH ^ 0b1], [C, SIMHASH ^ 0xFFFF]]
    found = closest(event(C), bucket, 3)
    assert (found.near_duplicate_of, found.near_distance) == (B, 1)
    assert closest(event(B), [[B, SIMHASH]], 3).near_duplicate_of is None  # itself (a replay)
    assert closest(event(C), [[A, SIMHASH ^ 0xF]], 3).near_duplicate_of is None  # too far


def test_remember_replaces_own_entry_and_caps_the_bucket() -> None:
    assert remember([[A, 1], [B, 2]], A, 3) == [[B, 2], [A, 3]]
    full = [[f"u{i}", i] for i in range(BUCKET_LIMIT)]
    assert remember(full, C, 1) == full


def test_content_agent_marks_copies_and_routes_originals_to_the_bands() -> None:
    async def scenario(h: Harness, agent: Any) -> None:
        for url in (A, B, A):
            await agent.put(event(url).to_bytes(), key=b"c1")
        await agent.put(event(C).to_bytes(), key=b"wrong")

    h = run(lambda h: h.content.agent, scenario)
    routed = h.on("by_band")
    assert [key for key, _ in routed] == [band_keys(SIMHASH, 4)[0].encode()] * 2  # A, and A's replay
    [(key, value)] = h.on("unique")
    assert (key, PageEvent.model_validate_json(value).duplicate_of) == (B.encode(), A)
    assert h.content.content_first["c1"] == A
    [(_, letter)] = h.on("dead_letter")
    assert DeadLetter.model_validate_json(letter).reason == "key_mismatch"


def test_near_agent_walks_the_bands_then_forwards_marked_events() -> None:
    near = SIMHASH ^ (1 << 63) ^ 1  # differs in bands 0 and 3 only

    async def scenario(h: Harness, agent: Any) -> None:
        for url, simhash in ((A, SIMHASH), (B, near)):
            current = event(url, simhash).to_bytes()
            key = band_keys(simhash, 4)[0].encode()
            for _ in range(4):  # feed each hop's output back, as Kafka would
                await agent.put(current, key=key)
                name, key, current = h.sent[-1]
                if name == "unique":
                    break

    h = run(lambda h: h.near.agent, scenario)
    outputs = [PageEvent.model_validate_json(value) for _, value in h.on("unique")]
    assert [(e.page.canonical_url, e.near_duplicate_of, e.near_distance) for e in outputs] == [
        (A, None, None),
        (B, A, 2),
    ]
    assert len(h.on("by_band")) == 6
    assert h.near.near_bands[band_keys(SIMHASH, 4)[1]] == [[A, SIMHASH], [B, near]]
