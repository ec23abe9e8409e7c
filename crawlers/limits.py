"""Bounds of every fetch and every page's outlinks: memory and work per response stay capped.

- Download size: Scrapy's ``DOWNLOAD_MAXSIZE`` (``crawl.max_response_bytes`` or the job's
  ``max_response_bytes``, 4 MiB by default) aborts a body while it downloads;
  :class:`crawlers.middlewares.RefusalClassifierMiddleware` counts it (``response_too_large``).
- Decompression: :class:`CappedHttpCompressionMiddleware` is Scrapy's, which stops inflating at
  ``DOWNLOAD_MAXSIZE`` (gzip, deflate, br, zstd), with the refusal counted
  (``decompressed_too_large``) instead of a silent IgnoreRequest.
- Body: :class:`BodyCapMiddleware` cuts a page's raw bytes at the record's cap
  (``max_body_bytes``) right after decompression, before anything decodes or parses it (Scrapy's
  meta-refresh middleware decodes every HTML body next); the full size is kept in the request's
  meta for the record. Requests marked :data:`FULL_BODY` (sitemaps, feeds, API pages, which are
  parsed whole) keep their body, bounded by ``DOWNLOAD_MAXSIZE``.
- Links: :class:`ScopeSpiderMiddleware` drops the requests a spider yields that are out of scope
  (:mod:`crawlers.scope`), to a host whose page budget is spent, or beyond the links cap of their
  page (``CRAWLSTREAM_MAX_LINKS_PER_PAGE``, or the page's :data:`LINKS_CAP` meta), each counted.
  Requests marked :data:`NOT_A_LINK` (an API's next page, a sitemap index's sitemaps) are not
  counted against the cap.

Slow bodies: ``DOWNLOAD_TIMEOUT`` bounds the whole download in Scrapy's HTTP/1.1 handler (the timer
starts with the request and cancels the body transfer too). No topic is read or written here.
"""

from __future__ import annotations

from typing import Any

from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.downloadermiddlewares.httpcompression import HttpCompressionMiddleware
from scrapy.exceptions import IgnoreRequest
from scrapy.http import Response
from scrapy.spidermiddlewares.base import BaseSpiderMiddleware

from crawlers.refusals import Refused, refuse
from crawlers.scope import CrawlScope
from crawlstream.settings import DEFAULT_MAX_BODY_BYTES

FULL_BODY = "crawlstream_full_body"  # request.meta: the spider parses the whole body
NOT_A_LINK = "crawlstream_not_a_link"  # request.meta: pagination or structure, not an outlink
LINKS_CAP = "crawlstream_links_cap"  # request.meta: this page's own cap on its outlinks
BODY_BYTES = "crawlstream_body_bytes"  # request.meta: (url, size) of a body cut by BodyCapMiddleware
_LINKS_SEEN = "_crawlstream_links_seen"
DEFAULT_MAX_LINKS = 1000


def body_cap(crawler: Crawler) -> int:
    spider_cap = getattr(crawler.spider, "max_body_bytes", 0)
    return int(spider_cap or crawler.settings.getint("CRAWLSTREAM_MAX_BODY_BYTES") or DEFAULT_MAX_BODY_BYTES)


def full_body_size(response: Response) -> int:
    """The size of the body as downloaded (and decompressed), before BodyCapMiddleware cut it."""
    noted = response.meta.get(BODY_BYTES) if response.request is not None else None
    if isinstance(noted, tuple) and noted[0] == response.url:
        return int(noted[1])
    return len(response.body)


class BodyCapMiddleware:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> BodyCapMiddleware:
        return cls(crawler)

    def process_response(self, request: Request, response: Response) -> Response:
        if request.meta.get(FULL_BODY):
            return response
        cap = body_cap(self.crawler)
        if len(response.body) <= cap:
            return response
        request.meta[BODY_BYTES] = (response.url, len(response.body))
        assert self.crawler.stats is not None
        self.crawler.stats.inc_value("crawlstream/bodies_capped")
        return response.replace(body=response.body[:cap], flags=[*response.flags, "body_capped"])


class CappedHttpCompressionMiddleware(HttpCompressionMiddleware):
    def process_response(
        self, request: Request, response: Response, spider: Any = None
    ) -> Request | Response:
        try:
            return super().process_response(request, response)
        except IgnoreRequest as exc:
            # Scrapy 2.19 raises IgnoreRequest here only when decompression passed DOWNLOAD_MAXSIZE.
            label = refuse(self.stats, "decompressed_too_large")
            raise Refused(label, str(exc)) from exc


class ScopeSpiderMiddleware(BaseSpiderMiddleware):
    crawler: Crawler

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.max_links = crawler.settings.getint("CRAWLSTREAM_MAX_LINKS_PER_PAGE", DEFAULT_MAX_LINKS)
        self._scope: CrawlScope | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> ScopeSpiderMiddleware:
        return cls(crawler)

    @property
    def scope(self) -> CrawlScope:
        if self._scope is None:
            self._scope = CrawlScope.for_spider(self.crawler.spider, self.crawler.settings)
        return self._scope

    def get_processed_request(self, request: Request, response: Response | None) -> Request | None:
        if response is None:
            return request  # start requests: the downloader guard checks them
        stats = self.crawler.stats
        link = not request.meta.get(NOT_A_LINK)
        reason, host = self.scope.check(request.url, link=link)
        if reason is None:
            budget = getattr(self.crawler.spider, "host_budget_spent", None)
            if budget is not None and budget(host):  # host_of(request.url), already parsed
                reason = "host_budget"
        if reason is None and link:
            seen = response.meta.get(_LINKS_SEEN, 0) + 1
            response.meta[_LINKS_SEEN] = seen
            if seen > int(response.meta.get(LINKS_CAP) or self.max_links):
                reason = "links_per_page"
        if reason is not None:
            refuse(stats, reason)
            return None
        return request
