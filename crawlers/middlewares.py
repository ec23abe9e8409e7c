"""PrivateAddressGuardMiddleware: keeps crawlers from reaching private networks (SSRF guard).

A downloader middleware, so it sees every request the downloader sends: robots.txt fetches and
each redirect hop (Scrapy's redirect middleware re-schedules the new request through the
downloader middlewares). Settings used: ``crawl.allow_private_addresses`` (turns the guard off)
and Scrapy setting ``CRAWLSTREAM_ALLOW_PRIVATE_HOSTS`` (host names exempted; ``crawlstream run``
and the spider's ``allow_private_hosts`` argument add to it).

Limitation: Twisted resolves the host again when it connects, so a DNS answer that changes
between the two lookups (DNS rebinding) is not caught; the per-host cache narrows the window.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any

from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.exceptions import IgnoreRequest
from scrapy.utils.httpobj import urlparse_cached

from crawlers import metrics
from crawlers.settings import crawlstream_settings

log = logging.getLogger(__name__)

STAT_REFUSED = "crawlstream/private_address_refused"
Resolver = Callable[[str], list[str]]


def resolve_host(host: str) -> list[str]:
    """Every address ``host`` resolves to (an IP literal resolves to itself)."""
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return sorted({str(info[4][0]) for info in infos})


def is_forbidden_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


class PrivateAddressGuardMiddleware:
    def __init__(
        self, *, allow_all: bool, allowed_hosts: Iterable[str], stats: Any, resolver: Resolver = resolve_host
    ) -> None:
        self.allow_all = allow_all
        self.allowed_hosts = frozenset(h.strip().lower() for h in allowed_hosts if h.strip())
        self.stats = stats
        self.resolver = resolver
        # host -> forbidden addresses (empty: allowed). Resolved once per host per crawl.
        self._verdicts: dict[str, list[str]] = {}

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> PrivateAddressGuardMiddleware:
        settings = crawlstream_settings(crawler.settings)
        return cls(
            allow_all=settings.crawl.allow_private_addresses,
            allowed_hosts=crawler.settings.getlist("CRAWLSTREAM_ALLOW_PRIVATE_HOSTS"),
            stats=crawler.stats,
        )

    async def process_request(self, request: Request) -> None:
        host = (urlparse_cached(request).hostname or "").lower()
        if self.allow_all or not host or host in self.allowed_hosts:
            return
        if host not in self._verdicts:
            try:
                # getaddrinfo blocks: keep it off the reactor thread.
                addresses = await asyncio.to_thread(self.resolver, host)
            except OSError:
                return  # unresolvable: the download fails with a DNS error and is counted there
            self._verdicts[host] = [a for a in addresses if is_forbidden_address(a)]
            if self._verdicts[host]:
                log.warning(
                    "refusing %s: resolves to non-public %s (allow with CRAWLSTREAM_ALLOW_PRIVATE_HOSTS)",
                    host,
                    ", ".join(self._verdicts[host]),
                )
        forbidden = self._verdicts[host]
        if forbidden:
            self.stats.inc_value(STAT_REFUSED)
            metrics.PRIVATE_REFUSED.inc()
            log.debug("refused %s (%s)", request.url, forbidden[0])
            raise IgnoreRequest(f"{host} resolves to non-public address {forbidden[0]}")
