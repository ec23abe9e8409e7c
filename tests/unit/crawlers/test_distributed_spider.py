"""The distributed spider's per-record boundary: garbage from the requests topic becomes dead letters
with their origin, refusals are counted, the consumer keeps going, and an offset is stored only
once everything its request produced is delivered (at least once)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from confluent_kafka import TopicPartition
from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.http import HtmlResponse
from scrapy.settings import Settings as ScrapySettings
from scrapy.utils.test import get_reactor_settings

from crawlers.pipelines import _PIPELINES, KafkaPagePipeline, ProducerLike
from crawlers.refusals import STAT_PREFIX
from crawlers.spiders.distributed import DistributedSpider
from crawlstream.records import CrawlRequest, DeadLetter, LinkRecord, PageRecord
from crawlstream.settings import Settings
from tests.unit.crawlers.test_pipelines import FakeProducer

TOPIC = "crawlstream.requests"


class _Message:
    def __init__(self, offset: int, value: bytes | None, key: bytes | None = b"host") -> None:
        self._offset, self._value, self._key = offset, value, key

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value


class _Consumer:
    def __init__(self, messages: list[_Message]) -> None:
        self.messages = messages
        self.stored: list[int] = []

    def consume(self, num: int, timeout: float) -> list[_Message]:
        batch, self.messages = self.messages[:num], self.messages[num:]
        return batch

    def store_offsets(self, offsets: list[Any]) -> None:
        self.stored += [tp.offset for tp in offsets]


class _Engine:
    def __init__(self) -> None:
        self.crawled: list[Request] = []

    def crawl(self, request: Request) -> None:
        self.crawled.append(request)


def _request(url: str, **fields: Any) -> bytes:
    return CrawlRequest(url=url, canonical_url=url, host="example.com", **fields).to_bytes()


def _setup(messages: list[_Message]) -> tuple[DistributedSpider, _Consumer, _Engine, FakeProducer]:
    scrapy_settings = ScrapySettings(
        {"CRAWLSTREAM_SETTINGS": Settings(), "TELNETCONSOLE_ENABLED": False, **get_reactor_settings()}
    )
    scrapy_settings.setdict({"DEPTH_LIMIT": 3}, priority="cmdline")
    crawler = Crawler(DistributedSpider, scrapy_settings)
    spider = DistributedSpider.from_crawler(crawler, allowed_domains="example.com")
    crawler.spider = spider
    crawler._apply_settings()
    assert crawler.stats is not None
    crawler.stats.open_spider()
    engine = _Engine()
    crawler.engine = engine  # type: ignore[assignment]
    producer = FakeProducer(queue_limit=1000)
    pipeline = KafkaPagePipeline.from_crawler(crawler)

    def make(config: dict[str, Any]) -> ProducerLike:
        return producer

    pipeline.make_producer = make  # type: ignore[method-assign]
    pipeline.open_spider()
    assert _PIPELINES[crawler] is pipeline
    consumer = _Consumer(messages)
    spider.consumer = consumer  # type: ignore[assignment]
    return spider, consumer, engine, producer


def test_garbage_records_are_dead_lettered_with_their_origin_and_the_consumer_keeps_going() -> None:
    far = datetime.now(UTC) + timedelta(days=30)
    deep_json = b"[" * 50_000 + b"]" * 50_000
    messages = [
        _Message(0, b"not json at all"),
        _Message(1, b'{"url": 5, "canonical_url": null}'),
        _Message(2, None),
        _Message(3, deep_json),
        _Message(4, _request("http://example.com/later", not_before=far)),
        _Message(5, b"\xff\xfe" * 600_000, key=b"k" * 5000),  # 1.2 MB of invalid UTF-8, a huge key
        _Message(6, _request("javascript:alert(1)")),
        _Message(7, _request("http://example.com/" + "x" * 3000)),
        _Message(8, _request("http://elsewhere.example/")),
        _Message(9, _request("http://example.com/deep", depth=9)),
        _Message(10, _request("http://example.com/good")),
        _Message(11, _request("http://[::1]@example.com/")),  # in scope, but Scrapy raises ValueError
    ]
    spider, consumer, engine, producer = _setup(messages)

    spider.poll()

    assert [r.url for r in engine.crawled] == ["http://example.com/good"]
    letters = [
        DeadLetter.model_validate_json(v) for t, _k, v in producer.sent if t == "crawlstream.deadletter"
    ]
    assert [(d.source_topic, d.source_partition, d.source_offset) for d in letters] == [
        *((TOPIC, 0, n) for n in range(6)),
        (TOPIC, 0, 11),
    ]
    assert [d.reason for d in letters] == [
        *["invalid_request"] * 4,
        "not_before_too_far",
        "invalid_request",
        "unprocessable",
    ]
    assert letters[-1].error_class == "ValueError"
    assert all(d.stage == "crawl" and d.error_class for d in letters)
    assert letters[0].original_value() == b"not json at all"
    huge = [(k, v) for t, k, v in producer.sent if t == "crawlstream.deadletter"][5]
    assert len(huge[0]) <= 1024  # the key was capped
    stats = spider.crawler.stats.get_stats()
    refused = {k.removeprefix(STAT_PREFIX): v for k, v in stats.items() if k.startswith(STAT_PREFIX)}
    assert refused == {"scheme": 1, "url_too_long": 1, "offsite": 1, "depth": 1}

    # Offsets: nothing stored before the dead letters are delivered; then up to the request in flight.
    assert consumer.stored == []
    producer.deliver()
    spider.poll()
    assert consumer.stored[-1] == 10  # offset 10 (the good request) is still in flight


def test_a_request_due_later_is_held_and_its_offset_not_stored() -> None:
    soon = datetime.now(UTC) + timedelta(minutes=5)
    spider, consumer, engine, _producer = _setup(
        [_Message(0, _request("http://example.com/soon", not_before=soon))]
    )
    spider.poll()
    assert engine.crawled == []
    assert len(spider.held) == 1
    assert consumer.stored == []


def test_an_offset_is_stored_only_after_the_records_of_its_response_are_delivered() -> None:
    spider, consumer, engine, producer = _setup([_Message(0, _request("http://example.com/a"))])
    spider.poll()
    [request] = engine.crawled
    body = b'<html><body><a href="/b">b</a><a href="http://elsewhere.example/">x</a></body></html>'
    response = HtmlResponse(request.url, body=body, headers={"Content-Type": "text/html"}, request=request)

    pipeline = _PIPELINES[spider.crawler]
    items = []
    for item in spider.parse(response):  # what Scrapy does: each item through the pipeline, then signalled
        pipeline.process_item(item)
        items.append(item)
        spider.item_settled(item, response=response)

    assert [type(i) for i in items] == [PageRecord, LinkRecord]  # the offsite link was refused
    assert consumer.stored == []  # handed to the producer, not yet delivered
    producer.deliver()
    spider.poll()
    assert consumer.stored == [1]


def test_an_error_while_handling_a_response_is_the_records_dead_letter() -> None:
    spider, _consumer, engine, _producer = _setup([_Message(0, _request("http://example.com/a"))])
    spider.poll()
    [request] = engine.crawled

    def broken(response: Any) -> Any:
        raise RuntimeError("boom")
        yield

    spider.record = broken  # type: ignore[assignment,method-assign]
    response = HtmlResponse(request.url, body=b"<html></html>", request=request)
    [letter] = list(spider.parse(response))
    assert (letter.letter.reason, letter.letter.error_class) == ("unprocessable", "RuntimeError")
    assert (letter.letter.source_topic, letter.letter.source_offset) == (TOPIC, 0)
    assert letter.letter.original_value() == request.meta["kafka_record"][1]


class _LeavingConsumer(_Consumer):
    """close() runs the rebalance callbacks librdkafka runs while the consumer leaves its group:
    a partition assigned by a cooperative rebalance (another crawler left first), then every
    partition revoked. A Kafka client call made from inside them is recorded: confluent-kafka
    aborts the process on the next callback after one (CallState_get: `cs != NULL`)."""

    def __init__(self, spider: DistributedSpider) -> None:
        super().__init__([])
        self.spider = spider
        self.closing = False
        self.closed = False
        self.calls_while_closing: list[str] = []

    def _call(self, name: str) -> None:
        if self.closing:
            self.calls_while_closing.append(name)

    def list_topics(self, topic: str, timeout: float) -> Any:
        self._call("list_topics")
        return SimpleNamespace(topics={})

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        self._call("get_watermark_offsets")
        return 0, 0

    def close(self) -> None:
        self.closing = True
        topic = self.spider.topic
        self.spider._assigned(self, [TopicPartition(topic, 5)])  # type: ignore[arg-type]
        self.spider._revoked(self, [TopicPartition(topic, 0), TopicPartition(topic, 5)])  # type: ignore[arg-type]
        self.closed = True


class _HostStates:
    def __init__(self, consumer: _LeavingConsumer) -> None:
        self.consumer = consumer
        self.calls: list[tuple[str, list[int] | None, bool]] = []

    def restore(self, partitions: list[int]) -> None:
        self.calls.append(("restore", partitions, self.consumer.closing))

    def revoke(self, partitions: list[int]) -> None:
        self.calls.append(("revoke", partitions, self.consumer.closing))

    def close(self) -> None:
        self.calls.append(("close", None, self.consumer.closing))


def test_the_rebalance_callbacks_of_close_make_no_kafka_client_call() -> None:
    spider, _consumer, _engine, _producer = _setup([])
    spider.topic, spider.links_topic = "t.requests", "t.links"  # what start() sets
    leaving = _LeavingConsumer(spider)
    host_states = _HostStates(leaving)
    spider.consumer = leaving  # type: ignore[assignment]
    spider.host_states = host_states  # type: ignore[assignment]
    spider._assigned(leaving, [TopicPartition(spider.topic, 0)])  # type: ignore[arg-type]
    assert host_states.calls == [("restore", [0], False)]  # while running: the host states restored

    spider.on_closed()

    assert leaving.closed
    assert leaving.calls_while_closing == []
    assert host_states.calls == [("restore", [0], False), ("close", None, True)]
