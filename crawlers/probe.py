"""The crawl stage's probe: a run's crawl figures, added up from the reports of its processes.

Every crawl process (``python -m crawlers crawl --report PATH``, or a frontier run's crawlers)
writes one :class:`~crawlers.runner.CrawlReport` as JSON when it ends. The control plane
(:mod:`control.run.pipeline`) reads those files and asks this probe what they add up to; a
process killed before it wrote its report is counted in ``killed``: what it delivered is on the
raw topic, its report is not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CrawlTally:
    """What the crawl processes of one run reported, added up."""

    pages_fetched: int = 0
    records_delivered: int = 0
    delivery_failures: int = 0
    urls: frozenset[str] = frozenset()  # distinct canonical URLs: the keys on the raw topic
    processes: int = 0
    killed: int = 0


def crawl_tally(reports: Iterable[Mapping[str, Any]], killed: int = 0) -> CrawlTally:
    """The figures of ``reports`` (CrawlReport JSON documents; a missing field counts 0)."""
    reports = list(reports)
    return CrawlTally(
        pages_fetched=sum(int(r.get("pages_fetched", 0)) for r in reports),
        records_delivered=sum(int(r.get("records_delivered", 0)) for r in reports),
        delivery_failures=sum(int(r.get("delivery_failures", 0)) for r in reports),
        urls=frozenset(str(url) for r in reports for url in r.get("canonical_urls", [])),
        processes=len(reports),
        killed=killed,
    )
