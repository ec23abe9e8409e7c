"""Politeness rules test_politeness_middlewares.py leaves open (found by `make mutate`): a delay of
one second is still a delay, the built-in caps agree with the project's settings, Retry-After
dates in any zone, one pause per answer, a dropped slot is not woken, and the per-host table
shared by a frontier job's crawlers (robots.txt taken from it and stored in it, a Retry-After
cooldown set in it).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from scrapy import Request
from scrapy.http import HtmlResponse, TextResponse
from scrapy.utils.test import get_crawler
from twisted.internet.defer import Deferred

from crawlers import hoststate
from crawlers import settings as project_settings
from crawlers.politeness import (
    CrawlDelayRobotsTxtMiddleware,
    PoliteAutoThrottle,
    RetryAfterMiddleware,
    delay_floors,
    parse_retry_after,
)
from tests.unit.crawlers.test_politeness_middlewares import Clock, answer, crawler_with, robots


@pytest.fixture(name="clock")
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    from crawlers import politeness

    fake = Clock()
    monkeypatch.setattr(politeness.time, "monotonic", fake.monotonic)
    monkeypatch.setattr(politeness, "call_later", fake.call_later)
    return fake


class FakeHostStates:
    """The part of crawlers.hoststate.HostStates the politeness middlewares use."""

    def __init__(self, bodies: dict[tuple[str, str], str] | None = None) -> None:
        self.bodies = bodies or {}
        self.asked: list[tuple[str, str]] = []
        self.updates: list[tuple[str, dict[str, Any]]] = []
        self.cooldowns: list[tuple[str, float]] = []

    def robots_body(self, host: str, netloc: str) -> str | None:
        self.asked.append((host, netloc))
        return self.bodies.get((host, netloc))

    def update(self, host: str, **changes: Any) -> None:
        self.updates.append((host, changes))

    def cooldown(self, host: str, seconds: float) -> None:
        self.cooldowns.append((host, seconds))


def shared(crawler: Any, states: FakeHostStates) -> FakeHostStates:
    hoststate._STATES[crawler] = states  # type: ignore[assignment]
    return states


# --- Crawl-delay ------------------------------------------------------------------------------


@pytest.mark.parametrize("delay", ["1", "0.5"])
def test_a_crawl_delay_of_a_second_or_less_is_applied_too(delay: str) -> None:
    crawler, downloader = crawler_with()
    middleware = CrawlDelayRobotsTxtMiddleware(crawler)

    middleware.process_request_2(
        robots(crawler, f"User-agent: *\nCrawl-delay: {delay}\n"), Request("http://a.example/")
    )

    assert delay_floors(crawler) == {"a.example": float(delay)}
    assert downloader.slots["a.example"].jitter == 0.0


def test_the_built_in_caps_are_the_projects_settings() -> None:
    crawler, _downloader = crawler_with()  # a crawler without the project's settings
    assert "CRAWLSTREAM_MAX_CRAWL_DELAY_S" not in crawler.settings
    assert (
        CrawlDelayRobotsTxtMiddleware(crawler).max_delay_s == project_settings.CRAWLSTREAM_MAX_CRAWL_DELAY_S
    )
    assert RetryAfterMiddleware(crawler).max_wait_s == project_settings.CRAWLSTREAM_MAX_RETRY_AFTER_S


def test_robots_txt_fresh_in_the_shared_table_is_used_without_fetching_it() -> None:
    crawler, downloader = crawler_with()
    states = shared(
        crawler, FakeHostStates({("a.example", "a.example:8080"): "User-agent: *\nCrawl-delay: 4\n"})
    )
    middleware = CrawlDelayRobotsTxtMiddleware(crawler)
    request = Request("http://a.example:8080/page")

    rp = asyncio.run(middleware.robot_parser(request))  # no engine download: it would fail here

    assert rp is not None
    assert states.asked == [("a.example", "a.example:8080")]
    middleware.process_request_2(rp, request)
    assert delay_floors(crawler) == {downloader._get_slot(request)[0]: 4.0}
    asyncio.run(middleware.robot_parser(request))
    assert len(states.asked) == 1  # parsed once per netloc


def test_robots_txt_fetched_is_stored_in_the_shared_table() -> None:
    crawler, _downloader = crawler_with()
    states = shared(crawler, FakeHostStates())
    middleware = CrawlDelayRobotsTxtMiddleware(crawler)
    request = Request("http://a.example:8080/page")
    middleware._parsers["a.example:8080"] = Deferred()
    body = "User-agent: *\nDisallow: /x\n" + "#" * (600 * 1024)
    response = TextResponse("http://a.example:8080/robots.txt", status=200, body=body.encode())
    before = datetime.now(UTC)

    asyncio.run(middleware._parse_robots(response, "a.example:8080", request))

    ((host, changes),) = states.updates
    assert host == "a.example"
    assert changes["robots_netloc"] == "a.example:8080"
    assert changes["robots_status"] == 200
    assert changes["robots_body"] == body[: 500 * 1024]  # at most 500 KiB kept
    assert before <= changes["robots_fetched_at"] <= datetime.now(UTC)


def test_a_robots_txt_server_error_is_stored_without_its_body() -> None:
    crawler, _downloader = crawler_with()
    states = shared(crawler, FakeHostStates())
    middleware = CrawlDelayRobotsTxtMiddleware(crawler)
    middleware._parsers["a.example"] = Deferred()
    response = TextResponse("http://a.example/robots.txt", status=503, body=b"Service Unavailable")

    asyncio.run(middleware._parse_robots(response, "a.example", Request("http://a.example/")))

    ((_host, changes),) = states.updates
    assert (changes["robots_status"], changes["robots_body"]) == (503, "")


# --- Retry-After ------------------------------------------------------------------------------


def test_retry_after_dates_in_any_zone_count_from_now() -> None:
    now = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Wed, 25 Nov 2026 12:00:30 -0000", now=now) == 30.0  # no zone: UTC
    assert parse_retry_after("Wed, 25 Nov 2026 14:00:45 +0200", now=now) == 45.0
    assert parse_retry_after("Wed, 25 Nov 2026 12:00:10 GMT", now=now) == 10.0


def test_a_retry_after_of_one_second_pauses_the_host(clock: Clock) -> None:
    crawler, downloader = crawler_with()
    middleware = RetryAfterMiddleware(crawler)

    middleware.process_response(*answer("http://a.example/", 429, "1"))

    assert downloader.slots["a.example"].delay == 1.0
    assert [s.delay for s in clock.scheduled] == [1.0]


def test_the_same_pause_asked_twice_is_counted_and_resumed_once(clock: Clock) -> None:
    crawler, _downloader = crawler_with()
    middleware = RetryAfterMiddleware(crawler)

    middleware.process_response(*answer("http://a.example/1", 429, "5"))
    middleware.process_response(*answer("http://a.example/2", 503, "5"))  # same moment, same end

    assert len(clock.scheduled) == 1
    assert crawler.stats is not None
    assert crawler.stats.get_value("crawlstream/retry_after_waits") == 1


def test_a_retry_after_sets_the_hosts_cooldown_in_the_shared_table(clock: Clock) -> None:
    crawler, _downloader = crawler_with()
    states = shared(crawler, FakeHostStates())
    middleware = RetryAfterMiddleware(crawler)

    middleware.process_response(*answer("http://a.example:8080/x", 429, "12"))

    assert states.cooldowns == [("a.example", 12.0)]  # the host, not its slot key with the port


def test_a_slot_the_downloader_dropped_is_not_woken(clock: Clock) -> None:
    crawler, downloader = crawler_with()
    middleware = RetryAfterMiddleware(crawler)
    middleware.process_response(*answer("http://a.example/", 429, "3"))
    slot = downloader.slots.pop("a.example")  # Scrapy drops idle slots

    clock.now += 3.0
    clock.scheduled[0].run()

    assert downloader.woken == []
    assert (slot.delay, slot.jitter) == (0.5, 0.5)  # restored all the same


# --- AutoThrottle -----------------------------------------------------------------------------


def test_autothrottle_skips_a_slot_the_downloader_no_longer_has() -> None:
    crawler = get_crawler(settings_dict={"AUTOTHROTTLE_ENABLED": True})
    crawler.engine = SimpleNamespace(downloader=SimpleNamespace(slots={}, _delay=0))  # type: ignore[assignment]
    throttle = PoliteAutoThrottle(crawler)
    delay_floors(crawler)["h"] = 2.0
    request = Request("http://h/", meta={"download_slot": "h", "download_latency": 0.001})

    throttle._response_downloaded(HtmlResponse("http://h/", body=b"", request=request), request, None)  # type: ignore[arg-type]

    assert crawler.engine.downloader.slots == {}  # nothing to adjust, nothing raised


def test_a_crawl_delay_learned_during_a_pause_holds_after_it(clock: Clock) -> None:
    crawler, downloader = crawler_with()  # the host's own delay 0.5 s with jitter
    retry_after = RetryAfterMiddleware(crawler)
    retry_after.process_response(*answer("http://a.example/", 503, "9"))
    slot = downloader.slots["a.example"]
    CrawlDelayRobotsTxtMiddleware(crawler).process_request_2(
        robots(crawler, "User-agent: *\nCrawl-delay: 2\n"), Request("http://a.example/x")
    )
    assert slot.delay == 9.0  # still paused

    clock.now += 9.0
    clock.scheduled[0].run()

    assert (slot.delay, slot.jitter) == (2.0, 0.0)  # the Crawl-delay, not the delay before the pause


def test_scrapy_builds_the_retry_after_middleware_for_its_crawler() -> None:
    crawler, _downloader = crawler_with(CRAWLSTREAM_MAX_RETRY_AFTER_S=7)
    middleware = RetryAfterMiddleware.from_crawler(crawler)
    assert middleware.crawler is crawler
    assert middleware.max_wait_s == 7.0


@pytest.mark.parametrize("status", [500, 503])
def test_a_robots_txt_server_error_is_stored_without_its_body_at_any_5xx(status: int) -> None:
    crawler, _downloader = crawler_with()
    states = shared(crawler, FakeHostStates())
    middleware = CrawlDelayRobotsTxtMiddleware(crawler)
    middleware._parsers["a.example"] = Deferred()
    response = TextResponse("http://a.example/robots.txt", status=status, body=b"oops")

    asyncio.run(middleware._parse_robots(response, "a.example", Request("http://a.example/")))

    ((_host, changes),) = states.updates
    assert (changes["robots_status"], changes["robots_body"]) == (status, "")


def test_a_robots_txt_in_broken_utf8_is_stored_with_replacements() -> None:
    crawler, _downloader = crawler_with()
    states = shared(crawler, FakeHostStates())
    middleware = CrawlDelayRobotsTxtMiddleware(crawler)
    middleware._parsers["a.example"] = Deferred()
    body = b"User-agent: *\nDisallow: /caf\xe9\n"  # Latin-1, not UTF-8
    response = TextResponse("http://a.example/robots.txt", status=200, body=body)

    asyncio.run(middleware._parse_robots(response, "a.example", Request("http://a.example/")))

    ((_host, changes),) = states.updates
    assert changes["robots_body"] == "User-agent: *\nDisallow: /caf\ufffd\n"
