"""Attacks on the sink stage over the real stack: `python -m sinks` must store what can be stored,
dead-letter each record it cannot (once, with reason, error class and origin) and keep going.

- URLs far longer than a btree entry (3,000 and 100,000 characters) are stored in full, and an
  ordinary batch after them too; a URL whose outbox event could not fit its topic is refused as
  ``too_large`` (Debezium would stop on it).
- Records that make PostgreSQL raise data errors (integers out of range, a key too long for a btree
  index: SQLSTATE 22003, 54000) or the client refuse a value (NUL in a touch's URL), on every
  family: dead-lettered with ``sqlstate_<code>``, the rest of their batch stored. NUL characters in
  a page's content are no error: they are stored as U+FFFD (``sinks.rows.storable_text``).
- Garbage written with kcat (a client nobody here wrote) to every sink topic: bytes that are not
  JSON, JSON of the wrong shape, null values, JSON nested 100,000 levels deep, keys near and above
  1 MB, a value near the topic's limit: each dead-lettered exactly once with its origin.

Each test has its own topic prefix and consumer groups (``sinktest-<hex>``) and removes its rows.
"""

from __future__ import annotations

import json
import random
import signal
import string
import subprocess
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException, Producer

from crawlstream.deadletters import MAX_KEY_BYTES
from crawlstream.records import DeadLetter, DomainStats, PageEvent, PageTouch, RunEvent
from crawlstream.settings import Settings
from crawlstream.topics import catalog, ensure_topics
from sinks.families import FAMILIES
from sinks.pages import PostgresPageSink
from sinks.rows import url_hash
from tests.integration.kafka_read import read_topic
from tests.integration.sinks_support import (
    Tail,
    count_pages,
    end_offsets,
    owner,
    page,
    settings,
    start_worker,
    tag,
    wait_for,
)

__all__ = ["owner", "settings", "tag"]  # fixtures

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
Origin = tuple[str, int, int]  # topic, partition, offset


def noise(n: int, seed: str) -> str:
    """``n`` URL-safe characters that do not compress (a btree entry may hold a compressed value)."""
    rng = random.Random(seed)
    return "".join(rng.choices(string.ascii_letters + string.digits, k=n))


