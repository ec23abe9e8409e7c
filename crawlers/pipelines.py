"""KafkaPagePipeline: the crawl stage's writer, producing PageRecords to ``<prefix>.pages.raw``.

LinkRecord items (the distributed spider's discovered links) and FetchOutcome items (how it
finished a frontier request) go to ``<prefix>.links``; :meth:`KafkaPagePipeline.links_through`
is the highest offset delivered per links partition (an outcome carries it).
Dead letters (``DeadLetterMessage`` items built by :mod:`crawlstream.deadletters`: fetch failures,
records the distributed spider could not handle) go to ``<prefix>.deadletter``, and so does every
record whose delivery failed after librdkafka's retries (reason ``delivery_failed``, the record as
value), so a failed delivery is never only a log line.

Nothing oversized is produced: each record is checked against its topic's ``max.message.bytes``
(``TopicSpec.max_message_bytes``; a topic outside the catalog gets the broker default) before it is
produced. A page whose JSON would not fit (a body of control characters grows 6x when escaped) has
its body cut until it fits (``body_truncated`` set, ``body_bytes`` keeps the size downloaded); a
record that still cannot fit becomes a dead letter (reason ``too_large``), never a crash. Dead
letters fit their topic by construction.

Usable from any Scrapy project through ``ITEM_PIPELINES``: it takes ordinary items (dicts,
``scrapy.Item``s... with ``url`` and ``body`` or ``text``: :mod:`crawlers.items`); an item it cannot
use is a dead letter (reason ``unusable_item``, the item as JSON), never a crash. Its settings come
from the environment or from the project's Scrapy settings named like the variables
(``CRAWLSTREAM_KAFKA__BOOTSTRAP_SERVERS = ...`` in settings.py; these win). Settings used:
``kafka.*`` (bootstrap, client extras, ``max_message_bytes``), ``crawl.delivery_timeout_s``; Scrapy setting
``CRAWLSTREAM_TOPIC`` overrides the catalog's raw-pages topic. Key = canonical URL (UTF-8),
value = ``PageRecord.to_bytes()``.

Nothing is dropped silently: a full local queue is back-pressure (poll and retry, forever; librdkafka's
``message.timeout.ms`` fails stuck messages through the callback, which frees the queue), every
failed delivery is logged with its key and counted, and whatever ``flush`` leaves undelivered at
close is counted as failed. :meth:`KafkaPagePipeline.delivered_through` tells a consumer (the
distributed spider) up to which produced record everything is settled (delivered, or dead-lettered
and that letter delivered), so it commits its source offsets only past settled work.
"""

from __future__ import annotations

import json
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import pydantic_core
from confluent_kafka import KafkaException, Producer
from itemadapter import ItemAdapter
from scrapy.crawler import Crawler

from crawlers import metrics
from crawlers.items import UNUSABLE, page_record_from_item
from crawlers.settings import crawlstream_settings
from crawlstream import kafka as kafka_clients
from crawlstream.deadletters import (
    RECORD_OVERHEAD,
    DeadLetterMessage,
    build_dead_letter,
    dead_letter_for_exception,
    fits,
)
from crawlstream.records import DeadLetter, FetchOutcome, LinkRecord, PageRecord
from crawlstream.settings import Settings
from crawlstream.topics import BROKER_DEFAULT_MAX_MESSAGE_BYTES, catalog

log = logging.getLogger(__name__)

STAT_DELIVERED = "crawlstream/delivered"
STAT_FAILED = "crawlstream/delivery_failed"
STAT_BACKPRESSURE = "crawlstream/producer_backpressure_waits"
STAT_DEAD_LETTERS = "crawlstream/dead_letters"
STAT_DEAD_LETTERS_FAILED = "crawlstream/dead_letters_undelivered"
STAT_LINKS_PRODUCED = "crawlstream/links_produced"
STAT_BODIES_RECAPPED = "crawlstream/bodies_recapped_to_fit"
STAT_TOO_LARGE = "crawlstream/records_too_large"
STAT_UNUSABLE = "crawlstream/items_unusable"
MAX_LEFTOVER_LOG_LINES = 50
# Dead-letter reasons that are their own metric label (bounded); fetch_* and the rest are grouped.
_LETTER_LABELS = frozenset(
    {"delivery_failed", "too_large", "api_invalid_json", "invalid_request", "unprocessable", UNUSABLE}
)
_PIPELINES: weakref.WeakKeyDictionary[Crawler, KafkaPagePipeline] = weakref.WeakKeyDictionary()

DeliveryCallback = Callable[[Any, Any], None]


def pipeline_for(crawler: Crawler) -> KafkaPagePipeline | None:
    """The crawler's KafkaPagePipeline, if it has one (the distributed spider asks)."""
    return _PIPELINES.get(crawler)


