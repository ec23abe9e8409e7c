"""Refusals: what the crawl stage declines to fetch, follow or record, each counted by its reason.

Every component that refuses something (the address guard and its connect-time resolver, the
scope and size limits, the spiders' budgets) calls :func:`refuse`, which counts it in Scrapy's
stats (``crawlstream/refused/<reason>``) and in the ``crawler_refused_total{reason}`` metric. A
refused request fails with :class:`Refused`, an ``IgnoreRequest``: Scrapy does not retry it and
the spiders do not dead-letter it (it is a decision, not a failure). The crawl report and the job
summary show :func:`refusal_counts`. Reasons form a bounded set (:data:`REASONS`), fit for a
metric label; anything else is counted as ``other``. No topic is read or written here.
"""

from __future__ import annotations

from typing import Any

from scrapy.exceptions import IgnoreRequest

from crawlers import metrics
from crawlstream.addresses import ADDRESS_REASONS

STAT_PREFIX = "crawlstream/refused/"
REASONS = ADDRESS_REASONS | {
    "scheme",  # not http(s): file:, ftp:, data:, javascript:, gopher:, mailto:...
    "no_host",
    "invalid_url",
    "url_too_long",
    "offsite",  # host outside allowed_domains
    "filtered",  # the job's allow/deny regexes
    "depth",
    "links_per_page",
    "host_budget",  # max_pages_per_host reached
    "response_too_large",  # DOWNLOAD_MAXSIZE, while downloading
    "decompressed_too_large",  # DOWNLOAD_MAXSIZE, while decompressing
    "api_pages",  # the API spider's page budget (a next link that never ends)
    "not_before_too_far",
    "offsite_host",  # a frontier job's scope (crawlstream.scope): not the page's host
    "offsite_domain",  # ... nor its registrable domain
    "too_deep",  # ... deeper than the scope's max_depth
    "robots",  # robots.txt disallows it (frontier outcomes)
    "other",
}
# Scrapy's own counters of what it filtered, reported as refusals of ours.
SCRAPY_STATS = {"depth/request_ignored_count": "depth"}


class Refused(IgnoreRequest):
    """A request the crawl refuses on purpose; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"refused ({reason}): {detail}")
        self.reason = reason
        self.detail = detail


def refuse(stats: Any, reason: str, count: int = 1) -> str:
    """Count ``count`` refusals for ``reason`` (stats and metric); returns the label used."""
    label = reason if reason in REASONS else "other"
    if count <= 0:
        return label
    stats.inc_value(STAT_PREFIX + label, count)
    metrics.REFUSED.labels(label).inc(count)
    if label in ADDRESS_REASONS:
        metrics.PRIVATE_REFUSED.inc(count)
    return label


def refusal_counts(stats: dict[str, Any]) -> dict[str, int]:
    """Refusals by reason in a crawl's stats, Scrapy's own filters included."""
    counts = {
        key[len(STAT_PREFIX) :]: int(value) for key, value in stats.items() if key.startswith(STAT_PREFIX)
    }
    for stat, reason in SCRAPY_STATS.items():
        if stats.get(stat):
            counts[reason] = counts.get(reason, 0) + int(stats[stat])
    return dict(sorted(counts.items()))


def address_refusals(counts: dict[str, int]) -> int:
    """How many refusals were for the target's address (private, loopback, ...)."""
    return sum(n for reason, n in counts.items() if reason in ADDRESS_REASONS)