def produce_at(
    settings: Settings, topic: str, messages: list[tuple[bytes | None, bytes | None]]
) -> list[Origin]:
    """Produce to partition 0 in order; the origin of each message."""
    producer = Producer(
        settings.kafka.librdkafka(**{"enable.idempotence": True, "message.max.bytes": 16 * 1024 * 1024})
    )
    origins: dict[int, Origin] = {}
    for i, (key, value) in enumerate(messages):

        def delivered(err: Any, msg: Any, i: int = i) -> None:
            assert err is None, err
            origins[i] = (msg.topic(), msg.partition(), msg.offset())

        producer.produce(topic, key=key, value=value, partition=0, on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(60) == 0
    return [origins[i] for i in range(len(messages))]


def partition_end(settings: Settings, topic: str) -> int:
    """Partition 0's end offset; retried while a topic just created has no leader yet."""

    def read() -> int | None:
        try:
            return end_offsets(settings, topic, 1)[0]
        except KafkaException:
            return None

    return int(wait_for(lambda: (end := read()) is not None and (end,), 30, f"{topic}'s end offset")[0])


def kcat_produce(settings: Settings, topic: str, messages: list[tuple[bytes, bytes]]) -> list[Origin]:
    """Produce with kcat to partition 0: key and value split by 0x1f, messages by 0x1e, an
    empty value sent as null (-Z); the origin of each message, from the partition's end offsets."""
    assert not any(b"\x1e" in k + v or b"\x1f" in k + v for k, v in messages)
    data = b"\x1e".join(key + b"\x1f" + value for key, value in messages)
    before = partition_end(settings, topic)
    argv = ["kcat", "-P", "-b", settings.kafka.bootstrap_servers, "-t", topic, "-p", "0"]
    argv += ["-K", "\x1f", "-D", "\x1e", "-Z", "-X", f"message.max.bytes={16 * 1024 * 1024}"]
    for name, value in settings.kafka.client_config.items():
        argv += ["-X", f"{name}={value}"]
    done = subprocess.run(argv, input=data, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert partition_end(settings, topic) == before + len(messages), done.stderr.decode(errors="replace")
    return [(topic, 0, before + i) for i in range(len(messages))]


def dead_letters_by_origin(settings: Settings) -> dict[Origin, list[DeadLetter]]:
    """Every dead letter of this test's dead-letter topic, by the origin it names."""
    found: dict[Origin, list[DeadLetter]] = {}
    for key, value in read_topic(settings, catalog(settings).dead_letter.name, timeout_s=60):
        assert len(key) <= MAX_KEY_BYTES  # the size rule caps the key a letter is produced with
        letter = DeadLetter.model_validate_json(value)
        assert letter.source_topic is not None
        assert letter.source_partition is not None
        assert letter.source_offset is not None
        origin = (letter.source_topic, letter.source_partition, letter.source_offset)
        found.setdefault(origin, []).append(letter)
    return found


def wait_until_stored(settings: Settings, families: list[str], timeout_s: float = 120) -> None:
    """Each family's offsets stored with its rows reach its topic's end."""
    sink = PostgresPageSink.from_settings(settings)
    try:
        for name in families:
            family = FAMILIES[name]
            topic, group = family.topic(settings), family.group(settings)
            spec = next(s for s in catalog(settings).all() if s.name == topic)
            end = {p: o for p, o in end_offsets(settings, topic, spec.partitions).items() if o}
            wait_for(
                lambda g=group, t=topic, e=end: sink.stored_offsets(g, t) == e,
                timeout_s,
                f"{name} stored up to {end}",
                every_s=0.2,
            )
    finally:
        sink.close()


def stop(worker: subprocess.Popen[bytes], log_path: Path) -> None:
    assert worker.poll() is None, f"the worker died: {log_path.read_text()[-3000:]}"
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0, log_path.read_text()[-3000:]


def query(owner: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with owner.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall())


def test_urls_of_any_length_are_stored_and_the_next_batch_too(
    settings: Settings, owner: Any, tag: str, tmp_path: Path
) -> None:
    t = catalog(settings)
    ensure_topics(settings, [t.unique_pages, t.page_touches, t.dead_letter])
    base = f"https://{tag}.invalid/"
    long_3k, long_100k = base + noise(3000, f"{tag}-3k"), base + noise(100_000, f"{tag}-100k")
    # key and payload of its outbox event both hold the URL: more than outbox.event.page takes
    too_long = base + noise(t.page_events.max_message_bytes // 2 + 1000, f"{tag}-too-long")
    raw, events = Tail(settings, t.cdc_pages.name), Tail(settings, t.page_events.name)
    log_path = tmp_path / "worker.log"
    worker = start_worker(settings, log_path, "pages", "touches")
    try:
        # A touch of the longest URL, parked before its page (or applied after it): keyed by hash too.
        seen = T0 + timedelta(hours=3)
        touch = PageTouch(canonical_url=long_100k, fetched_at=seen, status=200)
        produce_at(settings, t.page_touches.name, [(b"long", touch.to_bytes())])
        first = produce_at(
            settings,
            t.unique_pages.name,
            [
                (url.encode(), PageEvent(change="new", page=page(url, fetched_at=T0)).to_bytes())
                for url in (long_3k, long_100k, too_long)
            ],
        )
        wait_until_stored(settings, ["pages", "touches"])
        assert query(owner, "SELECT last_seen FROM pages WHERE url_hash = %s", url_hash(long_100k)) == [
            (seen,)
        ]
        stored = query(
            owner, "SELECT url FROM pages WHERE url_hash = ANY(%s)", [url_hash(long_3k), url_hash(long_100k)]
        )
        assert sorted(len(u) for (u,) in stored) == [len(long_3k), len(long_100k)]
        assert {u for (u,) in stored} == {long_3k, long_100k}  # the full URLs
        assert query(owner, "SELECT count(*) FROM pages WHERE url_hash = %s", url_hash(too_long)) == [(0,)]

        ordinary = [f"{base}ordinary-{i}" for i in range(25)]
        produce_at(
            settings,
            t.unique_pages.name,
            [(u.encode(), PageEvent(change="new", page=page(u)).to_bytes()) for u in ordinary],
        )
        wait_until_stored(settings, ["pages"])
        assert count_pages(owner, tag) == 2 + len(ordinary)

        letters = dead_letters_by_origin(settings)
        assert set(letters) == {first[2]}
        (letter,) = letters[first[2]]
        assert (letter.stage, letter.reason) == ("sink", "too_large")
        assert "outbox.event.page" in letter.error

        # Debezium publishes the long URL's row (key: the primary key, hex url_hash) and its event.
        def of_long(messages: list[Any]) -> list[Any]:
            return [m for m in messages if f'"url":"{long_3k}"'.encode() in (m.value() or b"")]

        (envelope,) = of_long(raw.until(of_long, 90, "the raw change event of the 3,000-character URL"))
        assert json.loads(envelope.key()) == {"url_hash": url_hash(long_3k).hex()}
        assert json.loads(envelope.value())["after"]["url"] == long_3k
        got = events.until(lambda ms: any(m.key() == long_100k.encode() for m in ms), 90, "the page event")
        assert json.loads(next(m for m in got if m.key() == long_100k.encode()).value())["url"] == long_100k
        stop(worker, log_path)
    finally:
        raw.close()
        events.close()
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)


def test_data_errors_of_every_family_are_dead_lettered_and_the_rest_stored(
    settings: Settings, owner: Any, tag: str, tmp_path: Path
) -> None:
    t = catalog(settings)
    ensure_topics(settings, [t.unique_pages, t.page_touches, t.stats, t.runs, t.dead_letter])
    base = f"https://{tag}.invalid/"

    def page_event(name: str, **fields: Any) -> tuple[bytes, bytes]:
        url = base + name
        fields = {"fetched_at": T0, **fields}
        return url.encode(), PageEvent(change="new", page=page(url, **fields)).to_bytes()

    pages = produce_at(
        settings,
        t.unique_pages.name,
        [
            page_event("ok-1"),
            page_event("out-of-range", body_bytes=2**40),  # int4: 22003
            page_event("nul", title="a\x00b", body="<p>x\x00y</p>"),  # stored, NUL as U+FFFD
            page_event("deep", depth=2**40),  # 22003
            page_event("year-1", fetched_at=datetime(1, 1, 1, tzinfo=UTC)),  # odd, but a date
            page_event("year-9999", fetched_at=datetime(9999, 12, 31, 23, 59, tzinfo=UTC)),
            page_event("ok-2"),
        ],
    )
    touch = PageTouch(canonical_url=base + "ok-1", fetched_at=T0 + timedelta(days=1), status=200)
    nul_touch = PageTouch(canonical_url=base + "nul\x00touch", fetched_at=T0, status=200)
    touches = produce_at(
        settings,
        t.page_touches.name,
        [(b"ok", touch.to_bytes()), (b"nul", nul_touch.to_bytes())],
    )

    def window(domain: str, **fields: Any) -> tuple[bytes, bytes]:
        stats = DomainStats(
            domain=domain,
            window="tumbling_1m",
            window_start=T0,
            window_end=T0 + timedelta(minutes=1),
            **fields,
        )
        return domain.encode()[:100], stats.to_bytes()

    stats = produce_at(
        settings,
        t.stats.name,
        [
            window(f"{tag}.ok", pages=3),
            window(f"{tag}.long-" + noise(10_000, "domain")),  # a primary key too long: 54000
            window(f"{tag}.many", pages=2**40),  # 22003
        ],
    )

    def run(run_id: str, **fields: Any) -> tuple[bytes, bytes]:
        return run_id.encode()[:100], RunEvent(
            run_id=run_id, job_id="j", event="started", started_at=T0, **fields
        ).to_bytes()

    runs = produce_at(
        settings,
        t.runs.name,
        [run(f"{tag}-ok"), run(f"{tag}-long-" + noise(10_000, "run")), run(f"{tag}-errors", errors=2**40)],
    )
    log_path = tmp_path / "worker.log"
    worker = start_worker(settings, log_path, *FAMILIES)
    try:
        wait_until_stored(settings, list(FAMILIES))
        letters = dead_letters_by_origin(settings)
        expected = {
            pages[1]: "sqlstate_22003",
            pages[3]: "sqlstate_22003",
            touches[1]: "unprocessable",  # psycopg2 refuses a NUL before sending it
            stats[1]: "sqlstate_54000",
            stats[2]: "sqlstate_22003",
            runs[1]: "sqlstate_54000",
            runs[2]: "sqlstate_22003",
        }
        assert {origin: [d.reason for d in found] for origin, found in letters.items()} == {
            origin: [reason] for origin, reason in expected.items()
        }
        for origin, (letter,) in letters.items():
            assert letter.stage == "sink"
            assert letter.error_class, origin
            assert letter.original_value() is not None
        assert letters[stats[1]][0].error_class == "psycopg2.errors.ProgramLimitExceeded"
        assert "index row" in letters[stats[1]][0].error
        assert letters[touches[1]][0].error_class == "ValueError"

        stored = query(owner, "SELECT url FROM pages WHERE url LIKE %s ORDER BY url", f"{base}%")
        assert [u.removeprefix(base) for (u,) in stored] == ["nul", "ok-1", "ok-2", "year-1", "year-9999"]
        assert query(owner, "SELECT title, body FROM pages WHERE url = %s", base + "nul") == [
            ("a\ufffdb", "<p>x\ufffdy</p>")
        ]
        assert query(owner, "SELECT last_seen FROM pages WHERE url = %s", base + "ok-1") == [
            (touch.fetched_at,)
        ]
        assert query(owner, "SELECT domain, pages FROM domain_stats WHERE domain LIKE %s", f"{tag}%") == [
            (f"{tag}.ok", 3)
        ]
        assert query(owner, "SELECT run_id FROM crawl_runs WHERE run_id LIKE %s", f"{tag}%") == [
            (f"{tag}-ok",)
        ]
        stop(worker, log_path)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)


def garbage(t: Any, topic: str) -> list[tuple[str, bytes, bytes, str]]:
    """(name, key, value, expected reason) of what nobody should send to ``topic``; an empty
    value is sent as null. Sizes follow the topic's own ``max.message.bytes``: what the broker
    refuses never reaches the sink (a key above 1 MB only where the topic takes one)."""
    other = (
        RunEvent(run_id="r", job_id="j", event="started", started_at=T0).to_bytes()
        if topic != t.runs.name
        else PageTouch(canonical_url="https://x.invalid/", fetched_at=T0, status=200).to_bytes()
    )
    limit = next(spec.max_message_bytes for spec in t.all() if spec.name == topic)
    above_1mb = [("key above 1 MB", b"K" * (1024 * 1024 + 4096), b"{}", "invalid_record")]
    return [
        ("not json", b"k-bytes", b"\x00\xff\xfe not json {", "invalid_json"),
        ("invalid utf-8", b"k-utf8", b'{"canonical_url": "\xff\xfe"}', "invalid_json"),
        ("wrong shape", b"k-shape", b'{"unexpected": [1, 2, {"x": null}]}', "invalid_record"),
        ("another record", b"k-other", other, "invalid_record"),
        ("json scalar", b"k-scalar", b"42", "invalid_record"),
        ("json null", b"k-jnull", b"null", "invalid_record"),
        ("kafka null", b"k-null", b"", "null_value"),
        ("nested 100k arrays", b"k-nested", b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
        ("nested 100k objects", b"k-objects", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "invalid_json"),
        ("huge number", b"k-number", b'{"status": 1' + b"0" * 5000 + b"}", "invalid_json"),
        ("key near 1 MB", b"k" * (1024 * 1024 - 4096), b"{}", "invalid_record"),
        *(above_1mb if limit > 1024 * 1024 + 64 * 1024 else []),
        ("value near the limit", b"k-value", b'"' + b"v" * (limit - 64 * 1024) + b'"', "invalid_record"),
        # A letter carrying this key whole would exceed the dead-letter topic (same limit).
        ("key near the limit", b"L" * (limit - 64 * 1024), b"{}", "invalid_record"),
    ]


def test_garbage_on_every_sink_topic_is_dead_lettered_once_and_the_sink_goes_on(
    settings: Settings, owner: Any, tag: str, tmp_path: Path
) -> None:
    t = catalog(settings)
    topics = [t.unique_pages, t.page_touches, t.stats, t.runs]
    ensure_topics(settings, [*topics, t.dead_letter])
    base = f"https://{tag}.invalid/"
    sent: dict[Origin, tuple[str, str]] = {}
    for spec in topics:
        attacks = garbage(t, spec.name)
        origins = kcat_produce(settings, spec.name, [(key, value) for _, key, value, _ in attacks])
        sent.update({o: (name, reason) for o, (name, _, _, reason) in zip(origins, attacks, strict=True)})
    # Then one ordinary record per topic: the sink must still store them.
    url = base + "after-the-garbage"
    new_page = PageEvent(change="new", page=page(url, fetched_at=T0))
    produce_at(settings, t.unique_pages.name, [(url.encode(), new_page.to_bytes())])
    stats = DomainStats(
        domain=f"{tag}.ok",
        window="tumbling_1m",
        window_start=T0,
        window_end=T0 + timedelta(minutes=1),
        pages=1,
    )
    produce_at(settings, t.stats.name, [(b"ok", stats.to_bytes())])
    run = RunEvent(run_id=f"{tag}-ok", job_id="j", event="started", started_at=T0)
    produce_at(settings, t.runs.name, [(b"ok", run.to_bytes())])
    log_path = tmp_path / "worker.log"
    worker = start_worker(settings, log_path, *FAMILIES)
    try:
        wait_until_stored(settings, ["pages"])
        touch = PageTouch(canonical_url=url, fetched_at=T0 + timedelta(days=1), status=200)
        produce_at(settings, t.page_touches.name, [(b"ok", touch.to_bytes())])
        wait_until_stored(settings, list(FAMILIES))

        letters = dead_letters_by_origin(settings)
        assert set(letters) == set(sent)
        times = Counter({origin: len(found) for origin, found in letters.items()})
        assert set(times.values()) == {1}, [(sent[o][0], o, n) for o, n in times.items() if n != 1]
        for origin, (name, reason) in sent.items():
            (letter,) = letters[origin]
            assert (letter.stage, letter.reason) == ("sink", reason), (origin, name, letter.error)
            assert letter.error_class, (origin, name)
        # The dead letters of the biggest records fit their topic: key capped, payload cut and marked.
        huge_keys = [letters[o][0] for o, (name, _) in sent.items() if name.startswith("key ")]
        assert len(huge_keys) == 3 + 2 * (len(topics) - 1)  # a key above 1 MB only on pages.unique
        assert all(d.original_key_bytes and d.original_key_bytes > 900_000 for d in huge_keys)
        # Near the page topic's limit (that of the dead-letter topic): cut to fit and marked.
        near_limit = [
            letters[o][0]
            for o, (name, _) in sent.items()
            if name.endswith("near the limit") and o[0] == t.unique_pages.name
        ]
        assert len(near_limit) == 2
        assert all(d.truncated for d in near_limit)

        assert query(owner, "SELECT last_seen FROM pages WHERE url = %s", url) == [(touch.fetched_at,)]
        assert query(owner, "SELECT pages FROM domain_stats WHERE domain = %s", f"{tag}.ok") == [(1,)]
        assert query(owner, "SELECT outcome FROM crawl_runs WHERE run_id = %s", f"{tag}-ok") == [("running",)]
        stop(worker, log_path)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
