"""Garbage on every input topic of the stage, through each agent (faust's test harness, no broker).

Every garbage record must come out as exactly one dead letter carrying its origin (topic,
partition, offset), its reason and error class, leave nothing in the agent's tables, and the
agent must handle the next, valid record. Hostile but valid pages (odd ``<base href>``, broken
hrefs, poisonous JSON-LD, 100k links) must flow as pages, readable by the next hop.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from crawlstream.deadletters import MAX_KEY_BYTES, RECORD_OVERHEAD, capped_key
from crawlstream.records import DeadLetter, DedupProbe, LinkRecord, PageEvent
from streams.dedup import hop_plan
from streams.fingerprints import band_keys
from streams.outputs import Pending
from streams.stats import faust_partition, json_key
from tests.unit.streams.harness import FETCHED, Harness, page, put, run, run_agents, sample, settings_with

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
    assert [e.page.canonical_url for e in h.held()] == [p.url for p in h.probes()] == [A]


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
    assert len(h.probes()) == 1


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
    assert [p.url for p in h.probes()] == [e.page.canonical_url for e in h.held()] == [B]


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
    # What the verdict sends on, as the next hop (the sink) reads it.
    events = [PageEvent.model_validate_json(waiting.value) for _, waiting in sorted(h.awaiting.pages.items())]
    assert len(events) == len(names)
    for name, event in zip(names, events, strict=True):
        assert event.enrichment is not None
        assert event.enrichment.outlinks[0] == "https://example.org/x.html", name
        assert event.enrichment.jsonld == [], name
    assert len(events[-1].enrichment.outlinks) == 1000  # type: ignore[union-attr]


def probe(url: str = A, **update: Any) -> DedupProbe:
    record = DedupProbe(url=url, partition=1, offset=0, content_hash="c1", simhash=SIMHASH)
    return record.model_copy(update=update)


def probe_garbage(key: bytes) -> Garbage:
    return [
        (key, b"not json", "invalid_probe"),
        (key, page(A).to_bytes(), "invalid_probe"),  # a PageRecord, not a probe
        (key, b"[]", "invalid_probe"),
        (key, None, "null_value"),
        (key, NESTED, "invalid_probe"),
        (key, NESTED_OBJECTS, "invalid_probe"),
        (key, b'{"v": 2, "u": "https://example.org/a", "p": 1, "o": 0, "s": 1}', "invalid_probe"),
        (key, b'{"v": 1, "u": "https://example.org/a", "p": 1, "o": 0, "s": -1}', "invalid_probe"),
        *[(key, probe(url).to_bytes(), reason) for url, reason in BAD_URLS],
        *[(key, probe(duplicate_of=url).to_bytes(), reason) for url, reason in BAD_URLS],
        *[
            (key, probe(near_duplicate_of=url, near_distance=1).to_bytes(), reason)
            for url, reason in BAD_URLS
        ],
    ]


def test_pages_by_band_garbage_is_dead_lettered() -> None:
    keys = band_keys(SIMHASH, 4)
    first = hop_plan(keys, 3)[0].partition
    key0 = keys[0].encode()
    valid = probe().to_bytes()
    elsewhere = (first + 1) % 3  # band 0 lives in `first` only
    garbage = [
        *probe_garbage(key0),
        (b"x:1", valid, "key_mismatch"),
        (None, valid, "key_mismatch"),
        (b"\xff:00", valid, "key_mismatch"),
        (b"0:" + b"f" * 100_000, valid, "key_mismatch"),
        (key0, probe(content_hash=None).to_bytes(), "invalid_probe"),  # the first hop needs it
        (key0, probe(partition=3).to_bytes(), "invalid_probe"),  # no such raw partition
    ]

    async def scenario(h: Harness, agent: Any) -> None:
        for key, value, _ in garbage:
            await put(agent, value, key, partition=first)
        await put(agent, valid, key0, partition=first)
        await put(agent, valid, key0, partition=elsewhere)  # a band 0 key in another partition

    h = run(lambda h: h.dedup.agent, scenario)
    assert origins(h) == [
        *expected("unit.streams.pages-by-band", first, garbage),
        ("unit.streams.pages-by-band", elsewhere, len(garbage) + 1, "key_mismatch"),
    ]
    assert sorted(h.dedup.index.data) == sorted(
        [
            b"c|c1",
            b"p|" + A.encode(),
            *(b"b|" + keys[b].encode() + b"|" + A.encode() for b in hop_plan(keys, 3)[0].bands),
        ]
    )
    assert len(h.on("by_band")) + len(h.on("verdicts")) == 1


def test_verdicts_garbage_is_dead_lettered_and_releases_nothing() -> None:
    garbage = probe_garbage(A.encode())

    async def scenario(h: Harness, agents: list[Any]) -> None:
        changes, verdicts = agents
        await put(changes, page(A).to_bytes(), A.encode(), partition=1)
        for key, value, _ in garbage:
            await put(verdicts, value, key, partition=1)
        assert h.on("unique") == []
        stale = sample("streams_verdicts_total", outcome="stale")
        await put(verdicts, probe(offset=5).to_bytes(), A.encode(), partition=1)  # for no page
        assert sample("streams_verdicts_total", outcome="stale") - stale == 1
        assert h.on("unique") == []
        await put(verdicts, h.probes()[0].to_bytes(), A.encode(), partition=1)

    h = run_agents([lambda h: h.changes.agent, lambda h: h.verdicts.agent], scenario)
    assert origins(h) == expected("unit.streams.dedup-verdicts", 1, garbage)
    assert [key for key, _ in h.on("unique")] == [A.encode()]


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


def test_samples_are_summed_per_domain_run_and_minute_and_routed_as_faust_would() -> None:
    pages = [
        page(f"https://example.org/{n}", run_id="r1").model_copy(
            update={"fetched_at": FETCHED + timedelta(seconds=n)}
        )
        for n in range(3)
    ]
    pages.append(
        page("https://other.example/x", run_id="r1").model_copy(
            update={"fetched_at": FETCHED + timedelta(seconds=70)}
        )
    )
    long_run = page(B, run_id="r" * 10_000)  # its page goes on; its sample is a dead letter

    async def scenario(h: Harness, agent: Any) -> None:
        for record in [*pages, long_run]:
            await put(
                agent,
                record.model_copy(update={"kind": "metadata", "body": ""}).to_bytes(),
                record.canonical_url.encode(),
                partition=1,
            )
        assert h.on("by_domain") == []  # held until the flush
        h.stats.buffer.flush()

    h = run(lambda h: h.changes.agent, scenario)
    assert len(h.on("unique")) == 5  # metadata records: no verdict to wait for
    [letter] = letters(h)
    assert (letter.reason, letter.source_topic, letter.source_offset) == (
        "invalid_sample",
        "unit.pages.raw",
        4,
    )
    by_domain = {json.loads(key): json.loads(value) for key, value in h.on("by_domain")}
    assert sorted(by_domain) == ["example.org", "other.example"]
    assert (by_domain["example.org"]["pages"], by_domain["example.org"]["lat_n"]) == (3, 3)
    assert by_domain["example.org"]["t"] == FETCHED.timestamp()  # the earliest of the minute
    runs = [json.loads(value) for _, value in h.on("by_run")]
    assert sorted(r["pages"] for r in runs) == [1, 3]  # one per domain and minute
    domain_key = json_key("example.org")
    assert faust_partition(domain_key, 3) in h.producer.partitions["by_domain"]
    at_ms = round(FETCHED.timestamp() * 1000)
    assert (("by_domain", at_ms)) in h.producer.timestamps


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
        (sample_bytes(lat_n=1, lat_sum=0.1, lat_hist={"x": 1}), None, "invalid_sample"),
        (sample_bytes(lat_n=1, lat_sum=0.1, lat_hist={"5000": 1}), None, "invalid_sample"),
        (sample_bytes(lat_n=1, lat_sum=-1, lat_hist={"5": 1}), None, "invalid_sample"),
        (sample_bytes(lat_n=1, lat_sum=0.1, lat_hist={"5": -1}), None, "invalid_sample"),
        (sample_bytes(lat_n=1, lat_sum=0.1), None, "invalid_sample"),
        (
            sample_bytes(lat_n=1, lat_sum=0.1, lat_hist={str(n): 1 for n in range(600)}),
            None,
            "invalid_sample",
        ),
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


def test_sample_buffer_flushes_when_input_pauses_or_interval_passes_and_sums_runs_over_domains() -> None:
    """Samples wait while more keep coming (up to the flush interval), go out at the first tick
    that saw none arrive, and a run's samples of one minute are one sum whatever their domains."""

    class Event:
        def __init__(self, acked: list[int], n: int) -> None:
            self.acked, self.n = acked, n

        def ack(self) -> None:
            self.acked.append(self.n)

    async def scenario() -> tuple[Harness, list[int], list[int]]:
        h = Harness()
        buffer = h.stats.buffer
        acked: list[int] = []

        def hold(n: int, domain: str) -> None:
            pending = Pending("test", Event(acked, n), None).hold()
            pending.closed = True
            buffer.hold(good_sample(d=domain, t=FETCHED.timestamp() + n))(pending)

        hold(0, "a.example")
        hold(1, "b.example")
        start = buffer.first_at
        buffer.tick(start + 0.5)  # samples came since the last tick: wait for more
        hold(2, "a.example")
        buffer.tick(start + 1.0)
        assert acked == []
        assert h.on("by_domain") == []
        buffer.tick(start + 1.5)  # none came since the last tick: the input paused
        after_pause = list(acked)
        for n in range(3, 13):  # a steady stream: flushed once the oldest waited the interval
            hold(n, "c.example")
            buffer.tick(buffer.first_at + (n - 2) * 0.5)
        return h, after_pause, acked

    h, after_pause, acked = asyncio.run(scenario())
    assert after_pause == [0, 1, 2]
    assert acked[3:] == list(range(3, 13))
    interval = h.settings.streams.stats_flush_interval_s
    by_domain = [json.loads(value) for _, value in h.on("by_domain")]
    assert [(s["d"], s["pages"]) for s in by_domain[:2]] == [("a.example", 2), ("b.example", 1)]
    runs = [json.loads(value) for _, value in h.on("by_run")]
    assert runs[0]["pages"] == 3  # a and b: one sum for the run's minute
    assert sum(r["pages"] for r in runs) == 13
    assert interval == 5.0
    assert len(runs) == 2
    assert runs[1]["pages"] == 10
    assert by_domain[2:] == [{**by_domain[2], "d": "c.example", "pages": 10}]
