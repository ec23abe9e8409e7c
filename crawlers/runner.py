"""Run one crawl in this process and report what it did (the crawl stage's entry point).

``run_crawl`` runs :class:`~crawlers.spiders.site.SiteSpider` under Scrapy's ``CrawlerProcess``.
Twisted's reactor cannot restart, so a process runs one crawl: call it from a fresh process
(``python -m crawlers crawl``). Records go to ``<prefix>.pages.raw`` via the configured pipeline;
the :class:`CrawlReport` gives the counts the pipeline run reconciles against later stages.
"""

from __future__ import annotations

import resource
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from scrapy import Spider, signals
from scrapy.crawler import CrawlerProcess
from scrapy.settings import Settings as ScrapySettings
from twisted.internet import task

from crawlers import registry
from crawlers.metrics import fetch_errors
from crawlers.pipelines import STAT_DEAD_LETTERS, STAT_DELIVERED, STAT_FAILED
from crawlers.refusals import address_refusals, refusal_counts
from crawlers.spiders.common import STAT_METADATA_RECORDS, STAT_NON_HTML, STAT_PAGE_RECORDS
from crawlstream.logs import bind_log_context
from crawlstream.records import PageRecord
from crawlstream.settings import Settings


@dataclass
class CrawlSpec:
    start_urls: list[str]
    allowed_domains: list[str] = field(default_factory=list)  # empty: the start URLs' hosts
    max_pages: int | None = None  # page records to yield; None: settings.crawl.max_pages (0 = no cap)
    max_depth: int | None = None  # None: settings.crawl.max_depth (0 = no limit)
    job_id: str = ""
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # host[:port] or URL entries: these may be private, on that port only (crawlstream.addresses).
    allow_private_hosts: list[str] = field(default_factory=list)
    allow_private_addresses: bool = False  # no address check at all (a crawl of a private network)
    metrics_port: int | None = None  # None or -1: no /metrics; 0: a free port
    scrapy_settings: dict[str, Any] = field(default_factory=dict)  # extra overrides, highest priority
    allow: list[str] = field(default_factory=list)  # URL regexes to follow (empty: all)
    source: str = "site"  # the name of a spider of crawlers/spiders/ (crawlers.registry)
    spider_kwargs: dict[str, Any] = field(default_factory=dict)  # source-specific arguments
    deny: list[str] = field(default_factory=list)  # URL regexes never followed


@dataclass
class CrawlReport:
    pages_fetched: int  # HTML page records yielded
    responses_total: int  # every response, robots.txt and non-2xx included
    non_html: int
    records_delivered: int
    delivery_failures: int
    fetch_errors: int
    robots_denied: int
    private_refused: int  # refusals for the target's address (loopback, private, ...)
    distinct_canonical_urls: int
    canonical_urls: list[str]
    duration_s: float
    finish_reason: str
    job_id: str = ""
    run_id: str = ""
    # Non-HTML responses recorded as kind="metadata" records (also in records_delivered and
    # canonical_urls; pages_fetched counts HTML records only).
    metadata_records: int = 0
    dead_letters: int = 0  # fetch failures and failed deliveries sent to the dead-letter topic
    # CPU seconds of this process (every thread, librdkafka's included) over duration_s.
    cpu_s: float = 0.0
    # Everything refused (not fetched, followed or recorded), by reason (crawlers.refusals).
    refused: dict[str, int] = field(default_factory=dict)
    # Peak resident set size of this process (ru_maxrss), whatever the sites sent.
    peak_rss_bytes: int = 0

    def to_json_dict(self) -> dict[str, Any]:
        return asdict(self)


class _CanonicalUrlCollector:
    """Holds the canonical URLs of scraped records (signals keep only weak references)."""

    def __init__(self) -> None:
        self.urls: set[str] = set()

    def item_scraped(self, item: Any, **_: Any) -> None:
        # Page records only: dead letters and link records are items too.
        if isinstance(item, PageRecord):
            self.urls.add(item.canonical_url)
        elif isinstance(item, dict) and "canonical_url" in item and "status" in item:
            self.urls.add(str(item["canonical_url"]))


def spider_class(source: str) -> type[Spider]:
    """The spider named ``source``, found by Scrapy's SpiderLoader (:mod:`crawlers.registry`)."""
    return registry.spider_class(source)


