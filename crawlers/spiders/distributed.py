"""DistributedSpider: takes its requests from ``<prefix>.requests`` as a Kafka consumer group.

Frontera-style politeness by partitioning: CrawlRequests are keyed by host, so all requests of
a host land in one partition, and a partition is consumed by one member of the group; several
crawler processes with the same ``group_id`` share a crawl, and each host is fetched by one
process at a time (during a rebalance a partition moves; Scrapy's per-host delay then holds per
process). Pages go to ``<prefix>.pages.raw``, failures to ``<prefix>.deadletter``, and every link
found in a page to ``<prefix>.links`` as a LinkRecord (keyed by canonical URL): the stream stage
decides what is crawled next and writes it back to the requests topic.

No record can stop the consumer: each consumed message is handled inside one boundary, and any
exception it causes (not JSON, the wrong shape, a URL Scrapy cannot build a request from, a
``not_before`` more than ``max_hold_s`` ahead, an error while handling its response) makes it a dead
letter with its reason, error class and origin (topic, partition, offset); the spider moves on. A
request out of scope (:mod:`crawlers.scope`: scheme, URL length, ``allowed_domains``, the job's
allow/deny) or deeper than ``DEPTH_LIMIT`` is refused and counted, as are its links; the address
guard applies to every fetch as in any crawl. Without ``allowed_domains`` every host is in scope
(the frontier decides).

Offsets (at least once): a message's offset becomes committable when its request is done (its
response or failure handled, or it was refused, dead-lettered or dropped as a duplicate) *and*
everything it produced is settled: the items of the response all went through the pipeline (its
``item_scraped`` signals) and the pipeline reports them delivered
(:meth:`crawlers.pipelines.KafkaPagePipeline.delivered_through`). Per partition the lowest
unfinished offset is stored (:mod:`crawlers.inflight`) and auto-committed; the consumer commits on
close. A crash re-delivers the unfinished requests. CrawlRequests whose ``not_before`` is in the
future are held back by the process until then. The spider stays open while messages arrive and
closes after ``idle_exit_s`` without any (0: never).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from pydantic import ValidationError
from scrapy import Request, Spider, signals
from scrapy.crawler import Crawler
from scrapy.exceptions import CloseSpider, DontCloseSpider
from scrapy.http import Response, TextResponse
from scrapy.linkextractors import LinkExtractor
from scrapy.utils.defer import deferred_from_coro
from twisted.internet import task
from twisted.python.failure import Failure

from crawlers.inflight import InFlightOffsets
from crawlers.pipelines import pipeline_for
from crawlers.settings import crawlstream_settings
from crawlers.spiders.common import CountingLinkExtractor, RecordingMixin, _split_arg
from crawlstream.deadletters import DeadLetterMessage, Origin, dead_letter_for_exception
from crawlstream.errors import RecordError
from crawlstream.kafka import consumer_config
from crawlstream.records import CrawlRequest, LinkRecord, PageRecord
from crawlstream.topics import catalog
from crawlstream.urls import canonical_url, host_of

STAT_REQUESTS_CONSUMED = "crawlstream/requests_consumed"
STAT_REQUESTS_DEAD = "crawlstream/requests_dead_lettered"
STAT_LINKS = "crawlstream/links"
POLL_INTERVAL_S = 0.1
BATCH = 100
MAX_HOLD_S = 3600.0  # a request due later than this would hold its partition's commits: dead letter
MAX_ERROR_DETAIL = 300

OriginKey = tuple[str, int, int]  # topic, partition, offset


@dataclass
class _Pending:
    """Items of one response (or failure) still on their way through the item pipeline."""

    source: object  # kept so that its id() stays unique while tracked
    origin: OriginKey
    items: int = 0
    finished: bool = False
    failed: bool = False


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
        allowed_domains: str | list[str] | None = None,
        allow: str | list[str] | None = None,
        deny: str | list[str] | None = None,
        max_hold_s: float | str = MAX_HOLD_S,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("start_urls", None)
        super().__init__(**kwargs)
        self.group_id = group_id
        self.idle_exit_s = float(idle_exit_s or 0)
        self.max_hold_s = float(max_hold_s)
        self.allowed_domains = _split_arg(allowed_domains) or None
        self.set_patterns(allow, deny)
        self.link_extractor: LinkExtractor = LinkExtractor()  # from_crawler installs the counting one
        self.setup_recording(job_id, run_id, max_pages, max_body_bytes)
        self.consumer: Consumer | None = None
        self.last_message = time.monotonic()
        self.held: list[
            tuple[datetime, tuple[CrawlRequest, OriginKey, tuple[bytes | None, bytes | None]]]
        ] = []
        self.offsets = InFlightOffsets()
        self.loop: task.LoopingCall | None = None
        self.max_depth = 0
        self._pending: dict[int, _Pending] = {}
        self._settling: deque[tuple[int, OriginKey]] = deque()

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> DistributedSpider:
        spider = super().from_crawler(crawler, *args, **kwargs)
        assert isinstance(spider, DistributedSpider)
        spider.link_extractor = CountingLinkExtractor(crawler)
        spider.max_depth = crawler.settings.getint("DEPTH_LIMIT")
        crawler.signals.connect(spider.on_idle, signal=signals.spider_idle)
        crawler.signals.connect(spider.on_closed, signal=signals.spider_closed)
        crawler.signals.connect(spider.request_done, signal=signals.request_dropped)
        crawler.signals.connect(spider.item_settled, signal=signals.item_scraped)
        crawler.signals.connect(spider.item_settled, signal=signals.item_dropped)
        crawler.signals.connect(spider.item_failed, signal=signals.item_error)
        return spider

    async def start(self) -> AsyncIterator[Request]:
        settings = crawlstream_settings(self.crawler.settings)
        self.topic = catalog(settings).requests.name
        self.consumer = Consumer(
            consumer_config(
                settings,
                "crawler",
                self.group_id,
                **{
                    "auto.offset.reset": "earliest",
                    "enable.auto.offset.store": False,
                    "partition.assignment.strategy": "cooperative-sticky",
                },
            )
        )
        self.consumer.subscribe([self.topic])
        self.logger.info("consuming %s as group %s", self.topic, self.group_id)
        self.loop = task.LoopingCall(self.poll)
        self.loop.start(POLL_INTERVAL_S).addErrback(self._loop_died)
        return
        yield  # an async generator that yields nothing: requests arrive through poll()

    def _loop_died(self, failure: Failure) -> None:
        # Only the consumer itself can get here (records are handled inside their own boundary).
        self.logger.error("consumer loop failed: %s", failure.getTraceback())
        engine = self.crawler.engine
        if engine is not None:
            deferred_from_coro(engine.close_spider_async(reason="consumer_failed"))

    # Consuming: one boundary per record.
    def poll(self) -> None:
        assert self.consumer is not None
        pipeline = pipeline_for(self.crawler)
        if pipeline is not None:
            pipeline.poll()
        self.release()
        now = datetime.now(UTC)
        due = [r for when, r in self.held if when <= now]
        self.held = [(when, r) for when, r in self.held if when > now]
        for message in self.consumer.consume(BATCH, timeout=0):
            if message.error() is not None:
                self.logger.warning("consumer: %s", message.error())
                continue
            self.last_message = time.monotonic()
            origin = (str(message.topic()), int(message.partition() or 0), int(message.offset() or 0))
            self.offsets.consumed(*origin)
            self.crawler.stats.inc_value(STAT_REQUESTS_CONSUMED)
            raw = (message.key(), message.value())
            try:
                request = self.accept(raw[1], now)
            except Exception as exc:  # whatever the record causes: a dead letter, and move on
                self.dead_letter(exc, raw, origin)
                continue
            if request is None:
                self.done(origin)  # refused (counted)
            elif request.not_before is not None and request.not_before > now:
                self.held.append((request.not_before, (request, origin, raw)))
            else:
                due.append((request, origin, raw))
        for request, origin, raw in due:
            try:
                self.crawler.engine.crawl(
                    Request(
                        request.url,
                        callback=self.parse,
                        errback=self.failed,
                        meta={"depth": request.depth, "kafka_origin": origin, "kafka_record": raw},
                    )
                )
            except Exception as exc:
                self.dead_letter(exc, raw, origin)

    def accept(self, value: bytes | None, now: datetime) -> CrawlRequest | None:
        """The CrawlRequest of a message, None when refused (counted); raises for a bad record."""
        try:
            request = CrawlRequest.model_validate_json(value or b"")
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()[:3]
            )
            raise RecordError("invalid_request", problems[:MAX_ERROR_DETAIL]) from None
        if request.not_before is not None and request.not_before.tzinfo is None:
            request = request.model_copy(update={"not_before": request.not_before.replace(tzinfo=UTC)})
        reason = self.link_scope.refusal(request.url, link=True)
        if reason is None and 0 < self.max_depth < request.depth:
            reason = "depth"
        if reason is not None:
            self.refuse(reason)
            return None
        if request.not_before is not None and request.not_before > now + timedelta(seconds=self.max_hold_s):
            raise RecordError(
                "not_before_too_far",
                f"not_before {request.not_before.isoformat()} is more than {self.max_hold_s:.0f}s ahead",
            )
        return request

    def dead_letter(
        self, exc: BaseException, raw: tuple[bytes | None, bytes | None], origin: OriginKey
    ) -> None:
        settings = crawlstream_settings(self.crawler.settings)
        message = dead_letter_for_exception(
            exc,
            stage="crawl",
            key=raw[0],
            value=raw[1],
            max_bytes=catalog(settings).dead_letter.max_message_bytes,
            origin=Origin(*origin),
        )
        self.crawler.stats.inc_value(STAT_REQUESTS_DEAD)
        self.logger.warning(
            "request at %s[%d]@%d dead-lettered (%s): %s",
            *origin,
            message.letter.reason,
            message.letter.error[:MAX_ERROR_DETAIL],
        )
        pipeline = pipeline_for(self.crawler)
        if pipeline is not None:
            pipeline.produce_dead_letter(message)
        self.done(origin)

    # Finishing: an offset is released once its request's output is settled.
    def done(self, origin: OriginKey) -> None:
        pipeline = pipeline_for(self.crawler)
        self._settling.append((pipeline.barrier() if pipeline is not None else 0, origin))
        self.release()

    def release(self) -> None:
        pipeline = pipeline_for(self.crawler)
        settled = pipeline.delivered_through() if pipeline is not None else None
        while self._settling and (settled is None or self._settling[0][0] <= settled):
            _barrier, origin = self._settling.popleft()
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
            self.done(tuple(origin))

    def _track(self, source: object, origin: OriginKey, items: Iterator[Any]) -> Iterator[Any]:
        pending = self._pending.setdefault(id(source), _Pending(source, origin))
        try:
            for item in items:
                pending.items += 1
                yield item
        finally:
            pending.finished = True
            self._settle(id(source))

    def _settle(self, key: int) -> None:
        pending = self._pending.get(key)
        if pending is None or not pending.finished or pending.items > 0:
            return
        del self._pending[key]
        if pending.failed:
            # An item the pipeline could not take: keep the offset uncommitted (re-delivered).
            self.logger.error("request at %s[%d]@%d left uncommitted: an item failed", *pending.origin)
            return
        self.done(pending.origin)

    def item_settled(self, item: Any, response: Any = None, **_: Any) -> None:
        pending = self._pending.get(id(response))
        if pending is not None:
            pending.items -= 1
            self._settle(id(response))

    def item_failed(self, item: Any, response: Any = None, **_: Any) -> None:
        pending = self._pending.get(id(response))
        if pending is not None:
            pending.failed = True
            self.item_settled(item, response)

    def failed(self, failure: Failure) -> Iterator[DeadLetterMessage]:
        request = getattr(failure, "request", None)
        origin = request.meta.get("kafka_origin") if request is not None else None
        if origin is None:
            yield from self.fetch_failed(failure)
            return
        yield from self._track(failure, tuple(origin), self.fetch_failed(failure))

    def on_idle(self) -> None:
        self.release()
        if self.idle_exit_s <= 0 or self.held or time.monotonic() - self.last_message < self.idle_exit_s:
            raise DontCloseSpider("waiting for requests")

    def on_closed(self) -> None:
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        self.release()  # the pipeline flushed at close: store what is now settled
        if self.consumer is not None:
            self.consumer.close()  # commits stored offsets and leaves the group

    # Handling a response.
    def parse(
        self, response: Response, **kwargs: Any
    ) -> Iterator[PageRecord | DeadLetterMessage | LinkRecord]:
        origin = response.meta.get("kafka_origin")
        if origin is None:
            yield from self._handle(response)
            return
        yield from self._track(response, tuple(origin), self._guarded(response, tuple(origin)))

    def _guarded(self, response: Response, origin: OriginKey) -> Iterator[Any]:
        try:
            yield from self._handle(response)
        except CloseSpider:
            raise  # max_pages: not the record's fault
        except Exception as exc:  # the response of this record broke something: its dead letter
            key, value = response.meta.get("kafka_record") or (None, None)
            settings = crawlstream_settings(self.crawler.settings)
            self.crawler.stats.inc_value(STAT_REQUESTS_DEAD)
            self.logger.warning("handling %s failed: %r", response.url[:200], exc)
            yield dead_letter_for_exception(
                exc,
                stage="crawl",
                key=key,
                value=value,
                max_bytes=catalog(settings).dead_letter.max_message_bytes,
                origin=Origin(*origin),
            )

    def _handle(self, response: Response) -> Iterator[PageRecord | DeadLetterMessage | LinkRecord]:
        if not (yield from self.record(response)):
            return
        assert isinstance(response, TextResponse)
        depth = int(response.meta.get("depth", 0)) + 1
        links = self.link_extractor.extract_links(response)
        if 0 < self.max_depth < depth:
            self.refuse("depth", len(links))
            return
        cap = self.crawler.settings.getint("CRAWLSTREAM_MAX_LINKS_PER_PAGE", 1000)
        in_scope = []
        for link in links:
            reason = self.link_scope.refusal(link.url, link=True)
            if reason is not None:
                self.refuse(reason)
            else:
                in_scope.append(link)
        for link in self.capped(in_scope, cap):
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
