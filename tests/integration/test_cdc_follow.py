"""`crawlstream follow` on the stack: signed notifications, hostile receivers, garbage events.

1. A page written by the page sink goes through Debezium's outbox connector to the follower,
   which POSTs it, signed (``t=...,v1=...``), to a loopback receiver that fails once with 503.
2. Five loopback receivers, each on its own address: one drips its answer forever, one answers
   500 then 200, one answers garbage or an endless body, one redirects to another loopback port,
   one is healthy. The healthy one gets every notification, in order, while the dripping one
   still holds the first; the redirects become dead letters and nothing reaches their target;
   offsets are committed only past what every receiver finished; nothing crashes.
3. Garbage written to outbox.event.page with kcat (a client nobody here wrote) while a real
   ``crawlstream follow`` process runs: each record is dead-lettered once with its origin, the
   process keeps following and notifies the valid events around them.

Loopback receivers are allowed explicitly (``follow.allow_private_webhooks``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from crawlstream.records import DeadLetter, PageEvent
from crawlstream.settings import Settings
from crawlstream.topics import catalog, ensure_topics
from follow.follow import MAX_URL_BYTES, Follower, FollowMetrics, dead_letter_producer, run
from follow.webhooks import SIGNATURE_HEADER, verify
from sinks.base import SinkBatch, SinkRecord
from sinks.pages import PostgresPageSink
from tests.integration.sinks_support import REPO, owner, page, settings, tag, wait_for
from tests.webhook_receivers import Receiver, drip, fails_first, garbage_or_huge, healthy, redirect

__all__ = ["owner", "settings", "tag"]  # fixtures

pytestmark = pytest.mark.integration
SECRET = "s3cret"


def start_group_at_end(settings: Settings, group: str, topic: str) -> dict[int, int]:
    consumer = Consumer(settings.kafka.librdkafka(**{"group.id": group, "enable.auto.commit": False}))
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = [
            TopicPartition(topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1])
            for p in parts
        ]
        consumer.commit(offsets=ends, asynchronous=False)
        return {tp.partition: tp.offset for tp in ends}
    finally:
        consumer.close()


def committed(settings: Settings, group: str, topic: str, partition: int) -> int:
    probe = Consumer(settings.kafka.librdkafka(**{"group.id": group}))
    try:
        (tp,) = probe.committed([TopicPartition(topic, partition)], timeout=10)
        return int(tp.offset)
    finally:
        probe.close()


def dead_letters(settings: Settings, source_topic: str) -> list[DeadLetter]:
    """Every follow dead letter of this test's dead-letter topic that came from ``source_topic``."""
    topic = catalog(settings).dead_letter.name
    reader = Consumer(
        settings.kafka.librdkafka(**{"group.id": f"dlq-{uuid.uuid4().hex}", "enable.auto.commit": False})
    )
    try:
        end = reader.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
        reader.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        found, seen = [], 0
        while seen < end:
            msg = reader.poll(1.0)
            if msg is None or msg.error() is not None:
                continue
            seen = msg.offset() + 1
            letter = DeadLetter.model_validate_json(msg.value())
            if letter.stage == "follow" and letter.source_topic == source_topic:
                found.append(letter)
        return found
    finally:
        reader.close()


def page_event(url: str, version: int = 1, kind: str = "created") -> bytes:
    return json.dumps(
        {
            "url": url,
            "version": version,
            "status": 200,
            "fetched_at": datetime.now(UTC).isoformat(),
            "body_hash": "ab" * 32,
            "content_hash": "cd" * 16,
            "simhash": "0123456789abcdef",
            "run_id": "r",
            "type": kind,
        }
    ).encode()


def follow_settings(settings: Settings, tag: str, urls: list[str], **more: Any) -> Settings:
    follow = settings.follow.model_copy(
        update={
            "group_id": f"{tag}-follow-{uuid.uuid4().hex[:6]}",
            "webhook_urls": urls,
            "webhook_secret": SecretStr(SECRET),
            "allow_private_webhooks": True,
            "webhook_backoff_initial_s": 0.05,
            "webhook_backoff_max_s": 0.2,
            **more,
        }
    )
    return settings.model_copy(update={"follow": follow})


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.close()


