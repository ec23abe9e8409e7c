"""FeedSpider: fetches the entries of RSS 2.0 / Atom feeds and yields a PageRecord per entry page.

The feed is read with namespace-agnostic XPath (RSS ``item/link`` text, Atom ``entry/link[@href]``
preferring ``rel="alternate"``); each entry's page is fetched once (Scrapy's dupefilter) and
recorded. Feeds themselves are recorded as metadata when ``CRAWLSTREAM_RECORD_NON_HTML``. Records
go to ``<prefix>.pages.raw``, failures to ``<prefix>.deadletter``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

from scrapy import Request, Spider
from scrapy.http import Response, TextResponse

from crawlers.spiders.common import RecordingMixin, _split_arg
from crawlstream.records import DeadLetter, PageRecord
from crawlstream.urls import host_of

RSS_LINKS = "//*[local-name()='item']/*[local-name()='link']/text()"
ATOM_LINKS = "//*[local-name()='entry']/*[local-name()='link'][not(@rel) or @rel='alternate']/@href"


def feed_links(response: TextResponse) -> list[str]:
    links = [s.strip() for s in response.xpath(RSS_LINKS).getall() + response.xpath(ATOM_LINKS).getall()]
    return [response.urljoin(link) for link in links if link]


class FeedSpider(RecordingMixin, Spider):
    name = "feed"

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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.start_urls = _split_arg(start_urls)
        if not self.start_urls:
            raise ValueError("FeedSpider needs start_urls (feed URLs)")
        # Entries may live on other hosts than the feed: no offsite filter unless domains are given.
        self.allowed_domains = _split_arg(allowed_domains) or None
        self.allow = [re.compile(p) for p in _split_arg(allow)]
        self.deny = [re.compile(p) for p in _split_arg(deny)]
        self.setup_recording(job_id, run_id, max_pages, max_body_bytes)
        self.feed_hosts = {host_of(u) for u in self.start_urls}

    async def start(self) -> AsyncIterator[Request]:
        for url in self.start_urls:
            yield Request(url, callback=self.parse_feed, errback=self.fetch_failed)

    def _wanted(self, url: str) -> bool:
        if self.allow and not any(p.search(url) for p in self.allow):
            return False
        return not any(p.search(url) for p in self.deny)

    def parse_feed(self, response: Response) -> Iterator[PageRecord | DeadLetter | Request]:
        if not isinstance(response, TextResponse):
            self.logger.warning("not a feed: %s", response.url)
            return
        if self.record_non_html:
            yield from self.record(response)  # the feed itself, as a metadata record
        for link in feed_links(response):
            if self._wanted(link):
                yield Request(link, callback=self.parse, errback=self.fetch_failed)

    def parse(self, response: Response, **kwargs: Any) -> Iterator[PageRecord | DeadLetter]:
        yield from self.record(response)
