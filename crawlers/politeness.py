"""Politeness Scrapy lacks: robots.txt ``Crawl-delay`` and ``Retry-After`` on 429/503.

Downloader components, enabled in :mod:`crawlers.settings`; no topic is read or written.

- :class:`CrawlDelayRobotsTxtMiddleware` replaces Scrapy's robots.txt middleware (same place,
  same rules) and, once a host's robots.txt is parsed, raises that host's download-slot delay to
  its ``Crawl-delay`` for our user agent (capped by ``CRAWLSTREAM_MAX_CRAWL_DELAY_S``), without
  jitter, so consecutive requests to the host are at least that far apart.
- :class:`RetryAfterMiddleware` pauses a host's slot for the ``Retry-After`` of a 429 or 503
  (seconds or HTTP-date, capped by ``CRAWLSTREAM_MAX_RETRY_AFTER_S``); Scrapy's retry middleware
  then re-schedules the request, which waits for the pause like every other request to the host.
- :class:`PoliteAutoThrottle` is Scrapy's AutoThrottle that never lowers a delay below the floor
  these set (AutoThrottle would otherwise tune a Crawl-delay away).

Slots are keyed by host name (Scrapy's default), so a floor holds per host.

In a frontier job the per-host table (:mod:`crawlers.hoststate`) is shared by the crawler
processes: the robots.txt middleware takes a host's robots.txt from it while fresh (and stores
what it fetches), and a Retry-After sets the host's cooldown there too, so the process that owns
the host after a rebalance or a restart honours both.
"""

from __future__ import annotations

import logging
import time
import weakref
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from scrapy import Request, Spider
from scrapy.crawler import Crawler
from scrapy.downloadermiddlewares.robotstxt import RobotsTxtMiddleware
from scrapy.extensions.throttle import AutoThrottle
from scrapy.http import Response
from scrapy.robotstxt import RobotParser
from scrapy.utils.asyncio import call_later
from scrapy.utils.httpobj import urlparse_cached
from scrapy.utils.misc import build_from_crawler

from crawlers import metrics
from crawlers.hoststate import host_states_for

log = logging.getLogger(__name__)

STAT_CRAWL_DELAY_HOSTS = "crawlstream/crawl_delay_hosts"
STAT_RETRY_AFTER = "crawlstream/retry_after_waits"
_FLOORS: weakref.WeakKeyDictionary[Crawler, dict[str, float]] = weakref.WeakKeyDictionary()


def delay_floors(crawler: Crawler) -> dict[str, float]:
    """Per-slot minimum delays (seconds) set by robots.txt Crawl-delay for this crawl."""
    return _FLOORS.setdefault(crawler, {})