def letter_label(reason: str) -> str:
    if reason.startswith("http_") or reason in _LETTER_LABELS:
        return reason
    return "fetch" if reason.startswith("fetch_") else "other"


def topic_limit(settings: Settings, topic: str) -> int:
    """``max.message.bytes`` of ``topic`` per the catalog; the broker default for other topics."""
    for spec in catalog(settings).all():
        if spec.name == topic:
            return spec.max_message_bytes
    return BROKER_DEFAULT_MAX_MESSAGE_BYTES


class ProducerLike(Protocol):
    """The part of ``confluent_kafka.Producer`` the pipeline uses (fakes implement the same)."""

    def produce(self, topic: str, value: bytes, key: bytes, *, on_delivery: DeliveryCallback) -> None: ...
    def poll(self, timeout: float) -> int: ...
    def flush(self, timeout: float) -> int: ...
    def __len__(self) -> int: ...


# Batches of a crawl's pace (100-300 pages/s here): at 20 ms nearly every batch held one or two
# records, and librdkafka's threads spent ~70 us of CPU per page compressing and sending them; at
# 100 ms ~30 us (issue 13). A record reaches the topic <= 0.1 s later. Catalog topics take 1 MiB or
# more, above librdkafka's largest batch (batch.size, 1,000,000 bytes); a topic outside the catalog
# may take less (its limit is unknown here, and the broker refuses a whole batch over it, records
# that fit alone included), so records for such a topic keep the short batches they had before.
LINGER_MS = 100
LINGER_MS_OTHER_TOPIC = 20


def producer_config(settings: Settings, linger_ms: int = LINGER_MS) -> dict[str, Any]:
    return kafka_clients.producer_config(
        settings,
        "crawler",
        **{
            "client.id": "crawlstream-crawler",
            "enable.idempotence": True,  # retries cannot duplicate or reorder within a partition
            "acks": "all",
            # HTML compresses well; librdkafka 2.16 is built with zstd. Measured with a paced producer
            # (~300 records/s, issue 3): ~88 us CPU per record, lz4 ~58 us, but lz4 batches made the
            # e2e reconcile come up short downstream (streams, aiokafka) in 3 runs of 5: kept zstd.
            "compression.type": "zstd",
            "linger.ms": linger_ms,
            "message.max.bytes": settings.kafka.max_message_bytes,
        },
    )


