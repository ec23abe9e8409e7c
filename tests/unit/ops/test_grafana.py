"""deploy/grafana: dashboards are valid JSON on the provisioned datasource and use only metrics
that some process defines (docs/metrics.md); the Prometheus targets cover every process."""

from __future__ import annotations

import json
import re
from pathlib import Path

from crawlstream.ops.metrics_catalog import PROCESSES, exporter_metrics, metrics_of
from crawlstream.settings import Settings

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


def known() -> set[str]:
    names = {"up"}
    for m in [*(m for p in PROCESSES for m in metrics_of(p.package)), *exporter_metrics()]:
        names |= {m.name, f"{m.name}_bucket", f"{m.name}_sum", f"{m.name}_count"}
    return names


def test_dashboards_use_the_provisioned_datasource_and_known_metrics() -> None:
    provisioned = (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    uid = re.search(r"uid: (\S+)", provisioned)
    assert uid is not None
    names = known()
    dashboards = sorted((DEPLOY / "grafana/dashboards").glob("*.json"))
    assert [d.stem for d in dashboards] == ["crawler", "overview", "sinks-cdc", "streams"]
    for path in dashboards:
        board = json.loads(path.read_text())
        assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == uid.group(1), f"{path.name}: {panel['title']}"
            assert panel["targets"], f"{path.name}: {panel['title']} has no query"
            for target in panel["targets"]:
                words = re.findall(
                    r"\b[a-z][a-z0-9_]*_(?:total|seconds|bucket|bytes|offset|lag|rows|running|active|messages|requests|keys|members|up)\b",
                    re.sub(r'"[^"]*"', "", target["expr"]),
                )
                unknown = [w for w in words if w not in names]
                assert not unknown, f"{path.name}: {panel['title']}: {unknown}"


def test_prometheus_targets_are_the_default_ports() -> None:
    metrics = Settings().metrics
    expected = {
        "crawler": metrics.crawler_port,
        "streams": metrics.streams_port,
        "sink": metrics.sink_port,
        "follow": Settings().follow.metrics_port,
        "exporter": metrics.exporter_port,
    }
    config = (DEPLOY / "prometheus/prometheus.yml").read_text()
    for name, port in expected.items():
        (entry,) = json.loads((DEPLOY / f"prometheus/targets/{name}.json").read_text())
        assert entry["targets"] == [f"127.0.0.1:{port}"]
        assert f"targets/{name}.json" in config
