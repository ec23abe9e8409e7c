"""Scrapy settings module of the crawl stage (``scrapy.cfg`` points here).

Static Scrapy defaults live as upper-case names below. The crawlstream ``crawl`` section
(``CRAWLSTREAM_CRAWL__*``) is mapped onto Scrapy settings by :func:`crawl_overrides`, which the
spider applies at "spider" priority so ``scrapy crawl -s`` and the runner's overrides still win.
Components find the typed :class:`~crawlstream.settings.Settings` through
:func:`crawlstream_settings`: the runner passes its object as ``CRAWLSTREAM_SETTINGS``; a plain
``scrapy crawl`` reads the environment once.
"""

from __future__ import annotations

from typing import Any

from crawlstream.settings import CrawlSettings, Settings, load_settings

BOT_NAME = "crawlstream"
SPIDER_MODULES = ["crawlers.spiders"]
NEWSPIDER_MODULE = "crawlers.spiders"

# The guard resolves every request's host (robots.txt and each redirect hop included)
# before any network I/O: it sits ahead of robots.txt (100) and the redirect middleware (600).
# Scrapy's robots.txt middleware and AutoThrottle are replaced by versions that honour
# Crawl-delay (crawlers.politeness); Retry-After is read before the retry middleware (550) re-schedules.
DOWNLOADER_MIDDLEWARES = {
    "crawlers.middlewares.PrivateAddressGuardMiddleware": 50,
    "scrapy.downloadermiddlewares.robotstxt.RobotsTxtMiddleware": None,
    "crawlers.politeness.CrawlDelayRobotsTxtMiddleware": 100,
    "crawlers.politeness.RetryAfterMiddleware": 560,
}
ITEM_PIPELINES = {"crawlers.pipelines.KafkaPagePipeline": 300}
EXTENSIONS = {
    "crawlers.metrics.CrawlerMetricsExtension": 500,
    "scrapy.extensions.throttle.AutoThrottle": None,
    "crawlers.politeness.PoliteAutoThrottle": 0,
    "crawlers.gctune.GcTuning": 0,
}
# Generation-0 threshold of Python's GC during a crawl (crawlers.gctune; 0: Python's default).
CRAWLSTREAM_GC_GEN0_THRESHOLD = 10_000
CRAWLSTREAM_MAX_CRAWL_DELAY_S = 60.0
CRAWLSTREAM_MAX_RETRY_AFTER_S = 120.0
# Non-HTML responses as kind="metadata" page records; jobs turn it on (crawlers.jobrun).
CRAWLSTREAM_RECORD_NON_HTML = False

ROBOTSTXT_OBEY = True
ROBOTSTXT_PARSER = "scrapy.robotstxt.ProtegoRobotParser"
# Breadth-first, so a max_pages cap keeps the pages nearest the start URLs.
DEPTH_PRIORITY = 1
SCHEDULER_DISK_QUEUE = "scrapy.squeues.PickleFifoDiskQueue"
SCHEDULER_MEMORY_QUEUE = "scrapy.squeues.FifoMemoryQueue"
TWISTED_REACTOR = "twisted.internet.asyncioreactor.AsyncioSelectorReactor"
# No remote shell into a crawler process.
TELNETCONSOLE_ENABLED = False
COOKIES_ENABLED = False
LOGSTATS_INTERVAL = 30.0
CRAWLSTREAM_PROGRESS_INTERVAL_S = 5.0


def crawlstream_settings(scrapy_settings: Any) -> Settings:
    """The typed settings for this crawler: the runner's object, else read from the environment."""
    given = scrapy_settings.get("CRAWLSTREAM_SETTINGS")
    return given if isinstance(given, Settings) else load_settings()


def crawl_overrides(crawl: CrawlSettings) -> dict[str, Any]:
    """Scrapy settings equivalent to crawlstream's ``crawl`` section."""
    return {
        "USER_AGENT": crawl.user_agent,
        "ROBOTSTXT_OBEY": crawl.obey_robots,
        "DEPTH_LIMIT": crawl.max_depth,  # 0 means no limit in both
        "CONCURRENT_REQUESTS": crawl.concurrency,
        "CONCURRENT_REQUESTS_PER_DOMAIN": crawl.concurrency_per_domain,
        "DOWNLOAD_DELAY": crawl.download_delay_s,
        "DOWNLOAD_TIMEOUT": crawl.download_timeout_s,
        # Bodies above the cap are truncated in the record anyway; refuse absurd downloads.
        "DOWNLOAD_MAXSIZE": max(crawl.max_body_bytes * 32, 64 * 1024 * 1024),
    }
