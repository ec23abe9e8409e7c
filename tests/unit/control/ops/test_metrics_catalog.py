"""docs/metrics.md lists exactly the metrics the code defines, and they follow the conventions."""

from __future__ import annotations

import re

from control.ops.metrics_catalog import DOC, PROCESSES, exporter_metrics, metrics_of, render

FIX = "docs/metrics.md is out of date: run `python -m control.ops.metrics_catalog --write`"


def test_catalog_matches_the_code() -> None:
    assert DOC.read_text() == render(), FIX


def test_every_metric_follows_the_conventions() -> None:
    metrics = [m for p in PROCESSES for m in metrics_of(p.package)] + exporter_metrics()
    names = [m.name for m in metrics]
    assert len(names) == len(set(names)), "a metric name is defined twice"
    for m in metrics:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", m.name), m.name
        assert (m.type == "counter") == m.name.endswith("_total"), (
            f"{m.name}: counters and only counters end in _total"
        )
        assert not re.search(r"_(ms|milliseconds|kb|mb|minutes)(_|$)", m.name), f"{m.name}: use base units"
        assert "url" not in m.labels, f"{m.name}: a URL label is unbounded"
        assert m.help, f"{m.name} has no help text"
