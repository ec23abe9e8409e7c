"""__Source__Spider: <what it crawls>, one PageRecord per page (a template: CONTRIBUTING.md).

Copy to ``crawlers/spiders/<source>.py``, replace ``__Source__`` / ``__source__`` and the parsing.
Scrapy's SpiderLoader finds it (``scrapy crawl __source__``, a job's ``source = "__source__"``).
Records go to ``<prefix>.pages.raw`` through the Kafka pipeline; failed fetches to the dead-letter
topic (``fetch_failed``). The crawl's bounds (scope, depth, per-host budget, body cap) apply.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from scrapy import Request, Spider
from scrapy.http import Response

from crawlers.spiders.common import RecordingMixin, _split_arg
from crawlstream.deadletters import DeadLetterMessage
from crawlstream.records import PageRecord
from crawlstream.urls import host_of


class __Source__Spider(RecordingMixin, Spider):
    name = "__source__"

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
            raise ValueError("__Source__Spider needs start_urls")
        self.allowed_domains = _split_arg(allowed_domains) or sorted({host_of(u) for u in self.start_urls})
        self.set_patterns(allow, deny)
        self.setup_recording(job_id, run_id, max_pages, max_body_bytes)

    async def start(self) -> AsyncIterator[Request]:
        for url in self.start_urls:
            yield Request(url, callback=self.parse, errback=self.fetch_failed)

    def parse(self, response: Response, **kwargs: Any) -> Iterator[PageRecord | DeadLetterMessage | Request]:
        yield from self.record(response)
        # Follow what this source links to (scope, allow/deny and caps apply to every link):
        # for href in response.css("a.next::attr(href)").getall():
        #     request = self.follow_url(response, href, callback=self.parse, errback=self.fetch_failed)
        #     if request is not None:
        #         yield request