class _ProgressReporter:
    def __init__(self, crawler: Any, callback: ProgressCallback, interval_s: float) -> None:
        self.crawler = crawler  # its stats exist only once the crawl starts
        self.callback = callback
        self.loop: task.LoopingCall | None = None  # created on open: it would install a reactor
        self.interval_s = interval_s

    def tick(self) -> None:
        self.callback(self.crawler.stats.get_stats())

    def spider_opened(self, **_: Any) -> None:
        self.loop = task.LoopingCall(self.tick)
        self.loop.start(self.interval_s, now=True)

    def spider_closed(self, **_: Any) -> None:
        if self.loop is not None and self.loop.running:
            self.loop.stop()


ProgressCallback = Callable[[dict[str, Any]], None]


def scrapy_settings_for(settings: Settings, spec: CrawlSpec) -> ScrapySettings:
    scrapy_settings = ScrapySettings()
    scrapy_settings.setmodule("crawlers.settings", priority="project")
    overrides: dict[str, Any] = {
        "CRAWLSTREAM_SETTINGS": settings,
        "CRAWLSTREAM_METRICS_PORT": spec.metrics_port,
        "LOG_LEVEL": settings.log_level,
    }
    if spec.max_depth is not None:
        overrides["DEPTH_LIMIT"] = spec.max_depth
    overrides.update(spec.scrapy_settings)
    scrapy_settings.setdict(overrides, priority="cmdline")
    return scrapy_settings


def run_crawl(
    settings: Settings,
    spec: CrawlSpec,
    on_progress: ProgressCallback | None = None,
    progress_interval_s: float = 0.5,
) -> CrawlReport:
    """Crawl ``spec`` to completion in this process (once per process) and return its report.

    ``on_progress`` is called on the reactor thread with Scrapy's stats every ``progress_interval_s``.
    """
    bind_log_context(job_id=spec.job_id or None, run_id=spec.run_id or None)
    process = CrawlerProcess(scrapy_settings_for(settings, spec))
    crawler = process.create_crawler(spider_class(spec.source))
    collector = _CanonicalUrlCollector()
    crawler.signals.connect(collector.item_scraped, signal=signals.item_scraped)
    progress = None  # held here: signals keep only weak references
    if on_progress is not None:
        progress = _ProgressReporter(crawler, on_progress, progress_interval_s)
        crawler.signals.connect(progress.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(progress.spider_closed, signal=signals.spider_closed)
    kwargs: dict[str, Any] = {
        "start_urls": spec.start_urls,
        "job_id": spec.job_id,
        "run_id": spec.run_id,
        "allow_private_hosts": spec.allow_private_hosts,
        "allow_private_addresses": spec.allow_private_addresses,
        "allow": spec.allow,
        "deny": spec.deny,
        **spec.spider_kwargs,
    }
    if spec.allowed_domains:
        kwargs["allowed_domains"] = spec.allowed_domains
    if spec.max_pages is not None:
        kwargs["max_pages"] = spec.max_pages
    started, cpu_started = time.monotonic(), time.process_time()
    process.crawl(crawler, **kwargs)
    process.start()
    stats: dict[str, Any] = crawler.stats.get_stats() if crawler.stats is not None else {}
    if progress is not None:
        progress.callback(stats)
    refused = refusal_counts(stats)
    return CrawlReport(
        pages_fetched=int(stats.get(STAT_PAGE_RECORDS, 0)),
        responses_total=int(stats.get("response_received_count", 0)),
        non_html=int(stats.get(STAT_NON_HTML, 0)),
        records_delivered=int(stats.get(STAT_DELIVERED, 0)),
        delivery_failures=int(stats.get(STAT_FAILED, 0)),
        fetch_errors=fetch_errors(stats),
        robots_denied=int(stats.get("robotstxt/forbidden", 0)),
        private_refused=address_refusals(refused),
        distinct_canonical_urls=len(collector.urls),
        canonical_urls=sorted(collector.urls),
        duration_s=round(time.monotonic() - started, 3),
        finish_reason=str(stats.get("finish_reason", "unknown")),
        job_id=spec.job_id,
        run_id=spec.run_id,
        metadata_records=int(stats.get(STAT_METADATA_RECORDS, 0)),
        dead_letters=int(stats.get(STAT_DEAD_LETTERS, 0)),
        cpu_s=round(time.process_time() - cpu_started, 3),
        refused=refused,
        peak_rss_bytes=peak_rss_bytes(),
    )


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
