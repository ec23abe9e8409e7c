"""Helpers and fixtures shared by the sink integration tests (tests/integration/test_sink_*.py,
test_cdc_*.py): records, the per-test tag, settings, an owner connection that cleans up, a
worker subprocess, offsets and dead letters read back from Kafka."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from crawlstream.records import DeadLetter, PageEvent, PageRecord
from crawlstream.settings import Settings, load_settings
from sinks.migrate import upgrade

REPO = Path(__file__).resolve().parents[2]


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(every_s)  # polling interval of a condition with a deadline
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def with_options(dsn: str, options: str) -> str:
    return f"{dsn}{'&' if '?' in dsn else '?'}options={options}"


def page(url: str, **fields: Any) -> PageRecord:
    values: dict[str, Any] = {
        "url": url,
        "canonical_url": url,
        "final_url": url,
        "status": 200,
        "fetched_at": datetime.now(UTC),
        "body": f"<html>{url}</html>",
        "title": "t",
    }
    values.update(fields)
    return PageRecord(**values)


def event(url: str, **fields: Any) -> PageEvent:
    return PageEvent(change="new", page=page(url, **fields))


@pytest.fixture
def tag() -> str:
    return f"sinktest-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(tag: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.chdir(REPO)  # load_settings reads .crawlstream/stack.env relative to cwd
    monkeypatch.setenv("CRAWLSTREAM_KAFKA__TOPIC_PREFIX", tag)
    monkeypatch.setenv("CRAWLSTREAM_SINK__GROUP_ID", tag)
    return load_settings()


@pytest.fixture
def owner(settings: Settings, tag: str) -> Iterator[Any]:
    """An owner-role connection; afterwards deletes this test's rows (the app role cannot)."""
    upgrade(settings)  # what `stack up` does; a no-op when already at head
    conn = psycopg2.connect(settings.postgres.dsn(owner=True))
    conn.autocommit = True
    yield conn
    with conn.cursor() as cur:
        cur.execute("DELETE FROM pages WHERE url LIKE %s", (f"https://{tag}.invalid/%",))  # + history
        cur.execute("DELETE FROM page_touches_pending WHERE url LIKE %s", (f"https://{tag}.invalid/%",))
        cur.execute("DELETE FROM domain_stats WHERE domain LIKE %s", (f"{tag}%",))
        cur.execute("DELETE FROM crawl_runs WHERE run_id LIKE %s", (f"{tag}%",))
        cur.execute("DELETE FROM sink_offsets WHERE consumer_group = %s", (tag,))
    conn.close()


def count_pages(owner: Any, tag: str) -> int:
    with owner.cursor() as cur:
        cur.execute("SELECT count(*) FROM pages WHERE url LIKE %s", (f"https://{tag}.invalid/%",))
        return int(cur.fetchone()[0])


def start_worker(settings: Settings, log_path: Path, *families: str, **env: str) -> subprocess.Popen[bytes]:
    """``python -m sinks`` for this test's topics and group (``families``: default pages)."""
    full_env = {
        **os.environ,
        "CRAWLSTREAM_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "CRAWLSTREAM_SINK__GROUP_ID": settings.sink.group_id,
        "CRAWLSTREAM_SINK__BATCH_SIZE": "10",
        "CRAWLSTREAM_METRICS__SINK_PORT": "0",
        # A killed member keeps its partitions until its session times out (45 s by default);
        # the broker's minimum keeps the restart quick.
        "CRAWLSTREAM_KAFKA__CLIENT_CONFIG": json.dumps(
            {**settings.kafka.client_config, "session.timeout.ms": "6000"}
        ),
        **env,
    }
    argv = [sys.executable, "-m", "sinks"]
    for family in families or ("pages",):
        argv += ["--family", family]
    with log_path.open("ab") as log:
        return subprocess.Popen(argv, cwd=REPO, env=full_env, stdout=log, stderr=log)


def admin_watermarks(settings: Settings, topic: str, partition: int) -> tuple[int, int]:
    probe = Consumer(settings.kafka.librdkafka(**{"group.id": f"{settings.sink.group_id}-probe"}))
    try:
        low, high = probe.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        return int(low), int(high)
    finally:
        probe.close()


def committed_offsets(settings: Settings, topic: str, partitions: int) -> dict[int, int]:
    probe = Consumer(settings.kafka.librdkafka(**{"group.id": settings.sink.group_id}))
    try:
        got = probe.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in got}
    finally:
        probe.close()


def read_dead_letters(
    settings: Settings, dead_topic: str, source: str, at: tuple[int, int]
) -> list[DeadLetter]:
    reader = Consumer(
        settings.kafka.librdkafka(
            **{
                "group.id": f"{settings.sink.group_id}-dlq",
                "enable.auto.commit": False,
            }
        )
    )
    reader.assign([TopicPartition(dead_topic, 0, OFFSET_BEGINNING)])
    found: list[DeadLetter] = []

    def read_until_found() -> bool:
        msg = reader.poll(0.5)
        if msg is not None and msg.error() is None:
            letter = DeadLetter.model_validate_json(msg.value())
            if (letter.source_topic, letter.source_partition, letter.source_offset) == (source, *at):
                found.append(letter)
        return bool(found)

    try:
        wait_for(read_until_found, 30, "the malformed record in the dead-letter topic", every_s=0)
    finally:
        reader.close()
    return found