def test_a_page_change_reaches_the_webhook_signed(
    settings: Settings, owner: Any, tag: str, receivers: list[Receiver]
) -> None:
    hook = Receiver(fails_first(503, "Retry-After: 0\r\n"))
    receivers.append(hook)
    settings = follow_settings(settings, tag, [hook.url()])
    ensure_topics(settings, [catalog(settings).dead_letter])
    start_group_at_end(settings, settings.follow.group_id, catalog(settings).page_events.name)
    registry = CollectorRegistry()
    follower = Follower(settings, dead_letter_producer(settings), metrics=FollowMetrics(registry))
    url = f"https://{tag}.invalid/followed"
    done = threading.Event()

    def ours() -> list[Any]:
        return [r for r in hook.requests if json.loads(r.body)["url"] == url]

    thread = threading.Thread(target=lambda: run(settings, follower, stop=done.is_set))
    thread.start()
    sink = PostgresPageSink.from_settings(settings)
    try:
        sink.write(
            SinkBatch(tag, [SinkRecord(PageEvent(change="new", page=page(url)), "t", 0, 0)], {("t", 0): 1})
        )
        wait_for(
            lambda: len(ours()) >= 2, 60, "the webhook notification of our page, retried once", every_s=0.1
        )
    finally:
        done.set()
        thread.join(30)
        sink.close()

    request = ours()[-1]
    assert verify(SECRET, request.headers[SIGNATURE_HEADER.lower()], request.body)
    assert request.headers["x-crawlstream-event"] == "created"
    assert len(request.headers["x-crawlstream-delivery"]) == 36  # the outbox event's UUID
    assert json.loads(request.body)["payload"]["version"] == 1
    assert ours()[0].headers["x-crawlstream-delivery"] == request.headers["x-crawlstream-delivery"]
    assert (registry.get_sample_value("follow_end_to_end_latency_seconds_count") or 0) >= 1
    assert (registry.get_sample_value("follow_webhook_retries_total", {"receiver": "0"}) or 0) >= 1


def test_hostile_receivers_delay_no_one_and_lose_nothing(
    settings: Settings, tag: str, receivers: list[Receiver]
) -> None:
    n = 5
    target = Receiver(healthy(), host="127.0.10.6")  # where the redirect points
    slow = Receiver(drip(every_s=0.2), host="127.0.10.1")
    flaky = Receiver(fails_first(500), host="127.0.10.2")
    hostile = Receiver(garbage_or_huge(), host="127.0.10.3")
    redirecting = Receiver(redirect(target.url("/stolen")), host="127.0.10.4")
    good = Receiver(healthy(), host="127.0.10.5")
    receivers.extend([target, slow, flaky, hostile, redirecting, good])
    urls = [r.url() for r in (slow, flaky, hostile, redirecting, good)]
    settings = follow_settings(
        settings,
        tag,
        urls,
        webhook_timeout_s=2.0,
        webhook_deadline_s=4.0,
        webhook_max_attempts=3,
        shutdown_grace_s=60.0,
    )
    topic = catalog(settings).page_events.name
    ensure_topics(settings, [catalog(settings).dead_letter])
    start = start_group_at_end(settings, settings.follow.group_id, topic)[0]
    registry = CollectorRegistry()
    follower = Follower(settings, dead_letter_producer(settings), metrics=FollowMetrics(registry))
    done = threading.Event()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(run(settings, follower, stop=done.is_set)))
    thread.start()
    event_urls = [f"https://{tag}.invalid/hostile/{i}" for i in range(n)]

    def finished(receiver: int) -> float:
        return sum(
            registry.get_sample_value(
                "follow_webhook_deliveries_total", {"outcome": o, "receiver": str(receiver)}
            )
            or 0
            for o in ("delivered", "dead_lettered")
        )

    try:
        producer = Producer(settings.kafka.librdkafka(**{"enable.idempotence": True}))
        for url in event_urls:  # one partition: one order
            headers = [("id", str(uuid.uuid4()).encode()), ("eventType", b"created")]
            producer.produce(topic, key=url.encode(), value=page_event(url), partition=0, headers=headers)
        assert producer.flush(30) == 0

        def good_urls() -> list[str]:
            return [json.loads(r.body)["url"] for r in good.requests]

        wait_for(lambda: len(good.requests) >= n, 60, "every notification at the healthy receiver")
        # The healthy receiver has all of them while the dripping one still holds its first.
        assert finished(0) < n
        assert good_urls() == event_urls
        # Nothing past the first event is committed while a receiver still holds it.
        assert committed(settings, settings.follow.group_id, topic, 0) <= start + int(finished(0))
        wait_for(lambda: all(finished(i) == n for i in range(5)), 120, "every receiver to finish")
        wait_for(
            lambda: committed(settings, settings.follow.group_id, topic, 0) == start + n,
            30,
            "the commit past every event",
        )
    finally:
        done.set()
        thread.join(90)
    assert not thread.is_alive()
    assert result == [n]

    def count(outcome: str, receiver: int) -> float:
        value = registry.get_sample_value(
            "follow_webhook_deliveries_total", {"outcome": outcome, "receiver": str(receiver)}
        )
        return value or 0

    assert count("dead_lettered", 0) == n  # the drip: every delivery ran out of time
    assert count("delivered", 1) == n  # 500 then 200
    assert count("delivered", 2) + count("dead_lettered", 2) == n  # garbage or endless: accounted
    assert count("dead_lettered", 3) == n  # the redirects
    assert count("delivered", 4) == n
    assert target.requests == []  # no redirect was followed
    assert len(redirecting.requests) == n  # and none was retried
    for r in good.requests:
        assert verify(SECRET, r.headers[SIGNATURE_HEADER.lower()], r.body)
    assert all("token" not in (r.headers.get("referer") or "") for r in target.requests)

    letters = dead_letters(settings, topic)
    by_reason: dict[str, list[DeadLetter]] = {}
    for letter in letters:
        by_reason.setdefault(letter.reason, []).append(letter)
    redirects = by_reason["webhook_redirect"]
    assert sorted(letter.source_offset or 0 for letter in redirects) == list(range(start, start + n))
    assert all("http://127.0.10.4:" in letter.error for letter in redirects)
    assert all("s3cr3t-token" not in letter.error for letter in letters)  # receivers' paths stay out
    assert sum(1 for letter in by_reason["webhook_failed"] if "127.0.10.1" in letter.error) == n


