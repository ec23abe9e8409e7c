"""Garbage on every input topic of the stage, through each agent (faust's test harness, no broker).

Every garbage record must come out as exactly one dead letter carrying its origin (topic,
partition, offset), its reason and error class, leave nothing in the agent's tables, and the
agent must handle the next, valid record. Hostile but valid pages (odd ``<base href>``, broken
hrefs, poisonous JSON-LD, 100k links) must flow as pages, readable by the next hop.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from crawlstream.deadletters import MAX_KEY_BYTES, RECORD_OVERHEAD, capped_key
from crawlstream.records import DeadLetter, Enrichment, LinkRecord, PageEvent, PageTouch
from streams.fingerprints import band_keys
from streams.stats import faust_partition, json_key
from tests.unit.streams.harness import FETCHED, Harness, page, put, run, sample, settings_with

A, B = "https://example.org/a", "https://example.org/b"
NESTED = b"[" * 100_000 + b"]" * 100_000
NESTED_OBJECTS = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
SIMHASH = 0x0123456789ABCDEF
# URLs no crawler produces, and the reason each is refused for.
BAD_URLS = [
    ("javascript:alert(1)", "scheme"),
    ("file:///etc/passwd", "scheme"),
    ("http://[invalid/", "invalid_url"),
    ("http://[::1/x", "invalid_url"),
    ("http://exa\x00mple.org/", "invalid_url"),
    ("http://example.org/a b", "invalid_url"),
    ("http://example.org/\r\nSet-Cookie: x", "invalid_url"),
    ("http:///no-host", "no_host"),
    (A + "?" + "x" * 3000, "url_too_long"),
]
Garbage = list[tuple[bytes | None, bytes | None, str]]


def letters(h: Harness) -> list[DeadLetter]:
    return [DeadLetter.model_validate_json(value) for _, value in h.on("dead_letter")]


def origins(h: Harness) -> list[tuple[str | None, int | None, int | None, str]]:
    return [(d.source_topic, d.source_partition, d.source_offset, d.reason) for d in letters(h)]


def expected(topic: str, partition: int, garbage: Garbage) -> list[tuple[str, int, int, str]]:
    return [(topic, partition, offset, reason) for offset, (_, _, reason) in enumerate(garbage)]


def infinite_latency(raw: bytes) -> bytes:
    """pydantic writes inf as null; a hostile producer writes Infinity, which pydantic reads."""
    assert b'"fetch_latency_s":0.0' in raw
    return raw.replace(b'"fetch_latency_s":0.0', b'"fetch_latency_s":Infinity')


def raw_garbage() -> Garbage:
    good = page(A)

    def with_(**update: Any) -> bytes:
        return good.model_copy(update=update).to_bytes()

    return [
        (A.encode(), b"\x00\xffnot json at all", "invalid_json"),
        (A.encode(), b'{"schema_version": 1}', "invalid_record"),
        (A.encode(), b"[1, 2, 3]", "invalid_record"),
        (A.encode(), b"null", "invalid_record"),
        (A.encode(), None, "null_value"),
        (A.encode(), NESTED, "invalid_json"),
        (A.encode(), NESTED_OBJECTS, "invalid_json"),
        (b"https://example.org/other", good.to_bytes(), "key_mismatch"),
        (None, good.to_bytes(), "key_mismatch"),
        *[(url.encode(), page(url).to_bytes(), reason) for url, reason in BAD_URLS],
        (A.encode(), with_(final_url="javascript:alert(1)"), "scheme"),
        (A.encode(), with_(fetched_at=datetime(9999, 1, 1, tzinfo=UTC)), "invalid_time"),
        (A.encode(), with_(fetched_at=datetime(1, 1, 1, tzinfo=UTC)), "invalid_time"),
        (A.encode(), infinite_latency(good.to_bytes()), "invalid_record"),
    ]


def test_raw_topic_garbage_is_dead_lettered_once_with_its_origin_and_changes_nothing() -> None:
    garbage = raw_garbage()
    before = sample("streams_dead_letters_total", agent="detect_changes", reason="scheme")

    async def scenario(h: Harness, agent: Any) -> None:
        for key, value, _ in garbage:
            await agent.put(value, key=key, partition=1)
        await agent.put(page(A).to_bytes(), key=A.encode(), partition=1)

    h = run(lambda h: h.changes.agent, scenario)
    assert origins(h) == expected("unit.pages.raw", 1, garbage)
    assert all(d.stage == "streams" and d.error_class and not d.truncated for d in letters(h))
    assert [d.original_value() for d in letters(h)] == [value for _, value, _ in garbage]
    # Produced with the original key (a long one cut to MAX_KEY_BYTES: a key names, it is no payload).
    assert [key for key, _ in h.on("dead_letter")] == [capped_key(key) for key, _, _ in garbage]
    assert sample("streams_dead_letters_total", agent="detect_changes", reason="scheme") - before == 3
    # Nothing of the garbage reached the table or an output; the valid page after it did.
    assert list(h.changes.urls.keys()) == [A]
    assert [PageEvent.model_validate_json(v).page.canonical_url for _, v in h.on("by_content")] == [A]


def test_keys_and_values_over_the_limits_become_dead_letters_that_fit() -> None:
    limit = 1 << 20
    big_key, big_value = b"k" * (2 * limit), b"{" + b"v" * (limit - 100)
    near_key = b"n" * (limit - 2048)

    async def scenario(h: Harness, agent: Any) -> None:
        await agent.put(b"{", key=big_key)
        await agent.put(big_value, key=A.encode())
        await agent.put(b"{", key=near_key)
        await agent.put(page(A).to_bytes(), key=A.encode())

    h = run(lambda h: h.changes.agent, scenario, settings_with(max_message_bytes=limit))
    produced = h.on("dead_letter")
    assert [d.reason for d in letters(h)] == ["invalid_json"] * 3
    for key, value in produced:
        assert len(key) <= MAX_KEY_BYTES
        assert len(key) + len(value) + RECORD_OVERHEAD <= limit
    first, second, third = letters(h)
    assert [d.truncated for d in (first, second, third)] == [True] * 3
    assert (first.original_key_bytes, second.original_value_bytes) == (len(big_key), len(big_value))
    assert third.original_key_bytes == len(near_key)
    assert len(h.on("by_content")) == 1


def test_a_page_too_large_once_escaped_is_dead_lettered_and_leaves_no_table_entry() -> None:
    """A body of control characters grows six-fold as JSON escapes, twice over (body and text):
    the PageEvent exceeds the topic; the event is dead-lettered before the table is written."""
    limit = 1 << 20
    hostile = page(A, body="<p>" + "\x01" * 100_000 + "</p>").to_bytes()
    assert len(hostile) < limit  # the raw record itself fits its topic

    async def scenario(h: Harness, agent: Any) -> None:
        await agent.put(hostile, key=A.encode())
        await agent.put(page(B).to_bytes(), key=B.encode())

    h = run(lambda h: h.changes.agent, scenario, settings_with(max_message_bytes=limit))
    [letter] = letters(h)
    assert (letter.reason, letter.error_class) == ("too_large", "crawlstream.errors.RecordError")
    assert f"limit of {limit} bytes" in letter.error
    assert letter.original_value() == hostile
    assert list(h.changes.urls.keys()) == [B]
    assert [key for key, _ in h.on("unique")] + [key for key, _ in h.on("by_content")] != []
    assert all(b"example.org/a" not in value for _, value in h.on("by_content"))


X = '<a href="x.html">x</a>'
JSONLD = '<script type="application/ld+json">'
HOSTILE_PAGES = {
    "base javascript": '<base href="javascript:alert(1)"><a href="x.html">x</a>',
    "base broken ipv6": '<base href="http://[::1"><a href="x.html">x</a>',
    "base data": '<base href="data:text/html,hi"><a href="x.html">x</a>',
    "broken hrefs": '<a href="http://[invalid">a</a><a href="http://ok.example/\x01">b</a>' + X,
    "jsonld lone surrogate": JSONLD + '{"a": "\\ud800"}</script>' + X,
    "jsonld 100k nested": '<script type="application/ld+json">'
    + "[" * 100_000
    + "]" * 100_000
    + '</script><a href="x.html">x</a>',
    # json.loads takes 198 levels; the PageEvent around them would pass pydantic's limit.
    "jsonld 198 deep": '<script type="application/ld+json">'
    + '{"a":' * 198
    + "1"
    + "}" * 198
    + '</script><a href="x.html">x</a>',
    "100k links": '<a href="x.html">x</a>' + "".join(f'<a href="/l{n}">{n}</a>' for n in range(100_000)),
}


def test_hostile_but_valid_pages_flow_and_the_next_hop_can_read_them() -> None:
    names = list(HOSTILE_PAGES)

    async def scenario(h: Harness, agent: Any) -> None:
        for n, name in enumerate(names):
            url = f"https://example.org/p{n}"
            body = f"<html><body><main><p>Hostile page {name} with some words.</p>{HOSTILE_PAGES[name]}"
            await agent.put(page(url, body=body).to_bytes(), key=url.encode())

    h = run(lambda h: h.changes.agent, scenario)
    assert letters(h) == []
    events = [PageEvent.model_validate_json(value) for _, value in h.on("by_content")]
    assert len(events) == len(names)
    for name, event in zip(names, events, strict=True):
        assert event.enrichment is not None
        assert event.enrichment.outlinks[0] == "https://example.org/x.html", name
        assert event.enrichment.jsonld == [], name
    assert len(events[-1].enrichment.outlinks) == 1000  # type: ignore[union-attr]


def content_event(url: str, content: str = "c1", **update: Any) -> PageEvent:
    event = PageEvent(
        change="new",
        page=page(url),
        enrichment=Enrichment(text="t", content_hash=content, simhash=SIMHASH, word_count=1),
    )
    return event.model_copy(update=update)


def repartition_garbage(key: bytes) -> Garbage:
    return [
        (key, b"not json", "invalid_event"),
        (key, page(A).to_bytes(), "invalid_event"),  # a PageRecord, not a PageEvent
        (key, b"[]", "invalid_event"),
        (key, None, "null_value"),
        (key, NESTED, "invalid_event"),
        (key, NESTED_OBJECTS, "invalid_event"),
        *[(key, content_event(url).to_bytes(), reason) for url, reason in BAD_URLS],
    ]


def test_pages_by_content_garbage_is_dead_lettered() -> None:
    garbage = [
        *repartition_garbage(b"c1"),
        (b"c2", content_event(A).to_bytes(), "key_mismatch"),
        (None, content_event(A).to_bytes(), "key_mismatch"),
        (b"c1", content_event(A, enrichment=None).to_bytes(), "key_mismatch"),
        (b"\xff\xfe", content_event(A).to_bytes(), "key_mismatch"),
    ]

    async def scenario(h: Harness, agent: Any) -> None:
        for key, value, _ in garbage:
            await agent.put(value, key=key, partition=2)
        await agent.put(content_event(A).to_bytes(), key=b"c1", partition=2)

    h = run(lambda h: h.content.agent, scenario)
    assert origins(h) == expected("unit.streams.pages-by-content", 2, garbage)
    assert dict(h.content.content_first.items()) == {"c1": A}
    assert len(h.on("by_band")) == 1


def test_pages_by_band_garbage_is_dead_lettered() -> None:
    key0 = band_keys(SIMHASH, 4)[0].encode()
    valid = content_event(A).to_bytes()
    garbage = [
        *repartition_garbage(key0),
        (b"x:1", valid, "bad_band_key"),
        (None, valid, "bad_band_key"),
        (b"9:00", valid, "bad_band_key"),
        (b"-1:00", valid, "bad_band_key"),
        (b"\xff:00", valid, "bad_band_key"),
        (b"0:" + b"f" * 100_000, valid, "key_mismatch"),
        (key0, content_event(A, enrichment=None).to_bytes(), "key_mismatch"),
    ]

    async def scenario(h: Harness, agent: Any) -> None:
        for key, value, _ in garbage:
            await agent.put(value, key=key, partition=0)
        await agent.put(valid, key=key0, partition=0)

    h = run(lambda h: h.near.agent, scenario)
    assert origins(h) == expected("unit.streams.pages-by-band", 0, garbage)
    assert list(h.near.near_bands.keys()) == [key0.decode()]
    assert len(h.on("by_band")) == 1


LINK = LinkRecord(url=A, canonical_url=A, host="example.org", source_url="https://example.org/", depth=1)


def test_links_garbage_is_dead_lettered() -> None:
    garbage = [
        (A.encode(), b"{not json", "invalid_link"),
        (A.encode(), b'{"url": "https://example.org/a"}', "invalid_link"),
        (A.encode(), None, "null_value"),
        (A.encode(), NESTED, "invalid_link"),
        (A.encode(), LINK.model_copy(update={"depth": -1}).model_dump_json().encode(), "invalid_link"),
        (b"https://example.org/other", LINK.to_bytes(), "key_mismatch"),
        (None, LINK.to_bytes(), "key_mismatch"),
        (A.encode(), LINK.model_copy(update={"host": "elsewhere.example"}).to_bytes(), "host_mismatch"),
        (A.encode(), LINK.model_copy(update={"host": "h" * 500_000}).to_bytes(), "host_mismatch"),
    ]

    async def scenario(h: Harness, agent: Any) -> None:
        for key, value, _ in garbage:
            await agent.put(value, key=key, partition=1)
        await agent.put(LINK.to_bytes(), key=A.encode(), partition=1)

    h = run(lambda h: h.frontier.agent, scenario)
    assert origins(h) == expected("unit.links", 1, garbage)
    assert list(h.frontier.seen.keys()) == [A]
    assert [key for key, _ in h.on("requests")] == [b"example.org"]


def stats_garbage(unique: str, touches: str) -> list[tuple[str, bytes | None, bytes | None, str]]:
    event = content_event(A)
    touch = PageTouch(canonical_url=A, fetched_at=FETCHED, status=200)

    def page_update(**update: Any) -> bytes:
        return event.model_copy(update={"page": event.page.model_copy(update=update)}).to_bytes()

    return [
        (unique, A.encode(), b"not json", "invalid_event"),
        (unique, A.encode(), touch.to_bytes(), "invalid_event"),
        (unique, A.encode(), None, "null_value"),
        (unique, A.encode(), NESTED, "invalid_event"),
        (unique, A.encode(), page_update(canonical_url="javascript:alert(1)"), "scheme"),
        (unique, A.encode(), page_update(fetched_at=datetime(9999, 1, 1, tzinfo=UTC)), "invalid_time"),
        (unique, A.encode(), page_update(body_bytes=10**20), "invalid_sample"),
        (unique, A.encode(), page_update(run_id="r" * 10_000), "invalid_sample"),
        (unique, A.encode(), page_update(canonical_url=f"https://{'h' * 300}.example/"), "invalid_url"),
        (touches, A.encode(), b"not json", "invalid_touch"),
        (touches, A.encode(), event.to_bytes(), "invalid_touch"),
        (touches, A.encode(), None, "null_value"),
        (touches, A.encode(), NESTED, "invalid_touch"),
        (
            touches,
            A.encode(),
            touch.model_copy(update={"canonical_url": "http://[x"}).to_bytes(),
            "invalid_url",
        ),
        (touches, A.encode(), infinite_latency(touch.to_bytes()), "invalid_record"),
    ]


def test_unique_and_touches_garbage_is_dead_lettered_by_the_sampler() -> None:
    unique, touches = "unit.pages.unique", "unit.pages.touches"
    garbage = stats_garbage(unique, touches)

    async def scenario(h: Harness, agent: Any) -> None:
        for topic, key, value, _ in garbage:
            await put(agent, value, key, partition=1, topic=topic)
        await put(agent, content_event(A).to_bytes(), A.encode(), topic=unique)
        touch = PageTouch(canonical_url=B, fetched_at=FETCHED, status=200)
        await put(agent, touch.to_bytes(), B.encode(), topic=touches)

    h = run(lambda h: h.stats.sampler, scenario)
    assert origins(h) == [(topic, 1, n, reason) for n, (topic, _, _, reason) in enumerate(garbage)]
    # The valid event and touch: one sample each per internal topic, in event time, routed as
    # faust's producer would route them (views find the owner of a key).
    by_domain = h.on("by_domain")
    assert [json.loads(value)["d"] for _, value in by_domain] == ["example.org"] * 2
    assert {key for key, _ in by_domain} == {json_key("example.org")}
    at_ms = round(FETCHED.timestamp() * 1000)
    assert [ts for name, ts in h.producer.timestamps if name in ("by_domain", "by_run")] == [at_ms] * 4
    assert h.producer.partitions["by_domain"] == [faust_partition(json_key("example.org"), 3)] * 2


def good_sample(**update: Any) -> dict[str, Any]:
    return {"d": "example.org", "r": "run", "t": FETCHED.timestamp(), "pages": 1, "status_2xx": 1, **update}


def sample_garbage() -> list[tuple[bytes | None, float | None, str]]:
    def sample_bytes(**update: Any) -> bytes:
        return json.dumps(good_sample(**update)).encode()

    return [
        (b"not json", None, "invalid_json"),
        (NESTED, None, "invalid_json"),
        (None, None, "null_value"),
        (b"[1]", None, "invalid_sample"),
        (sample_bytes(d="h" * 300), None, "invalid_sample"),
        (sample_bytes(d=""), None, "invalid_sample"),
        (sample_bytes(r=["x"]), None, "invalid_sample"),
        (sample_bytes(t="soon"), None, "invalid_sample"),
        (sample_bytes(t=4e11), None, "invalid_sample"),
        (sample_bytes(pages=-1), None, "invalid_sample"),
        (sample_bytes(pages=True), None, "invalid_sample"),
        (sample_bytes(bytes=10**30), None, "invalid_sample"),
        (sample_bytes(evil=1), None, "invalid_sample"),
        (json.dumps(good_sample(lat=0.1)).encode().replace(b"0.1", b"NaN"), None, "invalid_sample"),
        (json.dumps(good_sample(lat=0.1)).encode().replace(b"0.1", b"Infinity"), None, "invalid_sample"),
    ]


def test_internal_stats_topics_garbage_is_dead_lettered() -> None:
    garbage = sample_garbage()
    domain_garbage = [*garbage, (json.dumps(good_sample()).encode(), 1e12, "invalid_time")]
    domain_garbage.append((json.dumps(good_sample()).encode(), -5.0, "invalid_time"))

    async def domains(h: Harness, agent: Any) -> None:
        for value, timestamp, _ in domain_garbage:
            await put(agent, value, b'"example.org"', timestamp=timestamp)
        await put(agent, json.dumps(good_sample()).encode(), b'"example.org"', timestamp=FETCHED.timestamp())

    async def runs(h: Harness, agent: Any) -> None:
        for value, _, _ in garbage:
            await put(agent, value, b'"run"')
        await put(agent, json.dumps(good_sample()).encode(), b'"run"')

    h = run(lambda h: h.stats.domains, domains)
    topic = "unit-streams-stats-by-domain"
    assert origins(h) == [(topic, 0, n, reason) for n, (_, _, reason) in enumerate(domain_garbage)]
    windows = dict(h.stats.domain_1m.table.data.items())
    assert [acc["pages"] for acc in windows.values()] == [1]
    h = run(lambda h: h.stats.runs, runs)
    assert [reason for *_, reason in origins(h)] == [reason for _, _, reason in garbage]
    assert h.stats.run_progress["run"]["pages"] == 1


def test_a_window_that_cannot_be_closed_is_a_dead_letter_not_a_crash_at_every_restart() -> None:
    async def scenario(h: Harness, agent: Any) -> None:
        close = h.stats.domain_1m.table._on_window_close
        await close(("example.org", (60.0, 119.9)), {"pages": "many"})  # state no sampler writes
        await close(("example.org", (120.0, 179.9)), {"pages": 2})

    h = run(lambda h: h.stats.domains, scenario)
    [letter] = letters(h)
    assert (letter.reason, letter.error_class, letter.source_topic) == ("unprocessable", "ValueError", None)
    assert letter.original_key() == b"example.org"
    assert json.loads(letter.original_value() or b"") == {"pages": "many"}
    assert [json.loads(value)["pages"] for _, value in h.on("stats")] == [2]
