"""Cheaper cyclic garbage collection for a long-running process with a large, stable heap.

Used by the crawl stage (:mod:`crawlers.gctune`, per crawl) and the stream worker
(:mod:`streams.__main__`, ``streams.gc_gen0_threshold``). Such a process allocates many
short-lived objects per record while it holds a large live heap (modules, the app, its agents
and tables' Python objects); with CPython's default generation-0 threshold (700) the collector
runs every few records and its older-generation passes walk that heap again and again.
:func:`tune` collects once, freezes what exists then (never garbage: later passes skip it) and
raises the generation-0 threshold; :func:`restore` undoes it. Nothing leaks: cycles are still
collected, in larger, rarer batches.
"""

from __future__ import annotations

import gc

Thresholds = tuple[int, int, int]


def tune(gen0_threshold: int) -> Thresholds:
    """Collect, freeze, raise generation 0's threshold to at least ``gen0_threshold``; returns
    the thresholds before, for :func:`restore`."""
    if gen0_threshold <= 0:
        raise ValueError(f"the generation-0 threshold must be > 0, got {gen0_threshold}")
    saved = gc.get_threshold()
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = saved
    gc.set_threshold(max(gen0_threshold, saved[0]), gen1, gen2)
    return saved


def restore(saved: Thresholds) -> None:
    """Put back the thresholds :func:`tune` returned and unfreeze."""
    gc.set_threshold(*saved)
    gc.unfreeze()
