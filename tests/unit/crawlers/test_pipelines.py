from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from scrapy.statscollectors import StatsCollector
from scrapy.utils.test import get_crawler

from crawlers import metrics
from crawlers.pipelines import (
    STAT_BACKPRESSURE,
    STAT_DEAD_LETTERS,
    STAT_DEAD_LETTERS_FAILED,
    STAT_DELIVERED,
    STAT_FAILED,
    DeliveryCallback,
    KafkaPagePipeline,
    ProducerLike,
    producer_config,
)
from crawlstream.records import DeadLetter, PageRecord, decode_page
from crawlstream.settings import Settings


class Delivered:
    """The message a delivery report carries: one partition, offsets in production order."""

    def __init__(self, topic: str, offset: int) -> None:
        self._topic, self._offset = topic, offset

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


class FakeProducer:
    """confluent_kafka.Producer's interface; the test decides when and how deliveries complete."""

    def __init__(self, queue_limit: int = 100) -> None:
        self.queue_limit = queue_limit
        self.pending: list[tuple[bytes, DeliveryCallback, Delivered]] = []
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.fail_keys: set[bytes] = set()
        self.polls: list[float] = []
        self.deliver_on_flush = True

    def produce(self, topic: str, value: bytes, key: bytes, *, on_delivery: DeliveryCallback) -> None:
        if len(self.pending) >= self.queue_limit:
            raise BufferError("Local: Queue full")
        self.sent.append((topic, key, value))
        self.pending.append((key, on_delivery, Delivered(topic, len(self.sent) - 1)))

    def deliver(self, n: int | None = None) -> int:
        served, self.pending = self.pending[:n], self.pending[len(self.pending[:n]) :]
        for key, callback, message in served:
            callback("MSG_TIMED_OUT" if key in self.fail_keys else None, message)
        return len(served)

    def poll(self, timeout: float) -> int:
        self.polls.append(timeout)
        # Only a blocking poll makes progress, like a broker that answers slower than poll(0).
        return self.deliver(1) if timeout > 0 else 0

    def flush(self, timeout: float) -> int:
        if self.deliver_on_flush:
            self.deliver()
        return len(self.pending)

    def __len__(self) -> int:
        return len(self.pending)


def _record(n: int) -> PageRecord:
    url = f"http://example.com/{n}"
    return PageRecord(url=url, canonical_url=url, final_url=url, status=200, fetched_at=datetime.now(UTC))


def _pipeline(producer: FakeProducer) -> tuple[KafkaPagePipeline, StatsCollector]:
    crawler = get_crawler(
        settings_dict={"CRAWLSTREAM_SETTINGS": Settings(), "CRAWLSTREAM_TOPIC": "t.pages.raw"}
    )
    assert crawler.stats is not None
    pipeline = KafkaPagePipeline.from_crawler(crawler)

    def make(config: dict[str, Any]) -> ProducerLike:
        return producer

    pipeline.make_producer = make  # type: ignore[method-assign]
    pipeline.open_spider()
    return pipeline, crawler.stats


def test_producer_config_is_safe_and_sized() -> None:
    settings = Settings()
    config = producer_config(settings)
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert config["compression.type"] == "zstd"
    assert config["message.max.bytes"] == settings.kafka.max_message_bytes
    assert config["bootstrap.servers"] == settings.kafka.bootstrap_servers


@pytest.mark.parametrize(("topic", "linger_ms"), [(None, 100), ("elsewhere.small", 20)])
def test_batches_are_longer_only_for_catalog_topics(topic: str | None, linger_ms: int) -> None:
    # A topic outside the catalog may refuse a batch that holds several records which fit alone.
    crawler = get_crawler(
        settings_dict={"CRAWLSTREAM_SETTINGS": Settings(), **({"CRAWLSTREAM_TOPIC": topic} if topic else {})}
    )
    pipeline = KafkaPagePipeline.from_crawler(crawler)
    configs: list[dict[str, Any]] = []

    def make(config: dict[str, Any]) -> ProducerLike:
        configs.append(config)
        return FakeProducer()

    pipeline.make_producer = make  # type: ignore[method-assign]
    pipeline.open_spider()
    assert configs[0]["linger.ms"] == linger_ms


