"""Garbage on every input topic of the stream worker, written with kcat, on the running stack.

kcat (Debian's, a client nobody here wrote) writes records the crawlers never would: bytes that
are not JSON, JSON of the wrong shape, null values and keys, 100k nested arrays, keys and values
near the topics' limits, keys that do not match, URLs with odd schemes, lengths and control
characters, fetch times in the future, a 1 MB page of control characters (a 12 MB event once
escaped), to ``pages.raw``, ``links``, the stage's repartition topics (``pages-by-content``,
``pages-by-band``), the sampler's inputs (``pages.unique``, ``pages.touches``) and the stats
agents' internal topics. Then hostile but valid pages (odd ``<base href>``, broken hrefs, 100k
links, poisonous JSON-LD) and a normal page. Each garbage record must be in the dead-letter topic
exactly once with its origin, every letter must fit, and the pages after the garbage must come out
on ``pages.unique``: the worker did not stop. Uses the ``pipeline`` fixture of the stage tests (own
topic prefix, app id and worker subprocess).
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Consumer, TopicPartition

from crawlstream import offsets
from crawlstream.deadletters import MAX_KEY_BYTES, RECORD_OVERHEAD
from crawlstream.records import DeadLetter, Enrichment, LinkRecord, PageEvent, PageRecord, PageTouch
from crawlstream.settings import Settings
from tests.integration.test_streams_stage import Pipeline, pipeline, wait_for  # noqa: F401
from tests.integration.test_streams_stats import ready

pytestmark = pytest.mark.integration

KEY_SEP, MESSAGE_SEP = b"\x1f", b"\x1e"  # kcat -K / -D: bytes no record below contains
A = "https://garbage.example/a"
NESTED = b"[" * 100_000 + b"]" * 100_000
MIB = 1024 * 1024
Record = tuple[bytes | None, bytes | None]
Garbage = list[tuple[bytes | None, bytes | None, str]]


def kcat(pipe: Pipeline, topic: str, records: list[Record], partition: int = 0) -> None:
    """Produce ``records`` to ``topic`` with kcat; an empty or None key or value is sent as NULL (-Z)."""
    for key, value in records:
        for raw in (key or b"", value or b""):
            assert KEY_SEP not in raw, raw[:50]
            assert MESSAGE_SEP not in raw, raw[:50]
    data = b"".join((key or b"") + KEY_SEP + (value or b"") + MESSAGE_SEP for key, value in records)
    argv = ["kcat", "-P", "-b", pipe.settings.kafka.bootstrap_servers, "-t", topic, "-p", str(partition)]
    argv += [
        "-K",
        r"\x1f",
        "-D",
        r"\x1e",
        "-Z",
        "-X",
        f"message.max.bytes={pipe.settings.kafka.max_message_bytes}",
    ]
    done = subprocess.run(argv, input=data, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]


def records_of(settings: Settings, topic: str) -> list[tuple[int, int, bytes | None, bytes | None]]:
    """Every (partition, offset, key, value) of ``topic`` up to its current end offsets."""
    big = 4 * settings.kafka.max_message_bytes
    consumer = Consumer(
        settings.kafka.librdkafka(
            **{
                "group.id": f"it-garbage-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "fetch.max.bytes": big,
                "max.partition.fetch.bytes": big,
            }
        )
    )
    try:
        remaining = {p: end for p, end in offsets.end_offsets(settings, topic).items() if end > 0}
        consumer.assign([TopicPartition(topic, p, 0) for p in remaining])
        out: list[tuple[int, int, bytes | None, bytes | None]] = []
        deadline = time.monotonic() + 60
        while remaining and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            partition, offset = msg.partition(), msg.offset()
            assert partition is not None
            assert offset is not None
            out.append((partition, offset, msg.key(), msg.value()))
            if offset + 1 >= remaining.get(partition, 0):
                remaining.pop(partition, None)
        assert not remaining, f"could not read {topic} to its end offsets {remaining}"
        return out
    finally:
        consumer.close()


def page(url: str, body: str = "<main><p>Some words on a page.</p></main>", **update: object) -> PageRecord:
    record = PageRecord(
        url=url, canonical_url=url, final_url=url, status=200, fetched_at=datetime.now(UTC), body=body
    )
    return record.model_copy(update=update)


def raw_page(url: str, body: str = "<main><p>Some words on a page.</p></main>", **update: object) -> Record:
    return url.encode(), page(url, body, **update).to_bytes()


def event(url: str = A, content: str = "c1") -> PageEvent:
    return PageEvent(
        change="new",
        page=page(url),
        # All bits set: no band key of it is "0:0000" (the band the garbage below claims).
        enrichment=Enrichment(text="t", content_hash=content, simhash=2**64 - 1),
    )


def link(url: str = A, **update: object) -> LinkRecord:
    record = LinkRecord(url=url, canonical_url=url, host="garbage.example", source_url=A, depth=1)
    return record.model_copy(update=update)


def garbage_by_topic(pipe: Pipeline) -> dict[str, Garbage]:
    t, app_id = pipe.topics, pipe.settings.streams.app_id
    limit = pipe.settings.kafka.max_message_bytes
    long_url = A + "?q=" + "x" * 3000
    control = "https://garbage.example/control"
    samples: Garbage = [
        (b'"garbage.example"', b"not json", "invalid_json"),
        (b'"garbage.example"', None, "null_value"),
        (b'"garbage.example"', NESTED, "invalid_json"),
        (b'"garbage.example"', b'{"d": "garbage.example", "r": "", "t": 1e30, "pages": 1}', "invalid_sample"),
    ]
    return {
        t.raw_pages.name: [
            (b"k1", b"\x00\xfe\xff not json {", "invalid_json"),
            (b"k2", b'{"a": 1}', "invalid_record"),
            (b"k3", b"[1, 2]", "invalid_record"),
            (b"k4", b"null", "invalid_record"),
            (b"k5", None, "null_value"),
            (None, page(A).to_bytes(), "key_mismatch"),
            (b"k6", NESTED, "invalid_json"),
            (b"https://garbage.example/other", page(A).to_bytes(), "key_mismatch"),
            (*raw_page("javascript:alert(1)"), "scheme"),
            (*raw_page(long_url), "url_too_long"),
            (*raw_page("http://exa\x01mple.org/"), "invalid_url"),
            (*raw_page("http://[::1/x"), "invalid_url"),
            (*raw_page(A, fetched_at=datetime.now(UTC) + timedelta(days=1)), "invalid_time"),
            (b"K" * (limit - 2 * MIB), b"{", "invalid_json"),  # a key near the topic's limit
            (A.encode(), b"{" + b"v" * (limit - 2 * MIB), "invalid_json"),  # a value near it
            (*raw_page(control, body="<p>" + "\x01" * MIB + "</p>"), "too_large"),  # 12 MB escaped
        ],
        t.pages_by_content.name: [
            (b"00", b"not json", "invalid_event"),
            (b"00", None, "null_value"),
            (b"00", NESTED, "invalid_event"),
            (b"00", page(A).to_bytes(), "invalid_event"),
            (b"ff", event().to_bytes(), "key_mismatch"),
        ],
        t.pages_by_band.name: [
            (b"0:0000", b"not json", "invalid_event"),
            (b"0:0000", None, "null_value"),
            (b"x:y", event().to_bytes(), "bad_band_key"),
            (b"0:0000", event().to_bytes(), "key_mismatch"),
        ],
        t.links.name: [
            (A.encode(), b"{not json", "invalid_link"),
            (A.encode(), None, "null_value"),
            (A.encode(), NESTED, "invalid_link"),
            (b"https://garbage.example/other", link().to_bytes(), "key_mismatch"),
            (A.encode(), link(host="elsewhere.example").to_bytes(), "host_mismatch"),
        ],
        t.unique_pages.name: [
            (A.encode(), b"not json", "invalid_event"),
            (A.encode(), None, "null_value"),
            (A.encode(), NESTED, "invalid_event"),
            (A.encode(), event("javascript:alert(1)").to_bytes(), "scheme"),
        ],
        t.page_touches.name: [
            (A.encode(), b"not json", "invalid_touch"),
            (A.encode(), None, "null_value"),
            (A.encode(), NESTED, "invalid_touch"),
            (
                A.encode(),
                PageTouch(
                    canonical_url=A, fetched_at=datetime(9999, 1, 1, tzinfo=UTC), status=200
                ).to_bytes(),
                "invalid_time",
            ),
        ],
        f"{app_id}-stats-by-domain": samples,
        f"{app_id}-stats-by-run": samples,
    }


# Links a crawler could have written but the frontier must refuse (counted, not dead-lettered).
REFUSED_LINKS = {
    "too_deep": link(depth=99),
    "scheme": link("javascript:alert(1)"),
    "url_too_long": link(A + "?q=" + "x" * 3000),
    "invalid_url": link("http://[::1/x"),
}
HOSTILE_PAGES = {
    "https://garbage.example/base-javascript": '<base href="javascript:alert(1)"><a href="x.html">x</a>',
    "https://garbage.example/base-broken": '<base href="http://[::1"><a href="x.html">x</a>',
    "https://garbage.example/hrefs": '<a href="http://[invalid">a</a><a href="x.html">x</a>',
    "https://garbage.example/jsonld": '<script type="application/ld+json">{"a": "\\ud800"}</script>'
    + '<script type="application/ld+json">'
    + "[" * 100_000
    + "]" * 100_000
    + '</script><a href="x.html">x</a>',
    "https://garbage.example/links": '<a href="x.html">x</a>'
    + "".join(f'<a href="/l{n}">{n}</a>' for n in range(100_000)),
}
NORMAL = "https://garbage.example/normal"


def everything_committed(pipe: Pipeline, topics: list[str]) -> bool:
    settings = pipe.settings
    for topic in topics:
        end = offsets.end_offsets(settings, topic)
        if offsets.lag(end, offsets.committed_offsets(settings, settings.streams.app_id, topic)):
            return False
    return True


def test_garbage_on_every_input_topic_is_dead_lettered_once_and_the_stage_goes_on(pipeline: Pipeline) -> None:  # noqa: F811
    worker = pipeline.start_worker()
    garbage = garbage_by_topic(pipeline)
    # The stats agents' internal topics are faust's: they exist once the worker has started.
    wait_for("the worker ready", lambda: pipeline.group_members() == 1 and ready(worker), worker)
    refused_before = {
        reason: worker.metric(f'streams_frontier_refused_total{{reason="{reason}"}}')
        for reason in REFUSED_LINKS
    }

    expected: dict[tuple[str, int, int], str] = {}
    values: dict[tuple[str, int, int], bytes | None] = {}
    for topic, records in garbage.items():
        kcat(pipeline, topic, [(key, value) for key, value, _ in records], partition=1)
        written = records_of(pipeline.settings, topic)
        assert len(written) == len(records), topic  # nothing else wrote there yet
        for (partition, offset, _key, value), (_, _, reason) in zip(sorted(written), records, strict=True):
            expected[(topic, partition, offset)] = reason
            values[(topic, partition, offset)] = value
    links = pipeline.topics.links.name
    kcat(pipeline, links, [(r.canonical_url.encode(), r.to_bytes()) for r in REFUSED_LINKS.values()])
    kcat(pipeline, links, [(A.encode(), link().to_bytes())])
    kcat(
        pipeline, pipeline.topics.raw_pages.name, [raw_page(url, body) for url, body in HOSTILE_PAGES.items()]
    )
    kcat(
        pipeline,
        pipeline.topics.raw_pages.name,
        [raw_page(NORMAL, "<main><p>A normal page after it all.</p></main>")],
    )

    inputs = [*garbage, pipeline.topics.links.name]
    wait_for("the stage to commit every input", lambda: everything_committed(pipeline, inputs), worker)
    wait_for(
        "the pages after the garbage on pages.unique",
        lambda: {NORMAL, *HOSTILE_PAGES} <= unique_urls(pipeline),
        worker,
    )

    produced = records_of(pipeline.settings, pipeline.topics.dead_letter.name)
    letters = [DeadLetter.model_validate_json(value or b"") for _, _, _, value in produced]
    origins = Counter((d.source_topic or "", d.source_partition or 0, d.source_offset or 0) for d in letters)
    assert origins == Counter(expected.keys())  # each garbage record exactly once, nothing else
    limit = pipeline.topics.dead_letter.max_message_bytes
    for (_, _, key, value), letter in zip(produced, letters, strict=True):
        origin = (letter.source_topic or "", letter.source_partition or 0, letter.source_offset or 0)
        assert (letter.stage, letter.reason) == ("streams", expected[origin]), origin
        assert letter.error_class
        assert len(key or b"") <= MAX_KEY_BYTES
        assert len(key or b"") + len(value or b"") + RECORD_OVERHEAD <= limit
        if not letter.truncated:
            assert letter.original_value() == values[origin]
        else:
            # What was cut is said exactly (the `or` that stood here was true whenever a key existed).
            assert letter.original_value_bytes == len(values[origin] or b"")
    assert sum(d.truncated for d in letters) >= 3  # the key and the value near the limit, the 12 MB event
    too_large = next(d for d in letters if d.reason == "too_large")
    assert "exceeds" in too_large.error

    for reason in REFUSED_LINKS:
        counted = (
            worker.metric(f'streams_frontier_refused_total{{reason="{reason}"}}') - refused_before[reason]
        )
        assert counted == 1.0, reason
    requests = records_of(pipeline.settings, pipeline.topics.requests.name)
    assert [key for _, _, key, _ in requests] == [b"garbage.example"]
    assert worker.proc.poll() is None
    assert "infrastructure failure" not in worker.log.read_text(errors="replace")


def unique_urls(pipe: Pipeline) -> set[str]:
    urls = set()
    for _, value in pipe.read_all(pipe.topics.unique_pages.name):
        try:
            urls.add(PageEvent.model_validate_json(value or b"").page.canonical_url)
        except ValueError:
            continue  # the garbage written there
    return urls
