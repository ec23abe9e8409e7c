"""FeedSpider's feed reading (feedparser): RSS 1.0/2.0 and Atom links, relative ones resolved."""

from __future__ import annotations

from pathlib import Path

from scrapy.http import XmlResponse

from crawlers.spiders.feed import feed_links

RSS2 = b"""<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>
<item><title>a</title><link>https://example.org/a</link></item>
<item><title>b</title><link>  /b  </link></item>
<item><title>no link</title></item>
</channel></rss>"""
RSS1 = b"""<?xml version="1.0"?>
<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns="http://purl.org/rss/1.0/">
<channel rdf:about="https://example.org/"><title>t</title><link>https://example.org/</link></channel>
<item rdf:about="https://example.org/r1"><title>r1</title><link>https://example.org/r1</link></item>
</rdf:RDF>"""
ATOM = b"""<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom"><title>t</title>
<entry><title>x</title><link rel="self" href="https://example.org/x.atom"/>
<link rel="alternate" href="https://example.org/x"/></entry>
<entry><title>y</title><link href="y.html"/></entry>
</feed>"""


def links(body: bytes, url: str = "https://example.org/feeds/main.xml") -> list[str]:
    return feed_links(XmlResponse(url, body=body))


def test_rss2_entries_in_order_relative_links_resolved() -> None:
    assert links(RSS2) == ["https://example.org/a", "https://example.org/b"]


def test_rss1_items() -> None:
    assert links(RSS1) == ["https://example.org/r1"]


def test_atom_prefers_the_alternate_link_and_resolves_relative_ones() -> None:
    assert links(ATOM) == ["https://example.org/x", "https://example.org/feeds/y.html"]


def test_a_body_naming_a_local_file_is_not_opened(tmp_path: Path) -> None:
    feed = tmp_path / "local.xml"
    feed.write_bytes(RSS2)
    assert links(str(feed).encode()) == []  # feedparser would read the file if handed bare bytes


def test_garbage_is_no_links() -> None:
    assert links(b"\x00\xff not a feed <<<") == []
