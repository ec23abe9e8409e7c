"""FeedSpider: fetches the entries of RSS 2.0 / Atom feeds and yields a PageRecord per entry page.

The feed is read with namespace-agnostic XPath (RSS ``item/link`` text, Atom ``entry/link[@href]``
preferring ``rel="alternate"``); each entry's page is fetched once (Scrapy's dupefilter) and
recorded. Feeds themselves are recorded as metadata when ``CRAWLSTREAM_RECORD_NON_HTML``. Records
go to ``<prefix>.pages.raw``, failures to ``<prefix>.deadletter``.

Bounded like every source: entries are in scope only on the feeds' own hosts unless
``allowed_domains`` names others, the job's ``allow``/``deny`` regexes apply, at most
``max_links_per_page`` entries of a feed are followed (:mod:`crawlers.limits`), and a feed body is
bounded by ``DOWNLOAD_MAXSIZE``. XML is parsed by parsel's parser, which resolves no entity (no
billion laughs, no external entity such as ``file:///etc/passwd``) and reads nothing from the network.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from scrapy import Request, Spider
from scrapy.http import Response, TextResponse

from crawlers.limits import FULL_BODY
from crawlers.spiders.common import RecordingMixin, _split_arg
from crawlstream.deadletters import DeadLetterMessage
from crawlstream.records import PageRecord
from crawlstream.urls import host_of

RSS_LINKS = "//*[local-name()='item']/*[local-name()='link']/text()"
ATOM_LINKS = "//*[local-name()='entry']/*[local-name()='link'][not(@rel) or @rel='alternate']/@href"


def feed_links(response: TextResponse) -> list[str]:
    """The entries' links as written in the feed (relative ones are joined when followed)."""
    links = [s.strip() for s in response.xpath(RSS_LINKS).getall() + response.xpath(ATOM_LINKS).getall()]
    return [link for link in links if link]


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
        # Entries on other hosts than the feeds' are offsite unless allowed_domains names them.
        self.allowed_domains = _split_arg(allowed_domains) or sorted({host_of(u) for u in self.start_urls})
        self.set_patterns(allow, deny)
        self.setup_recording(job_id, run_id, max_pages, max_body_bytes)

    async def start(self) -> AsyncIterator[Request]:
        for url in self.start_urls:
            yield Request(url, callback=self.parse_feed, errback=self.fetch_failed, meta={FULL_BODY: True})

    def parse_feed(self, response: Response) -> Iterator[PageRecord | DeadLetterMessage | Request]:
        if not isinstance(response, TextResponse):
            self.logger.warning("not a feed: %s", response.url)
            return
        if self.record_non_html:
            yield from self.record(response)  # the feed itself, as a metadata record
        for link in feed_links(response):
            # Scope, allow/deny and the entries cap: crawlers.limits.ScopeSpiderMiddleware.
            request = self.follow_url(response, link, callback=self.parse, errback=self.fetch_failed)
            if request is not None:
                yield request

    def parse(self, response: Response, **kwargs: Any) -> Iterator[PageRecord | DeadLetterMessage]:
        yield from self.record(response)
