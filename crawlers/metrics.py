"""Prometheus metrics of a crawler process, and the Scrapy extension that feeds them.

No URL labels (unbounded). Served by :func:`crawlstream.metrics.serve_metrics` on Scrapy setting
``CRAWLSTREAM_METRICS_PORT`` (the runner sets it; default ``metrics.crawler_port``; -1 or None
disables, 0 picks a free port). The pipeline and the guard update their own metrics; this
extension counts responses from signals, mirrors Scrapy's ``robotstxt/forbidden`` stat (the robots
middleware has no signal of its own) and its depth filter's stat (``crawler_refused_total`` with
reason ``depth``), and logs a progress line every few seconds.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from scrapy import Request, Spider, signals
from scrapy.crawler import Crawler
from scrapy.http import Response
from twisted.internet import task

from crawlers.settings import crawlstream_settings
from crawlstream.metrics import serve_metrics

log = logging.getLogger(__name__)

PAGES_FETCHED = Counter("crawler_pages_fetched_total", "Responses received", ["status_class"])
RESPONSE_BYTES = Counter("crawler_response_bytes_total", "Bytes of response bodies received")
FETCH_LATENCY = Histogram(
    "crawler_fetch_latency_seconds",
    "Download latency per response",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RECORDS_PRODUCED = Counter("crawler_records_produced_total", "Page records delivered to Kafka")
DELIVERY_FAILURES = Counter("crawler_delivery_failures_total", "Page records Kafka did not accept")
PRODUCE_LATENCY = Histogram(
    "crawler_produce_latency_seconds",
    "Time from produce() to the delivery callback",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
ROBOTS_DENIED = Counter("crawler_robots_denied_total", "Requests refused by robots.txt")
PRIVATE_REFUSED = Counter(
    "crawler_private_address_refused_total", "Requests refused because the host resolves to a private address"
)
REFUSED = Counter(
    "crawler_refused_total",
    "Requests, links and responses refused by the crawl's guard and bounds, by reason "
    "(address kinds such as loopback or ipv4_embedded_private, scheme, url_too_long, offsite, "
    "depth, links_per_page, host_budget, response_too_large, decompressed_too_large, ...)",
    ["reason"],
)
PRODUCER_QUEUE = Gauge("crawler_producer_queue_messages", "Messages waiting in the producer's local queue")
DEAD_LETTERS = Counter(
    "crawler_dead_letters_total", "Failed fetches and deliveries sent to the dead-letter topic", ["reason"]
)
RETRIES = Counter("crawler_retries_total", "Requests Scrapy retried (errors, 429/5xx)")
RETRY_AFTER_WAITS = Counter(
    "crawler_retry_after_waits_total", "429/503 answers whose Retry-After was honoured"
)
CRAWL_DELAY_HOSTS = Counter(
    "crawler_crawl_delay_hosts_total", "Hosts whose robots.txt Crawl-delay was applied"
)
REQUEST_QUEUE = Gauge("crawler_request_queue_requests", "Requests waiting in the Scrapy scheduler")


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


class CrawlerMetricsExtension:
    def __init__(self, crawler: Crawler, metrics_port: int | None, progress_interval_s: float) -> None:
        self.crawler = crawler
        self.metrics_port = metrics_port
        self.progress_interval_s = progress_interval_s
        self._robots_seen = 0
        self._retries_seen = 0
        self._scrapy_refusals_seen: dict[str, int] = {}
        self._started = time.monotonic()
        self._loop: task.LoopingCall | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> CrawlerMetricsExtension:
        raw = crawler.settings.get("CRAWLSTREAM_METRICS_PORT", "default")
        if raw == "default":
            raw = crawlstream_settings(crawler.settings).metrics.crawler_port
        port = None if raw in (None, "", -1, "-1") else int(raw)
        ext = cls(crawler, port, crawler.settings.getfloat("CRAWLSTREAM_PROGRESS_INTERVAL_S", 5.0))
        crawler.signals.connect(ext.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(ext.spider_closed, signal=signals.spider_closed)
        crawler.signals.connect(ext.response_received, signal=signals.response_received)
        return ext

    def spider_opened(self, spider: Spider) -> None:
        if self.metrics_port is not None:
            host = crawlstream_settings(self.crawler.settings).metrics.host
            self.crawler.stats.set_value("crawlstream/metrics_port", serve_metrics(host, self.metrics_port))
        self._started = time.monotonic()
        self._loop = task.LoopingCall(self.tick)
        self._loop.start(self.progress_interval_s, now=False)

    def spider_closed(self, spider: Spider, reason: str) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.sync_stats()

    def response_received(self, response: Response, request: Request, spider: Spider) -> None:
        PAGES_FETCHED.labels(status_class(response.status)).inc()
        RESPONSE_BYTES.inc(len(response.body))
        latency = request.meta.get("download_latency")
        if latency is not None:
            FETCH_LATENCY.observe(float(latency))

    def sync_stats(self) -> None:
        stats = self.crawler.stats
        assert stats is not None
        forbidden = int(stats.get_value("robotstxt/forbidden", 0))
        if forbidden > self._robots_seen:
            ROBOTS_DENIED.inc(forbidden - self._robots_seen)
            self._robots_seen = forbidden
        # What Scrapy filters itself (requests deeper than DEPTH_LIMIT) counts as our refusals.
        from crawlers.refusals import SCRAPY_STATS  # here: crawlers.refusals imports this module

        for stat, reason in SCRAPY_STATS.items():
            seen = int(stats.get_value(stat, 0))
            if seen > self._scrapy_refusals_seen.get(stat, 0):
                REFUSED.labels(reason).inc(seen - self._scrapy_refusals_seen.get(stat, 0))
                self._scrapy_refusals_seen[stat] = seen
        retries = int(stats.get_value("retry/count", 0))
        if retries > self._retries_seen:
            RETRIES.inc(retries - self._retries_seen)
            self._retries_seen = retries
        engine = self.crawler.engine
        if engine is not None and engine._slot is not None:
            REQUEST_QUEUE.set(len(engine._slot.scheduler))  # type: ignore[arg-type]

    def tick(self) -> None:
        self.sync_stats()
        stats: Any = self.crawler.stats
        records = int(stats.get_value("crawlstream/page_records", 0))
        elapsed = max(time.monotonic() - self._started, 1e-9)
        log.info(
            "progress: %d page records (%.1f/s), %d responses, %d fetch errors, %d delivered, %d failed",
            records,
            records / elapsed,
            stats.get_value("response_received_count", 0),
            fetch_errors(stats.get_stats()),
            stats.get_value("crawlstream/delivered", 0),
            stats.get_value("crawlstream/delivery_failed", 0),
        )


REFUSAL_EXCEPTIONS = ("scrapy.exceptions.IgnoreRequest", "crawlers.refusals.Refused")


def fetch_errors(stats: dict[str, Any]) -> int:
    """Download exceptions, minus requests refused on purpose (robots.txt, the guard, the bounds)."""
    total = int(stats.get("downloader/exception_count", 0))
    ignored = sum(int(stats.get(f"downloader/exception_type_count/{name}", 0)) for name in REFUSAL_EXCEPTIONS)
    return total - ignored
