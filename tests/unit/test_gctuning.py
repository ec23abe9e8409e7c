"""crawlstream.gctuning: the collector tuned for a long-running process, and put back."""

from __future__ import annotations

import gc

import pytest

from crawlstream import gctuning


def test_tune_freezes_the_heap_raises_gen0_and_restore_puts_both_back() -> None:
    before = gc.get_threshold()
    saved = gctuning.tune(50_000)
    try:
        assert saved == before
        assert gc.get_threshold() == (max(50_000, before[0]), before[1], before[2])
        assert gc.get_freeze_count() > 0
    finally:
        gctuning.restore(saved)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_a_threshold_below_the_current_one_does_not_lower_it() -> None:
    before = gc.get_threshold()
    saved = gctuning.tune(1)
    try:
        assert gc.get_threshold()[0] == before[0]
    finally:
        gctuning.restore(saved)


def test_a_threshold_of_zero_or_less_is_refused() -> None:
    with pytest.raises(ValueError, match="threshold"):
        gctuning.tune(0)
