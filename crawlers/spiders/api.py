"""ApiSpider: a paginated JSON API as a source (an external source that is not an HTML site).

Each API page is a JSON object: ``api_items_field`` (default ``items``) holds a list of objects,
``api_url_field`` (default ``url``) in each names a page to fetch and record, and ``api_next_field``
(default ``next``) holds the next page's URL (absent, null or empty: the last page). Each JSON page
is recorded as a metadata record (``CRAWLSTREAM_RECORD_NON_HTML``), each linked page as a
PageRecord. Records go to ``<prefix>.pages.raw``; failed fetches and undecodable JSON pages go to
``<prefix>.deadletter`` (reason ``api_invalid_json``).

Bounded: at most ``max_api_pages`` API pages are read (default :data:`DEFAULT_MAX_API_PAGES`; a
``next`` that never ends stops there, counted as refused ``api_pages``), items are followed only
in scope (the endpoint's host unless ``allowed_domains`` says otherwise, the job's allow/deny) and
at most ``max_links_per_page`` per API page (:mod:`crawlers.limits`). The next page is pagination,
not a link: it does not deepen the crawl (``depth_reset``) nor count against the links cap.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from scrapy import Request, Spider
from scrapy.http import Response

from crawlers.limits import FULL_BODY, NOT_A_LINK
from crawlers.spiders.common import RecordingMixin, _split_arg
from crawlstream.deadletters import DeadLetterMessage, build_dead_letter
from crawlstream.records import PageRecord
from crawlstream.urls import canonical_url, host_of

DEFAULT_MAX_API_PAGES = 1000
MAX_BAD_PAGE_BYTES = 4096  # of an undecodable API page kept in its dead letter


class ApiSpider(RecordingMixin, Spider):
    name = "api"

    def __init__(
        self,
        start_urls: str | list[str] | None = None,
        allowed_domains: str | list[str] | None = None,
        max_pages: int | str | None = None,
        job_id: str = "",
        run_id: str = "",
        max_body_bytes: int | str | None = None,
        api_items_field: str = "items",
        api_url_field: str = "url",
        api_next_field: str = "next",
        max_api_pages: int | str = DEFAULT_MAX_API_PAGES,
        allow: str | list[str] | None = None,
        deny: str | list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.start_urls = _split_arg(start_urls)
        if not self.start_urls:
            raise ValueError("ApiSpider needs start_urls (the API's first page)")
        self.allowed_domains = _split_arg(allowed_domains) or sorted({host_of(u) for u in self.start_urls})
        self.set_patterns(allow, deny)
        self.items_field, self.url_field, self.next_field = api_items_field, api_url_field, api_next_field
        self.max_api_pages = int(max_api_pages or 0)
        self.api_pages = 0
        self.setup_recording(job_id, run_id, max_pages, max_body_bytes)

    def _api_request(self, url: str, response: Response | None = None) -> Request | None:
        meta = {FULL_BODY: True, NOT_A_LINK: True, "depth_reset": True}
        if response is None:
            return Request(url, callback=self.parse_api, errback=self.fetch_failed, meta=meta)
        return self.follow_url(response, url, callback=self.parse_api, errback=self.fetch_failed, meta=meta)

    async def start(self) -> AsyncIterator[Request]:
        for url in self.start_urls:
            request = self._api_request(url)
            if request is not None:
                yield request

    def parse_api(self, response: Response) -> Iterator[PageRecord | DeadLetterMessage | Request]:
        self.api_pages += 1
        try:
            data = json.loads(response.body)
            items = data.get(self.items_field, []) if isinstance(data, dict) else None
            if not isinstance(items, list):
                raise ValueError(f"no list in field {self.items_field!r}")
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
            yield self._bad_page(response, f"{type(exc).__name__}: {exc}")
            return
        if self.record_non_html:
            yield from self.record(response)
        for item in items:
            url = item.get(self.url_field) if isinstance(item, dict) else None
            if isinstance(url, str) and url:
                request = self.follow_url(response, url, callback=self.parse, errback=self.fetch_failed)
                if request is not None:
                    yield request
        next_url = data.get(self.next_field)
        if not (isinstance(next_url, str) and next_url):
            return
        if 0 < self.max_api_pages <= self.api_pages:
            self.refuse("api_pages")
            self.logger.warning(
                "API page budget (%d) reached; not following %s", self.max_api_pages, next_url
            )
            return
        request = self._api_request(next_url, response)
        if request is not None:
            yield request

    def parse(self, response: Response, **kwargs: Any) -> Iterator[PageRecord | DeadLetterMessage]:
        yield from self.record(response)

    def _bad_page(self, response: Response, detail: str) -> DeadLetterMessage:
        assert self.crawler.stats is not None
        self.crawler.stats.inc_value("crawlstream/fetch_dead_letters")
        return build_dead_letter(
            stage="crawl",
            reason="api_invalid_json",
            detail=f"{response.url}: {detail}",
            key=canonical_url(response.url).encode("utf-8"),
            value=response.body[:MAX_BAD_PAGE_BYTES],
            max_bytes=self.dead_letter_limit,
            error_class_name="ValueError",
        )