class KafkaPagePipeline:
    def __init__(self, settings: Settings, topic: str, stats: Any, dead_letter_topic: str = "") -> None:
        topics = catalog(settings)
        self.settings = settings
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic or topics.dead_letter.name
        self.links_topic = topics.links.name
        self.page_limit = topic_limit(settings, topic)
        self.links_limit = topics.links.max_message_bytes
        self.dead_letter_limit = topic_limit(settings, self.dead_letter_topic)
        self.stats = stats
        self.producer: ProducerLike | None = None
        self._seq = 0
        # Unsettled records by sequence number. Records that may need a dead letter when their
        # delivery fails (pages, links) keep (topic, key, value, produce time); dead letters keep
        # the sequence number of the record they stand for.
        self._in_flight: dict[int, tuple[str, bytes, bytes, float]] = {}
        self._letters_in_flight: dict[int, int] = {}
        self._pending_letters: list[tuple[DeadLetterMessage, int]] = []
        self._stuck: set[int] = set()  # records whose dead letter could not be delivered either
        # Highest delivered offset per links partition (raised by links_floor at an assignment).
        self._links_through: dict[int, int] = {}
        self._draining = False

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> KafkaPagePipeline:
        settings = crawlstream_settings(crawler.settings)
        topic = crawler.settings.get("CRAWLSTREAM_TOPIC") or catalog(settings).raw_pages.name
        pipeline = cls(settings, topic, crawler.stats)
        _PIPELINES[crawler] = pipeline
        return pipeline

    def make_producer(self, config: dict[str, Any]) -> ProducerLike:
        """Hook for tests and other transports: return anything with the Producer interface."""
        producer: ProducerLike = Producer(config)
        return producer

    def open_spider(self) -> None:
        # Created here, not in __init__, so nothing connects until a crawl really starts.
        known = self.topic in {spec.name for spec in catalog(self.settings).all()}
        linger_ms = LINGER_MS if known else LINGER_MS_OTHER_TOPIC
        self.producer = self.make_producer(producer_config(self.settings, linger_ms))
        log.info("producing page records to %s", self.topic)

    # What a consumer of the crawl's input needs to commit at least once.
    def barrier(self) -> int:
        """The sequence number of the last record handed to the producer."""
        return self._seq

    def delivered_through(self) -> int:
        """Every record up to this sequence number is settled (delivered, or dead-lettered and
        that letter delivered)."""
        open_ = [*self._in_flight, *self._letters_in_flight.values(), *self._stuck]
        open_ += [covers for _letter, covers in self._pending_letters]
        return min(open_) - 1 if open_ else self._seq

    def links_through(self) -> dict[int, int]:
        """The highest offset per links partition that this process delivered or found at the
        end of the partition when it was last assigned requests (see FetchOutcome)."""
        return dict(self._links_through)

    def links_floor(self, ends: dict[int, int]) -> None:
        """Raise :meth:`links_through` to these end offsets (exclusive ends: -1 each)."""
        for partition, end in ends.items():
            if end - 1 > self._links_through.get(partition, -1):
                self._links_through[partition] = end - 1

    def poll(self) -> None:
        """Serve delivery callbacks (and produce the dead letters they asked for)."""
        if self.producer is not None:
            self.producer.poll(0)
            self._drain_if_needed()

    def process_item(self, item: Any) -> Any:
        if isinstance(item, DeadLetterMessage):
            self.produce_dead_letter(item)
        elif isinstance(item, DeadLetter):  # a letter built elsewhere: refitted to the topic
            self.produce_dead_letter(_refit(item, self.dead_letter_limit))
        elif isinstance(item, (LinkRecord, FetchOutcome)):  # the distributed spider's discoveries
            if isinstance(item, LinkRecord):
                self.stats.inc_value(STAT_LINKS_PRODUCED)
            key, value = item.canonical_url.encode("utf-8"), item.to_bytes()
            if fits(key, value, self.links_limit):
                self._produce(self.links_topic, key, value)
            else:
                self._too_large(self.links_topic, key, value, self.links_limit)
        else:
            try:
                record = page_record_from_item(item)
            except Exception as exc:  # any item it cannot use is a dead letter, never a crash
                self._unusable(item, exc)
                return item
            fitted = self.fit_page(record)
            key = record.canonical_url.encode("utf-8")
            if fitted is None:
                self._too_large(self.topic, key, record.to_bytes(), self.page_limit)
            else:
                self._produce(self.topic, key, fitted)
        return item

    def _unusable(self, item: Any, exc: Exception) -> None:
        self.stats.inc_value(STAT_UNUSABLE)
        fields = ItemAdapter(item).asdict() if ItemAdapter.is_item(item) else {"item": repr(item)}
        url = fields.get("url")
        key = url.encode("utf-8", errors="replace") if isinstance(url, str) else None
        log.error("item not produced (dead-lettered): %s", exc)
        value = json.dumps(fields, default=repr).encode("utf-8", errors="replace")
        self.produce_dead_letter(
            dead_letter_for_exception(
                exc, stage="crawl", key=key, value=value, max_bytes=self.dead_letter_limit
            )
        )

    def fit_page(self, record: PageRecord) -> bytes | None:
        """The record's value, its body cut if it must be to fit the page topic; None if it can't."""
        key = record.canonical_url.encode("utf-8")
        value = record.to_bytes()
        fit = fits(key, value, self.page_limit)
        if fit or not record.body:
            return value if fit else None
        # The JSON around the body has a known size; keep the longest body prefix whose escaped
        # form fits in the rest (binary search: escaping is not linear in characters).
        around = len(value) - len(pydantic_core.to_json(record.body))
        room = self.page_limit - RECORD_OVERHEAD - len(key) - around
        low, high = 0, len(record.body)
        while low < high:
            mid = (low + high + 1) // 2
            if len(pydantic_core.to_json(record.body[:mid])) <= room:
                low = mid
            else:
                high = mid - 1
        cut = record.model_copy(update={"body": record.body[:low], "body_truncated": True})
        value = cut.to_bytes()
        if not fits(key, value, self.page_limit):
            return None
        self.stats.inc_value(STAT_BODIES_RECAPPED)
        log.info("body of %s cut to %d characters to fit %s", record.canonical_url[:200], low, self.topic)
        return value

    def _too_large(self, topic: str, key: bytes, value: bytes, limit: int) -> None:
        self.stats.inc_value(STAT_TOO_LARGE)
        detail = f"record of {len(key) + len(value)} bytes does not fit {topic} (max.message.bytes {limit})"
        log.error("%s: %s", key[:200].decode("utf-8", errors="replace"), detail)
        self.produce_dead_letter(
            build_dead_letter(
                stage="crawl",
                reason="too_large",
                detail=detail,
                key=key,
                value=value,
                max_bytes=self.dead_letter_limit,
            )
        )

    def produce_dead_letter(self, message: DeadLetterMessage, covers: int | None = None) -> None:
        """Produce a dead letter; ``covers``: the sequence number of the record it stands for."""
        self.stats.inc_value(STAT_DEAD_LETTERS)
        metrics.DEAD_LETTERS.labels(letter_label(message.letter.reason)).inc()
        self._produce(self.dead_letter_topic, message.key or b"", message.value, covers=covers)

    def _produce(self, topic: str, key: bytes, value: bytes, *, covers: int | None = None) -> None:
        assert self.producer is not None, "open_spider was not called"
        self._seq += 1
        seq = self._seq
        if topic == self.dead_letter_topic:
            self._letters_in_flight[seq] = seq if covers is None else covers
        else:
            self._in_flight[seq] = (topic, key, value, time.monotonic())

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is None and _msg is not None and topic == self.links_topic:
                through = self._links_through
                partition, offset = _msg.partition(), _msg.offset()
                if offset is not None and offset > through.get(partition, -1):
                    through[partition] = offset
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
        self._drain_if_needed()

    def _drain_if_needed(self) -> None:
        if self._pending_letters and not self._draining:
            self._draining = True
            try:
                self._drain_letters()
            finally:
                self._draining = False

    def _on_delivery(self, seq: int, err: Any) -> None:
        if seq in self._letters_in_flight:
            covers = self._letters_in_flight.pop(seq)
            if err is not None:
                self._stuck.add(covers)  # the record it stands for is neither delivered nor lettered
                self.stats.inc_value(STAT_DEAD_LETTERS_FAILED)
                log.error("dead letter undeliverable: %s", err)
            return
        topic, key, value, produced_at = self._in_flight.pop(seq, ("", b"?", b"", time.monotonic()))
        if topic == self.links_topic:
            if err is not None:
                log.error("link record %s undeliverable: %s", key[:200].decode("utf-8", "replace"), err)
                self._pending_letters.append((self._delivery_dead_letter(key, value, err), seq))
            return
        if err is None:
            self.stats.inc_value(STAT_DELIVERED)
            metrics.RECORDS_PRODUCED.inc()
            metrics.PRODUCE_LATENCY.observe(time.monotonic() - produced_at)
            return
        self.stats.inc_value(STAT_FAILED)
        metrics.DELIVERY_FAILURES.inc()
        log.error("delivery failed for key %s: %s", key.decode("utf-8", errors="replace"), err)
        # Not produced here: librdkafka forbids produce() from inside a delivery callback.
        self._pending_letters.append((self._delivery_dead_letter(key, value, err), seq))

    def _delivery_dead_letter(self, key: bytes, value: bytes, err: Any) -> DeadLetterMessage:
        """The dead letter of a record Kafka did not accept (cut to fit: it may be the cause)."""
        code = err.name() if hasattr(err, "name") else type(err).__name__
        return build_dead_letter(
            stage="crawl",
            reason="delivery_failed",
            detail=f"{key[:500].decode('utf-8', errors='replace')}: {err}",
            key=key,
            value=value,
            max_bytes=self.dead_letter_limit,
            error_class_name=f"confluent_kafka.KafkaError.{code}",
        )

    def _drain_letters(self) -> None:
        """Produce the dead letters of failed deliveries (called outside delivery callbacks)."""
        while self._pending_letters:
            letter, covers = self._pending_letters.pop(0)
            self.produce_dead_letter(letter, covers=covers)

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
        self._draining = False
        metrics.PRODUCER_QUEUE.set(len(self.producer))
        if self._letters_in_flight:
            self.stats.inc_value(STAT_DEAD_LETTERS_FAILED, len(self._letters_in_flight))
            self._stuck.update(self._letters_in_flight.values())
            self._letters_in_flight.clear()
        leftovers = [
            (key, seq) for seq, (topic, key, _v, _t) in self._in_flight.items() if topic != self.links_topic
        ]
        self._stuck.update(self._in_flight)
        self._in_flight.clear()
        if not leftovers:
            return
        self.stats.inc_value(STAT_FAILED, len(leftovers))
        metrics.DELIVERY_FAILURES.inc(len(leftovers))
        for key, _seq in leftovers[:MAX_LEFTOVER_LOG_LINES]:
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


def _refit(letter: DeadLetter, max_bytes: int) -> DeadLetterMessage:
    """A DeadLetter built without the size rule, rebuilt with it."""
    from crawlstream.deadletters import Origin

    return build_dead_letter(
        stage=letter.stage,
        reason=letter.reason,
        detail=letter.error,
        key=letter.original_key(),
        value=letter.original_value(),
        max_bytes=max_bytes,
        origin=Origin(letter.source_topic, letter.source_partition, letter.source_offset),
        error_class_name=letter.error_class,
    )