def kcat(
    settings: Settings, topic: str, *args: str, value: bytes | None = None, null: bool = False, key: str = ""
) -> None:
    """Produce one record to partition 0 with kcat; the value from a file (one message per file).
    ``null``: a tombstone, keyed by ``key`` (none when empty): with -Z, kcat sends an empty key
    or value as NULL; it skips empty lines, hence the key delimiter."""
    argv = ["kcat", "-P", "-b", settings.kafka.bootstrap_servers, "-t", topic, "-p", "0", *args]
    if null:
        line = f"{key}\t\n".encode()
        subprocess.run([*argv, "-Z", "-K", "\t"], input=line, check=True, timeout=60)
        return
    path = Path(f"/tmp/follow-kcat-{uuid.uuid4().hex}")
    path.write_bytes(value or b"")
    try:
        subprocess.run([*argv, str(path)], check=True, timeout=60)
    finally:
        path.unlink()


def test_garbage_on_the_page_events_topic_is_dead_lettered_once_and_follow_keeps_going(
    settings: Settings, tag: str, receivers: list[Receiver], tmp_path: Path
) -> None:
    hook = Receiver(healthy(), host="127.0.10.7")
    receivers.append(hook)
    settings = follow_settings(settings, tag, [hook.url()])
    topic = catalog(settings).page_events.name
    ensure_topics(settings, [catalog(settings).dead_letter])
    start = start_group_at_end(settings, settings.follow.group_id, topic)[0]
    env = {
        **os.environ,
        "CRAWLSTREAM_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "CRAWLSTREAM_FOLLOW__GROUP_ID": settings.follow.group_id,
        "CRAWLSTREAM_FOLLOW__WEBHOOK_URLS": json.dumps([hook.url()]),
        "CRAWLSTREAM_FOLLOW__WEBHOOK_SECRET": SECRET,
        "CRAWLSTREAM_FOLLOW__ALLOW_PRIVATE_WEBHOOKS": "true",
        "CRAWLSTREAM_FOLLOW__METRICS_PORT": "0",
    }
    log_path = tmp_path / "follow.log"
    with log_path.open("wb") as log:
        follow = subprocess.Popen(
            [str(Path(sys.executable).parent / "crawlstream"), "follow", "--quiet"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=log,
        )
    base = f"https://{tag}.invalid/g"
    valid = page_event(f"{base}/first")
    near_limit_url = f"{base}/" + "n" * (MAX_URL_BYTES - len(base) - 1)
    # (what, expected dead-letter reason or None for a valid record, how to write it)
    cases: list[tuple[str, str | None, dict[str, Any]]] = [
        ("valid first", None, {"args": ["-k", f"{base}/first", "-H", "eventType=created"], "value": valid}),
        ("not JSON", "invalid_json", {"args": ["-k", f"{base}/x"], "value": b"\x00\xff{not json" * 100}),
        (
            "wrong shape",
            "invalid_record",
            {"args": ["-k", f"{base}/x"], "value": b'{"url": 1, "version": []}'},
        ),
        ("JSON null", "invalid_record", {"args": ["-k", f"{base}/x"], "value": b"null"}),
        (
            "nested 100k",
            "invalid_json",
            {"args": ["-k", f"{base}/x"], "value": b"[" * 100_000 + b"]" * 100_000},
        ),
        (
            "CR/LF header",
            "invalid_header",
            {"args": ["-k", f"{base}/first", "-H", "eventType=created\r\nX-Injected: 1"], "value": valid},
        ),
        (
            "non-UTF-8 header",
            "invalid_header",
            {"args": ["-k", f"{base}/first", "-H", "id=\udcff\udcfe"], "value": valid},
        ),
        ("keyless tombstone", "null_value", {"null": True}),
        ("key over the limit", "key_too_large", {"args": ["-k", "k" * (MAX_URL_BYTES + 1)], "value": valid}),
        ("big garbage value", "invalid_json", {"args": ["-k", f"{base}/x"], "value": b"\x01" * 900_000}),
        ("tombstone", None, {"key": f"{base}/gone", "null": True}),
        ("key at the limit", None, {"args": ["-k", near_limit_url], "value": page_event(near_limit_url)}),
        ("valid last", None, {"args": ["-k", f"{base}/last"], "value": page_event(f"{base}/last")}),
    ]
    try:
        for _what, _reason, how in cases:
            kcat(
                settings,
                topic,
                *how.get("args", []),
                value=how.get("value"),
                null=how.get("null", False),
                key=how.get("key", ""),
            )
        wait_for(
            lambda: any(json.loads(r.body)["url"] == f"{base}/last" for r in hook.requests),
            90,
            "the valid event after the garbage",
            every_s=0.2,
        )
        assert follow.poll() is None, log_path.read_text()[-3000:]
        expected = sum(1 for _w, reason, _h in cases if reason)
        letters: list[DeadLetter] = []

        def all_letters() -> bool:
            letters[:] = dead_letters(settings, topic)
            return len(letters) >= expected

        wait_for(all_letters, 60, "the dead letters")
    finally:
        follow.send_signal(signal.SIGTERM)
        code = follow.wait(60)
    assert code == 0, log_path.read_text()[-3000:]

    by_offset: dict[int, list[DeadLetter]] = {}
    for letter in letters:
        by_offset.setdefault(letter.source_offset or -1, []).append(letter)
    for i, (what, reason, _how) in enumerate(cases):
        got = by_offset.get(start + i, [])
        if reason is None:
            assert got == [], f"{what}: a valid record was dead-lettered: {got}"
        else:
            assert len(got) == 1, f"{what}: expected one dead letter at offset {start + i}, got {got}"
            assert (got[0].reason, got[0].source_partition) == (reason, 0), what
            assert got[0].error_class, what
    notified = [json.loads(r.body) for r in hook.requests]
    assert [(b["type"], b["url"]) for b in notified] == [
        ("created", f"{base}/first"),
        ("deleted", f"{base}/gone"),
        ("created", near_limit_url),
        ("created", f"{base}/last"),
    ]
    huge = next(letter for letter in letters if letter.reason == "key_too_large")
    assert huge.original_key_bytes == MAX_URL_BYTES + 1
    assert committed(settings, settings.follow.group_id, topic, 0) == start + len(cases)
