"""SitemapSpider: crawls the pages listed in sitemaps and yields a PageRecord per page.

Scrapy's ``SitemapSpider`` underneath: ``robots.txt`` URLs are read for ``Sitemap:`` lines,
sitemap indexes are followed, gzip sitemaps are accepted. Entries whose ``<lastmod>`` is older
than ``recrawl_interval_s`` are skipped (unchanged since the previous recrawl); entries without
a lastmod are always fetched. ``allow``/``deny`` regexes filter the listed URLs. Records go to
``<prefix>.pages.raw``, failures to ``<prefix>.deadletter`` (see :mod:`crawlers.spiders.common`).

Bounded: a sitemap (or a gzip sitemap once inflated) is at most ``DOWNLOAD_MAXSIZE`` (a gzip bomb
is refused as ``decompressed_too_large``); at most :data:`MAX_SITEMAP_ENTRIES` entries of one
sitemap are followed (the protocol's own limit), each in scope (:mod:`crawlers.limits`); nested
indexes deepen the crawl (``DEPTH_LIMIT``). Scrapy's sitemap parser (lxml) resolves no entity, so
billion laughs and external entities in a sitemap stay inert text.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from scrapy import Request
from scrapy.http import Response
from scrapy.spiders import SitemapSpider as ScrapySitemapSpider
from scrapy.utils.gz import gunzip, gzip_magic_number

from crawlers.limits import FULL_BODY, LINKS_CAP, NOT_A_LINK
from crawlers.spiders.common import RecordingMixin, _split_arg
from crawlstream.deadletters import DeadLetterMessage
from crawlstream.records import PageRecord
from crawlstream.urls import host_of

MAX_SITEMAP_ENTRIES = 50_000  # sitemaps.org: "no more than 50,000 URLs" per sitemap
SITEMAP_META = {FULL_BODY: True, NOT_A_LINK: True, LINKS_CAP: MAX_SITEMAP_ENTRIES}


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
        max_body_bytes: int | str | None = None,
        allow: str | list[str] | None = None,
        deny: str | list[str] | None = None,
        recrawl_interval_s: float | str = 0,
        **kwargs: Any,
    ) -> None:
        self.sitemap_urls = _split_arg(start_urls)
        if not self.sitemap_urls:
            raise ValueError("SitemapSpider needs start_urls (sitemap or robots.txt URLs)")
        # Every entry goes to parse; allow/deny are applied (and counted) by the crawl scope.
        self.sitemap_rules = [("", "parse")]
        super().__init__(**kwargs)
        self.allowed_domains = _split_arg(allowed_domains) or sorted({host_of(u) for u in self.sitemap_urls})
        self.set_patterns(allow, deny)
        interval = float(recrawl_interval_s or 0)
        self.not_before = datetime.now(UTC) - timedelta(seconds=interval) if interval > 0 else None
        self.setup_recording(job_id, run_id, max_pages, max_body_bytes)

    async def start(self) -> AsyncIterator[Any]:
        for url in self.sitemap_urls:
            yield Request(
                url, callback=self._parse_sitemap, errback=self.fetch_failed, meta=dict(SITEMAP_META)
            )

    def sitemap_filter(self, entries: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for entry in entries:
            try:
                Request(str(entry.get("loc") or "http://-/"))  # what Scrapy builds next must be a URL
            except ValueError:
                self.refuse("invalid_url")
                continue
            lastmod = parse_lastmod(entry.get("lastmod"))
            if self.not_before is not None and lastmod is not None and lastmod < self.not_before:
                self.crawler.stats.inc_value("crawlstream/sitemap_skipped_lastmod")
                continue
            yield entry

    def _parse_sitemap(self, response: Response) -> Iterable[Request]:
        for request in super()._parse_sitemap(response):
            if request.callback == self._parse_sitemap:  # a sitemap of an index or of robots.txt
                yield request.replace(errback=self.fetch_failed, meta={**request.meta, **SITEMAP_META})
            else:
                yield request.replace(errback=self.fetch_failed)

    def _get_sitemap_body(self, response: Response) -> bytes | None:
        """Scrapy's, with a gzip bomb counted (``decompressed_too_large``) and corrupt gzip skipped."""
        if not gzip_magic_number(response):
            body: bytes | None = super()._get_sitemap_body(response)
            return body
        max_size = int(response.meta.get("download_maxsize", self._max_size))
        try:
            return gunzip(response.body, max_size=max_size)
        except ValueError:  # scrapy's _DecompressionMaxSizeExceeded
            self.refuse("decompressed_too_large")
            self.logger.warning("sitemap %s inflates past %d bytes: ignored", response.url, max_size)
        except (OSError, EOFError, struct.error, zlib.error) as exc:
            self.logger.warning("sitemap %s is not valid gzip (%s): ignored", response.url, exc)
        return None

    def parse(self, response: Response, **kwargs: Any) -> Iterator[PageRecord | DeadLetterMessage]:
        yield from self.record(response)
