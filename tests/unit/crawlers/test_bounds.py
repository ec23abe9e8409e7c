"""Bounds of every fetch and every source: raw body cap before decoding, decompression bombs,
links per page, scope, host budgets, XML bombs, endless API pagination, finite defaults."""

from __future__ import annotations

import json
from typing import Any

import pytest
from scrapy import Request, Spider
from scrapy.crawler import Crawler
from scrapy.http import HtmlResponse, Response, TextResponse, XmlResponse
from scrapy.settings import Settings as ScrapySettings
from scrapy.utils.sitemap import Sitemap
from scrapy.utils.test import get_reactor_settings

from crawlers.limits import (
    FULL_BODY,
    LINKS_CAP,
    NOT_A_LINK,
    BodyCapMiddleware,
    CappedHttpCompressionMiddleware,
    ScopeSpiderMiddleware,
)
from crawlers.pages import page_record
from crawlers.refusals import STAT_PREFIX, Refused
from crawlers.settings import crawl_overrides
from crawlers.spiders.api import ApiSpider
from crawlers.spiders.feed import FeedSpider, feed_links
from crawlers.spiders.site import SiteSpider
from crawlers.spiders.sitemap import SitemapSpider
from crawlstream.records import PageRecord
from crawlstream.settings import CrawlSettings, Settings
from tests.support.hostile import _laughs, _xxe, gzip_bomb


