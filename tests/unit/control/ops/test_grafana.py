"""deploy/grafana against the code: every exported metric (the catalog, control/ops/metrics_catalog.py)
is on a dashboard or in deploy/grafana/left-off.toml with a reason; dashboards use only exported
metrics, pick their data source, job and instance through variables and rate over
``$__rate_interval``; the Prometheus targets name the default ports."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from control.ops.metrics_catalog import MetricDoc, catalog, series_names
from crawlstream.settings import FollowSettings, MetricsSettings

DEPLOY = Path(__file__).resolve().parents[4] / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana/dashboards").glob("*.json"))
LEFT_OFF = DEPLOY / "grafana/left-off.toml"
# Metrics of the processes themselves (filtered by the job/instance variables); the lag exporter's
# (kafka_*, crawlstream_*) describe the cluster and carry the exporter's job.
PROCESS_METRIC = re.compile(r"^(crawler|streams|sink|follow|scheduler)_|^up$")
JOB_INSTANCE = 'job=~"$job", instance=~"$instance"'


def boards() -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in DASHBOARDS}


def exprs() -> list[tuple[str, str]]:
    return [
        (f"{name}: {panel['title']}", target["expr"])
        for name, board in boards().items()
        for panel in board["panels"]
        for target in panel["targets"]
    ]


def words(expr: str) -> set[str]:
    """Identifiers outside quoted strings (label values are not metric names)."""
    return set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)))


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric, its label matchers) for every metric selector of ``expr``."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: "Q" * len(m.group(0)), expr)  # keep offsets
    found = []
    for m in re.finditer(r"\b([a-z_][a-z0-9_]*)\b(\{[^}]*\})?(?!\s*\()", bare):
        if m.group(1) in ("by", "on", "without", "le") or not (
            PROCESS_METRIC.search(m.group(1)) or m.group(1).startswith(("kafka_", "crawlstream_"))
        ):
            continue
        found.append((m.group(1), expr[m.start(2) : m.end(2)] if m.group(2) else ""))
    return found


def left_off() -> dict[str, str]:
    return tomllib.loads(LEFT_OFF.read_text())


def test_every_exported_metric_is_on_a_dashboard_or_left_off_with_a_reason() -> None:
    used = set().union(*(words(expr) for _where, expr in exprs()))
    exported: dict[str, tuple[str, MetricDoc]] = {m.name: (process, m) for process, m in catalog()}
    skipped = left_off()
    nowhere = [
        f"{name} ({process})"
        for name, (process, m) in sorted(exported.items())
        if not series_names(m) & used and name not in skipped
    ]
    assert not nowhere, (
        "exported but on no dashboard and not in deploy/grafana/left-off.toml (add a panel, or a "
        f'line `name = "why"` there): {", ".join(nowhere)}'
    )
    stale = sorted(set(skipped) - set(exported))
    assert not stale, f"deploy/grafana/left-off.toml lists metrics no code exports any more: {stale}"
    both = sorted(name for name in skipped if series_names(exported[name][1]) & used)
    assert not both, f"deploy/grafana/left-off.toml lists metrics that are on a dashboard: {both}"
    assert all(reason.strip() for reason in skipped.values()), "every left-off metric needs a reason"


def test_dashboards_use_only_exported_metrics() -> None:
    known = {"up"} | set().union(*(series_names(m) for _p, m in catalog()))
    for where, expr in exprs():
        unknown = [name for name, _matchers in selectors(expr) if name not in known]
        assert not unknown, f"{where}: {expr}: no process exports {unknown}"


def test_variables_data_source_and_rate_interval() -> None:
    assert [d.stem for d in DASHBOARDS] == ["crawler", "overview", "sinks-cdc", "streams"]
    for name, board in boards().items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for var in ("job", "instance"):
            assert variables[var]["type"] == "query", f"{name}: ${var}"
            assert variables[var]["includeAll"], f"{name}: ${var}"
            assert variables[var]["datasource"]["uid"] == "${datasource}"
        assert "$job" in variables["instance"]["definition"]  # instances of the chosen jobs
        ids = [p["id"] for p in board["panels"]]
        assert len(set(ids)) == len(ids), f"{name}: panel ids repeat"
        for panel in board["panels"]:
            where = f"{name}: {panel['title']}"
            assert panel["datasource"]["uid"] == "${datasource}", where
            assert panel["targets"], f"{where} has no query"
            for target in panel["targets"]:
                expr = target["expr"]
                assert target["datasource"]["uid"] == "${datasource}", where
                ranges = re.findall(r"\b(?:rate|increase|irate|delta)\([^\[]*\[([^\]]+)\]", expr)
                assert all(r == "$__rate_interval" for r in ranges), f"{where}: {expr}"
                for metric, matchers in selectors(expr):
                    if PROCESS_METRIC.search(metric):
                        assert JOB_INSTANCE in matchers, f"{where}: {metric} lacks {JOB_INSTANCE}: {expr}"


def test_the_checks_catch_what_they_are_for() -> None:
    assert selectors('rate(crawler_x_total{a="sink_y"}[5m])') == [("crawler_x_total", '{a="sink_y"}')]
    assert words('x{topic=~"crawler_in_a_label"}') == {"x", "topic"}
    exported = {m.name for _p, m in catalog()}
    assert "scheduler_runs_finished_total" in exported  # the catalog sees the scheduler's metrics
    assert "kafka_consumergroup_lag" in exported  # and the exporter's


@pytest.mark.parametrize(
    ("target", "port"),
    [
        ("crawler", MetricsSettings().crawler_port),
        ("streams", MetricsSettings().streams_port),
        ("sink", MetricsSettings().sink_port),
        ("follow", FollowSettings().metrics_port),
        ("scheduler", MetricsSettings().scheduler_port),
        ("exporter", MetricsSettings().exporter_port),
    ],
)
def test_prometheus_targets_are_the_default_ports(target: str, port: int) -> None:
    # The sections' own defaults: Settings() would read this machine's .env.
    config = (DEPLOY / "prometheus/prometheus.yml").read_text()
    (entry,) = json.loads((DEPLOY / f"prometheus/targets/{target}.json").read_text())
    assert entry["targets"] == [f"127.0.0.1:{port}"]
    assert f"targets/{target}.json" in config
