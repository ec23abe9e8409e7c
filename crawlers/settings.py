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

from crawlstream.settings import ENV_PREFIX, CrawlSettings, Settings, load_settings

BOT_NAME = "crawlstream"
SPIDER_MODULES = ["crawlers.spiders"]
NEWSPIDER_MODULE = "crawlers.spiders"

# The guard (crawlers.middlewares) comes first, so robots.txt fetches and every redirect hop pass
# it, and replaces Scrapy's offsite middleware (refusals are counted by reason and reach the
# request's errback, which the distributed spider needs to commit its offsets). The classifier sits
# at the download handler's side, so it sees a refused lookup or an oversized body before the retry
# middleware would retry it. The body cap runs right after decompression (590) and before
# anything decodes the body (meta refresh, 580). Scrapy's robots.txt middleware and AutoThrottle
# are replaced by versions that honour Crawl-delay (crawlers.politeness); Retry-After is read
# before the retry middleware (550) re-schedules.
DOWNLOADER_MIDDLEWARES = {
    "scrapy.downloadermiddlewares.offsite.OffsiteMiddleware": None,
    "crawlers.middlewares.AddressGuardMiddleware": 50,
    "scrapy.downloadermiddlewares.robotstxt.RobotsTxtMiddleware": None,
    "crawlers.politeness.CrawlDelayRobotsTxtMiddleware": 100,
    "crawlers.politeness.RetryAfterMiddleware": 560,
    "crawlers.limits.BodyCapMiddleware": 585,
    "scrapy.downloadermiddlewares.httpcompression.HttpCompressionMiddleware": None,
    "crawlers.limits.CappedHttpCompressionMiddleware": 590,
    "crawlers.middlewares.RefusalClassifierMiddleware": 950,
}
# Links out of scope, to a spent host or past the page's cap are dropped (and counted) before
# they reach the scheduler; it replaces Scrapy's URL length middleware (same place).
SPIDER_MIDDLEWARES = {
    "scrapy.spidermiddlewares.urllength.UrlLengthMiddleware": None,
    "crawlers.limits.ScopeSpiderMiddleware": 800,
}
# Connect-time address check: the guard's resolver is the reactor's (crawlers.resolver).
TWISTED_DNS_RESOLVER = "crawlers.resolver.GuardedHostnameResolver"
DNS_TIMEOUT = 20
# http and https only: no download handler for file:, data:, ftp: or s3: URLs exists at all.
DOWNLOAD_HANDLERS = {"file": None, "data": None, "ftp": None, "s3": None}
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
# The blocking resolver behind the guard (crawlers.resolver); tests name a fake one.
CRAWLSTREAM_RESOLVER = "crawlstream.addresses.resolve"

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
    """The typed settings for this crawler: the runner's object, else read from the environment
    with the Scrapy settings named like its variables on top (:func:`scrapy_overrides`)."""
    given = scrapy_settings.get("CRAWLSTREAM_SETTINGS")
    return given if isinstance(given, Settings) else load_settings(**scrapy_overrides(scrapy_settings))


def scrapy_overrides(scrapy_settings: Any) -> dict[str, Any]:
    """Scrapy settings named like crawlstream's variables, as nested overrides.

    ``CRAWLSTREAM_KAFKA__BOOTSTRAP_SERVERS = "h:9092"`` in a project's settings.py (or ``-s`` on the
    command line, or a spider's ``custom_settings``) gives ``{"kafka": {"bootstrap_servers": "h:9092"}}``,
    which wins over the environment, as a Scrapy project's own settings do. Names without ``__``
    (``CRAWLSTREAM_TOPIC``, ``CRAWLSTREAM_GC_GEN0_THRESHOLD``) are Scrapy settings of their own.
    """
    overrides: dict[str, Any] = {}
    for name in scrapy_settings.attributes if hasattr(scrapy_settings, "attributes") else scrapy_settings:
        if not name.startswith(ENV_PREFIX) or "__" not in name or name == "CRAWLSTREAM_SETTINGS":
            continue
        *sections, field = name[len(ENV_PREFIX) :].lower().split("__")
        node = overrides
        for section in sections:
            node = node.setdefault(section, {})
        node[field] = scrapy_settings.get(name)
    return overrides


def crawl_overrides(crawl: CrawlSettings) -> dict[str, Any]:
    """Scrapy settings equivalent to crawlstream's ``crawl`` section."""
    return {
        "USER_AGENT": crawl.user_agent,
        "ROBOTSTXT_OBEY": crawl.obey_robots,
        "DEPTH_LIMIT": crawl.max_depth,  # 0 means no limit in both
        "CONCURRENT_REQUESTS": crawl.concurrency,
        "CONCURRENT_REQUESTS_PER_DOMAIN": crawl.concurrency_per_domain,
        "DOWNLOAD_DELAY": crawl.download_delay_s,
        # The whole download, body included (Scrapy's HTTP/1.1 handler): slow drips end here.
        "DOWNLOAD_TIMEOUT": crawl.download_timeout_s,
        # Applied while downloading and while decompressing (crawlers.limits).
        "DOWNLOAD_MAXSIZE": crawl.max_response_bytes,
        "DOWNLOAD_WARNSIZE": crawl.max_response_bytes // 2,
        "CRAWLSTREAM_MAX_PAGES_PER_HOST": crawl.max_pages_per_host,
        "CRAWLSTREAM_MAX_LINKS_PER_PAGE": crawl.max_links_per_page,
        "CRAWLSTREAM_MAX_URL_LENGTH": crawl.max_url_length,
        "CRAWLSTREAM_ALLOW_PRIVATE_ADDRESSES": crawl.allow_private_addresses,
    }
