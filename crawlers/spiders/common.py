"""What every spider of the crawl stage shares: recording responses and dead-lettering failures.

:class:`RecordingMixin` turns a response into a PageRecord (HTML) or a metadata record (non-HTML,
when ``CRAWLSTREAM_RECORD_NON_HTML``), enforces ``max_pages`` (HTML records yielded, exactly) and
the per-host budget ``CRAWLSTREAM_MAX_PAGES_PER_HOST`` (``crawl.max_pages_per_host``; pages over it
are refused and counted, links to a spent host are dropped by :mod:`crawlers.limits`), and is the
errback that turns fetches failed after retries into dead letters (built by
:mod:`crawlstream.deadletters`, sized for the dead-letter topic). Requests refused on purpose
(:class:`crawlers.refusals.Refused`, robots.txt) are counted, not dead-lettered. Records go to
``<prefix>.pages.raw`` and dead letters to ``<prefix>.deadletter`` through
:class:`crawlers.pipelines.KafkaPagePipeline`. :func:`prepare_crawler` maps the ``crawl.*``
settings and the common spider arguments onto the crawler's Scrapy settings.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from typing import Any, cast

from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.exceptions import CloseSpider, IgnoreRequest
from scrapy.http import Response, TextResponse
from scrapy.link import Link
from scrapy.linkextractors import LinkExtractor
from scrapy.spidermiddlewares.httperror import HttpError
from twisted.python.failure import Failure

from crawlers.pages import fetch_dead_letter, is_html, metadata_record, page_record
from crawlers.refusals import refuse
from crawlers.scope import CrawlScope, compile_patterns
from crawlers.settings import crawl_overrides, crawlstream_settings
from crawlstream.addresses import ALLOWED_SCHEMES
from crawlstream.deadletters import DeadLetterMessage
from crawlstream.records import PageRecord
from crawlstream.settings import DEFAULT_MAX_BODY_BYTES
from crawlstream.topics import catalog
from crawlstream.urls import host_of

STAT_PAGE_RECORDS = "crawlstream/page_records"
STAT_NON_HTML = "crawlstream/non_html"
STAT_METADATA_RECORDS = "crawlstream/metadata_records"
STAT_FETCH_DEAD_LETTERS = "crawlstream/fetch_dead_letters"
# HTTP statuses that are answers, not failures: a 404 is a fact about the site, not a lost fetch.
DEAD_LETTER_STATUSES = frozenset({408, 425, 429, *range(500, 600)})


def _split_arg(value: str | list[str] | None) -> list[str]:
    """Spider arguments arrive as strings from ``-a``; accept comma-separated lists too."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    return [item.strip() for item in items if item.strip()]


def prepare_crawler(crawler: Crawler, kwargs: dict[str, Any]) -> None:
    """Map ``crawl.*`` at "spider" priority (below -s/cmdline) and pop the common arguments."""
    settings = crawlstream_settings(crawler.settings)
    crawler.settings.setdict(crawl_overrides(settings.crawl), priority="spider")
    if kwargs.get("max_depth") not in (None, ""):
        crawler.settings.set("DEPTH_LIMIT", int(kwargs.pop("max_depth")), priority="spider")
    hosts = _split_arg(kwargs.pop("allow_private_hosts", None))
    if hosts:
        known = crawler.settings.getlist("CRAWLSTREAM_ALLOW_PRIVATE_HOSTS")
        crawler.settings.set("CRAWLSTREAM_ALLOW_PRIVATE_HOSTS", known + hosts, priority="spider")
    if str(kwargs.pop("allow_private_addresses", "")).lower() in ("1", "true", "yes"):
        crawler.settings.set("CRAWLSTREAM_ALLOW_PRIVATE_ADDRESSES", True, priority="spider")
    kwargs.setdefault("max_pages", settings.crawl.max_pages)
    kwargs.setdefault(
        "max_body_bytes",
        crawler.settings.getint("CRAWLSTREAM_MAX_BODY_BYTES") or settings.crawl.max_body_bytes,
    )


