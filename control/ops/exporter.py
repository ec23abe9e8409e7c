"""``crawlstream exporter``: one /metrics for what no stage process can see about itself.

Served on ``metrics.host:metrics.exporter_port`` (9414). Every scrape reads, live:
- Kafka (``settings.kafka``, admin API only, never joining a group), under the names of the
  widely used kafka_exporter so existing lag dashboards (e.g. Grafana 7589) work unchanged:
  ``kafka_brokers``, ``kafka_topic_partitions``, ``kafka_topic_partition_current_offset``,
  ``kafka_topic_partition_oldest_offset``, ``kafka_consumergroup_current_offset``,
  ``kafka_consumergroup_lag``, ``kafka_consumergroup_members`` (kafka_exporter's ``*_sum`` gauges
  are left out: ``promtool check metrics`` rejects ``_sum`` outside summaries; use ``sum by``);
- Postgres (``settings.postgres.url``): the sinks' stored offsets and the lag they imply (the
  offsets that count for a sink: sinks/probe.py), live rows per table, and the
  fetch-to-stored latency of recently stored page versions (control/ops/pg_probe.py);
- Kafka Connect and the replication slots (control/ops/cdc.py): connector running, slot lag.
A source that fails is reported as ``crawlstream_exporter_source_up{source} 0``; the rest still
answers. Metric names and labels are listed in docs/metrics.md.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Annotated

import typer
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from control.ops import admin as kadmin
from control.ops import pg_probe
from crawlstream.settings import Settings, load_settings
from sinks.probe import all_stored_offsets

log = logging.getLogger(__name__)
Families = Iterator[GaugeMetricFamily]
CG_TP = ["consumergroup", "topic", "partition"]


# Every family the exporter serves: name -> (help, labels). docs/metrics.md is generated from it.
SPECS: dict[str, tuple[str, list[str]]] = {
    "crawlstream_exporter_source_up": ("1 if the last read of the source worked", ["source"]),
    "crawlstream_exporter_source_seconds": ("Time the last read of the source took", ["source"]),
    "kafka_brokers": ("Number of brokers in the cluster", []),
    "kafka_topic_partitions": ("Number of partitions of the topic", ["topic"]),
    "kafka_topic_partition_current_offset": ("End (high watermark) offset", ["topic", "partition"]),
    "kafka_topic_partition_oldest_offset": ("Earliest offset", ["topic", "partition"]),
    "kafka_consumergroup_current_offset": (
        "Committed offset of the group",
        ["consumergroup", "topic", "partition"],
    ),
    "kafka_consumergroup_lag": ("End offset minus committed offset", ["consumergroup", "topic", "partition"]),
    "kafka_consumergroup_members": ("Members of the group", ["consumergroup"]),
    "crawlstream_sink_stored_offset": (
        "Next offset the sink stored in Postgres",
        ["consumergroup", "topic", "partition"],
    ),
    "crawlstream_sink_lag": (
        "End offset minus the sink's stored offset (the lag that counts)",
        ["consumergroup", "topic", "partition"],
    ),
    "crawlstream_table_rows": ("Estimated live rows (pg_stat_user_tables)", ["table"]),
    "crawlstream_pipeline_latency_seconds": (
        "Fetch-to-stored time of page versions stored in the last 5 minutes (stat: p50, p99, max)",
        ["stat"],
    ),
    "crawlstream_pipeline_latency_window_versions": ("Page versions the latency covers", []),
    "crawlstream_cdc_connector_running": ("1 if the connector and its tasks run", ["connector"]),
    "crawlstream_cdc_slot_active": ("1 if the replication slot has a consumer", ["slot"]),
    "crawlstream_cdc_slot_lag_bytes": ("WAL not yet confirmed by the connector", ["slot"]),
    "crawlstream_cdc_slot_retained_bytes": ("WAL the slot keeps on disk", ["slot"]),
}


def _gauge(name: str) -> GaugeMetricFamily:
    doc, labels = SPECS[name]
    return GaugeMetricFamily(name, doc, labels=labels)


class PipelineCollector(Collector):
    """Collects on every scrape; each source is timed and fails on its own."""

    def __init__(self, settings: Settings, groups: str = ".*", latency_window_s: float = 300.0) -> None:
        self.settings = settings
        self.groups = re.compile(groups)
        self.latency_window_s = latency_window_s
        self.admin = kadmin.admin_client(settings)  # kept: a client per scrape leaks threads
        self._high: dict[tuple[str, int], int] = {}

    def collect(self) -> Iterable[GaugeMetricFamily]:
        up = _gauge("crawlstream_exporter_source_up")
        took = _gauge("crawlstream_exporter_source_seconds")
        sources: list[tuple[str, Callable[[], Families]]] = [
            ("kafka", self._kafka),
            ("postgres", self._postgres),
            ("connect", self._cdc),
        ]
        for source, read in sources:
            started = time.perf_counter()
            try:
                families = list(read())
                ok = 1.0
            except Exception as exc:  # a scrape reports a broken source, it does not fail
                log.warning("exporter: reading %s failed: %s", source, exc)
                families, ok = [], 0.0
            yield from families
            up.add_metric([source], ok)
            took.add_metric([source], time.perf_counter() - started)
        yield up
        yield took

    def _kafka(self) -> Families:
        meta = self.admin.list_topics(timeout=10)
        brokers = _gauge("kafka_brokers")
        brokers.add_metric([], len(meta.brokers))
        yield brokers
        topics = {
            n: sorted(t.partitions) for n, t in meta.topics.items() if not n.startswith("__") and not t.error
        }
        parts = _gauge("kafka_topic_partitions")
        newest = _gauge("kafka_topic_partition_current_offset")
        oldest = _gauge("kafka_topic_partition_oldest_offset")
        marks = kadmin.watermarks(self.admin, [(t, p) for t, ps in topics.items() for p in ps])
        for topic, ps in sorted(topics.items()):
            parts.add_metric([topic], len(ps))
        for (topic, p), (low, high) in sorted(marks.items()):
            newest.add_metric([topic, str(p)], high)
            oldest.add_metric([topic, str(p)], low)
        self._high = {tp: high for tp, (_low, high) in marks.items()}
        yield from (parts, newest, oldest)
        yield from self._groups()

    def _groups(self) -> Families:
        current = _gauge("kafka_consumergroup_current_offset")
        lag = _gauge("kafka_consumergroup_lag")
        members = _gauge("kafka_consumergroup_members")
        for group in kadmin.list_groups(self.admin):
            if not self.groups.fullmatch(group):
                continue
            members.add_metric([group], kadmin.describe_group(self.admin, group).members)
            for (topic, p), offset in sorted(kadmin.group_offsets(self.admin, group).items()):
                if (topic, p) in self._high:
                    current.add_metric([group, topic, str(p)], offset)
                    lag.add_metric([group, topic, str(p)], max(self._high[(topic, p)] - offset, 0))
        yield from (current, lag, members)

    def _postgres(self) -> Families:
        stored = _gauge("crawlstream_sink_stored_offset")
        lag = _gauge("crawlstream_sink_lag")
        for group, offsets in sorted(all_stored_offsets(self.settings).items()):
            for (topic, p), offset in sorted(offsets.items()):
                stored.add_metric([group, topic, str(p)], offset)
                if (topic, p) in self._high:
                    lag.add_metric([group, topic, str(p)], max(self._high[(topic, p)] - offset, 0))
        rows = _gauge("crawlstream_table_rows")
        for table, count in sorted(pg_probe.table_rows(self.settings).items()):
            rows.add_metric([table], count)
        latency = pg_probe.e2e_latency(self.settings, self.latency_window_s)
        e2e = _gauge("crawlstream_pipeline_latency_seconds")
        for stat, value in (("p50", latency.p50_s), ("p99", latency.p99_s), ("max", latency.max_s)):
            if value is not None:
                e2e.add_metric([stat], value)
        versions = _gauge("crawlstream_pipeline_latency_window_versions")
        versions.add_metric([], latency.versions)
        yield from (stored, lag, rows, e2e, versions)

    def _cdc(self) -> Families:
        from control.ops.cdc import report

        running = _gauge("crawlstream_cdc_connector_running")
        active = _gauge("crawlstream_cdc_slot_active")
        lag = _gauge("crawlstream_cdc_slot_lag_bytes")
        retained = _gauge("crawlstream_cdc_slot_retained_bytes")
        for r in report(self.settings):
            running.add_metric([r.connector], 0.0 if any("is not running" in p for p in r.problems) else 1.0)
            if r.slot_active is not None:
                active.add_metric([r.slot], float(r.slot_active))
                lag.add_metric([r.slot], float(r.lag_bytes or 0))
                retained.add_metric([r.slot], float(r.retained_bytes or 0))
        yield from (running, active, lag, retained)


def registry_for(settings: Settings, groups: str = ".*") -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(PipelineCollector(settings, groups))
    return registry


def exporter_command(
    port: Annotated[
        int | None, typer.Option(help="default: metrics.exporter_port; 0 = any free port")
    ] = None,
    groups: Annotated[str, typer.Option(help="regex of consumer groups to export")] = ".*",
    once: Annotated[bool, typer.Option(help="print one scrape to stdout and exit")] = False,
) -> None:
    """Serve consumer lag (kafka_exporter names), sink-stored lag, CDC slot lag and pipeline latency."""
    from crawlstream.logs import setup_logging

    settings = load_settings()
    setup_logging(settings.log_level, json_lines=settings.log_json, worker="exporter")
    registry = registry_for(settings, groups)
    if once:
        typer.echo(generate_latest(registry).decode(), nl=False)
        return
    chosen = settings.metrics.exporter_port if port is None else port
    server, _thread = start_http_server(chosen, addr=settings.metrics.host, registry=registry)
    log.info("exporter on http://%s:%d/metrics", settings.metrics.host, server.server_address[1])
    threading.Event().wait()  # serve until SIGTERM/SIGINT ends the process
