"""KafkaPagePipeline: the crawl stage's writer, producing PageRecords to ``<prefix>.pages.raw``.

LinkRecord items (the distributed spider's discovered links) go to ``<prefix>.links``.
DeadLetter items (fetch failures, yielded by the spiders' errbacks) go to ``<prefix>.deadletter``,
and so does every page record whose delivery failed after librdkafka's retries (reason
``delivery_failed``, the record as value), so a failed delivery is never only a log line.

Usable from any Scrapy project through ``ITEM_PIPELINES``. Settings used: ``kafka.*`` (bootstrap,
client extras, ``max_message_bytes``), ``crawl.delivery_timeout_s``; Scrapy setting
``CRAWLSTREAM_TOPIC`` overrides the catalog's raw-pages topic. Key = canonical URL (UTF-8),
value = ``PageRecord.to_bytes()``.

Nothing is dropped silently: a full local queue is back-pressure (poll and retry, forever; librdkafka's
``message.timeout.ms`` fails stuck messages through the callback, which frees the queue), every
failed delivery is logged with its key and counted, and whatever ``flush`` leaves undelivered at
close is counted as failed.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from confluent_kafka import KafkaException, Producer
from itemadapter import ItemAdapter
from scrapy.crawler import Crawler

from crawlers import metrics
from crawlers.settings import crawlstream_settings
from crawlstream.errors import RecordError
from crawlstream.records import DeadLetter, LinkRecord, PageRecord
from crawlstream.settings import Settings
from crawlstream.topics import catalog

log = logging.getLogger(__name__)

STAT_DELIVERED = "crawlstream/delivered"
STAT_FAILED = "crawlstream/delivery_failed"
STAT_BACKPRESSURE = "crawlstream/producer_backpressure_waits"
STAT_DEAD_LETTERS = "crawlstream/dead_letters"
STAT_DEAD_LETTERS_FAILED = "crawlstream/dead_letters_undelivered"
STAT_LINKS_PRODUCED = "crawlstream/links_produced"
MAX_DEAD_LETTER_VALUE = 256 * 1024  # a dead letter carries at most this much of the record
MAX_LEFTOVER_LOG_LINES = 50

DeliveryCallback = Callable[[Any, Any], None]


class ProducerLike(Protocol):
    """The part of ``confluent_kafka.Producer`` the pipeline uses (fakes implement the same)."""

    def produce(self, topic: str, value: bytes, key: bytes, *, on_delivery: DeliveryCallback) -> None: ...
    def poll(self, timeout: float) -> int: ...
    def flush(self, timeout: float) -> int: ...
    def __len__(self) -> int: ...


def producer_config(settings: Settings) -> dict[str, Any]:
    return settings.kafka.librdkafka(
        **{
            "client.id": "crawlstream-crawler",
            "enable.idempotence": True,  # retries cannot duplicate or reorder within a partition
            "acks": "all",
            # HTML compresses well; librdkafka 2.16 is built with zstd. Measured with a paced producer
            # (~300 records/s, issue 3): ~88 us CPU per record, lz4 ~58 us, but lz4 batches made the
            # e2e reconcile come up short downstream (streams, aiokafka) in 3 runs of 5: kept zstd.
            "compression.type": "zstd",
            "linger.ms": 20,
            "message.max.bytes": settings.kafka.max_message_bytes,
        }
    )


class KafkaPagePipeline:
    def __init__(self, settings: Settings, topic: str, stats: Any, dead_letter_topic: str = "") -> None:
        self.settings = settings
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic or catalog(settings).dead_letter.name
        self.links_topic = catalog(settings).links.name
        self.stats = stats
        self.producer: ProducerLike | None = None
        # In-flight page records: sequence number -> (key, value, produce time), so leftovers can be
        # named and dead-lettered. Dead letters and links are tracked in _side_in_flight.
        self._in_flight: dict[int, tuple[bytes, bytes, float]] = {}
        self._side_in_flight: set[int] = set()
        self._pending_letters: list[DeadLetter] = []
        self._draining = False
        self._seq = 0

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> KafkaPagePipeline:
        settings = crawlstream_settings(crawler.settings)
        topic = crawler.settings.get("CRAWLSTREAM_TOPIC") or catalog(settings).raw_pages.name
        return cls(settings, topic, crawler.stats)

    def make_producer(self, config: dict[str, Any]) -> ProducerLike:
        """Hook for tests and other transports: return anything with the Producer interface."""
        producer: ProducerLike = Producer(config)
        return producer

    def open_spider(self) -> None:
        # Created here, not in __init__, so nothing connects until a crawl really starts.
        self.producer = self.make_producer(producer_config(self.settings))
        log.info("producing page records to %s", self.topic)

    def process_item(self, item: Any) -> Any:
        if isinstance(item, DeadLetter):
            self._dead_letter(item)
            return item
        if isinstance(item, LinkRecord):  # the distributed spider's discoveries
            self.stats.inc_value(STAT_LINKS_PRODUCED)
            self._produce(item.canonical_url.encode("utf-8"), item.to_bytes(), topic=self.links_topic)
            return item
        record = (
            item if isinstance(item, PageRecord) else PageRecord.model_validate(ItemAdapter(item).asdict())
        )
        self._produce(record.canonical_url.encode("utf-8"), record.to_bytes())
        return item

    def _dead_letter(self, letter: DeadLetter) -> None:
        self.stats.inc_value(STAT_DEAD_LETTERS)
        metrics.DEAD_LETTERS.labels(letter.reason if letter.reason.startswith("http_") else "other").inc()
        key = base64.b64decode(letter.key_b64) if letter.key_b64 else b""
        self._produce(key, letter.to_bytes(), dead_letter=True)

    def _produce(self, key: bytes, value: bytes, *, dead_letter: bool = False, topic: str = "") -> None:
        assert self.producer is not None, "open_spider was not called"
        self._seq += 1
        seq = self._seq
        topic = topic or (self.dead_letter_topic if dead_letter else self.topic)
        if dead_letter or topic == self.links_topic:  # not page records: not in the page counts
            self._side_in_flight.add(seq)
        else:
            self._in_flight[seq] = (key, value, time.monotonic())

        def on_delivery(err: Any, _msg: Any) -> None:
            self._on_delivery(seq, err)

        while True:
            try:
                self.producer.produce(topic, value, key, on_delivery=on_delivery)
                break
            except BufferError:
                # Local queue full: serve delivery callbacks to make room, then retry. Never drop.
                self.stats.inc_value(STAT_BACKPRESSURE)
                self.producer.poll(0.5)
            except KafkaException as exc:  # e.g. MSG_SIZE_TOO_LARGE: this message can never go
                self._on_delivery(seq, exc.args[0] if exc.args else exc)
                break
        self.producer.poll(0)
        metrics.PRODUCER_QUEUE.set(len(self.producer))
        if self._pending_letters and not self._draining:
            self._draining = True
            try:
                self._drain_letters()
            finally:
                self._draining = False

    def _on_delivery(self, seq: int, err: Any) -> None:
        if seq in self._side_in_flight:
            self._side_in_flight.discard(seq)
            if err is not None:
                self.stats.inc_value(STAT_DEAD_LETTERS_FAILED)
                log.error("dead letter or link record undeliverable: %s", err)
            return
        key, value, produced_at = self._in_flight.pop(seq, (b"?", b"", time.monotonic()))
        if err is None:
            self.stats.inc_value(STAT_DELIVERED)
            metrics.RECORDS_PRODUCED.inc()
            metrics.PRODUCE_LATENCY.observe(time.monotonic() - produced_at)
            return
        self.stats.inc_value(STAT_FAILED)
        metrics.DELIVERY_FAILURES.inc()
        log.error("delivery failed for key %s: %s", key.decode("utf-8", errors="replace"), err)
        # Not produced here: librdkafka forbids produce() from inside a delivery callback.
        self._pending_letters.append(_delivery_dead_letter(key, value, err))

    def _drain_letters(self) -> None:
        """Produce the dead letters of failed deliveries (called outside delivery callbacks)."""
        while self._pending_letters:
            self._dead_letter(self._pending_letters.pop(0))

    def close_spider(self) -> None:
        if self.producer is None:
            return
        remaining = self.producer.flush(self.settings.crawl.delivery_timeout_s)
        for _ in range(3):  # dead letters of deliveries that failed during the flush, then theirs
            if not self._pending_letters:
                break
            self._draining = True
            self._drain_letters()
            remaining = self.producer.flush(self.settings.crawl.delivery_timeout_s)
        metrics.PRODUCER_QUEUE.set(len(self.producer))
        if self._side_in_flight:
            self.stats.inc_value(STAT_DEAD_LETTERS_FAILED, len(self._side_in_flight))
            self._side_in_flight.clear()
        leftovers = list(self._in_flight.values())
        self._in_flight.clear()
        if not leftovers:
            return
        self.stats.inc_value(STAT_FAILED, len(leftovers))
        metrics.DELIVERY_FAILURES.inc(len(leftovers))
        for key, _value, _ in leftovers[:MAX_LEFTOVER_LOG_LINES]:
            log.error(
                "undelivered after %.0fs flush: key %s",
                self.settings.crawl.delivery_timeout_s,
                key.decode("utf-8", errors="replace"),
            )
        log.error(
            "%d page records undelivered at close (producer queue still held %d); counted as failed",
            len(leftovers),
            remaining,
        )


def _delivery_dead_letter(key: bytes, value: bytes, err: Any) -> DeadLetter:
    """The dead letter of a page record Kafka did not accept (value capped: it may be the cause)."""
    code = err.name() if hasattr(err, "name") else str(err)
    return DeadLetter.for_message(
        stage="crawl",
        error=RecordError("delivery_failed", f"{key.decode('utf-8', errors='replace')}: {err}"[:2000]),
        topic=None,
        partition=None,
        offset=None,
        key=key,
        value=value[:MAX_DEAD_LETTER_VALUE] if code != "MSG_SIZE_TOO_LARGE" else value[:4096],
    )
