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

Fair dispatch: consumed requests wait in per-host queues (breadth-first: lowest depth, then
offset), read ahead up to ``frontier.read_ahead`` requests (then the topic is paused). Requests go
to Scrapy round-robin over the hosts that are ready: fewer than ``CONCURRENT_REQUESTS_PER_DOMAIN``
of theirs in flight in this process, no cooldown or backoff running, and at most
``CONCURRENT_REQUESTS`` in flight in all. A host that waits (a Retry-After, a backoff) holds only
its own queue, never another host's, and a huge host gets its turn like any other.

Frontier jobs (``frontier_run``): only the requests of that run are fetched (others are skipped,
offsets committed). A crawler of no frontier run (a standing pool, e.g. the Kubernetes crawler
Deployment) skips the requests of frontier runs (those that carry a scope): each run's own crawlers
fetch them, so a page is not fetched once by the run and once by the pool. Each request of a run
carries the run's scope; links out of it are left out and counted by reason
(:func:`crawlstream.scope.link_refusal`), links this process already sent at the same or a lower
depth are not sent again, and once the request's page and links are delivered its
:class:`~crawlstream.records.FetchOutcome` goes to ``<prefix>.links`` (its offset is committable
only once that is delivered too). A request with validators is sent with If-None-Match /
If-Modified-Since, and a 304 is recorded as a metadata record with status 304 (the stream stage
keeps the page as it was: a touch). Per-host politeness state is the shared ``<prefix>.hosts`` table
(:mod:`crawlers.hoststate`): restored for the partitions assigned before any of their requests is
dispatched, and after an assignment a host with a delay waits that delay first (its former owner may
just have fetched it). On revocation the queued requests of the revoked partitions are dropped
uncommitted (the new owner has them). ``parent_pid``: the spider closes when that process (its job's
runner) is gone."""

from __future__ import annotations

import heapq
import os
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from scrapy import Request, Spider, signals
from scrapy.crawler import Crawler
from scrapy.exceptions import CloseSpider, DontCloseSpider, IgnoreRequest
from scrapy.http import Response, TextResponse
from scrapy.linkextractors import LinkExtractor
from scrapy.spidermiddlewares.httperror import HttpError
from scrapy.utils.defer import deferred_from_coro
from twisted.internet import task
from twisted.python.failure import Failure

from crawlers.hoststate import HostStates
from crawlers.inflight import InFlightOffsets
from crawlers.pages import metadata_record
from crawlers.pipelines import pipeline_for
from crawlers.refusals import Refused
from crawlers.settings import crawlstream_settings
from crawlers.spiders.common import (
    DEAD_LETTER_STATUSES,
    STAT_METADATA_RECORDS,
    CountingLinkExtractor,
    RecordingMixin,
    _split_arg,
)
from crawlstream.deadletters import DeadLetterMessage, Origin, dead_letter_for_exception
from crawlstream.errors import RecordError
from crawlstream.kafka import consumer_config
from crawlstream.records import CrawlRequest, FetchOutcome, LinkRecord, PageRecord, decode_record
from crawlstream.scope import link_refusal
from crawlstream.topics import catalog
from crawlstream.urls import canonical_url, host_of

STAT_REQUESTS_CONSUMED = "crawlstream/requests_consumed"
STAT_REQUESTS_DEAD = "crawlstream/requests_dead_lettered"
STAT_REQUESTS_OTHER_RUNS = "crawlstream/requests_of_other_runs"
STAT_LINKS = "crawlstream/links"
STAT_LINKS_KNOWN = "crawlstream/links_already_sent"
STAT_OUTCOMES = "crawlstream/outcomes"
POLL_INTERVAL_S = 0.05
BATCH = 500
MAX_HOLD_S = 3600.0  # a request due later than this would hold its partition's commits: dead letter
MAX_ERROR_DETAIL = 300
SENT_LINKS_CACHE = 200_000  # canonical URLs (and depth) of links this process sent

OriginKey = tuple[str, int, int]  # topic, partition, offset
Raw = tuple[bytes | None, bytes | None]


@dataclass
class _Pending:
    """Items of one response (or failure) still on their way through the item pipeline."""

    source: object  # kept so that its id() stays unique while tracked
    origin: OriginKey
    items: int = 0
    finished: bool = False
    failed: bool = False


@dataclass
class _Host:
    """A host's queue in this process: (depth, offset, partition, request, origin, raw), lowest
    first: breadth-first, then in the order the requests were written."""

    queue: list[tuple[int, int, int, CrawlRequest, OriginKey, Raw]] = field(default_factory=list)
    in_flight: int = 0
    not_before: float = 0.0  # epoch seconds: a delay owed after an assignment


class DistributedSpider(RecordingMixin, Spider):
    name = "distributed"

    def __init__(
        self,
        group_id: str = "crawlstream-crawlers",
        idle_exit_s: float | str = 0,
        max_pages: int | str | None = None,
        job_id: str = "",
        run_id: str = "",
        max_body_bytes: int | str | None = None,
        allowed_domains: str | list[str] | None = None,
        allow: str | list[str] | None = None,
        deny: str | list[str] | None = None,
        max_hold_s: float | str = MAX_HOLD_S,
        frontier_run: str = "",
        parent_pid: int | str = 0,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("start_urls", None)
        super().__init__(**kwargs)
        self.group_id = group_id
        self.idle_exit_s = float(idle_exit_s or 0)
        self.max_hold_s = float(max_hold_s)
        self.frontier_run = frontier_run
        self.parent_pid = int(parent_pid or 0)
        self.allowed_domains = _split_arg(allowed_domains) or None
        self.set_patterns(allow, deny)
        self.link_extractor: LinkExtractor = LinkExtractor()  # from_crawler installs the counting one
        self.setup_recording(job_id, run_id, max_pages, max_body_bytes)
        self.consumer: Consumer | None = None
        self.host_states: HostStates | None = None
        self.last_message = time.monotonic()
        self.held: list[tuple[datetime, tuple[CrawlRequest, OriginKey, Raw]]] = []
        self.offsets = InFlightOffsets()
        self.loop: task.LoopingCall | None = None
        # Set before the consumer closes: the rebalance callbacks close() runs make no call to a
        # Kafka client of their own (see _assigned).
        self._closing = False
        self.max_depth = 0
        self._pending: dict[int, _Pending] = {}
        self._settling: deque[tuple[int, OriginKey, CrawlRequest | None]] = deque()
        # Dispatch.
        self.hosts: dict[str, _Host] = {}
        self._ring: deque[str] = deque()
        self._in_ring: set[str] = set()
        self.queued = 0
        self.in_flight = 0
        self.max_in_flight = 16
        self.per_host = 8
        self.delay_s = 0.0
        self.read_ahead = 5000
        self._paused = False
        self._dispatched: dict[OriginKey, str] = {}
        self._assigned_at: dict[int, float] = {}
        # Frontier requests: the request of each origin, and what its outcome says.
        self._frontier: dict[OriginKey, CrawlRequest] = {}
        self._outcome: dict[OriginKey, dict[str, Any]] = {}
        self._sent: OrderedDict[str, int] = OrderedDict()

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> DistributedSpider:
        spider = super().from_crawler(crawler, *args, **kwargs)
        assert isinstance(spider, DistributedSpider)
        spider.link_extractor = CountingLinkExtractor(crawler)
        spider.max_depth = crawler.settings.getint("DEPTH_LIMIT")
        spider.max_in_flight = crawler.settings.getint("CONCURRENT_REQUESTS")
        spider.per_host = max(1, crawler.settings.getint("CONCURRENT_REQUESTS_PER_DOMAIN"))
        spider.delay_s = crawler.settings.getfloat("DOWNLOAD_DELAY")
        spider.read_ahead = crawlstream_settings(crawler.settings).frontier.read_ahead
        crawler.signals.connect(spider.on_idle, signal=signals.spider_idle)
        crawler.signals.connect(spider.on_closed, signal=signals.spider_closed)
        crawler.signals.connect(spider.request_done, signal=signals.request_dropped)
        crawler.signals.connect(spider.item_settled, signal=signals.item_scraped)
        crawler.signals.connect(spider.item_settled, signal=signals.item_dropped)
        crawler.signals.connect(spider.item_failed, signal=signals.item_error)
        return spider

    async def start(self) -> AsyncIterator[Request]:
        settings = crawlstream_settings(self.crawler.settings)
        topics = catalog(settings)
        self.topic = topics.requests.name
        self.links_topic = topics.links.name
        if self.frontier_run:
            self.host_states = HostStates(settings, self.group_id)
            self.host_states.register(self.crawler)
        self.consumer = Consumer(
            consumer_config(
                settings,
                "crawler",
                self.group_id,
                **{
                    "auto.offset.reset": "earliest",
                    "enable.auto.offset.store": False,
                    "partition.assignment.strategy": "cooperative-sticky",
                    # A crawler killed without leaving hands its hosts over after this long.
                    "session.timeout.ms": 10_000,
                    "heartbeat.interval.ms": 1_000,
                },
            )
        )
        self.consumer.subscribe([self.topic], on_assign=self._assigned, on_revoke=self._revoked)
        self.logger.info("consuming %s as group %s", self.topic, self.group_id)
        self.loop = task.LoopingCall(self.poll)
        self.loop.start(POLL_INTERVAL_S).addErrback(self._loop_died)
        return
        yield  # an async generator that yields nothing: requests arrive through poll()

    def _loop_died(self, failure: Failure) -> None:
        # Only the consumer itself can get here (records are handled inside their own boundary).
        self.logger.error("consumer loop failed: %s", failure.getTraceback())
        self._close("consumer_failed")

    def _close(self, reason: str) -> None:
        engine = self.crawler.engine
        if engine is not None:
            deferred_from_coro(engine.close_spider_async(reason=reason))

    # Assignment (called inside consume(), on the reactor thread).
    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        mine = [tp.partition for tp in partitions]
        if self._closing:
            # A rebalance while close() leaves the group: the partitions go to the next owner at
            # once. No restore here: a call to a Kafka client inside a callback of close() ends
            # confluent-kafka's record of the close call on this thread, and its next callback
            # aborts the process (CallState_get: `cs != NULL` failed), losing the crawl report.
            self.logger.info(
                "assigned partitions %s of %s while closing: left to the next owner", mine, self.topic
            )
            return
        self.logger.info("assigned partitions %s of %s", mine, self.topic)
        now = time.time()
        for partition in mine:
            self._assigned_at[partition] = now
        if self.host_states is not None:
            self.host_states.restore(mine)
            pipeline = pipeline_for(self.crawler)
            if pipeline is not None:
                ends = {}
                for partition in self._links_partitions(consumer):
                    tp = TopicPartition(self.links_topic, partition)
                    ends[partition] = consumer.get_watermark_offsets(tp, timeout=10)[1]
                pipeline.links_floor(ends)

    def _links_partitions(self, consumer: Consumer) -> list[int]:
        info = consumer.list_topics(self.links_topic, timeout=10).topics.get(self.links_topic)
        return sorted(info.partitions) if info is not None and info.partitions else []

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {tp.partition for tp in partitions}
        self.logger.info("partitions %s of %s revoked", sorted(gone), self.topic)
        dropped = 0
        for host, queue in list(self.hosts.items()):
            kept = [item for item in queue.queue if item[2] not in gone]
            dropped += len(queue.queue) - len(kept)
            heapq.heapify(kept)
            queue.queue = kept
            if not kept and queue.in_flight == 0:
                del self.hosts[host]
        self.queued -= dropped
        self.held = [(when, r) for when, r in self.held if r[1][1] not in gone]
        for partition in gone:
            self.offsets.revoke(self.topic, partition)
            self._assigned_at.pop(partition, None)
        for origin in [o for o in self._frontier if o[1] in gone and o not in self._dispatched]:
            self._frontier.pop(origin, None)
        if self.host_states is not None and not self._closing:  # closing: no client call (_assigned)
            self.host_states.revoke(sorted(gone))

    # Consuming: one boundary per record.
    def poll(self) -> None:
        assert self.consumer is not None
        pipeline = pipeline_for(self.crawler)
        if pipeline is not None:
            pipeline.poll()
        if self.host_states is not None:
            self.host_states.poll()
        self.release()
        if self.parent_pid and os.getppid() != self.parent_pid:
            self.logger.warning("the runner (pid %d) is gone: closing", self.parent_pid)
            self.parent_pid = 0
            self._close("runner_gone")
            return
        now = datetime.now(UTC)
        if self.held:
            due = [r for when, r in self.held if when <= now]
            self.held = [(when, r) for when, r in self.held if when > now]
            for request, origin, raw in due:
                self.enqueue(request, origin, raw)
        messages = [] if self._paused else self.consumer.consume(BATCH, timeout=0)
        for message in messages:
            if message.error() is not None:
                self.logger.warning("consumer: %s", message.error())
                continue
            self.last_message = time.monotonic()
            origin = (str(message.topic()), int(message.partition() or 0), int(message.offset() or 0))
            self.offsets.consumed(*origin)
            self.crawler.stats.inc_value(STAT_REQUESTS_CONSUMED)
            raw = (message.key(), message.value())
            try:
                request, refused = self.accept(raw[1], now)
            except Exception as exc:  # whatever the record causes: a dead letter, and move on
                self.dead_letter(exc, raw, origin)
                continue
            if not self.ours(request):
                self.crawler.stats.inc_value(STAT_REQUESTS_OTHER_RUNS)
                self.done(origin)
                continue
            if request.scope is not None:
                self._frontier[origin] = request
            if refused is not None:
                self.outcome(origin, outcome="refused", reason=refused)
                self.done(origin)
            elif request.not_before is not None and request.not_before > now:
                self.held.append((request.not_before, (request, origin, raw)))
            else:
                self.enqueue(request, origin, raw)
        self.dispatch()
        if not self._paused and self.queued >= self.read_ahead:
            self.consumer.pause(self.consumer.assignment())
            self._paused = True
        elif self._paused and self.queued <= self.read_ahead // 2:
            self.consumer.resume(self.consumer.assignment())
            self._paused = False

    def ours(self, request: CrawlRequest) -> bool:
        """Whether this process fetches ``request``: a frontier run's crawler only its run's
        requests; any other crawler only requests of no frontier run (they carry no scope)."""
        if self.frontier_run:
            return request.run_id == self.frontier_run
        return request.scope is None

    def accept(self, value: bytes | None, now: datetime) -> tuple[CrawlRequest, str | None]:
        """The CrawlRequest of a message and why it is refused (None: it is not); raises for a
        bad record."""
        request = decode_record(CrawlRequest, value or b"", reason="invalid_request")
        if request.not_before is not None and request.not_before.tzinfo is None:
            request = request.model_copy(update={"not_before": request.not_before.replace(tzinfo=UTC)})
        if not self.ours(request):
            return request, None  # another run's: skipped, not judged
        reason = self.link_scope.refusal(request.url, link=request.scope is None)
        if reason is None and request.scope is None and 0 < self.max_depth < request.depth:
            reason = "depth"
        if reason is not None:
            self.refuse(reason)
            return request, reason
        if request.not_before is not None and request.not_before > now + timedelta(seconds=self.max_hold_s):
            raise RecordError(
                "not_before_too_far",
                f"not_before {request.not_before.isoformat()} is more than {self.max_hold_s:.0f}s ahead",
            )
        return request, None

    # Dispatching: per-host queues, round-robin over the ready hosts.
    def enqueue(self, request: CrawlRequest, origin: OriginKey, raw: Raw) -> None:
        host = request.host or host_of(request.url)
        queue = self.hosts.get(host)
        if queue is None:
            queue = self.hosts[host] = _Host()
            queue.not_before = self._owed_delay(host, origin[1])
        heapq.heappush(queue.queue, (request.depth, origin[2], origin[1], request, origin, raw))
        self.queued += 1
        if host not in self._in_ring:
            self._ring.append(host)
            self._in_ring.add(host)

    def _owed_delay(self, host: str, partition: int) -> float:
        """When a host with a delay may be fetched first after its partition was assigned here:
        its former owner may have fetched it just before."""
        if self.host_states is None or self.host_states.get(host) is None:
            return 0.0
        state = self.host_states.get(host)
        delay = max(self.delay_s, state.crawl_delay_s if state else 0.0)
        return self._assigned_at.get(partition, 0.0) + delay if delay else 0.0

    def _ready_at(self, host: str, queue: _Host) -> float:
        ready = queue.not_before
        if self.host_states is not None:
            ready = max(ready, self.host_states.ready_at(host))
        return ready

    def dispatch(self) -> None:
        engine = self.crawler.engine
        if engine is None:
            return
        now = time.time()
        idle = 0
        while self._ring and self.in_flight < self.max_in_flight and idle < len(self._ring):
            host = self._ring.popleft()
            queue = self.hosts.get(host)
            if queue is None or not queue.queue:
                self._in_ring.discard(host)
                idle = 0
                continue
            if queue.in_flight >= self.per_host or self._ready_at(host, queue) > now:
                self._ring.append(host)
                idle += 1
                continue
            idle = 0
            *_order, request, origin, raw = heapq.heappop(queue.queue)
            self.queued -= 1
            self._ring.append(host)
            try:
                engine.crawl(self._request(request, origin, raw))
            except Exception as exc:
                self.dead_letter(exc, raw, origin)
                continue
            queue.in_flight += 1
            self.in_flight += 1
            self._dispatched[origin] = host

    def _request(self, request: CrawlRequest, origin: OriginKey, raw: Raw) -> Request:
        headers: dict[str, str] = {}
        meta: dict[str, Any] = {"depth": request.depth, "kafka_origin": origin, "kafka_record": raw}
        if request.etag:
            headers["If-None-Match"] = request.etag
        if request.last_modified:
            headers["If-Modified-Since"] = request.last_modified
        if headers:
            meta["handle_httpstatus_list"] = [304]
        return Request(request.url, callback=self.parse, errback=self.failed, meta=meta, headers=headers)

    def _finished(self, origin: OriginKey) -> None:
        host = self._dispatched.pop(origin, None)
        if host is None:
            return
        self.in_flight -= 1
        queue = self.hosts.get(host)
        if queue is not None:
            queue.in_flight -= 1
            if not queue.queue and queue.in_flight == 0:
                del self.hosts[host]
        self.dispatch()

    def outcome(self, origin: OriginKey, **fields: Any) -> None:
        """Note what a frontier request's outcome will say (the first word stays)."""
        if origin in self._frontier and origin not in self._outcome:
            self._outcome[origin] = fields

    def dead_letter(self, exc: BaseException, raw: Raw, origin: OriginKey) -> None:
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
        self.outcome(origin, outcome="failed", reason=message.letter.reason)
        self.done(origin)

    # Finishing: an offset is released once its request's output (and outcome) is settled.
    def done(self, origin: OriginKey) -> None:
        pipeline = pipeline_for(self.crawler)
        request = self._frontier.pop(origin, None)
        self._settling.append((pipeline.barrier() if pipeline is not None else 0, origin, request))
        self.release()

    def release(self) -> None:
        pipeline = pipeline_for(self.crawler)
        settled = pipeline.delivered_through() if pipeline is not None else None
        while self._settling and (settled is None or self._settling[0][0] <= settled):
            _barrier, origin, request = self._settling.popleft()
            if request is not None and pipeline is not None:
                # Its page and links are delivered: now its outcome, then its offset.
                pipeline.process_item(self._outcome_record(request, origin, pipeline.links_through()))
                self.crawler.stats.inc_value(STAT_OUTCOMES)
                self._settling.append((pipeline.barrier(), origin, None))
                settled = pipeline.delivered_through()
                continue
            position = self.offsets.done(*origin)
            if self.consumer is not None and position > 0:
                try:
                    self.consumer.store_offsets(offsets=[TopicPartition(origin[0], origin[1], position)])
                except KafkaException as exc:  # the partition was revoked meanwhile
                    self.logger.debug("offset not stored: %s", exc)
                    self.offsets.revoke(origin[0], origin[1])

    def _outcome_record(
        self, request: CrawlRequest, origin: OriginKey, through: dict[int, int]
    ) -> FetchOutcome:
        fields = self._outcome.pop(origin, None) or {"outcome": "failed", "reason": "unprocessable"}
        return FetchOutcome(
            url=request.url,
            canonical_url=request.canonical_url,
            host=request.host,
            depth=request.depth,
            job_id=request.job_id,
            run_id=request.run_id,
            links_through=through,
            **fields,
        )

    def request_done(self, request: Request, **_: Any) -> None:
        origin = request.meta.get("kafka_origin")
        if origin is not None:
            origin = tuple(origin)
            self._finished(origin)
            self.outcome(origin, outcome="skipped", reason="duplicate")
            self.done(origin)

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
            self._frontier.pop(pending.origin, None)
            self._outcome.pop(pending.origin, None)
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
        origin = tuple(origin)
        self._finished(origin)
        self._note_failure(origin, failure)
        yield from self._track(failure, origin, self.fetch_failed(failure))

    def _note_failure(self, origin: OriginKey, failure: Failure) -> None:
        error = failure.value
        host = self._frontier[origin].host if origin in self._frontier else ""
        if isinstance(error, HttpError):
            status = int(error.response.status)
            kind = "failed" if status in DEAD_LETTER_STATUSES else "fetched"
            self.outcome(origin, outcome=kind, status=status)
            if self.host_states is not None and host:
                (self.host_states.failed if kind == "failed" else self.host_states.succeeded)(host)
        elif isinstance(error, Refused):
            self.outcome(origin, outcome="refused", reason=error.reason)
        elif isinstance(error, IgnoreRequest):
            self.outcome(origin, outcome="refused", reason="robots")
        else:
            self.outcome(origin, outcome="failed", reason=type(error).__name__)
            if self.host_states is not None and host:
                self.host_states.failed(host)

    def on_idle(self) -> None:
        self.release()
        if self.idle_exit_s <= 0 or self.held or time.monotonic() - self.last_message < self.idle_exit_s:
            raise DontCloseSpider("waiting for requests")

    def on_closed(self) -> None:
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        self.release()  # the pipeline flushed at close: store what is now settled
        if self.consumer is not None:
            self._closing = True
            self.consumer.close()  # commits stored offsets and leaves the group
        if self.host_states is not None:
            self.host_states.close()

    # Handling a response.
    def parse(
        self, response: Response, **kwargs: Any
    ) -> Iterator[PageRecord | DeadLetterMessage | LinkRecord]:
        origin = response.meta.get("kafka_origin")
        if origin is None:
            yield from self._handle(response)
            return
        origin = tuple(origin)
        self._finished(origin)
        yield from self._track(response, origin, self._guarded(response, origin))

    def _guarded(self, response: Response, origin: OriginKey) -> Iterator[Any]:
        try:
            yield from self._handle(response, self._frontier.get(origin), origin)
        except CloseSpider:
            raise  # max_pages: not the record's fault
        except Exception as exc:  # the response of this record broke something: its dead letter
            key, value = response.meta.get("kafka_record") or (None, None)
            settings = crawlstream_settings(self.crawler.settings)
            self.crawler.stats.inc_value(STAT_REQUESTS_DEAD)
            self.logger.warning("handling %s failed: %r", response.url[:200], exc)
            self._outcome.pop(origin, None)
            self.outcome(origin, outcome="failed", reason="unprocessable")
            yield dead_letter_for_exception(
                exc,
                stage="crawl",
                key=key,
                value=value,
                max_bytes=catalog(settings).dead_letter.max_message_bytes,
                origin=Origin(*origin),
            )

    def _handle(
        self, response: Response, request: CrawlRequest | None = None, origin: OriginKey | None = None
    ) -> Iterator[PageRecord | DeadLetterMessage | LinkRecord]:
        if self.host_states is not None and request is not None:
            self.host_states.succeeded(request.host)
        if response.status == 304 and request is not None and origin is not None:
            # Not modified: the page stays as it was (the stream stage makes it a touch).
            self.crawler.stats.inc_value(STAT_METADATA_RECORDS)
            yield metadata_record(response, job_id=self.job_id or request.job_id, run_id=self.run_id)
            self.outcome(
                origin,
                outcome="not_modified",
                status=304,
                etag=_header(response, b"ETag") or request.etag,
                last_modified=_header(response, b"Last-Modified") or request.last_modified,
            )
            return
        if origin is not None:
            self.outcome(
                origin,
                outcome="fetched",
                status=response.status,
                etag=_header(response, b"ETag"),
                last_modified=_header(response, b"Last-Modified"),
            )
        if not (yield from self.record(response)):
            return
        assert isinstance(response, TextResponse)
        depth = int(response.meta.get("depth", 0)) + 1
        links = self.link_extractor.extract_links(response)
        if request is None and 0 < self.max_depth < depth:
            self.refuse("depth", len(links))
            return
        cap = self.crawler.settings.getint("CRAWLSTREAM_MAX_LINKS_PER_PAGE", 1000)
        refused: dict[str, int] = {}
        in_scope = []
        for link in links:
            reason = self.link_scope.refusal(link.url, link=request is None)
            if reason is None and request is not None and request.scope is not None:
                reason = link_refusal(link.url, response.url, depth, request.scope)
            if reason is not None:
                self.refuse(reason)
                refused[reason] = refused.get(reason, 0) + 1
            else:
                in_scope.append(link)
        if len(in_scope) > cap:
            refused["links_per_page"] = len(in_scope) - cap
        sent = 0
        for link in self.capped(in_scope, cap):
            canonical = canonical_url(link.url)
            if request is not None:
                known = self._sent.get(canonical)
                if known is not None and known <= depth:
                    self.crawler.stats.inc_value(STAT_LINKS_KNOWN)
                    continue
                self._sent[canonical] = depth
                self._sent.move_to_end(canonical)
                if len(self._sent) > SENT_LINKS_CACHE:
                    self._sent.popitem(last=False)
            self.crawler.stats.inc_value(STAT_LINKS)
            sent += 1
            yield LinkRecord(
                url=link.url,
                canonical_url=canonical,
                host=host_of(link.url),
                source_url=response.url,
                depth=depth,
                job_id=self.job_id or (request.job_id if request else ""),
                run_id=request.run_id if request is not None and request.scope else self.run_id,
                scope=request.scope if request is not None else None,
            )
        if origin is not None and origin in self._outcome:
            self._outcome[origin].update(links=sent, refused=refused)


def _header(response: Response, name: bytes) -> str | None:
    value = response.headers.get(name)
    if not value:
        return None
    return value.decode("latin-1")[:1024]