def parse_retry_after(value: str | bytes | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if unusable."""
    if value is None:
        return None
    text = (value.decode("latin-1") if isinstance(value, bytes) else value).strip()
    if not text:
        return None
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _slot(crawler: Crawler, request: Request) -> tuple[str, Any] | None:
    engine = crawler.engine
    if engine is None:
        return None
    key, slot = engine.downloader._get_slot(request)
    return key, slot


class CrawlDelayRobotsTxtMiddleware(RobotsTxtMiddleware):
    def __init__(self, crawler: Crawler) -> None:
        super().__init__(crawler)
        self.crawler = crawler
        self.max_delay_s = crawler.settings.getfloat("CRAWLSTREAM_MAX_CRAWL_DELAY_S", 60.0)

    async def robot_parser(self, request: Request) -> RobotParser | None:
        states = host_states_for(self.crawler)
        parts = urlparse_cached(request)
        if states is not None and parts.netloc not in self._parsers:
            body = states.robots_body(parts.hostname or "", parts.netloc)
            if body is not None:  # fetched by this or another process, still fresh
                self._parsers[parts.netloc] = build_from_crawler(
                    self._parserimpl, self.crawler, body.encode("utf-8")
                )
        return await super().robot_parser(request)

    async def _parse_robots(self, response: Response, netloc: str, request: Request) -> None:
        await super()._parse_robots(response, netloc, request)
        states = host_states_for(self.crawler)
        if states is not None:
            body = (
                response.body[: 500 * 1024].decode("utf-8", errors="replace") if response.status < 500 else ""
            )
            states.update(
                urlparse_cached(request).hostname or "",
                robots_netloc=netloc,
                robots_fetched_at=datetime.now(UTC),
                robots_status=response.status,
                robots_body=body,
            )

    def process_request_2(self, rp: RobotParser | None, request: Request) -> None:
        super().process_request_2(rp, request)  # raises IgnoreRequest when disallowed
        if rp is None or request.meta.get("dont_obey_robotstxt"):
            return
        useragent: Any = self._robotstxt_useragent or request.headers.get(
            b"User-Agent", self._default_useragent
        )
        delay = rp.crawl_delay(useragent)
        if not delay or delay <= 0:
            return
        found = _slot(self.crawler, request)
        if found is None:
            return
        key, slot = found
        delay = min(float(delay), self.max_delay_s)
        floors = delay_floors(self.crawler)
        if floors.get(key) != delay:
            floors[key] = delay
            assert self.crawler.stats is not None
            self.crawler.stats.inc_value(STAT_CRAWL_DELAY_HOSTS)
            metrics.CRAWL_DELAY_HOSTS.inc()
            log.info("robots.txt of %s asks Crawl-delay %.2fs: applied", key, delay)
        if slot.delay < delay or slot.jitter:
            slot.delay = max(slot.delay, delay)
            slot.jitter = 0.0


class RetryAfterMiddleware:
    STATUSES = frozenset({429, 503})

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.max_wait_s = crawler.settings.getfloat("CRAWLSTREAM_MAX_RETRY_AFTER_S", 120.0)
        self._paused_until: dict[str, float] = {}
        self._restore: dict[str, tuple[float, float]] = {}  # slot delay and jitter before the pause

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> RetryAfterMiddleware:
        return cls(crawler)

    def process_response(self, request: Request, response: Response) -> Response:
        if response.status not in self.STATUSES:
            return response
        wait = parse_retry_after(response.headers.get(b"Retry-After"))
        if wait is None or wait <= 0:
            return response
        wait = min(wait, self.max_wait_s)
        found = _slot(self.crawler, request)
        if found is None:
            return response
        key, slot = found
        states = host_states_for(self.crawler)
        if states is not None:
            states.cooldown(urlparse_cached(request).hostname or key, wait)
        now = time.monotonic()
        until = now + wait
        if until <= self._paused_until.get(key, 0.0):
            return response  # already paused at least this long
        self._paused_until[key] = until
        assert self.crawler.stats is not None
        self.crawler.stats.inc_value(STAT_RETRY_AFTER)
        metrics.RETRY_AFTER_WAITS.inc()
        log.info("%s answered %d with Retry-After: pausing the host %.1fs", key, response.status, wait)
        base_delay, base_jitter = slot.delay, slot.jitter
        if key in self._restore:
            base_delay, base_jitter = self._restore[key]
        self._restore[key] = (base_delay, base_jitter)
        # No request leaves the slot before lastseen + delay (Scrapy's Downloader._process_queue).
        slot.delay, slot.jitter, slot.lastseen = wait, 0.0, now
        call_later(wait, self._resume, key, slot, until)
        return response

    def _resume(self, key: str, slot: Any, until: float) -> None:
        if self._paused_until.get(key) != until:
            return  # a later Retry-After extended the pause; its own call resumes
        base_delay, base_jitter = self._restore.pop(key, (0.0, 0.0))
        floor = delay_floors(self.crawler).get(key, 0.0)
        slot.delay = max(base_delay, floor)
        slot.jitter = 0.0 if floor else base_jitter
        self._paused_until.pop(key, None)
        # Wake the slot: its queued requests were waiting on the long delay.
        engine = self.crawler.engine
        if engine is not None and key in engine.downloader.slots:
            if slot.latercall:
                slot.latercall.cancel()
                slot.latercall = None
            engine.downloader._process_queue(slot)


class PoliteAutoThrottle(AutoThrottle):
    def _response_downloaded(self, response: Response, request: Request, spider: Spider) -> None:
        super()._response_downloaded(response, request, spider)
        key, slot = self._get_slot(request, spider)
        if key is None or slot is None:
            return
        floor = delay_floors(self.crawler).get(key)
        if floor is not None and slot.delay < floor:
            slot.delay = floor
