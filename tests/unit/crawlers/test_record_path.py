"""The record path's faster helpers give exactly what the straightforward versions gave."""

from __future__ import annotations

import gc

import pytest
from scrapy.exceptions import NotConfigured
from scrapy.http import HtmlResponse, Request
from scrapy.utils.test import get_crawler

from crawlers.gctune import GcTuning
from crawlers.pages import _CANONICAL_XPATH, canonical_link, cap_utf8, page_record, page_title

DOCUMENTS = [
    b"<html><head><title> A  \n title </title></head><body></body></html>",
    b"<html><head><title></title><title>second</title></head></html>",
    b"<html><body><title>in body</title><p>x</p></body></html>",
    b"<title>bare</title>",
    b"",
    b"no markup at all",
    b"<html><head><TITLE>Upper</TITLE><link REL='Canonical Alternate' href=' /c?a=1 '></head></html>",
    b'<html><head><link rel="canonical" href=""><link rel="canonical" href="/d"></head></html>',
    b'<html><head><link rel="nofollow canonical" href="http://other.example/e"></head></html>',
    b'<html><body><link rel="canonical" href="/not-in-head"></body></html>',
    "<html><head><title>caf\u00e9 \u2603 \U0001f600</title></head></html>".encode(),
    b"<html><head><title>bad \xff\xfe bytes</title></head></html>",
]


def _response(body: bytes) -> HtmlResponse:
    url = "http://example.com/p?utm_source=x&b=1"
    return HtmlResponse(url, body=body, headers={"Content-Type": "text/html"}, request=Request(url))


@pytest.mark.parametrize("body", DOCUMENTS)
def test_title_and_canonical_link_match_parsel(body: bytes) -> None:
    response = _response(body)
    expected_title = " ".join((response.xpath("//title/text()").get() or "").split())
    assert page_title(response) == expected_title
    href = response.xpath(_CANONICAL_XPATH).get()
    expected_link = response.urljoin(href.strip()) if href and href.strip() else None
    assert canonical_link(response) == expected_link


@pytest.mark.parametrize("body", DOCUMENTS)
def test_page_record_is_validated_and_round_trips(body: bytes) -> None:
    record = page_record(_response(body), max_body_bytes=1024, job_id="j", run_id="r")
    assert type(record).model_validate_json(record.to_bytes()) == record


CAPS = [
    ("", 1024),
    ("a" * 256, 1024),
    ("a" * 257, 1024),
    ("\U0001f600" * 256, 1024),
    ("\U0001f600" * 257, 1024),
    ("\u00e9" * 600, 1024),
]


@pytest.mark.parametrize(("text", "cap"), CAPS)
def test_cap_utf8_fast_path_agrees_with_encoding(text: str, cap: int) -> None:
    encoded = text.encode("utf-8")
    expected = (encoded[:cap].decode("utf-8", errors="ignore"), len(encoded) > cap)
    assert cap_utf8(text, cap) == expected


def test_gc_tuning_raises_threshold_during_crawl_and_restores() -> None:
    before = gc.get_threshold()
    ext = GcTuning.from_crawler(get_crawler(settings_dict={"CRAWLSTREAM_GC_GEN0_THRESHOLD": 20_000}))
    ext.spider_opened()
    try:
        assert gc.get_threshold() == (max(20_000, before[0]), before[1], before[2])
        assert gc.get_freeze_count() > 0
    finally:
        ext.spider_closed()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_gc_tuning_off_and_bad_values() -> None:
    with pytest.raises(NotConfigured):
        GcTuning.from_crawler(get_crawler(settings_dict={"CRAWLSTREAM_GC_GEN0_THRESHOLD": 0}))
    with pytest.raises(ValueError, match="CRAWLSTREAM_GC_GEN0_THRESHOLD"):
        GcTuning(-1)
