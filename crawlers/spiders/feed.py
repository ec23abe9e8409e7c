"""FeedSpider: fetches the entries of RSS and Atom feeds and yields a PageRecord per entry page.

The feed is parsed by feedparser, the library feed readers use (RSS 0.9x, 1.0 and 2.0, Atom 0.3
and 1.0, ill-formed feeds too), always from the response's bytes as a stream: handed bytes alone,
feedparser would first try them as a local file name. Each entry's link (Atom ``rel="alternate"``)
is fetched once (Scrapy's dupefilter) and recorded. Feeds themselves are recorded as metadata
when ``CRAWLSTREAM_RECORD_NON_HTML``. Records go to ``<prefix>.pages.raw``, failures to
``<prefix>.deadletter``.

Bounded like every source: entries are in scope only on the feeds' own hosts unless
``allowed_domains`` names others, the job's ``allow``/``deny`` regexes apply, at most
``max_links_per_page`` entries of a feed are followed (:mod:`crawlers.limits`), and a feed body is
bounded by ``DOWNLOAD_MAXSIZE``. feedparser's XML parser (expat through xml.sax) resolves no
external entity (``file:///etc/passwd`` stays unread) and expat 2.4+ stops entity-expansion bombs;
feedparser reads nothing from the network when handed a stream (tests/unit/crawlers/test_bounds.py).
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from typing import Any

import feedparser
from scrapy import Request, Spider
from scrapy.http import Response, TextResponse

from crawlers.limits import FULL_BODY
from crawlers.spiders.common import RecordingMixin, _split_arg
from crawlstream.deadletters import DeadLetterMessage
from crawlstream.records import PageRecord
from crawlstream.urls import host_of


def feed_links(response: TextResponse) -> list[str]:
    """The entries' links, in feed order (relative ones are resolved against the feed's URL)."""
    parsed = feedparser.parse(
        io.BytesIO(response.body),  # a stream: never a file name or URL to open
        response_headers={"content-location": response.url},
    )
    links = []
    for entry in parsed.entries:
        link = entry.get("link") or next(
            (alt.get("href") for alt in entry.get("links", ()) if alt.get("rel") == "alternate"), None
        )
        if isinstance(link, str) and link.strip():
            links.append(link.strip())
    return links


class FeedSpider(RecordingMixin, Spider):
    name = "feed"

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
