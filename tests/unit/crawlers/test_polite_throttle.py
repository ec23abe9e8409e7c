from __future__ import annotations

from types import SimpleNamespace

from scrapy import Request
from scrapy.core.downloader import Slot
from scrapy.http import HtmlResponse
from scrapy.utils.test import get_crawler

from crawlers.politeness import PoliteAutoThrottle, delay_floors


def test_autothrottle_never_goes_below_the_crawl_delay() -> None:
    crawler = get_crawler(settings_dict={"AUTOTHROTTLE_ENABLED": True, "AUTOTHROTTLE_START_DELAY": 0.1})
    slot = Slot(4, 2.0, 0.0)
    crawler.engine = SimpleNamespace(downloader=SimpleNamespace(slots={"h": slot}, _delay=0))  # type: ignore[assignment]
    throttle = PoliteAutoThrottle(crawler)
    throttle._spider_opened(crawler.spider)  # type: ignore[arg-type]
    delay_floors(crawler)["h"] = 2.0  # robots.txt said Crawl-delay: 2
    request = Request("http://h/", meta={"download_slot": "h", "download_latency": 0.001})
    response = HtmlResponse("http://h/", body=b"<html></html>", request=request)
    for _ in range(20):  # fast answers make AutoThrottle lower the delay
        throttle._response_downloaded(response, request, crawler.spider)  # type: ignore[arg-type]
    assert slot.delay == 2.0
    del delay_floors(crawler)["h"]
    throttle._response_downloaded(response, request, crawler.spider)  # type: ignore[arg-type]
    assert slot.delay < 2.0  # without a floor, AutoThrottle works as usual
