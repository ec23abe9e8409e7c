"""ApiSpider: a paginated JSON API as a source (an external source that is not an HTML site).

Each API page is a JSON object: ``api_items_field`` (default ``items``) holds a list of objects,
``api_url_field`` (default ``url``) in each names a page to fetch and record, and ``api_next_field``
(default ``next``) holds the next page's URL (absent, null or empty: the last page). Each JSON page
is recorded as a metadata record (``CRAWLSTREAM_RECORD_NON_HTML``), each linked page as a
PageRecord. Records go to ``<prefix>.pages.raw``; failed fetches and undecodable JSON pages go to
``<prefix>.deadletter`` (reason ``api_invalid_json``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from scrapy import Request, Spider
from scrapy.http import Response

from crawlers.spiders.common import RecordingMixin, _split_arg
from crawlstream.errors import RecordError
from crawlstream.records import DeadLetter, PageRecord
from crawlstream.urls import canonical_url

MAX_API_PAGES = 10_000  # a loop of "next" links ends here at the latest


class ApiSpider(RecordingMixin, Spider):
    name = "api"

    def __init__(
        self,
        start_urls: str | list[str] | None = None,
        allowed_domains: str | list[str] | None = None,
        max_pages: int | str | None = None,
        job_id: str = "",
        run_id: str = "",
        max_body_bytes: int = 1024 * 1024,
        api_items_field: str = "items",
        api_url_field: str = "url",
        api_next_field: str = "next",
        **kwargs: Any,
    ) -> None:
        kwargs.pop("allow", None)
        kwargs.pop("deny", None)
        super().__init__(**kwargs)
        self.start_urls = _split_arg(start_urls)
        if not self.start_urls:
            raise ValueError("ApiSpider needs start_urls (the API's first page)")
        self.allowed_domains = _split_arg(allowed_domains) or None
        self.items_field, self.url_field, self.next_field = api_items_field, api_url_field, api_next_field
        self.api_pages = 0
        self.setup_recording(job_id, run_id, max_pages, max_body_bytes)

    async def start(self) -> AsyncIterator[Request]:
        for url in self.start_urls:
            yield Request(url, callback=self.parse_api, errback=self.fetch_failed)

    def parse_api(self, response: Response) -> Iterator[PageRecord | DeadLetter | Request]:
        self.api_pages += 1
        try:
            data = json.loads(response.body)
            items = data.get(self.items_field, []) if isinstance(data, dict) else None
            if not isinstance(items, list):
                raise ValueError(f"no list in field {self.items_field!r}")
        except ValueError as exc:
            yield self._bad_page(response, str(exc))
            return
        if self.record_non_html:
            yield from self.record(response)
        for item in items:
            url = item.get(self.url_field) if isinstance(item, dict) else None
            if isinstance(url, str) and url:
                yield Request(response.urljoin(url), callback=self.parse, errback=self.fetch_failed)
        next_url = data.get(self.next_field)
        if isinstance(next_url, str) and next_url and self.api_pages < MAX_API_PAGES:
            yield Request(response.urljoin(next_url), callback=self.parse_api, errback=self.fetch_failed)

    def parse(self, response: Response, **kwargs: Any) -> Iterator[PageRecord | DeadLetter]:
        yield from self.record(response)

    def _bad_page(self, response: Response, detail: str) -> DeadLetter:
        self.crawler.stats.inc_value("crawlstream/fetch_dead_letters")
        return DeadLetter.for_message(
            stage="crawl",
            error=RecordError("api_invalid_json", f"{response.url}: {detail}"[:2000]),
            topic=None,
            partition=None,
            offset=None,
            key=canonical_url(response.url).encode("utf-8"),
            value=response.body[:4096],
        )
