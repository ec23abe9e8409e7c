from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.http import HtmlResponse, Response, TextResponse
from scrapy.utils.test import get_reactor_settings

from crawlers.spiders.site import STAT_NON_HTML, STAT_PAGE_RECORDS, SiteSpider, cap_utf8, page_record
from crawlstream.records import PageRecord
from crawlstream.settings import Settings

HTML = (
    b"<html><head><title>  Hello\n  world </title></head><body>"
    b'<a href="/b.html">b</a><a href="/b.html#top">b</a><a href="/c.html?utm_source=x">c</a>'
    b"</body></html>"
)


def _spider(**kwargs: Any) -> SiteSpider:
    # The order of Crawler.crawl(): create the spider while settings are mutable, then apply them.
    settings = {"CRAWLSTREAM_SETTINGS": Settings(), "TELNETCONSOLE_ENABLED": False, **get_reactor_settings()}
    crawler = Crawler(SiteSpider, settings)
    kwargs.setdefault("start_url", "http://example.com/a.html")
    spider = SiteSpider.from_crawler(crawler, **kwargs)
    crawler.spider = spider
    crawler._apply_settings()
    assert crawler.stats is not None
    crawler.stats.open_spider()
    return spider


def _html(url: str, body: bytes = HTML, **meta: Any) -> HtmlResponse:
    request = Request(url, meta=meta, headers={"Referer": "http://example.com/"})
    return HtmlResponse(url, body=body, headers={"Content-Type": "text/html; charset=utf-8"}, request=request)


def test_record_fields() -> None:
    response = _html("http://Example.com/a.html?utm_medium=email#x", depth=2, download_latency=0.25)
    fetched_at = datetime(2026, 1, 2, tzinfo=UTC)

    record = page_record(response, max_body_bytes=4096, job_id="j", run_id="r", fetched_at=fetched_at)

    assert record.url == record.final_url == "http://Example.com/a.html?utm_medium=email#x"
    assert record.canonical_url == "http://example.com/a.html"
    assert (record.status, record.content_type, record.encoding) == (200, "text/html", "utf-8")
    assert record.title == "Hello world"
    assert (record.body, record.body_truncated, record.body_bytes) == (HTML.decode(), False, len(HTML))
    assert (record.depth, record.fetch_latency_s, record.referrer) == (2, 0.25, "http://example.com/")
    assert (record.job_id, record.run_id, record.fetched_at) == ("j", "r", fetched_at)


def test_redirected_response_keys_by_final_url() -> None:
    response = _html("http://example.com/new.html", redirect_urls=["http://example.com/old.html"])

    record = page_record(response, max_body_bytes=4096, job_id="", run_id="")

    assert (record.url, record.final_url) == ("http://example.com/old.html", "http://example.com/new.html")
    assert record.canonical_url == "http://example.com/new.html"


def test_body_cap_cuts_at_a_character_boundary() -> None:
    text = "é" * 10  # two bytes each
    assert cap_utf8(text, 5) == ("éé", True)
    assert cap_utf8(text, 20) == (text, False)
    body = ("<html><title>t</title><body>" + "€" * 2000 + "</body></html>").encode()
    record = page_record(_html("http://example.com/", body), max_body_bytes=1024, job_id="", run_id="")
    assert record.body_truncated
    assert record.body_bytes == len(body)
    assert len(record.body.encode("utf-8")) <= 1024
    assert body.decode().startswith(record.body)


def test_parse_yields_record_then_follows_links_without_canonicalising() -> None:
    spider = _spider()

    out = list(spider.parse(_html("http://example.com/a.html")))

    assert isinstance(out[0], PageRecord)
    urls = [r.url for r in out[1:] if isinstance(r, Request)]
    # Fragments are Scrapy's business (its fingerprint ignores them); tracking params are kept.
    assert "http://example.com/c.html?utm_source=x" in urls
    assert "http://example.com/b.html" in urls
    assert spider.crawler.stats.get_value(STAT_PAGE_RECORDS) == 1


@pytest.mark.parametrize(
    "response",
    [
        TextResponse("http://example.com/r.txt", body=b"x", headers={"Content-Type": "text/plain"}),
        Response("http://example.com/i.png", body=b"\x89PNG", headers={"Content-Type": "image/png"}),
        HtmlResponse(
            "http://example.com/e", status=404, body=b"<html></html>", headers={"Content-Type": "text/html"}
        ),
    ],
)
def test_non_html_yields_nothing_and_is_counted(response: Response) -> None:
    spider = _spider()

    assert list(spider.parse(response)) == []
    assert spider.crawler.stats.get_value(STAT_NON_HTML) == 1


def test_xhtml_is_html() -> None:
    spider = _spider()
    response = HtmlResponse(
        "http://example.com/x", body=HTML, headers={"Content-Type": "application/xhtml+xml"}, encoding="utf-8"
    )
    assert isinstance(next(iter(spider.parse(response))), PageRecord)


def test_max_pages_counts_records_exactly() -> None:
    from scrapy.exceptions import CloseSpider

    spider = _spider(max_pages="2")
    assert len([o for o in spider.parse(_html("http://example.com/1")) if isinstance(o, PageRecord)]) == 1

    second = spider.parse(_html("http://example.com/2"))
    assert isinstance(next(second), PageRecord)
    with pytest.raises(CloseSpider) as closed:
        next(second)
    assert closed.value.reason == "max_pages"
    # A response that was already in flight yields nothing once the cap is reached.
    assert list(spider.parse(_html("http://example.com/3"))) == []


def test_arguments_and_defaults() -> None:
    spider = _spider(
        start_url=None,
        start_urls="http://a.example/,http://b.example:8080/x",
        max_depth="3",
        allow_private_hosts="intranet.local",
    )
    crawler = spider.crawler
    assert spider.allowed_domains == ["a.example", "b.example"]
    assert crawler.settings.getint("DEPTH_LIMIT") == 3
    assert crawler.settings.getlist("CRAWLSTREAM_ALLOW_PRIVATE_HOSTS") == ["intranet.local"]
    assert crawler.settings.getbool("ROBOTSTXT_OBEY")
    with pytest.raises(ValueError, match="start_url"):
        SiteSpider()
