"""The crawl's guard in the downloader: nothing out of scope or at a refused address is fetched.

:class:`AddressGuardMiddleware` (first downloader middleware, 50; it replaces Scrapy's offsite
middleware) sees every request the downloader is asked for: start URLs, robots.txt, sitemaps,
feeds, API pages, links and each redirect hop. It refuses, before any I/O, a URL out of the crawl's
scope (:mod:`crawlers.scope`: scheme other than http(s), no host, too long, offsite) and a host
whose address the policy refuses: an IP literal is judged as is, a name is resolved first (once
per host and port; a failed lookup fails the request like a DNS error: closed, retried, then
dead-lettered). That early check is for clear errors; the check that holds is the connect-time one
(:mod:`crawlers.resolver`), since a name can resolve differently when Twisted connects.

:class:`RefusalClassifierMiddleware` (downloader side, 950) turns what the download handler
raises on purpose into counted refusals that are neither retried nor dead-lettered: a lookup the
guarded resolver refused, and a download cancelled by ``DOWNLOAD_MAXSIZE``. It also counts
redirects to other schemes, which Scrapy does not follow.

Settings used: ``crawl.allow_private_addresses`` or Scrapy setting
``CRAWLSTREAM_ALLOW_PRIVATE_ADDRESSES`` (no address check at all), ``CRAWLSTREAM_ALLOW_PRIVATE_HOSTS``
(``host[:port]`` or URL entries; an allowed host is allowed on its own port only),
``CRAWLSTREAM_RESOLVER``, ``CRAWLSTREAM_MAX_URL_LENGTH``, ``DOWNLOAD_MAXSIZE``. Refusals are counted
by reason (:mod:`crawlers.refusals`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any
from urllib.parse import urljoin, urlsplit

from scrapy import Request, signals
from scrapy.crawler import Crawler
from scrapy.exceptions import CannotResolveHostError, DownloadCancelledError
from scrapy.http import Headers, Response
from scrapy.utils.httpobj import urlparse_cached

from crawlers.refusals import Refused, refuse
from crawlers.resolver import REGISTRY, GuardRegistry, Resolver, load_resolver
from crawlers.scope import CrawlScope
from crawlers.settings import crawlstream_settings
from crawlstream.addresses import (
    ALLOWED_SCHEMES,
    AddressPolicy,
    AddressRefused,
    forbidden_reason,
    host_and_port,
    parse_address,
)

log = logging.getLogger(__name__)

MAX_VERDICTS = 10_000
OVERSIZE = "crawlstream_oversize"  # request.meta: bytes seen when DOWNLOAD_MAXSIZE was passed
_RECEIVED = "_crawlstream_received"


def policy_from_settings(settings: Any) -> AddressPolicy:
    typed = crawlstream_settings(settings)
    allow_all = settings.getbool("CRAWLSTREAM_ALLOW_PRIVATE_ADDRESSES", typed.crawl.allow_private_addresses)
    return AddressPolicy.allowing(settings.getlist("CRAWLSTREAM_ALLOW_PRIVATE_HOSTS"), allow_all=allow_all)


class AddressGuardMiddleware:
    def __init__(
        self,
        crawler: Crawler,
        policy: AddressPolicy,
        resolver: Resolver,
        registry: GuardRegistry = REGISTRY,
    ) -> None:
        self.crawler = crawler
        self.policy = policy
        self.resolver = resolver
        self.registry = registry
        self._scope: CrawlScope | None = None
        # (host, port) -> refusal reason or None (allowed), from the early lookup.
        self._verdicts: OrderedDict[tuple[str, int], str | None] = OrderedDict()
        registry.register(id(crawler), policy)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> AddressGuardMiddleware:
        guard = cls(crawler, policy_from_settings(crawler.settings), load_resolver(crawler.settings))
        crawler.signals.connect(guard.spider_closed, signal=signals.spider_closed)
        return guard

    def spider_closed(self) -> None:
        self.registry.unregister(id(self.crawler))

    @property
    def scope(self) -> CrawlScope:
        if self._scope is None:
            self._scope = CrawlScope.for_spider(self.crawler.spider, self.crawler.settings)
        return self._scope

    def _refuse(self, request: Request, reason: str, detail: str) -> Refused:
        label = refuse(self.crawler.stats, reason)
        log.info("refused %s (%s): %s", request.url[:200], label, detail)
        return Refused(label, detail)

    async def process_request(self, request: Request) -> None:
        reason = self.scope.refusal(request.url, link=False)
        if reason is not None:
            raise self._refuse(request, reason, f"{reason.replace('_', ' ')}: {request.url[:200]}")
        try:
            _scheme, host, port = host_and_port(request.url)
        except AddressRefused as exc:  # the scope caught these already; kept for safety
            raise self._refuse(request, exc.reason, exc.detail) from None
        if self.policy.exempts(host, port):
            return
        try:
            literal: str | None = str(parse_address(host))
        except ValueError:
            literal = None  # a name (or an odd numeric form getaddrinfo will interpret): resolve it
        if literal is not None:
            verdict = forbidden_reason(literal)
        else:
            verdict = await self._lookup(host, port)
        if verdict is not None:
            raise self._refuse(
                request, verdict, f"{host}:{port} resolves to a {verdict.replace('_', ' ')} address"
            )

    async def _lookup(self, host: str, port: int) -> str | None:
        key = (host, port)
        if key in self._verdicts:
            self._verdicts.move_to_end(key)
            return self._verdicts[key]
        try:
            # getaddrinfo blocks: keep it off the reactor thread.
            addresses = await asyncio.to_thread(self.resolver, host, port)
        except (OSError, UnicodeError) as exc:
            # Fail closed: the request fails as a DNS failure would (retried, then dead-lettered).
            raise CannotResolveHostError(f"{host}: {exc}") from None
        verdict = "invalid" if not addresses else None
        for address in addresses:
            verdict = verdict or forbidden_reason(address)
        self._verdicts[key] = verdict
        while len(self._verdicts) > MAX_VERDICTS:
            self._verdicts.popitem(last=False)
        return verdict


class RefusalClassifierMiddleware:
    def __init__(self, crawler: Crawler, registry: GuardRegistry = REGISTRY) -> None:
        self.crawler = crawler
        self.registry = registry
        self.maxsize = crawler.settings.getint("DOWNLOAD_MAXSIZE")

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> RefusalClassifierMiddleware:
        mw = cls(crawler)
        crawler.signals.connect(mw.headers_received, signal=signals.headers_received)
        crawler.signals.connect(mw.bytes_received, signal=signals.bytes_received)
        return mw

    def _maxsize(self, request: Request) -> int:
        return int(request.meta.get("download_maxsize", self.maxsize) or 0)

    # Scrapy cancels an oversized download without saying why; these note that it was oversized.
    def headers_received(self, headers: Headers, body_length: int, request: Request, **_: Any) -> None:
        maxsize = self._maxsize(request)
        # body_length is Twisted's UNKNOWN_LENGTH (a string) without a Content-Length.
        if maxsize and isinstance(body_length, int) and body_length > maxsize:
            request.meta[OVERSIZE] = int(body_length)

    def bytes_received(self, data: bytes, request: Request, **_: Any) -> None:
        received = request.meta.get(_RECEIVED, 0) + len(data)
        request.meta[_RECEIVED] = received
        maxsize = self._maxsize(request)
        if maxsize and received > maxsize:
            request.meta[OVERSIZE] = received

    def process_exception(self, request: Request, exception: Exception) -> None:
        request.meta.pop(_RECEIVED, None)  # a retry starts counting again
        if isinstance(exception, CannotResolveHostError):
            parts = urlparse_cached(request)
            try:
                port = parts.port or (443 if parts.scheme == "https" else 80)
            except ValueError:
                return
            reason = self.registry.refusal(parts.hostname or "", port)
            if reason is not None:
                label = refuse(self.crawler.stats, reason)
                raise Refused(
                    label, f"{parts.hostname}:{port} connects to a {label.replace('_', ' ')} address"
                )
        elif isinstance(exception, DownloadCancelledError) and OVERSIZE in request.meta:
            size = request.meta[OVERSIZE]
            label = refuse(self.crawler.stats, "response_too_large")
            raise Refused(
                label, f"{request.url[:200]}: {size} bytes > DOWNLOAD_MAXSIZE {self._maxsize(request)}"
            )

    def process_response(self, request: Request, response: Response) -> Response:
        request.meta.pop(_RECEIVED, None)
        if 300 <= response.status < 400 and b"Location" in response.headers:
            raw = response.headers.get(b"Location") or b""
            target = urljoin(request.url, raw.decode("latin-1").strip())
            if urlsplit(target).scheme.lower() not in ALLOWED_SCHEMES:
                refuse(self.crawler.stats, "scheme")  # Scrapy keeps the 3xx response; not followed
                log.info("not following %s to %s", request.url[:200], target[:200])
        return response