def _spider(cls: type[Spider], settings: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    base = {"CRAWLSTREAM_SETTINGS": Settings(), "TELNETCONSOLE_ENABLED": False, **get_reactor_settings()}
    scrapy_settings = ScrapySettings(base)
    scrapy_settings.setdict(settings or {}, priority="cmdline")  # as the runner and `-s` pass them
    crawler = Crawler(cls, scrapy_settings)
    spider = cls.from_crawler(crawler, **kwargs)
    crawler.spider = spider
    crawler._apply_settings()
    assert crawler.stats is not None
    crawler.stats.open_spider()
    return spider


def _refused(spider: Any) -> dict[str, int]:
    stats = spider.crawler.stats.get_stats()
    return {k.removeprefix(STAT_PREFIX): v for k, v in stats.items() if k.startswith(STAT_PREFIX)}


def _html(url: str, body: bytes, **meta: Any) -> HtmlResponse:
    request = Request(url, meta=meta)
    return HtmlResponse(url, body=body, headers={"Content-Type": "text/html; charset=utf-8"}, request=request)


def test_defaults_are_finite() -> None:
    crawl = CrawlSettings()
    scrapy = crawl_overrides(crawl)
    assert scrapy["DEPTH_LIMIT"] == 16
    assert scrapy["DOWNLOAD_MAXSIZE"] == 4 * 1024 * 1024
    assert scrapy["CRAWLSTREAM_MAX_PAGES_PER_HOST"] == 50_000
    assert scrapy["CRAWLSTREAM_MAX_LINKS_PER_PAGE"] == 1000
    assert scrapy["CRAWLSTREAM_MAX_URL_LENGTH"] == 2048
    assert crawl.max_pages == 100_000


def test_the_raw_body_is_cut_before_anything_decodes_it() -> None:
    spider = _spider(SiteSpider, start_url="http://example.com/")
    spider.max_body_bytes = 1024
    body = b"<html><head><title>t</title></head><body>" + "é".encode() * 100_000 + b"</body></html>"
    response = _html("http://example.com/big", body)

    capped = BodyCapMiddleware(spider.crawler).process_response(response.request, response)

    assert len(capped.body) == 1024
    assert "body_capped" in capped.flags
    record = page_record(capped, max_body_bytes=1024, job_id="", run_id="")
    assert record.body_bytes == len(body)  # the size downloaded
    assert record.body_truncated
    assert len(record.body.encode()) <= 1024
    # Sitemaps, feeds and API pages are parsed whole (bounded by DOWNLOAD_MAXSIZE).
    whole = _html("http://example.com/feed", body, **{FULL_BODY: True})
    assert BodyCapMiddleware(spider.crawler).process_response(whole.request, whole) is whole


def test_page_record_cuts_raw_bytes_of_a_response_that_was_not_capped() -> None:
    body = b"<html><title>t</title><body>" + b"x" * 50_000 + b"</body></html>"
    record = page_record(_html("http://example.com/", body), max_body_bytes=2048, job_id="", run_id="")
    assert (record.body_bytes, record.body_truncated, len(record.body)) == (len(body), True, 2048)


def test_title_and_canonical_link_are_bounded() -> None:
    long_title = "t" * 50_000
    canonical = "http://example.com/" + "c" * 5000
    body = f'<html><head><title>{long_title}</title><link rel="canonical" href="{canonical}"></head></html>'
    record = page_record(
        _html("http://example.com/", body.encode()), max_body_bytes=1 << 20, job_id="", run_id=""
    )
    assert len(record.title) == 1024
    assert record.canonical_link is None


def test_a_gzip_bomb_stops_at_the_download_cap_and_is_counted() -> None:
    spider = _spider(SiteSpider, {"DOWNLOAD_MAXSIZE": 4 * 1024 * 1024}, start_url="http://example.com/")
    middleware = CappedHttpCompressionMiddleware(crawler=spider.crawler)
    bomb = gzip_bomb(64)  # 64 MiB of zeros in ~70 KB
    request = Request("http://example.com/bomb")
    response = HtmlResponse(request.url, body=bomb, headers={"Content-Encoding": "gzip"}, request=request)
    with pytest.raises(Refused) as info:
        middleware.process_response(request, response)
    assert info.value.reason == "decompressed_too_large"
    assert _refused(spider) == {"decompressed_too_large": 1}


def test_a_sitemap_gzip_bomb_is_ignored_and_counted() -> None:
    spider = _spider(
        SitemapSpider, {"DOWNLOAD_MAXSIZE": 1024 * 1024}, start_urls="http://example.com/sitemap.xml"
    )
    url = "http://example.com/sitemap.xml.gz"
    response = Response(url, body=gzip_bomb(8), request=Request(url))
    assert spider._get_sitemap_body(response) is None
    assert _refused(spider) == {"decompressed_too_large": 1}


@pytest.mark.parametrize("attack", ["laughs", "xxe"])
def test_xml_bombs_in_sitemaps_and_feeds_stay_inert(attack: str) -> None:
    base = "http://example.com"
    sitemap = _laughs("sitemap") if attack == "laughs" else _xxe("sitemap", base)
    locs = [entry["loc"] for entry in Sitemap(sitemap)]
    feed_body = _laughs("feed") if attack == "laughs" else _xxe("feed", base)
    links = feed_links(XmlResponse(f"{base}/feed.xml", body=feed_body))
    for text in [*locs, *links]:
        assert "lollol" not in text  # no entity expanded
        assert "root:" not in text  # /etc/passwd not read
    if attack == "xxe":
        assert f"{base}/page/1?leak=" in locs
        assert links == [f"{base}/page/2?leak="]


def _scope_mw(spider: Any) -> ScopeSpiderMiddleware:
    return ScopeSpiderMiddleware(spider.crawler)


def test_links_beyond_the_page_cap_are_refused_and_counted() -> None:
    spider = _spider(SiteSpider, {"CRAWLSTREAM_MAX_LINKS_PER_PAGE": 10}, start_url="http://example.com/")
    mw = _scope_mw(spider)
    page = _html("http://example.com/", b"<html></html>")
    kept = [mw.get_processed_request(Request(f"http://example.com/{n}"), page) for n in range(25)]
    assert len([r for r in kept if r is not None]) == 10
    # Pagination is not a link; a page may carry its own cap (a sitemap: 50,000).
    assert mw.get_processed_request(Request("http://example.com/next", meta={NOT_A_LINK: True}), page)
    sitemap = _html("http://example.com/sitemap.xml", b"", **{LINKS_CAP: 50_000})
    assert all(mw.get_processed_request(Request(f"http://example.com/s{n}"), sitemap) for n in range(20))
    assert _refused(spider) == {"links_per_page": 15}


def test_links_out_of_scope_are_refused_by_reason() -> None:
    spider = _spider(SiteSpider, start_url="http://example.com/", deny="/private/")
    mw = _scope_mw(spider)
    page = _html("http://example.com/", b"")
    for url in (
        "file:///etc/passwd",
        "ftp://example.com/x",
        "http://other.example/",
        "http://example.com/" + "x" * 3000,
        "http://example.com/private/a",
    ):
        assert mw.get_processed_request(Request(url), page) is None
    assert mw.get_processed_request(Request("http://example.com/ok"), page) is not None
    assert _refused(spider) == {"scheme": 2, "offsite": 1, "url_too_long": 1, "filtered": 1}


def test_a_host_over_its_page_budget_gets_no_more_links_nor_records() -> None:
    spider = _spider(SiteSpider, {"CRAWLSTREAM_MAX_PAGES_PER_HOST": 2}, start_url="http://example.com/")
    mw = _scope_mw(spider)
    records = [o for n in range(3) for o in spider.parse(_html(f"http://example.com/{n}", b"<html></html>"))]
    assert len([r for r in records if isinstance(r, PageRecord)]) == 2
    assert (
        mw.get_processed_request(Request("http://example.com/more"), _html("http://example.com/", b""))
        is None
    )
    assert _refused(spider) == {"host_budget": 2}


def test_links_of_a_page_count_the_schemes_scrapy_drops() -> None:
    spider = _spider(SiteSpider, start_url="http://example.com/")
    body = (
        b'<html><body><a href="javascript:alert(1)">j</a><a href="mailto:a@b.c">m</a>'
        b'<a href="data:text/html,x">d</a><a href="/fine">f</a></body></html>'
    )
    out = list(spider.parse(_html("http://example.com/", body)))
    assert [r.url for r in out if isinstance(r, Request)] == ["http://example.com/fine"]
    assert _refused(spider) == {"scheme": 3}


def test_feed_entries_are_in_scope_on_the_feed_host_by_default() -> None:
    spider = _spider(FeedSpider, start_urls="http://feeds.example.com/rss")
    assert spider.allowed_domains == ["feeds.example.com"]
    other = _spider(
        FeedSpider, start_urls="http://feeds.example.com/rss", allowed_domains="example.com,news.org"
    )
    assert other.allowed_domains == ["example.com", "news.org"]


def _api_page(url: str, payload: object) -> TextResponse:
    request = Request(url, meta={FULL_BODY: True})
    return TextResponse(url, body=json.dumps(payload).encode(), request=request)


def test_an_api_whose_next_page_never_ends_stops_at_its_budget() -> None:
    spider = _spider(ApiSpider, start_urls="http://api.example.com/v1", max_api_pages="5")
    assert spider.allowed_domains == ["api.example.com"]
    followed = 0
    page = _api_page("http://api.example.com/v1?page=0", {"items": [], "next": "/v1?page=1"})
    for n in range(1, 20):
        nexts = [r for r in spider.parse_api(page) if isinstance(r, Request)]
        if not nexts:
            break
        followed += 1
        assert nexts[0].meta[NOT_A_LINK]
        assert nexts[0].meta["depth_reset"]
        page = _api_page(nexts[0].url, {"items": [], "next": f"/v1?page={n + 1}"})
    assert (followed, spider.api_pages) == (4, 5)
    assert _refused(spider) == {"api_pages": 1}


def test_an_api_page_of_garbage_is_a_dead_letter() -> None:
    spider = _spider(ApiSpider, start_urls="http://api.example.com/v1")
    deep = "[" * 100_000 + "]" * 100_000
    for body in (b"not json", deep.encode(), b'{"items": 5}'):
        page = TextResponse(
            "http://api.example.com/v1", body=body, request=Request("http://api.example.com/v1")
        )
        [letter] = list(spider.parse_api(page))
        assert letter.letter.reason == "api_invalid_json"
        assert len(letter.value) < spider.dead_letter_limit
