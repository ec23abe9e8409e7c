"""FeedSpider (crawlers/spiders/feed.py) over faked responses: RSS 2.0 and Atom (which had no test
at all), relative entry links, Atom's rel rules, entities never resolved."""

from __future__ import annotations

from typing import Any

from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.http import Response, TextResponse, XmlResponse
from scrapy.utils.test import get_reactor_settings

from crawlers.spiders.feed import FeedSpider, feed_links
from crawlstream.settings import Settings

RSS = b"""<?xml version="1.0"?>
<rss version="2.0"><channel><title>t</title>
<item><title>a</title><link>http://feed.example/a</link></item>
<item><title>b</title><link>  /b?x=1  </link></item>
<item><title>empty</title><link>   </link></item>
</channel></rss>"""

ATOM = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>t</title>
<link rel="self" href="http://feed.example/atom.xml"/>
<entry><title>one</title><link href="http://feed.example/one"/></entry>
<entry><title>two</title><link rel="alternate" href="two"/><link rel="enclosure" href="http://feed.example/two.mp3"/></entry>
<entry><title>three</title><link rel="replies" href="http://feed.example/three#comments"/></entry>
</feed>"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE rss [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<rss version="2.0"><channel><item><link>http://feed.example/&secret;</link></item></channel></rss>"""


def _spider(**kwargs: Any) -> FeedSpider:
    settings = {"CRAWLSTREAM_SETTINGS": Settings(), "TELNETCONSOLE_ENABLED": False, **get_reactor_settings()}
    crawler = Crawler(FeedSpider, settings)
    kwargs.setdefault("start_urls", "http://feed.example/feed.xml")
    spider = FeedSpider.from_crawler(crawler, **kwargs)
    crawler.spider = spider
    crawler._apply_settings()
    assert crawler.stats is not None
    crawler.stats.open_spider()
    return spider


def _feed(url: str, body: bytes) -> XmlResponse:
    return XmlResponse(url, body=body, request=Request(url))


def test_rss_items_are_followed_relative_links_joined_and_blank_ones_dropped() -> None:
    spider = _spider()
    response = _feed("http://feed.example/feed.xml", RSS)

    # feedparser resolves relative links against the feed's URL.
    assert feed_links(response) == ["http://feed.example/a", "http://feed.example/b?x=1"]
    requests = [r for r in spider.parse_feed(response) if isinstance(r, Request)]
    assert [r.url for r in requests] == ["http://feed.example/a", "http://feed.example/b?x=1"]
    assert all(r.callback == spider.parse and r.errback == spider.fetch_failed for r in requests)


def test_atom_entries_follow_their_alternate_link_only() -> None:
    spider = _spider(start_urls="http://feed.example/atom.xml")
    response = _feed("http://feed.example/dir/atom.xml", ATOM)

    # The feed's own rel="self", an enclosure and a replies link are not entries' pages.
    assert feed_links(response) == ["http://feed.example/one", "http://feed.example/dir/two"]
    requests = [r for r in spider.parse_feed(response) if isinstance(r, Request)]
    assert [r.url for r in requests] == ["http://feed.example/one", "http://feed.example/dir/two"]


def test_an_external_entity_is_never_resolved() -> None:
    links = feed_links(_feed("http://feed.example/feed.xml", XXE))
    assert not any("root:" in link for link in links)


def test_a_response_that_is_no_text_yields_nothing() -> None:
    spider = _spider()
    binary = Response(
        "http://feed.example/feed.xml", body=b"\x89PNG", request=Request("http://feed.example/")
    )
    assert list(spider.parse_feed(binary)) == []


def test_entries_on_other_hosts_are_offsite_unless_allowed() -> None:
    assert _spider().allowed_domains == ["feed.example"]
    assert _spider(allowed_domains="a.example,b.example").allowed_domains == ["a.example", "b.example"]
    text = TextResponse(
        "http://feed.example/f", body=b"<rss/>", encoding="utf-8", request=Request("http://x/")
    )
    assert feed_links(text) == []