class CountingLinkExtractor(LinkExtractor):
    """Scrapy's link extractor, counting the links it drops for their scheme (``javascript:``,
    ``data:``, ``mailto:``...; ``file:`` and ``ftp:`` links it keeps are refused by the scope)."""

    def __init__(self, crawler: Crawler, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.crawler = crawler  # its stats exist once the crawl starts

    def _link_allowed(self, link: Link) -> bool:
        scheme = link.url.split(":", 1)[0].lower() if ":" in link.url else ""
        if scheme not in ALLOWED_SCHEMES and scheme not in ("file", "ftp"):
            refuse(self.crawler.stats, "scheme")
            return False
        allowed: bool = super()._link_allowed(link)
        return allowed


class RecordingMixin:
    crawler: Crawler
    logger: Any
    # Flat sources (sitemaps, feeds, APIs, a requests topic) take no max_depth argument.
    accepts_max_depth = False

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> Any:
        """Scrapy's factory: job settings at "spider" priority, then non-HTML recording."""
        if not cls.accepts_max_depth:
            kwargs.pop("max_depth", None)
        prepare_crawler(crawler, kwargs)
        spider = cast(Any, super()).from_crawler(crawler, *args, **kwargs)
        spider.record_non_html = crawler.settings.getbool("CRAWLSTREAM_RECORD_NON_HTML")
        spider.max_pages_per_host = crawler.settings.getint("CRAWLSTREAM_MAX_PAGES_PER_HOST")
        spider.dead_letter_limit = catalog(
            crawlstream_settings(crawler.settings)
        ).dead_letter.max_message_bytes
        return spider

    def setup_recording(
        self, job_id: str, run_id: str, max_pages: int | str | None, max_body_bytes: int | str | None
    ) -> None:
        """The common spider arguments; None (or "") takes the default: no page limit, the body
        cap of ``crawl.max_body_bytes`` (from_crawler passes the crawl's own, a spider built
        directly gets :data:`~crawlstream.settings.DEFAULT_MAX_BODY_BYTES`)."""
        self.job_id = job_id
        self.run_id = run_id
        self.max_pages = int(max_pages) if max_pages not in (None, "") else 0
        self.max_body_bytes = (
            int(max_body_bytes) if max_body_bytes not in (None, "") else DEFAULT_MAX_BODY_BYTES
        )
        self.pages_yielded = 0
        self.record_non_html = False  # set from CRAWLSTREAM_RECORD_NON_HTML in from_crawler
        self.max_pages_per_host = 0  # set from CRAWLSTREAM_MAX_PAGES_PER_HOST in from_crawler
        self.dead_letter_limit = 1024 * 1024  # the dead-letter topic's limit, set in from_crawler
        self.host_pages: dict[str, int] = {}
        self._link_scope: CrawlScope | None = None

    def set_patterns(self, allow: str | list[str] | None, deny: str | list[str] | None) -> None:
        """The job's allow/deny regexes, applied to links by the crawl scope (counted ``filtered``)."""
        self.allow_patterns = compile_patterns(_split_arg(allow))
        self.deny_patterns = compile_patterns(_split_arg(deny))

    @property
    def link_scope(self) -> CrawlScope:
        """The crawl's scope, for spiders that filter links themselves (not as Requests)."""
        if self._link_scope is None:
            self._link_scope = CrawlScope.for_spider(self, self.crawler.settings)
        return self._link_scope

    def _limit_reached(self) -> bool:
        return 0 < self.max_pages <= self.pages_yielded

    def host_budget_spent(self, host: str) -> bool:
        return 0 < self.max_pages_per_host <= self.host_pages.get(host, 0)

    def refuse(self, reason: str, count: int = 1) -> None:
        refuse(self.crawler.stats, reason, count)

    def follow_url(self, response: Response, url: str, **kwargs: Any) -> Request | None:
        """A Request for ``url`` (relative to the response), or None (counted) if it is no URL."""
        try:
            return Request(response.urljoin(url.strip()), **kwargs)
        except ValueError:  # "http://[::1", a missing scheme...: garbage from the page
            self.refuse("invalid_url")
            return None

    def capped(self, links: Iterable[Any], cap: int) -> Iterator[Any]:
        """The first ``cap`` of ``links``; the rest counted as refused (``links_per_page``)."""
        extra = 0
        for n, link in enumerate(links):
            if n < cap:
                yield link
            else:
                extra += 1
        self.refuse("links_per_page", extra)

    def record(self, response: Response) -> Generator[PageRecord, None, bool]:
        """Yield the response's record; returns True for an HTML page whose links may be followed."""
        stats = self.crawler.stats
        assert stats is not None
        if self._limit_reached():
            return False  # a response already in flight when the cap was reached
        if not is_html(response):
            stats.inc_value(STAT_NON_HTML)
            if self.record_non_html:
                stats.inc_value(STAT_METADATA_RECORDS)
                yield metadata_record(response, job_id=self.job_id, run_id=self.run_id)
            return False
        assert isinstance(response, TextResponse)
        host = host_of(response.url)
        if self.host_budget_spent(host):
            self.refuse("host_budget")  # a response already in flight when the host's budget was spent
            return False
        self.host_pages[host] = self.host_pages.get(host, 0) + 1
        self.pages_yielded += 1
        stats.inc_value(STAT_PAGE_RECORDS)
        yield page_record(
            response, max_body_bytes=self.max_body_bytes, job_id=self.job_id, run_id=self.run_id
        )
        if self._limit_reached():
            raise CloseSpider("max_pages")
        return True

    def fetch_failed(self, failure: Failure) -> Iterator[DeadLetterMessage]:
        """Errback: a fetch that failed after retries becomes a dead letter (stage ``crawl``).

        Requests refused on purpose (robots.txt, the guard and the crawl's bounds: counted by
        reason where they were refused) and HTTP answers such as 404 are not failures.
        """
        error = failure.value
        if isinstance(error, HttpError):
            if error.response.status not in DEAD_LETTER_STATUSES:
                return
        elif isinstance(error, IgnoreRequest):
            return
        request = getattr(failure, "request", None)
        url = request.url if request is not None else "<unknown>"
        stats = self.crawler.stats
        assert stats is not None
        stats.inc_value(STAT_FETCH_DEAD_LETTERS)
        self.logger.warning("fetch failed for %s: %s", url, failure.getErrorMessage())
        yield fetch_dead_letter(
            failure, url, job_id=self.job_id, run_id=self.run_id, max_bytes=self.dead_letter_limit
        )
