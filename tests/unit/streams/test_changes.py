"""URL change detection: plain decisions and the agent through ``test_context``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from crawlstream.errors import RecordError
from crawlstream.records import DeadLetter, PageEvent, PageTouch
from streams.changes import Change, classify, decode_keyed_page, fingerprint, replayed, stamped
from streams.dedup import hop_plan
from streams.fingerprints import band_keys
from streams.recrawl import RecrawlPolicy
from tests.unit.streams.harness import FETCHED, Harness, page, run, sample

POLICY = RecrawlPolicy(initial_s=100.0, min_s=50.0, max_s=200.0, rate=0.5)
A = "https://example.org/a"


def test_classify_new_changed_unchanged_and_recrawl_interval() -> None:
    new = classify(None, "h1", FETCHED, POLICY)
    assert new.change is Change.NEW
    assert new.entry == {"h": "h1", "f": FETCHED.isoformat(), "l": FETCHED.isoformat(), "i": 100.0}
    later = FETCHED + timedelta(hours=1)
    same = classify(new.entry, "h1", later, POLICY)
    assert same.change is Change.UNCHANGED
    assert same.entry == {"h": "h1", "f": FETCHED.isoformat(), "l": later.isoformat(), "i": 150.0}
    changed = classify(same.entry, "h2", later, POLICY)
    assert (changed.change, changed.entry["h"], changed.entry["i"]) == (Change.CHANGED, "h2", 75.0)


def test_fingerprint_is_the_text_hash_or_the_response_for_metadata() -> None:
    from streams.enrich import enrich_html

    record = page(A, body="<p>Some words here</p>")
    assert fingerprint(record, enrich_html(record.body, A)) == enrich_html(record.body, A).content_hash
    meta = page(A, body="", kind="metadata", headers={"ETag": '"1"'})
    assert fingerprint(meta, None).startswith("m:")
    assert fingerprint(meta, None) != fingerprint(meta.model_copy(update={"headers": {"ETag": '"2"'}}), None)


@pytest.mark.parametrize("key", [b"https://example.org/b", None])
def test_decode_keyed_page_rejects_other_or_missing_key(key: bytes | None) -> None:
    with pytest.raises(RecordError) as info:
        decode_keyed_page(key, page(A).to_bytes())
    assert info.value.reason == "key_mismatch"


def test_agent_new_then_unchanged_then_changed() -> None:
    before = sample("streams_changes_total", change="unchanged")

    async def scenario(h: Harness, agent: Any) -> None:
        await agent.put(page(A, body="<p>one two three</p>").to_bytes(), key=A.encode(), partition=1)
        await agent.put(page(A, body="<p>One, two  three!</p>").to_bytes(), key=A.encode(), partition=1)
        await agent.put(page(A, body="<p>one two four</p>").to_bytes(), key=A.encode(), partition=1)
        await agent.put(page(A, body="", kind="metadata").to_bytes(), key=A.encode(), partition=1)

    h = run(lambda h: h.changes.agent, scenario)
    # Pages with text wait for their verdict; their fingerprints go to band 0's partition.
    events = h.held()
    assert [e.change for e in events] == ["new", "changed"]
    probes = h.probes()
    assert [(p.url, p.partition, p.offset) for p in probes] == [(A, 1, 0), (A, 1, 2)]
    assert [p.content_hash for p in probes] == [e.enrichment.content_hash for e in events if e.enrichment]
    assert [key for key, _ in h.on("by_band")] == [band_keys(p.simhash, 4)[0].encode() for p in probes]
    assert h.producer.partitions["by_band"] == [
        hop_plan(band_keys(p.simhash, 4), 3)[0].partition for p in probes
    ]
    [(key, touch)] = h.on("touches")
    assert key == A.encode()
    assert PageTouch.model_validate_json(touch).content_hash == events[0].enrichment.content_hash  # type: ignore[union-attr]
    # A metadata record has no text: straight to the unique topic, as a change of the URL.
    [(key, value)] = h.on("unique")
    meta = PageEvent.model_validate_json(value)
    assert (key, meta.change, meta.enrichment) == (A.encode(), "changed", None)
    assert h.changes.urls[A]["f"] == FETCHED.isoformat()
    # Changelog records: faust's topic and the event's partition, through the stage's producer.
    changelog = [(t, part) for t, part, key, _ in h.producer.changelog if key == b'"' + A.encode() + b'"']
    assert changelog == [("unit-streams-urls-changelog", 1)] * 4
    assert sample("streams_changes_total", change="unchanged") - before == 1


def test_agent_dead_letters_poison_and_keeps_going() -> None:
    async def scenario(h: Harness, agent: Any) -> None:
        await agent.put(b"{oops", key=b"some-key", partition=2)
        await agent.put(page(A).to_bytes(), key=b"wrong")
        await agent.put(page(A).to_bytes(), key=A.encode())

    h = run(lambda h: h.changes.agent, scenario)
    letters = [(key, DeadLetter.model_validate_json(value)) for key, value in h.on("dead_letter")]
    assert [letter.reason for _, letter in letters] == ["invalid_json", "key_mismatch"]
    key, bad = letters[0]
    assert key == b"some-key"
    assert (bad.stage, bad.source_topic, bad.source_partition, bad.original_value()) == (
        "streams",
        "unit.pages.raw",
        2,
        b"{oops",
    )
    assert len(h.on("by_band")) == 1


def test_replayed_tells_which_change_an_offset_already_applied() -> None:
    entry = stamped({"h": "x"}, 7, Change.UNCHANGED)
    assert replayed(None, 3) is None
    assert replayed({"h": "x"}, 3) is None  # an entry without an offset: never a replay
    assert replayed(entry, 8) is None  # a later event: process it
    assert replayed(entry, 7) is Change.UNCHANGED  # the event that wrote the entry: same output
    assert replayed(stamped({"h": "x"}, 7, Change.NEW), 7) is Change.NEW
    assert replayed(entry, 5) is Change.CHANGED  # an earlier one: its class is gone, resend the page


def test_agent_resends_outputs_of_events_replayed_after_a_crash() -> None:
    """After a crash the table may hold updates whose outputs never reached the broker: the
    uncommitted events come again and must produce their outputs, not count as unchanged."""
    before = sample("streams_replays_total", agent="detect_changes")

    async def scenario(h: Harness, agent: Any) -> None:
        await agent.put(page(A, body="<p>one two three</p>").to_bytes(), key=A.encode(), partition=1)
        await agent.put(page(A, body="<p>one two three</p>").to_bytes(), key=A.encode(), partition=1)
        h.sent.clear()
        agent.sent_offset = 0  # the consumer restarts from the last committed offset
        await agent.put(page(A, body="<p>one two three</p>").to_bytes(), key=A.encode(), partition=1)
        await agent.put(page(A, body="<p>one two three</p>").to_bytes(), key=A.encode(), partition=1)
        await agent.put(page(A, body="<p>one two three</p>").to_bytes(), key=A.encode(), partition=1)

    h = run(lambda h: h.changes.agent, scenario)
    # offset 0 (overwritten by offset 1 since): resent as a page; offset 1: its own touch again;
    # offset 2 is new work: unchanged.
    assert [p.offset for p in h.probes()] == [0]
    assert [e.change for e in h.held()] == ["changed"]
    assert len(h.on("touches")) == 2
    assert h.changes.urls[A]["o"] == 2
    assert sample("streams_replays_total", agent="detect_changes") - before == 2


def test_a_recrawl_with_the_same_body_is_unchanged_without_being_parsed_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streams import changes

    parsed: list[str] = []
    real = changes.enrich_html

    def counting(html: str, url: str) -> Any:
        parsed.append(html)
        return real(html, url)

    monkeypatch.setattr(changes, "enrich_html", counting)
    before = sample("streams_same_body_total")
    body, reformatted = "<p>one two three</p>", "<p>One, two  three!</p>"

    async def scenario(h: Harness, agent: Any) -> None:
        for text in (body, body, reformatted, reformatted, body):
            await agent.put(page(A, body=text).to_bytes(), key=A.encode(), partition=1)

    h = run(lambda h: h.changes.agent, scenario)
    # Parsed: the first fetch, the first reformatted one (same text: unchanged), and the body
    # again (its digest is no longer the one last classified). Skipped: the two exact repeats.
    assert parsed == [body, reformatted, body]
    assert sample("streams_same_body_total") - before == 2
    touches = [PageTouch.model_validate_json(v) for _, v in h.on("touches")]
    assert len(touches) == 4
    assert {t.content_hash for t in touches} == {h.held()[0].enrichment.content_hash}  # type: ignore[union-attr]
    assert h.changes.urls[A]["b"] == changes.body_digest(page(A, body=body))


def test_a_304_keeps_the_digest_of_the_body_last_classified(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams import changes

    parsed: list[str] = []
    real = changes.enrich_html

    def counting(html: str, url: str) -> Any:
        parsed.append(html)
        return real(html, url)

    monkeypatch.setattr(changes, "enrich_html", counting)
    body = "<main><p>the page as it was first fetched, with words</p></main>"
    first = page(A, body=body)
    not_modified = first.model_copy(update={"status": 304, "body": "", "kind": "metadata"})

    async def scenario(h: Harness, agent: Any) -> None:
        for record in (first, not_modified, first):
            await agent.put(record.to_bytes(), key=A.encode(), partition=1)

    h = run(lambda h: h.changes.agent, scenario)
    # The 304 is a touch with the page's fingerprint, and the 200 after it, the same body, is
    # known without parsing it again: the 304 did not replace the digest with one of no body.
    assert parsed == [body]
    touches = [PageTouch.model_validate_json(v) for _, v in h.on("touches")]
    assert [t.status for t in touches] == [304, 200]
    assert {t.content_hash for t in touches} == {h.held()[0].enrichment.content_hash}  # type: ignore[union-attr]
    assert h.changes.urls[A]["b"] == changes.body_digest(first)