def test_key_and_value_and_delivery_counts() -> None:
    producer = FakeProducer()
    pipeline, stats = _pipeline(producer)
    producer.fail_keys = {b"http://example.com/1"}
    failures_before = metrics.DELIVERY_FAILURES._value.get()

    for n in range(3):
        record = _record(n)
        assert pipeline.process_item(record) is record
    pipeline.process_item(_record(3).model_dump())  # a plain dict item from another spider
    pipeline.close_spider()

    assert [(t, k) for t, k, _ in producer.sent if t == "t.pages.raw"] == [
        ("t.pages.raw", f"http://example.com/{n}".encode()) for n in range(4)
    ]
    assert decode_page(producer.sent[2][2]).canonical_url == "http://example.com/2"
    assert stats.get_value(STAT_DELIVERED) == 3
    assert stats.get_value(STAT_FAILED) == 1
    # The failed delivery went to the dead-letter topic, with the record as its value.
    letters = [(k, v) for t, k, v in producer.sent if t == "crawlstream.deadletter"]
    assert len(letters) == 1
    assert letters[0][0] == b"http://example.com/1"
    letter = DeadLetter.model_validate_json(letters[0][1])
    assert (letter.stage, letter.reason) == ("crawl", "delivery_failed")
    assert decode_page(letter.original_value()).canonical_url == "http://example.com/1"
    assert stats.get_value(STAT_DEAD_LETTERS) == 1
    assert metrics.DELIVERY_FAILURES._value.get() == failures_before + 1


def test_failed_delivery_is_logged_with_key(caplog: pytest.LogCaptureFixture) -> None:
    producer = FakeProducer()
    pipeline, _ = _pipeline(producer)
    producer.fail_keys = {b"http://example.com/9"}
    with caplog.at_level(logging.ERROR):
        pipeline.process_item(_record(9))
        pipeline.close_spider()
    assert "http://example.com/9" in caplog.text
    assert "MSG_TIMED_OUT" in caplog.text


def test_buffer_full_is_back_pressure_not_loss() -> None:
    producer = FakeProducer(queue_limit=2)
    pipeline, stats = _pipeline(producer)

    for n in range(6):
        pipeline.process_item(_record(n))
    pipeline.close_spider()

    assert [k for _, k, _ in producer.sent] == [f"http://example.com/{n}".encode() for n in range(6)]
    assert stats.get_value(STAT_BACKPRESSURE) == 4  # one blocking poll(0.5) per full-queue retry
    assert 0.5 in producer.polls
    assert stats.get_value(STAT_DELIVERED) == 6
    assert stats.get_value(STAT_FAILED) is None


def test_undelivered_after_flush_counted_as_failed(caplog: pytest.LogCaptureFixture) -> None:
    producer = FakeProducer()
    producer.deliver_on_flush = False
    pipeline, stats = _pipeline(producer)
    for n in range(3):
        pipeline.process_item(_record(n))
    producer.deliver(1)

    with caplog.at_level(logging.ERROR):
        pipeline.close_spider()

    assert stats.get_value(STAT_DELIVERED) == 1
    assert stats.get_value(STAT_FAILED) == 2
    assert "http://example.com/2" in caplog.text
    assert "2 page records undelivered" in caplog.text


def test_producer_is_created_lazily() -> None:
    pipeline = KafkaPagePipeline.from_crawler(get_crawler(settings_dict={"CRAWLSTREAM_SETTINGS": Settings()}))
    assert pipeline.topic == "crawlstream.pages.raw"  # the catalog's raw-pages topic
    assert pipeline.producer is None
    pipeline.close_spider()  # nothing opened, nothing to flush


# Nothing oversized is produced.
def _small_pipeline(producer: FakeProducer, limit: int) -> tuple[KafkaPagePipeline, StatsCollector]:
    pipeline, stats = _pipeline(producer)
    pipeline.page_limit = limit
    return pipeline, stats


