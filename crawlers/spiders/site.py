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
- Links are bounded (:mod:`crawlers.limits`): depth (``DEPTH_LIMIT``), scope (offsite, scheme,
  URL length, ``allow``/``deny``), per-host budget and links per page, each refusal counted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from scrapy import Request, Spider
from scrapy.crawler import Crawler
from scrapy.http import Response, TextResponse
from scrapy.linkextractors import LinkExtractor

from crawlers.pages import cap_utf8, is_html, page_record
from crawlers.spiders.common import (
    STAT_METADATA_RECORDS,
    STAT_NON_HTML,
    STAT_PAGE_RECORDS,
    CountingLinkExtractor,
    RecordingMixin,
    _split_arg,
)
from crawlstream.deadletters import DeadLetterMessage
from crawlstream.records import PageRecord
from crawlstream.urls import host_of

__all__ = [
    "STAT_METADATA_RECORDS",
    "STAT_NON_HTML",
    "STAT_PAGE_RECORDS",
    "SiteSpider",
    "cap_utf8",
    "is_html",
    "page_record",
]


class SiteSpider(RecordingMixin, Spider):
    name = "site"
    accepts_max_depth = True

    def __init__(
        self,
        start_url: str | None = None,
        start_urls: str | list[str] | None = None,
        allowed_domains: str | list[str] | None = None,
        max_pages: int | str | None = None,
        job_id: str = "",
        run_id: str = "",
        max_body_bytes: int | str | None = None,
        allow: str | list[str] | None = None,
        deny: str | list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.start_urls = _split_arg(start_urls) + _split_arg(start_url)
        if not self.start_urls:
            raise ValueError("SiteSpider needs start_url (or start_urls, comma-separated)")
        self.allowed_domains = _split_arg(allowed_domains) or sorted({host_of(u) for u in self.start_urls})
        self.setup_recording(job_id, run_id, max_pages, max_body_bytes)
        self.set_patterns(allow, deny)  # applied to links by the crawl scope, counted
        self.link_extractor = LinkExtractor()  # from_crawler installs the counting one

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> SiteSpider:
        spider = super().from_crawler(crawler, *args, **kwargs)
        assert isinstance(spider, SiteSpider)
        # With non-HTML recording, links to images, PDFs, archives... are followed too (Scrapy
        # skips them by extension), so they are recorded as metadata; DOWNLOAD_MAXSIZE still caps
        # what is downloaded.
        extra: dict[str, Any] = {"deny_extensions": []} if spider.record_non_html else {}
        spider.link_extractor = CountingLinkExtractor(crawler, **extra)
        return spider

    async def start(self) -> AsyncIterator[Request]:
        # Unlike Scrapy's default, start requests go through the dupefilter, so a page linking
        # back to a start URL does not fetch it a second time.
        for url in self.start_urls:
            yield Request(url, callback=self.parse, errback=self.fetch_failed)

    def parse(self, response: Response, **kwargs: Any) -> Iterator[PageRecord | DeadLetterMessage | Request]:
        if not (yield from self.record(response)):
            return  # not HTML, or the max_pages cap reached
        assert isinstance(response, TextResponse)
        for link in self.link_extractor.extract_links(response):
            yield response.follow(link, callback=self.parse, errback=self.fetch_failed)
