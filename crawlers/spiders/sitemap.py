"""SitemapSpider: crawls the pages listed in sitemaps and yields a PageRecord per page.

Scrapy's ``SitemapSpider`` underneath: ``robots.txt`` URLs are read for ``Sitemap:`` lines,
sitemap indexes are followed, gzip sitemaps are accepted. Entries whose ``<lastmod>`` is older
than ``recrawl_interval_s`` are skipped (unchanged since the previous recrawl); entries without
a lastmod are always fetched. ``allow``/``deny`` regexes filter the listed URLs. Records go to
``<prefix>.pages.raw``, failures to ``<prefix>.deadletter`` (see :mod:`crawlers.spiders.common`).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from scrapy import Request
from scrapy.http import Response
from scrapy.spiders import SitemapSpider as ScrapySitemapSpider

from crawlers.spiders.common import RecordingMixin, _split_arg
from crawlstream.records import DeadLetter, PageRecord
from crawlstream.urls import host_of


def parse_lastmod(value: str | None) -> datetime | None:
    """A W3C datetime (``2024-05-01``, ``2024-05-01T10:00:00+00:00``, ``...Z``) in UTC, or None."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class SitemapSpider(RecordingMixin, ScrapySitemapSpider):
    name = "sitemap"

    def __init__(
        self,
        start_urls: str | list[str] | None = None,
        allowed_domains: str | list[str] | None = None,
        max_pages: int | str | None = None,
        job_id: str = "",
        run_id: str = "",
        max_body_bytes: int = 1024 * 1024,
        allow: str | list[str] | None = None,
        deny: str | list[str] | None = None,
        recrawl_interval_s: float | str = 0,
        **kwargs: Any,
    ) -> None:
        self.sitemap_urls = _split_arg(start_urls)
        if not self.sitemap_urls:
            raise ValueError("SitemapSpider needs start_urls (sitemap or robots.txt URLs)")
        self.sitemap_rules = [(p, "parse") for p in _split_arg(allow)] or [("", "parse")]
        super().__init__(**kwargs)
        self.allowed_domains = _split_arg(allowed_domains) or sorted({host_of(u) for u in self.sitemap_urls})
        self.deny = [re.compile(p) for p in _split_arg(deny)]
        interval = float(recrawl_interval_s or 0)
        self.not_before = datetime.now(UTC) - timedelta(seconds=interval) if interval > 0 else None
        self.setup_recording(job_id, run_id, max_pages, max_body_bytes)

    async def start(self) -> AsyncIterator[Any]:
        for url in self.sitemap_urls:
            yield Request(url, callback=self._parse_sitemap, errback=self.fetch_failed)

    def sitemap_filter(self, entries: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for entry in entries:
            loc = str(entry.get("loc", ""))
            if any(p.search(loc) for p in self.deny):
                continue
            lastmod = parse_lastmod(entry.get("lastmod"))
            if self.not_before is not None and lastmod is not None and lastmod < self.not_before:
                self.crawler.stats.inc_value("crawlstream/sitemap_skipped_lastmod")
                continue
            yield entry

    def _parse_sitemap(self, response: Response) -> Iterable[Request]:
        for request in super()._parse_sitemap(response):
            yield request.replace(errback=self.fetch_failed)

    def parse(self, response: Response, **kwargs: Any) -> Iterator[PageRecord | DeadLetter]:
        yield from self.record(response)
