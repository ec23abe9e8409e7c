"""Adaptive recrawl interval: changed shrinks, unchanged grows, bounds hold."""

from __future__ import annotations

import pytest

from streams.recrawl import RecrawlPolicy, next_interval

POLICY = RecrawlPolicy(initial_s=100.0, min_s=50.0, max_s=200.0, rate=0.5)


def test_first_sighting_gets_the_initial_interval() -> None:
    assert next_interval(POLICY, None, None) == 100.0


def test_changed_shrinks_and_unchanged_grows() -> None:
    assert next_interval(POLICY, 100.0, changed=True) == 50.0
    assert next_interval(POLICY, 100.0, changed=False) == 150.0


def test_interval_stays_within_bounds() -> None:
    interval = 100.0
    for _ in range(10):
        interval = next_interval(POLICY, interval, changed=False)
    assert interval == 200.0
    for _ in range(10):
        interval = next_interval(POLICY, interval, changed=True)
    assert interval == 50.0


@pytest.mark.parametrize(
    "kwargs", [{"min_s": 0.0}, {"initial_s": 10.0}, {"max_s": 60.0}, {"rate": 0.0}, {"rate": 1.0}]
)
def test_bad_policy_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="recrawl"):
        RecrawlPolicy(**{"initial_s": 100.0, "min_s": 50.0, "max_s": 200.0, "rate": 0.5, **kwargs})
