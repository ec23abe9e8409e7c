"""SitemapSpider (crawlers/spiders/sitemap.py) over faked responses: an index leads to its
sitemaps (as sitemaps, bounded), entries older than the recrawl interval are skipped by their
lastmod, entries without one or with a bad one are fetched, gzip bombs are refused."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta
from typing import Any

from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.http import XmlResponse
from scrapy.utils.test import get_reactor_settings

from crawlers.limits import LINKS_CAP, NOT_A_LINK
from crawlers.spiders.sitemap import MAX_SITEMAP_ENTRIES, SitemapSpider, parse_lastmod
from crawlstream.settings import Settings

NS = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'
NOW = datetime.now(UTC)


def _spider(**kwargs: Any) -> SitemapSpider:
    settings = {"CRAWLSTREAM_SETTINGS": Settings(), "TELNETCONSOLE_ENABLED": False, **get_reactor_settings()}
    crawler = Crawler(SitemapSpider, settings)
    kwargs.setdefault("start_urls", "http://site.example/sitemap.xml")
    spider = SitemapSpider.from_crawler(crawler, **kwargs)
    crawler.spider = spider
    crawler._apply_settings()
    assert crawler.stats is not None
    crawler.stats.open_spider()
    spider._max_size = 1024 * 1024
    return spider


def _xml(url: str, body: bytes) -> XmlResponse:
    return XmlResponse(url, body=body, request=Request(url))


def _urlset(*entries: tuple[str, str | None]) -> bytes:
    items = "".join(
        f"<url><loc>{loc}</loc>{f'<lastmod>{lastmod}</lastmod>' if lastmod else ''}</url>"
        for loc, lastmod in entries
    )
    return f'<?xml version="1.0"?><urlset {NS}>{items}</urlset>'.encode()


def test_an_index_leads_to_its_sitemaps_as_bounded_sitemap_requests() -> None:
    spider = _spider()
    index = (
        f'<?xml version="1.0"?><sitemapindex {NS}>'
        "<sitemap><loc>http://site.example/a.xml</loc></sitemap>"
        "<sitemap><loc>http://site.example/b.xml.gz</loc></sitemap></sitemapindex>"
    ).encode()

    requests = list(spider._parse_sitemap(_xml("http://site.example/sitemap.xml", index)))

    assert [r.url for r in requests] == ["http://site.example/a.xml", "http://site.example/b.xml.gz"]
    for r in requests:
        assert r.callback == spider._parse_sitemap
        assert r.errback == spider.fetch_failed
        assert r.meta[NOT_A_LINK]
        assert r.meta[LINKS_CAP] == MAX_SITEMAP_ENTRIES


def test_entries_older_than_the_recrawl_interval_are_skipped_and_counted() -> None:
    spider = _spider(recrawl_interval_s=str(30 * 86400))
    old = (NOW - timedelta(days=60)).date().isoformat()
    recent = (NOW - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = _urlset(
        ("http://site.example/old", old),
        ("http://site.example/recent", recent),
        ("http://site.example/undated", None),
        ("http://site.example/garbled", "last tuesday"),
    )

    requests = list(spider._parse_sitemap(_xml("http://site.example/sitemap.xml", body)))

    assert [r.url for r in requests] == [
        "http://site.example/recent",
        "http://site.example/undated",
        "http://site.example/garbled",
    ]
    assert all(r.callback == spider.parse and r.errback == spider.fetch_failed for r in requests)
    assert spider.crawler.stats is not None
    assert spider.crawler.stats.get_value("crawlstream/sitemap_skipped_lastmod") == 1


def test_without_an_interval_every_entry_is_fetched_and_bad_locs_are_refused() -> None:
    spider = _spider()
    body = _urlset(("http://site.example/old", "2001-01-01"), ("http://[::1", None))
    requests = list(spider._parse_sitemap(_xml("http://site.example/sitemap.xml", body)))
    assert [r.url for r in requests] == ["http://site.example/old"]
    assert spider.crawler.stats is not None
    assert spider.crawler.stats.get_value("crawlstream/refused/invalid_url") == 1


def test_a_gzip_bomb_is_refused_not_inflated() -> None:
    spider = _spider()
    bomb = gzip.compress(b"<" + b" " * (2 * 1024 * 1024))
    response = XmlResponse(
        "http://site.example/s.xml.gz", body=bomb, request=Request("http://site.example/s.xml.gz")
    )
    assert spider._get_sitemap_body(response) is None
    assert spider.crawler.stats is not None
    assert spider.crawler.stats.get_value("crawlstream/refused/decompressed_too_large") == 1


def test_lastmod_forms() -> None:
    assert parse_lastmod("2024-05-01") == datetime(2024, 5, 1, tzinfo=UTC)
    assert parse_lastmod(" 2024-05-01T10:00:00Z ") == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert parse_lastmod("2024-05-01T12:00:00+02:00") == datetime(2024, 5, 1, 10, tzinfo=UTC)
    for bad in (None, "", "yesterday", "2024-13-01"):
        assert parse_lastmod(bad) is None
