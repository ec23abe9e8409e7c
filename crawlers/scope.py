"""What a crawl may fetch or follow, by URL alone: scheme, length, host, domain, allow/deny regexes.

One :class:`CrawlScope` per crawl, built from the spider (``allowed_domains``, ``allow_patterns``,
``deny_patterns``) and the Scrapy setting ``CRAWLSTREAM_MAX_URL_LENGTH`` (from
``crawl.max_url_length``, 2,048 by default). The downloader guard applies it to every request
(start URLs, robots.txt, redirects: ``link=False``), the scope spider middleware and the
distributed spider to every link (``link=True``: the allow/deny regexes apply too). Reasons are
those of :mod:`crawlers.refusals`. Offsite follows Scrapy's rule: a host is on site when it is an
allowed domain or a subdomain of one; no ``allowed_domains`` means every host.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import SplitResult, urlsplit

from crawlstream.addresses import ALLOWED_SCHEMES

DEFAULT_MAX_URL_LENGTH = 2048
MAX_REMEMBERED_HOSTS = 10_000  # (scheme, netloc) verdicts a scope keeps; forgotten all at once past it


class CrawlScope:
    def __init__(
        self,
        *,
        max_url_length: int = DEFAULT_MAX_URL_LENGTH,
        allowed_domains: Iterable[str] = (),
        allow: Iterable[re.Pattern[str]] = (),
        deny: Iterable[re.Pattern[str]] = (),
    ) -> None:
        self.max_url_length = max_url_length
        domains = sorted({_domain(d) for d in allowed_domains if d and d.strip()})
        self.domains = domains
        self._onsite = (
            re.compile(rf"^(.*\.)?({'|'.join(re.escape(d) for d in domains)})$") if domains else None
        )
        self.allow = list(allow)
        self.deny = list(deny)
        self._hosts: dict[tuple[str, str], tuple[str | None, str]] = {}

    @classmethod
    def for_spider(cls, spider: Any, settings: Any) -> CrawlScope:
        return cls(
            max_url_length=settings.getint("CRAWLSTREAM_MAX_URL_LENGTH", DEFAULT_MAX_URL_LENGTH),
            allowed_domains=getattr(spider, "allowed_domains", None) or (),
            allow=getattr(spider, "allow_patterns", ()),
            deny=getattr(spider, "deny_patterns", ()),
        )

    def refusal(self, url: str, *, link: bool) -> str | None:
        """Why ``url`` is out of scope, or None when it may be fetched."""
        return self.check(url, link=link)[0]

    def check(self, url: str, *, link: bool) -> tuple[str | None, str]:
        """(why ``url`` is out of scope or None, its lower-case host or "" when it has none)."""
        if len(url) > self.max_url_length:
            return "url_too_long", ""
        try:
            parts = urlsplit(url)
        except ValueError:
            return "invalid_url", ""
        # Scheme, port, host and site depend on the scheme and netloc alone: judged once per pair
        # (a crawl's links share a few hosts), not parsed again for each of its links.
        key = (parts.scheme, parts.netloc)
        verdict = self._hosts.get(key)
        if verdict is None:
            verdict = self._judge_host(parts)
            if len(self._hosts) >= MAX_REMEMBERED_HOSTS:
                self._hosts.clear()
            self._hosts[key] = verdict
        reason, host = verdict
        if reason is None and link:
            if self.allow and not any(p.search(url) for p in self.allow):
                return "filtered", host
            if any(p.search(url) for p in self.deny):
                return "filtered", host
        return reason, host

    def _judge_host(self, parts: SplitResult) -> tuple[str | None, str]:
        try:
            parts.port  # noqa: B018 - raises ValueError for a port that is not one
        except ValueError:
            return "invalid_url", ""
        if parts.scheme.lower() not in ALLOWED_SCHEMES:
            return "scheme", ""
        host = (parts.hostname or "").lower()
        if not host:
            return "no_host", ""
        if self._onsite is not None and not self._onsite.search(host):
            return "offsite", host
        return None, host


def _domain(entry: str) -> str:
    """A domain as urlsplit reports hosts: lower case, no port, IPv6 without brackets."""
    entry = entry.strip().lower()
    if entry.startswith("["):
        return entry[1:].split("]", 1)[0]
    return entry.rsplit(":", 1)[0] if entry.count(":") == 1 else entry


def compile_patterns(patterns: Iterable[str]) -> list[re.Pattern[str]]:
    return [re.compile(p) for p in patterns]
