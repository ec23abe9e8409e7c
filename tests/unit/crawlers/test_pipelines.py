from __future__ import annotations

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
    STAT_DELIVERED,
    STAT_FAILED,
    DeliveryCallback,
    KafkaPagePipeline,
    ProducerLike,
    producer_config,
)
from crawlstream.records import DeadLetter, PageRecord, decode_page
from crawlstream.settings import Settings


class FakeProducer:
    """confluent_kafka.Producer's interface; the test decides when and how deliveries complete."""

    def __init__(self, queue_limit: int = 100) -> None:
        self.queue_limit = queue_limit
        self.pending: list[tuple[bytes, DeliveryCallback]] = []
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.fail_keys: set[bytes] = set()
        self.polls: list[float] = []
        self.deliver_on_flush = True

    def produce(self, topic: str, value: bytes, key: bytes, *, on_delivery: DeliveryCallback) -> None:
        if len(self.pending) >= self.queue_limit:
            raise BufferError("Local: Queue full")
        self.sent.append((topic, key, value))
        self.pending.append((key, on_delivery))

    def deliver(self, n: int | None = None) -> int:
        served, self.pending = self.pending[:n], self.pending[len(self.pending[:n]) :]
        for key, callback in served:
            callback("MSG_TIMED_OUT" if key in self.fail_keys else None, object())
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