def page_stream(tag: str, n_urls: int, n_changed: int, n_replayed: int) -> list[tuple[str, bytes]]:
    """(key, value) of a page stream: every URL new, the first ``n_changed`` changed once, the
    next ``n_replayed`` sent again unchanged (alternating PageEvent and bare PageRecord)."""
    urls = [f"https://{tag}.invalid/{i}" for i in range(n_urls)]
    out: list[tuple[str, bytes]] = []
    for i, url in enumerate(urls):
        record = page(url, body=f"<p>{url} v1</p>")
        out.append((url, record.to_bytes() if i % 2 else PageEvent(change="new", page=record).to_bytes()))
    for url in urls[:n_changed]:
        changed = PageEvent(change="changed", page=page(url, body=f"<p>{url} v2</p>"))
        out.append((url, changed.to_bytes()))
    for url in urls[n_changed : n_changed + n_replayed]:
        out.append((url, event(url, body=f"<p>{url} v1</p>").to_bytes()))
    return out


def produce(settings: Settings, topic: str, messages: list[tuple[str, bytes]]) -> None:
    from confluent_kafka import Producer

    producer = Producer(settings.kafka.librdkafka(**{"enable.idempotence": True, "linger.ms": 5}))
    for key, value in messages:
        producer.produce(topic, key=key.encode(), value=value)
        producer.poll(0)
    assert producer.flush(30) == 0


def end_offsets(settings: Settings, topic: str, partitions: int) -> dict[int, int]:
    return {p: admin_watermarks(settings, topic, p)[1] for p in range(partitions)}


def versions_by_url(owner: Any, tag: str) -> dict[str, list[int]]:
    with owner.cursor() as cur:
        cur.execute(
            "SELECT url, array_agg(version ORDER BY version) FROM page_versions "
            "WHERE url LIKE %s GROUP BY url",
            (f"https://{tag}.invalid/%",),
        )
        return {url: list(versions) for url, versions in cur.fetchall()}


def assert_stream_stored_exactly(owner: Any, tag: str, n_urls: int, n_changed: int) -> None:
    """Exactly one row per URL, versions 1..2 for changed URLs and 1 for the rest."""
    assert count_pages(owner, tag) == n_urls
    versions = versions_by_url(owner, tag)
    assert len(versions) == n_urls
    expected = {f"https://{tag}.invalid/{i}": [1, 2] if i < n_changed else [1] for i in range(n_urls)}
    assert versions == expected
    with owner.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pages WHERE url LIKE %s AND version = 2 AND body LIKE '%%v2</p>'",
            (f"https://{tag}.invalid/%",),
        )
        assert cur.fetchone() == (n_changed,)


def dead_letters_of(settings: Settings, dead_topic: str, source: str, count: int) -> list[DeadLetter]:
    """The first ``count`` distinct dead letters whose source is ``source`` (waits for them).

    Dead letters are at-least-once (a worker killed after producing one, before storing its
    offsets, produces it again on replay): one per source record, by partition and offset.
    """
    reader = Consumer(
        settings.kafka.librdkafka(**{"group.id": f"dlq-{uuid.uuid4().hex}", "enable.auto.commit": False})
    )
    reader.assign([TopicPartition(dead_topic, 0, OFFSET_BEGINNING)])
    found: list[DeadLetter] = []
    seen: set[tuple[int | None, int | None]] = set()

    def read_until_found() -> bool:
        msg = reader.poll(0.5)
        if msg is not None and msg.error() is None and msg.value() is not None:
            letter = DeadLetter.model_validate_json(msg.value())
            origin = (letter.source_partition, letter.source_offset)
            if letter.source_topic == source and origin not in seen:
                seen.add(origin)
                found.append(letter)
        return len(found) >= count

    try:
        wait_for(read_until_found, 60, f"{count} dead letters from {source}", every_s=0)
    finally:
        reader.close()
    return found


class Tail:
    """Reads a topic from its current end on: messages produced after construction."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.consumer = Consumer(
            settings.kafka.librdkafka(**{"group.id": f"tail-{uuid.uuid4().hex}", "enable.auto.commit": False})
        )
        meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
        ends = {
            p: self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in meta.partitions
        }
        self.consumer.assign([TopicPartition(topic, p, o) for p, o in ends.items()])
        self.start = ends
        self.messages: list[Any] = []

    def until(self, done: Callable[[list[Any]], bool], timeout_s: float, what: str) -> list[Any]:
        def poll() -> bool:
            msg = self.consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                self.messages.append(msg)
            return done(self.messages)

        wait_for(poll, timeout_s, what, every_s=0)
        return self.messages

    def drain(self, timeout_s: float = 30.0) -> list[Any]:
        """Read on until every partition's current end: what was produced before now."""
        ends = {}
        for tp in self.consumer.assignment():
            ends[tp.partition] = self.consumer.get_watermark_offsets(tp, timeout=10)[1]

        def caught_up(messages: list[Any]) -> bool:
            # position() is OFFSET_INVALID (< 0) until a partition yields a message.
            seen = {tp.partition: tp.offset for tp in self.consumer.position(self.consumer.assignment())}
            return all(max(seen.get(p, -1), self.start[p]) >= end for p, end in ends.items())

        return self.until(caught_up, timeout_s, "the topic's current end")

    def close(self) -> None:
        self.consumer.close()
