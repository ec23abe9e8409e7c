"""GcTuning: a Scrapy extension that makes Python's cyclic garbage collector cheaper during a crawl.

Part of every crawl of the crawl stage (enabled in :mod:`crawlers.settings` ``EXTENSIONS``); it
touches no topic. A crawl allocates many short-lived objects per page (requests, responses,
Deferreds, the page record and its JSON) while holding a large live heap (the scheduler's
queue, the dupefilter's fingerprints). With CPython's default generation-0 threshold (700) the
collector runs every few pages and its older-generation passes walk that heap again and again:
measured on the 1000-page bench site, 10-15% of the crawl's CPU.

On ``spider_opened`` it collects once, freezes what exists then (modules, settings, the
spider: never garbage) so later passes skip it, and raises the generation-0 threshold
(:mod:`crawlstream.gctuning`, shared with the stream worker). On
``spider_closed`` it restores the previous thresholds and unfreezes, so a process running
several crawls (tests) is left as it was. Nothing is leaked: cycles are still collected, in
larger, rarer batches.

Scrapy setting ``CRAWLSTREAM_GC_GEN0_THRESHOLD`` (default 10000; 0 leaves the collector alone).
"""

from __future__ import annotations

from scrapy import signals
from scrapy.crawler import Crawler
from scrapy.exceptions import NotConfigured

from crawlstream import gctuning

DEFAULT_GEN0_THRESHOLD = 10_000


class GcTuning:
    def __init__(self, gen0_threshold: int) -> None:
        if gen0_threshold < 0:
            raise ValueError(f"CRAWLSTREAM_GC_GEN0_THRESHOLD must be >= 0, got {gen0_threshold}")
        self.gen0_threshold = gen0_threshold
        self._saved: tuple[int, int, int] | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> GcTuning:
        threshold = crawler.settings.getint("CRAWLSTREAM_GC_GEN0_THRESHOLD", DEFAULT_GEN0_THRESHOLD)
        if threshold == 0:
            raise NotConfigured("CRAWLSTREAM_GC_GEN0_THRESHOLD is 0")
        ext = cls(threshold)
        crawler.signals.connect(ext.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(ext.spider_closed, signal=signals.spider_closed)
        return ext

    def spider_opened(self) -> None:
        if self._saved is not None:
            return
        self._saved = gctuning.tune(self.gen0_threshold)

    def spider_closed(self) -> None:
        if self._saved is None:
            return
        gctuning.restore(self._saved)
        self._saved = None
