"""DistributedSpider: takes its requests from ``<prefix>.requests`` as a Kafka consumer group.

Frontera-style politeness by partitioning: CrawlRequests are keyed by host, so all requests of
a host land in one partition, and a partition is consumed by one member of the group; several
crawler processes with the same ``group_id`` share a crawl, and each host is fetched by one
process at a time (during a rebalance a partition moves; Scrapy's per-host delay then holds per
process). Pages go to ``<prefix>.pages.raw``, failures to ``<prefix>.deadletter``, and every link
found in a page to ``<prefix>.links`` as a LinkRecord (keyed by canonical URL): the stream stage
decides what is crawled next and writes it back to the requests topic.

Offsets (at least once): a message's offset becomes committable when its request is done (its
response or failure handled, its records handed to the producer, or Scrapy dropped it as a
duplicate); per partition the lowest unfinished offset is stored (:mod:`crawlers.inflight`) and
auto-committed, and the consumer commits on close. A crash re-delivers the unfinished requests.
CrawlRequests whose ``not_before`` is in the future are held back by the process until then.
The spider stays open while messages arrive and closes after ``idle_exit_s`` without any (0: never).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from pydantic import ValidationError
from scrapy import Request, Spider, signals
from scrapy.crawler import Crawler
from scrapy.exceptions import DontCloseSpider
from scrapy.http import Response, TextResponse
from scrapy.linkextractors import LinkExtractor
from twisted.internet import task
from twisted.python.failure import Failure

from crawlers.inflight import InFlightOffsets
from crawlers.settings import crawlstream_settings
from crawlers.spiders.common import RecordingMixin, _split_arg
from crawlstream.records import CrawlRequest, DeadLetter, LinkRecord, PageRecord
from crawlstream.topics import catalog
from crawlstream.urls import canonical_url, host_of

STAT_REQUESTS_CONSUMED = "crawlstream/requests_consumed"
STAT_LINKS = "crawlstream/links"
POLL_INTERVAL_S = 0.1
BATCH = 100


class DistributedSpider(RecordingMixin, Spider):
    name = "distributed"

    def __init__(
        self,
        group_id: str = "crawlstream-crawlers",
        idle_exit_s: float | str = 0,
        max_pages: int | str | None = None,
        job_id: str = "",
        run_id: str = "",
        max_body_bytes: int = 1024 * 1024,
        allow: str | list[str] | None = None,
        deny: str | list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("start_urls", None)
        kwargs.pop("allowed_domains", None)  # the frontier decides what is in scope
        super().__init__(**kwargs)
        self.group_id = group_id
        self.idle_exit_s = float(idle_exit_s or 0)
        self.link_extractor = LinkExtractor(allow=_split_arg(allow), deny=_split_arg(deny))
        self.setup_recording(job_id, run_id, max_pages, max_body_bytes)
        self.consumer: Consumer | None = None
        self.last_message = time.monotonic()
        self.held: list[tuple[datetime, tuple[CrawlRequest, tuple[str, int, int]]]] = []
        self.offsets = InFlightOffsets()
        self.loop: task.LoopingCall | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> DistributedSpider:
        spider = super().from_crawler(crawler, *args, **kwargs)
        assert isinstance(spider, DistributedSpider)
        crawler.signals.connect(spider.on_idle, signal=signals.spider_idle)
        crawler.signals.connect(spider.on_closed, signal=signals.spider_closed)
        crawler.signals.connect(spider.request_done, signal=signals.request_dropped)
        return spider

    async def start(self) -> AsyncIterator[Request]:
        settings = crawlstream_settings(self.crawler.settings)
        self.topic = catalog(settings).requests.name
        self.links_topic = catalog(settings).links.name
        self.consumer = Consumer(
            settings.kafka.librdkafka(
                **{
                    "group.id": self.group_id,
                    "auto.offset.reset": "earliest",
                    "enable.auto.offset.store": False,
                    "partition.assignment.strategy": "cooperative-sticky",
                }
            )
        )
        self.consumer.subscribe([self.topic])
        self.logger.info("consuming %s as group %s", self.topic, self.group_id)
        self.loop = task.LoopingCall(self.poll)
        self.loop.start(POLL_INTERVAL_S)
        return
        yield  # an async generator that yields nothing: requests arrive through poll()

    def poll(self) -> None:
        assert self.consumer is not None
        engine = self.crawler.engine
        assert engine is not None
        now = datetime.now(UTC)
        due = [r for when, r in self.held if when <= now]
        self.held = [(when, r) for when, r in self.held if when > now]
        for message in self.consumer.consume(BATCH, timeout=0):
            if message.error() is not None:
                continue
            self.last_message = time.monotonic()
            origin = (str(message.topic()), int(message.partition() or 0), int(message.offset() or 0))
            self.offsets.consumed(*origin)
            self.crawler.stats.inc_value(STAT_REQUESTS_CONSUMED)
            try:
                request = CrawlRequest.model_validate_json(message.value() or b"")
            except ValidationError as exc:
                self.logger.warning("invalid CrawlRequest at offset %d: %s", message.offset(), exc)
                self.done(origin)
                continue
            if request.not_before is not None and request.not_before > now:
                self.held.append((request.not_before, (request, origin)))
            else:
                due.append((request, origin))
        for request, origin in due:
            engine.crawl(
                Request(
                    request.url,
                    callback=self.parse,
                    errback=self.failed,
                    meta={"depth": request.depth, "kafka_origin": origin},
                )
            )

    def done(self, origin: tuple[str, int, int]) -> None:
        position = self.offsets.done(*origin)
        if self.consumer is not None and position > 0:
            try:
                self.consumer.store_offsets(offsets=[TopicPartition(origin[0], origin[1], position)])
            except KafkaException as exc:  # the partition was revoked meanwhile
                self.logger.debug("offset not stored: %s", exc)
                self.offsets.revoke(origin[0], origin[1])

    def request_done(self, request: Request, **_: Any) -> None:
        origin = request.meta.get("kafka_origin")
        if origin is not None:
            self.done(origin)

    def failed(self, failure: Failure) -> Iterator[DeadLetter]:
        yield from self.fetch_failed(failure)
        request = getattr(failure, "request", None)
        if request is not None:
            self.request_done(request)

    def on_idle(self) -> None:
        if self.idle_exit_s <= 0 or self.held or time.monotonic() - self.last_message < self.idle_exit_s:
            raise DontCloseSpider("waiting for requests")

    def on_closed(self) -> None:
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        if self.consumer is not None:
            self.consumer.close()  # commits stored offsets and leaves the group

    def parse(self, response: Response, **kwargs: Any) -> Iterator[PageRecord | DeadLetter | LinkRecord]:
        try:
            yield from self._handle(response)
        finally:  # the records were handed to the pipeline: the request is done
            if response.request is not None:
                self.request_done(response.request)

    def _handle(self, response: Response) -> Iterator[PageRecord | DeadLetter | LinkRecord]:
        if not (yield from self.record(response)):
            return
        assert isinstance(response, TextResponse)
        depth = int(response.meta.get("depth", 0)) + 1
        for link in self.link_extractor.extract_links(response):
            self.crawler.stats.inc_value(STAT_LINKS)
            yield LinkRecord(
                url=link.url,
                canonical_url=canonical_url(link.url),
                host=host_of(link.url),
                source_url=response.url,
                depth=depth,
                job_id=self.job_id,
                run_id=self.run_id,
            )
