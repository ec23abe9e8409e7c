"""Crawl-delay and Retry-After pinned exactly (crawlers/politeness.py), over a fake downloader.

The fake downloader hands out real Scrapy ``Slot`` objects keyed by host (what
``Downloader._get_slot`` does) and records ``_process_queue`` calls (a slot being woken). The
clock (``time.monotonic``) and the reactor's ``call_later`` are replaced, so a pause is checked by
its scheduled end and the resume is run by the test, at the moment the middleware scheduled it:
no sleep, no timing bound.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from scrapy import Request
from scrapy.core.downloader import Slot
from scrapy.crawler import Crawler
from scrapy.exceptions import IgnoreRequest
from scrapy.http import Response
from scrapy.robotstxt import ProtegoRobotParser
from scrapy.utils.test import get_crawler

from crawlers import politeness
from crawlers.politeness import (
    STAT_CRAWL_DELAY_HOSTS,
    STAT_RETRY_AFTER,
    CrawlDelayRobotsTxtMiddleware,
    RetryAfterMiddleware,
    delay_floors,
)


class FakeDownloader:
    def __init__(self, delay: float = 0.5, jitter: float = 0.5) -> None:
        self.slots: dict[str, Slot] = {}
        self.woken: list[Slot] = []
        self._delay, self._jitter = delay, jitter

    def _get_slot(self, request: Request) -> tuple[str, Slot]:
        key = request.url.split("/")[2]
        return key, self.slots.setdefault(key, Slot(8, self._delay, self._jitter))

    def _process_queue(self, slot: Slot) -> None:
        self.woken.append(slot)


@dataclass
class FakeEngine:
    downloader: FakeDownloader = field(default_factory=FakeDownloader)


@dataclass
class Scheduled:
    delay: float
    call: Callable[..., None]
    args: tuple[Any, ...]

    def run(self) -> None:
        self.call(*self.args)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.scheduled: list[Scheduled] = []

    def monotonic(self) -> float:
        return self.now

    def call_later(self, delay: float, call: Callable[..., None], *args: Any) -> None:
        self.scheduled.append(Scheduled(delay, call, args))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(politeness.time, "monotonic", fake.monotonic)
    monkeypatch.setattr(politeness, "call_later", fake.call_later)
    return fake


def crawler_with(**settings: Any) -> tuple[Crawler, FakeDownloader]:
    crawler = get_crawler(settings_dict={"ROBOTSTXT_OBEY": True, **settings})
    engine = FakeEngine()
    crawler.engine = engine  # type: ignore[assignment]
    return crawler, engine.downloader


def robots(crawler: Crawler, body: str) -> ProtegoRobotParser:
    return ProtegoRobotParser.from_crawler(crawler, body.encode())


# --- Crawl-delay ------------------------------------------------------------------------------


def test_crawl_delay_is_applied_to_the_hosts_slot_without_jitter_and_counted_once() -> None:
    crawler, downloader = crawler_with()
    middleware = CrawlDelayRobotsTxtMiddleware(crawler)
    rp = robots(crawler, "User-agent: *\nCrawl-delay: 3\n")

    middleware.process_request_2(rp, Request("http://a.example/1"))
    middleware.process_request_2(rp, Request("http://a.example/2"))

    slot = downloader.slots["a.example"]
    assert (slot.delay, slot.jitter) == (3.0, 0.0)
    assert delay_floors(crawler) == {"a.example": 3.0}
    assert crawler.stats is not None
    assert crawler.stats.get_value(STAT_CRAWL_DELAY_HOSTS) == 1
    other = downloader._get_slot(Request("http://b.example/"))[1]
    assert (other.delay, other.jitter) == (0.5, 0.5)  # per host: another host keeps its own delay


def test_crawl_delay_is_capped_by_the_setting() -> None:
    crawler, downloader = crawler_with(CRAWLSTREAM_MAX_CRAWL_DELAY_S=10)
    middleware = CrawlDelayRobotsTxtMiddleware(crawler)

    middleware.process_request_2(
        robots(crawler, "User-agent: *\nCrawl-delay: 3600\n"), Request("http://a.example/")
    )

    assert downloader.slots["a.example"].delay == 10.0
    assert delay_floors(crawler) == {"a.example": 10.0}


def test_a_longer_configured_delay_is_kept_but_its_jitter_dropped() -> None:
    crawler, downloader = crawler_with()
    downloader._get_slot(Request("http://a.example/"))[1].delay = 5.0
    middleware = CrawlDelayRobotsTxtMiddleware(crawler)

    middleware.process_request_2(
        robots(crawler, "User-agent: *\nCrawl-delay: 2\n"), Request("http://a.example/")
    )

    slot = downloader.slots["a.example"]
    assert (slot.delay, slot.jitter) == (5.0, 0.0)  # jitter could bring a gap under the Crawl-delay
    assert delay_floors(crawler) == {"a.example": 2.0}


def test_no_crawl_delay_leaves_the_slot_alone_and_a_disallowed_url_is_refused() -> None:
    crawler, downloader = crawler_with()
    middleware = CrawlDelayRobotsTxtMiddleware(crawler)
    rp = robots(crawler, "User-agent: *\nDisallow: /private\n")

    middleware.process_request_2(rp, Request("http://a.example/public"))
    with pytest.raises(IgnoreRequest):
        middleware.process_request_2(rp, Request("http://a.example/private/x"))

    assert downloader.slots == {}  # no slot was looked up, so none was changed
    assert delay_floors(crawler) == {}


def test_dont_obey_robotstxt_skips_the_crawl_delay() -> None:
    crawler, downloader = crawler_with()
    middleware = CrawlDelayRobotsTxtMiddleware(crawler)

    middleware.process_request_2(
        robots(crawler, "User-agent: *\nCrawl-delay: 3\n"),
        Request("http://a.example/", meta={"dont_obey_robotstxt": True}),
    )

    assert "a.example" not in downloader.slots
    assert delay_floors(crawler) == {}


# --- Retry-After ------------------------------------------------------------------------------


def answer(url: str, status: int, retry_after: str | None) -> tuple[Request, Response]:
    request = Request(url)
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    return request, Response(url, status=status, headers=headers, request=request)


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_pauses_the_host_exactly_that_long_then_resumes_it(clock: Clock, status: int) -> None:
    crawler, downloader = crawler_with()
    middleware = RetryAfterMiddleware(crawler)
    request, response = answer("http://a.example/x", status, "7")

    assert middleware.process_response(request, response) is response

    slot = downloader.slots["a.example"]
    # No request leaves the slot before lastseen + delay: exactly the 7 s asked for.
    assert (slot.delay, slot.jitter, slot.lastseen) == (7.0, 0.0, clock.now)
    assert crawler.stats is not None
    assert crawler.stats.get_value(STAT_RETRY_AFTER) == 1
    ((resume,),) = [clock.scheduled]
    assert resume.delay == 7.0  # resumed on time, not later
    other = downloader._get_slot(Request("http://b.example/"))[1]
    assert other.delay == 0.5  # other hosts are not paused

    clock.now += 7.0
    resume.run()

    assert (slot.delay, slot.jitter) == (0.5, 0.5)  # the host's own delay and jitter again
    assert downloader.woken == [slot]  # its queued requests go now, not after the long delay
    assert middleware._paused_until == {}


def test_retry_after_is_capped_by_the_setting(clock: Clock) -> None:
    crawler, downloader = crawler_with(CRAWLSTREAM_MAX_RETRY_AFTER_S=30)
    middleware = RetryAfterMiddleware(crawler)

    middleware.process_response(*answer("http://a.example/", 429, "86400"))

    assert downloader.slots["a.example"].delay == 30.0
    assert [s.delay for s in clock.scheduled] == [30.0]


def test_retry_after_as_an_http_date_pauses_until_that_date(clock: Clock) -> None:
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    crawler, downloader = crawler_with()
    middleware = RetryAfterMiddleware(crawler)
    # One second of slack: the header has whole seconds and the middleware reads the wall clock.
    when = format_datetime(datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=21), usegmt=True)

    middleware.process_response(*answer("http://a.example/", 503, when))

    delay = downloader.slots["a.example"].delay
    assert 19.0 <= delay <= 21.0
    assert [s.delay for s in clock.scheduled] == [delay]


@pytest.mark.parametrize(
    ("status", "retry_after"), [(200, "5"), (404, "5"), (500, "5"), (429, None), (429, "0"), (503, "soon")]
)
def test_no_pause_without_a_usable_retry_after_on_429_or_503(
    clock: Clock, status: int, retry_after: str | None
) -> None:
    crawler, downloader = crawler_with()
    middleware = RetryAfterMiddleware(crawler)

    middleware.process_response(*answer("http://a.example/", status, retry_after))

    assert "a.example" not in downloader.slots
    assert clock.scheduled == []


def test_a_longer_retry_after_extends_the_pause_and_only_its_own_resume_counts(clock: Clock) -> None:
    crawler, downloader = crawler_with()
    middleware = RetryAfterMiddleware(crawler)
    middleware.process_response(*answer("http://a.example/1", 429, "10"))
    clock.now += 2.0
    middleware.process_response(*answer("http://a.example/2", 429, "3"))  # ends before the pause: ignored
    middleware.process_response(*answer("http://a.example/3", 429, "20"))  # ends after it: extends
    first, second = clock.scheduled
    slot = downloader.slots["a.example"]
    assert (second.delay, slot.delay, slot.lastseen) == (20.0, 20.0, clock.now)

    clock.now += 8.0
    first.run()  # the first pause's end: the host stays paused
    assert slot.delay == 20.0
    assert downloader.woken == []

    clock.now += 12.0
    second.run()
    assert (slot.delay, slot.jitter) == (0.5, 0.5)  # the delay before the first pause, not a paused one
    assert downloader.woken == [slot]


def test_resume_keeps_the_crawl_delay_floor_without_jitter(clock: Clock) -> None:
    crawler, downloader = crawler_with()
    robots_mw = CrawlDelayRobotsTxtMiddleware(crawler)
    robots_mw.process_request_2(
        robots(crawler, "User-agent: *\nCrawl-delay: 2\n"), Request("http://a.example/")
    )
    middleware = RetryAfterMiddleware(crawler)

    middleware.process_response(*answer("http://a.example/", 429, "9"))
    slot = downloader.slots["a.example"]
    assert slot.delay == 9.0
    (resume,) = clock.scheduled
    clock.now += 9.0
    resume.run()

    assert (slot.delay, slot.jitter) == (2.0, 0.0)


def test_resume_cancels_the_slots_pending_wake_up(clock: Clock) -> None:
    crawler, downloader = crawler_with()
    middleware = RetryAfterMiddleware(crawler)
    middleware.process_response(*answer("http://a.example/", 429, "4"))
    slot = downloader.slots["a.example"]

    class LaterCall:
        cancelled = False

        def cancel(self) -> None:
            self.cancelled = True

    later = LaterCall()
    slot.latercall = later  # type: ignore[assignment]  # the downloader's wake-up for the long delay
    clock.scheduled[0].run()

    assert later.cancelled
    assert slot.latercall is None
    assert downloader.woken == [slot]