def _control_page(chars: int) -> PageRecord:
    url = "http://example.com/controls"
    body = "".join(chr(c) for c in range(1, 32)) * (chars // 31)
    return PageRecord(
        url=url,
        canonical_url=url,
        final_url=url,
        status=200,
        fetched_at=datetime.now(UTC),
        body=body,
        body_bytes=len(body),
    )


def test_a_page_of_control_characters_is_recut_to_fit_its_topic() -> None:
    producer = FakeProducer()
    pipeline, stats = _small_pipeline(producer, limit=64 * 1024)
    record = _control_page(40_000)  # 40k characters, ~200 KB once JSON-escaped
    assert len(record.to_bytes()) > 64 * 1024

    pipeline.process_item(record)
    pipeline.close_spider()

    [(topic, key, value)] = producer.sent
    assert topic == "t.pages.raw"
    assert len(key) + len(value) + 1024 <= 64 * 1024  # the size rule of crawlstream.deadletters
    produced = decode_page(value)
    assert produced.body_truncated
    assert produced.body_bytes == len(record.body)  # the size downloaded is kept
    assert record.body.startswith(produced.body)
    assert len(produced.body) > 1000  # cut to fit, not emptied
    assert stats.get_value("crawlstream/bodies_recapped_to_fit") == 1


def test_a_record_that_cannot_fit_even_without_body_is_a_dead_letter_not_a_crash() -> None:
    producer = FakeProducer()
    pipeline, stats = _small_pipeline(producer, limit=4096)
    url = "http://example.com/" + "x" * 5000  # the key alone is over the limit
    record = PageRecord(url=url, canonical_url=url, final_url=url, status=200, fetched_at=datetime.now(UTC))

    pipeline.process_item(record)
    pipeline.close_spider()

    [(topic, key, value)] = producer.sent
    assert topic == "crawlstream.deadletter"
    letter = DeadLetter.model_validate_json(value)
    assert (letter.stage, letter.reason) == ("crawl", "too_large")
    assert decode_page(letter.original_value()).url == url  # the whole record: the letter topic is larger
    assert len(key) <= 1024  # a dead letter's key is capped
    assert stats.get_value(STAT_DEAD_LETTERS) == 1
    assert stats.get_value(STAT_DELIVERED) is None


def test_dead_letter_messages_and_legacy_letters_are_produced_within_the_size_rule() -> None:
    from crawlstream.deadletters import build_dead_letter

    producer = FakeProducer()
    pipeline, _ = _pipeline(producer)
    message = build_dead_letter(
        stage="crawl",
        reason="fetch_x",
        detail="d",
        key=b"k",
        value=b"v",
        max_bytes=pipeline.dead_letter_limit,
    )
    pipeline.process_item(message)
    huge = DeadLetter(
        stage="crawl", reason="r", error="e", value_b64=base64.b64encode(b"x" * (9 << 20)).decode()
    )
    pipeline.process_item(huge)
    pipeline.close_spider()
    sent = [(k, v) for t, k, v in producer.sent if t == "crawlstream.deadletter"]
    assert sent[0] == (b"k", message.value)
    refit = DeadLetter.model_validate_json(sent[1][1])
    assert refit.truncated
    assert len(sent[1][1]) <= pipeline.dead_letter_limit - 1024


def test_delivered_through_waits_for_every_record_and_dead_letter() -> None:
    producer = FakeProducer()
    producer.deliver_on_flush = False
    pipeline, _ = _pipeline(producer)
    producer.fail_keys = {b"http://example.com/2"}
    for n in range(1, 4):
        pipeline.process_item(_record(n))
    barrier = pipeline.barrier()
    assert barrier == 3
    assert pipeline.delivered_through() == 0
    producer.deliver(1)  # record 1
    assert pipeline.delivered_through() == 1
    producer.deliver(1)  # record 2 fails: its dead letter is owed
    producer.fail_keys = set()
    pipeline.poll()  # produces the dead letter (outside the callback)
    assert pipeline.delivered_through() == 1
    producer.deliver(1)  # record 3
    assert pipeline.delivered_through() == 1  # still waiting for 2's letter
    producer.deliver(1)  # the dead letter of record 2
    assert pipeline.delivered_through() >= barrier


def test_an_undeliverable_dead_letter_holds_the_watermark() -> None:
    producer = FakeProducer()
    pipeline, stats = _pipeline(producer)
    producer.fail_keys = {b"http://example.com/1"}
    pipeline.process_item(_record(1))
    producer.deliver(1)
    pipeline.poll()
    [(_topic, key, _)] = [s for s in producer.sent if s[0] == "crawlstream.deadletter"]
    assert key == b"http://example.com/1"
    producer.deliver(1)  # the letter fails too (same key)
    assert pipeline.delivered_through() == 0  # never past the record: it is re-consumed after a restart
    assert stats.get_value(STAT_DEAD_LETTERS_FAILED) == 1
