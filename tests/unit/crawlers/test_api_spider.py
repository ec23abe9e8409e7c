"""ApiSpider (crawlers/spiders/api.py) over faked JSON pages: items followed, pagination not a
link, the API page cap, and an undecodable page dead-lettered with its origin, never dropped."""

from __future__ import annotations

import json
from typing import Any

import pytest
from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.http import TextResponse
from scrapy.utils.test import get_reactor_settings

from crawlers.limits import NOT_A_LINK
from crawlers.spiders.api import MAX_BAD_PAGE_BYTES, ApiSpider
from crawlstream.deadletters import DeadLetterMessage
from crawlstream.settings import Settings

API = "http://api.example/v1/pages"


def _spider(**kwargs: Any) -> ApiSpider:
    settings = {"CRAWLSTREAM_SETTINGS": Settings(), "TELNETCONSOLE_ENABLED": False, **get_reactor_settings()}
    crawler = Crawler(ApiSpider, settings)
    kwargs.setdefault("start_urls", API)
    spider = ApiSpider.from_crawler(crawler, **kwargs)
    crawler.spider = spider
    crawler._apply_settings()
    assert crawler.stats is not None
    crawler.stats.open_spider()
    return spider


def _page(body: bytes | object, url: str = API) -> TextResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return TextResponse(url, body=raw, encoding="utf-8", request=Request(url))


def _requests(out: list[Any]) -> list[Request]:
    return [r for r in out if isinstance(r, Request)]


def test_items_are_followed_and_the_next_page_is_pagination_not_a_link() -> None:
    spider = _spider()
    page = {
        "items": [{"url": "/a"}, {"url": ""}, {"nope": 1}, "x", {"url": 5}, {"url": "http://api.example/b"}]
    }
    out = list(spider.parse_api(_page({**page, "next": "?page=2"})))

    pages, api = (
        [r for r in _requests(out) if r.callback == spider.parse],
        [r for r in _requests(out) if r.callback == spider.parse_api],
    )
    assert [r.url for r in pages] == ["http://api.example/a", "http://api.example/b"]
    (next_page,) = api
    assert next_page.url == "http://api.example/v1/pages?page=2"
    assert next_page.meta[NOT_A_LINK]
    assert next_page.meta["depth_reset"]


@pytest.mark.parametrize("last", [{}, {"next": None}, {"next": ""}, {"next": 7}])
def test_the_last_page_has_no_usable_next(last: dict[str, object]) -> None:
    spider = _spider()
    out = list(spider.parse_api(_page({"items": [], **last})))
    assert _requests(out) == []


def test_the_api_page_cap_stops_an_endless_next_and_counts_it() -> None:
    spider = _spider(max_api_pages="3")
    followed = 0
    for n in range(1, 6):
        out = list(spider.parse_api(_page({"items": [], "next": f"?page={n + 1}"})))
        followed += len(_requests(out))
    assert followed == 2  # pages 1 and 2 lead on; page 3 is the last one read
    assert spider.api_pages == 5
    assert spider.crawler.stats is not None
    assert spider.crawler.stats.get_value("crawlstream/refused/api_pages") == 3


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2]", json.dumps({"items": {"url": "/a"}}).encode(), b"[" * 100_000 + b"]" * 100_000],
    ids=["not-json", "not-an-object", "items-not-a-list", "absurdly-nested"],
)
def test_an_invalid_page_is_dead_lettered_with_its_url_and_bytes(body: bytes) -> None:
    spider = _spider()
    out = list(spider.parse_api(_page(body + b" " * 5000)))

    (letter,) = out
    assert isinstance(letter, DeadLetterMessage)
    assert (letter.letter.stage, letter.letter.reason) == ("crawl", "api_invalid_json")
    assert letter.key == b"http://api.example/v1/pages"
    assert API in letter.letter.error
    assert letter.letter.original_value() == (body + b" " * 5000)[:MAX_BAD_PAGE_BYTES]
    assert spider.crawler.stats is not None
    assert spider.crawler.stats.get_value("crawlstream/fetch_dead_letters") == 1
