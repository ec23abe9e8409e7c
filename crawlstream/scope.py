"""A frontier job's scope, judged link by link: the one rule the crawlers and the frontier share.

A frontier run's :class:`~crawlstream.records.Scope` travels with every request and link of the
run. The crawler applies :func:`link_refusal` to the links it finds (the ones it leaves out are
counted in its outcome record, by reason) and the frontier (:mod:`streams.frontier`) applies it
again to every link it is given, so a crawler that does not filter cannot widen a run.

``follow`` compares the link with the page it was found on, as Nutch's
``db.ignore.external.links.mode`` (byHost / byDomain) and StormCrawler's host URL filter do: a
crawl that starts from seeds and only follows same-domain links stays on the seeds' domains.
Registrable domains come from the public suffix list, private section included (so
``a.github.io`` and ``b.github.io`` are different sites), through tldextract with its bundled
snapshot of the list (no network fetch). A name under a suffix the list does not know (``.test``,
``.internal``) takes its last two labels, as the list's default rule ``*`` says; IP literals and
single-label names are their own domain. Seeds (no source) are always in scope; allow/deny apply
to links, not to seeds, as in Scrapy.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from urllib.parse import urlsplit

import tldextract

from crawlstream.records import Scope

# Reasons, bounded (metric labels): the link's host or domain is not the page's, the job's
# allow/deny regexes refused it, it is deeper than max_depth.
REASONS = ("offsite_host", "offsite_domain", "filtered", "too_deep")

_EXTRACT = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, include_psl_private_domains=True)


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


@functools.lru_cache(maxsize=65_536)
def registrable_domain(host: str) -> str:
    """The registrable domain of ``host`` (eTLD+1), the host itself for IPs and single labels."""
    host = host.lower().rstrip(".")
    try:
        ipaddress.ip_address(host.strip("[]"))
        return host
    except ValueError:
        pass
    if "." not in host:
        return host
    parts = _EXTRACT(host)
    if parts.suffix and parts.domain:
        return f"{parts.domain}.{parts.suffix}"
    if parts.suffix:  # the host is itself a public suffix
        return host
    labels = host.split(".")
    return ".".join(labels[-2:])  # unknown suffix: the default rule "*"


@functools.lru_cache(maxsize=1024)
def _compiled(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p) for p in patterns)


def link_refusal(url: str, source_url: str, depth: int, scope: Scope) -> str | None:
    """Why a link to ``url`` at ``depth``, found on ``source_url`` ("" for a seed), is out of
    ``scope`` (one of :data:`REASONS`), or None when it is in scope."""
    if not source_url:
        return None
    if scope.max_depth and depth > scope.max_depth:
        return "too_deep"
    if scope.follow != "any":
        host, source = host_of(url), host_of(source_url)
        if scope.follow == "same-host" and host != source:
            return "offsite_host"
        if (
            scope.follow == "same-domain"
            and host != source
            and registrable_domain(host) != registrable_domain(source)
        ):
            return "offsite_domain"
    if scope.allow and not any(p.search(url) for p in _compiled(tuple(scope.allow))):
        return "filtered"
    if scope.deny and any(p.search(url) for p in _compiled(tuple(scope.deny))):
        return "filtered"
    return None
