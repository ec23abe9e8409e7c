"""Adaptive recrawl interval: StormCrawler's AdaptiveScheduler semantics, as a plain function.

Used by :mod:`streams.pages` (the interval stored beside each URL's fingerprint) and the
frontier. A page whose content changed is due again sooner (interval times ``1 - rate``), an
unchanged one later (times ``1 + rate``), always within ``[min_s, max_s]``. Settings:
``streams.recrawl_*``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RecrawlPolicy:
    initial_s: float = 86_400.0
    min_s: float = 3_600.0
    max_s: float = 30 * 86_400.0
    rate: float = 0.2  # StormCrawler's fetchInterval.change.rate-like factor

    def __post_init__(self) -> None:
        if not 0 < self.min_s <= self.initial_s <= self.max_s:
            raise ValueError("recrawl bounds need 0 < min_s <= initial_s <= max_s")
        if not 0 < self.rate < 1:
            raise ValueError("recrawl rate must be in (0, 1)")


def next_interval(policy: RecrawlPolicy, current_s: float | None, changed: bool | None) -> float:
    """Seconds until the next fetch. ``changed is None``: first sighting, the initial interval."""
    if current_s is None or changed is None:
        return policy.initial_s
    factor = 1 - policy.rate if changed else 1 + policy.rate
    return min(max(current_s * factor, policy.min_s), policy.max_s)
