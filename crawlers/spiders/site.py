"""SiteSpider: crawls one site from its start URLs and yields a PageRecord per HTML page.

Records go to ``<prefix>.pages.raw`` through :class:`crawlers.pipelines.KafkaPagePipeline`.
Settings used: ``crawl.*`` (mapped by :func:`crawlers.settings.crawl_overrides`),
``crawl.max_body_bytes`` for the body cap and ``crawl.max_pages`` unless ``-a max_pages`` is given.

Decisions that shape the records:

- ``canonical_url`` (the Kafka key) is the canonical form of the *final* URL after redirects:
  two URLs redirecting to one page are one page for the dedup stage.
- Request URLs are never canonicalised before scheduling. Scrapy's dupefilter drops repeats by
  request fingerprint (which ignores fragments but not ``utm_*`` parameters), so tracking-param
  variants are fetched and produce records sharing a ``canonical_url``; the stream stage dedups.
- ``max_pages`` counts page records yielded, exactly: once reached, no further record or
  request is yielded and the spider closes with reason ``max_pages``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

from scrapy import Request, Spider
from scrapy.crawler import Crawler
from scrapy.exceptions import CloseSpider
from scrapy.http import Response, TextResponse
from scrapy.linkextractors import LinkExtractor

from crawlers.settings import crawl_overrides, crawlstream_settings
from crawlstream.records import PageRecord
from crawlstream.urls import canonical_url, host_of

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
STAT_PAGE_RECORDS = "crawlstream/page_records"
STAT_NON_HTML = "crawlstream/non_html"


def _split_arg(value: str | list[str] | None) -> list[str]:
    """Spider arguments arrive as strings from ``-a``; accept comma-separated lists too."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    return [item.strip() for item in items if item.strip()]


def media_type(response: Response) -> str:
    raw = response.headers.get(b"Content-Type") or b""
    return raw.decode("latin-1").split(";", 1)[0].strip().lower()


def is_html(response: Response) -> bool:
    return (
        200 <= response.status < 300
        and isinstance(response, TextResponse)
        and (media_type(response) in HTML_TYPES)
    )


def cap_utf8(text: str, max_bytes: int) -> tuple[str, bool]:
    """Cap ``text`` at ``max_bytes`` of UTF-8, cutting at a character boundary."""
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text, False
    # The prefix is valid UTF-8 except possibly a split last character, which "ignore" drops.
    return encoded[:max_bytes].decode("utf-8", errors="ignore"), True


def page_record(
    response: TextResponse,
    *,
    max_body_bytes: int,
    job_id: str,
    run_id: str,
    fetched_at: datetime | None = None,
) -> PageRecord:
    """Build the PageRecord for one HTML response (see the module docstring for the key)."""
    request = response.request
    meta: dict[str, Any] = request.meta if request is not None else {}
    redirects: list[str] = meta.get("redirect_urls") or []
    referer = request.headers.get(b"Referer") if request is not None else None
    body, truncated = cap_utf8(response.text, max_body_bytes)
    title = " ".join((response.xpath("//title/text()").get() or "").split())
    return PageRecord(
        url=redirects[0] if redirects else response.url,
        canonical_url=canonical_url(response.url),
        final_url=response.url,
        status=response.status,
        content_type=media_type(response),
        encoding=response.encoding,
        title=title,
        body=body,
        body_truncated=truncated,
        body_bytes=len(response.body),
        fetched_at=fetched_at or datetime.now(UTC),
        fetch_latency_s=float(meta.get("download_latency", 0.0)),
        depth=int(meta.get("depth", 0)),
        referrer=referer.decode("utf-8", errors="replace") if referer else None,
        job_id=job_id,
        run_id=run_id,
    )


class SiteSpider(Spider):
    name = "site"

    def __init__(
        self,
        start_url: str | None = None,
        start_urls: str | list[str] | None = None,
        allowed_domains: str | list[str] | None = None,
        max_pages: int | str | None = None,
        job_id: str = "",
        run_id: str = "",
        max_body_bytes: int = 1024 * 1024,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.start_urls = _split_arg(start_urls) + _split_arg(start_url)
        if not self.start_urls:
            raise ValueError("SiteSpider needs start_url (or start_urls, comma-separated)")
        self.allowed_domains = _split_arg(allowed_domains) or sorted({host_of(u) for u in self.start_urls})
        self.max_pages = int(max_pages) if max_pages not in (None, "") else 0
        self.job_id = job_id
        self.run_id = run_id
        self.max_body_bytes = max_body_bytes
        self.pages_yielded = 0
        self.link_extractor = LinkExtractor()

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> SiteSpider:
        settings = crawlstream_settings(crawler.settings)
        # Settings are not frozen yet: map the crawl section at "spider" priority (below -s/cmdline).
        crawler.settings.setdict(crawl_overrides(settings.crawl), priority="spider")
        if kwargs.get("max_depth") not in (None, ""):
            crawler.settings.set("DEPTH_LIMIT", int(kwargs.pop("max_depth")), priority="spider")
        hosts = _split_arg(kwargs.pop("allow_private_hosts", None))
        if hosts:
            known = crawler.settings.getlist("CRAWLSTREAM_ALLOW_PRIVATE_HOSTS")
            crawler.settings.set("CRAWLSTREAM_ALLOW_PRIVATE_HOSTS", known + hosts, priority="spider")
        kwargs.setdefault("max_pages", settings.crawl.max_pages)
        kwargs.setdefault("max_body_bytes", settings.crawl.max_body_bytes)
        spider = super().from_crawler(crawler, *args, **kwargs)
        assert isinstance(spider, SiteSpider)
        return spider

    async def start(self) -> AsyncIterator[Request]:
        # Unlike Scrapy's default, start requests go through the dupefilter, so a page linking
        # back to a start URL does not fetch it a second time.
        for url in self.start_urls:
            yield Request(url, callback=self.parse)

    def _limit_reached(self) -> bool:
        return 0 < self.max_pages <= self.pages_yielded

    def parse(self, response: Response, **kwargs: Any) -> Iterator[PageRecord | Request]:
        stats = self.crawler.stats
        assert stats is not None
        if not is_html(response):
            stats.inc_value(STAT_NON_HTML)
            return
        if self._limit_reached():
            return  # a response already in flight when the cap was reached
        assert isinstance(response, TextResponse)
        self.pages_yielded += 1
        stats.inc_value(STAT_PAGE_RECORDS)
        yield page_record(
            response, max_body_bytes=self.max_body_bytes, job_id=self.job_id, run_id=self.run_id
        )
        if self._limit_reached():
            raise CloseSpider("max_pages")
        for link in self.link_extractor.extract_links(response):
            yield response.follow(link, callback=self.parse)
