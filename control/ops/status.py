"""``crawlstream status``: the whole pipeline on one screen (``--watch`` live, ``--json`` for scripts).

Reads, without changing anything: the stack's services (control.stack.supervisor.status),
the catalog topics' partitions and end offsets and the consumer groups on them (Kafka admin
API; for sink groups the lag from their Postgres-stored offsets, the ones that count), records
per second per topic (end offsets sampled ``--interval`` seconds apart), live rows per table,
fetch-to-stored latency, and the CDC connectors with their slot lag (control/ops/cdc.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from control.ops import admin as kadmin
from control.ops import pg_probe
from crawlstream.settings import Settings, load_settings
from crawlstream.topics import catalog
from sinks.probe import all_stored_offsets

console = Console(soft_wrap=True)


@dataclass
class GroupLag:
    group: str
    topic: str
    lag: int
    members: int
    offsets_from: str  # "kafka" or "sink_offsets" (Postgres, for sinks)


@dataclass
class Snapshot:
    taken_at: float
    services: dict[str, dict[str, Any]]
    topics: dict[str, dict[str, int]]  # name -> {"partitions": n, "end": sum of end offsets}
    groups: list[GroupLag]
    tables: dict[str, int]
    latency: dict[str, Any]
    cdc: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)


def take_snapshot(settings: Settings) -> Snapshot:
    """One reading of everything; a source that fails becomes a problem line, not a crash."""
    from control.stack.supervisor import status as stack_status

    snap = Snapshot(time.monotonic(), {}, {}, [], {}, {}, [])
    try:
        snap.services = stack_status(settings)["services"]
    except Exception as exc:
        snap.problems.append(f"services: {exc}")
    try:
        _kafka(settings, snap)
    except Exception as exc:
        snap.problems.append(f"kafka: {exc}")
    try:
        snap.tables = pg_probe.table_rows(settings)
        snap.latency = asdict(pg_probe.e2e_latency(settings))
    except Exception as exc:
        snap.problems.append(f"postgres: {exc}")
    try:
        from control.ops.cdc import report

        snap.cdc = [asdict(r) for r in report(settings)]
    except Exception as exc:
        snap.problems.append(f"cdc: {exc}")
    return snap


def _kafka(settings: Settings, snap: Snapshot) -> None:
    admin = kadmin.admin_client(settings)
    existing = kadmin.topic_partitions(admin)
    names = [s.name for s in catalog(settings).all() if s.name in existing]
    marks = kadmin.watermarks(admin, [(t, p) for t in names for p in existing[t]])
    for topic in names:
        ends = [high for (t, _p), (_low, high) in marks.items() if t == topic]
        snap.topics[topic] = {"partitions": len(existing[topic]), "end": sum(ends)}
    high = {tp: h for tp, (_l, h) in marks.items()}
    stored = all_stored_offsets(settings)
    for group in kadmin.list_groups(admin):
        committed = stored.get(group) or kadmin.group_offsets(admin, group)
        mine = {tp: o for tp, o in committed.items() if tp in high}
        if not mine:
            continue
        members = kadmin.describe_group(admin, group).members
        for topic in sorted({t for t, _p in mine}):
            lag = sum(max(high[tp] - o, 0) for tp, o in mine.items() if tp[0] == topic)
            source = "sink_offsets" if group in stored else "kafka"
            snap.groups.append(GroupLag(group, topic, lag, members, source))


def rates(before: Snapshot | None, after: Snapshot) -> dict[str, float]:
    """Records per second appended to each topic between two snapshots."""
    if before is None or after.taken_at <= before.taken_at:
        return {}
    seconds = after.taken_at - before.taken_at
    return {
        t: (after.topics[t]["end"] - before.topics[t]["end"]) / seconds
        for t in after.topics
        if t in before.topics
    }


def render(snap: Snapshot, per_s: dict[str, float]) -> Group:
    services = Table("service", "pid", "health", "detail", title="services", title_justify="left")
    for name, svc in snap.services.items():
        health = "[green]healthy[/]" if svc["healthy"] else "[red]down[/]"
        services.add_row(name, str(svc["pid"] or "-"), health, svc["detail"])
    topics = Table("topic", "partitions", "records", "records/s", title="topics", title_justify="left")
    for name, info in snap.topics.items():
        rate = f"{per_s[name]:,.1f}" if name in per_s else "-"
        topics.add_row(name, str(info["partitions"]), f"{info['end']:,}", rate)
    groups = Table(
        "group", "topic", "lag", "members", "offsets from", title="consumer groups", title_justify="left"
    )
    for g in snap.groups:
        groups.add_row(g.group, g.topic, f"{g.lag:,}", str(g.members), g.offsets_from)
    store = Table("table", "rows (estimate)", title="postgres", title_justify="left")
    for name, count in sorted(snap.tables.items()):
        store.add_row(name, f"{count:,}")
    cdc = Table("connector", "state", "slot", "slot lag (bytes)", title="cdc", title_justify="left")
    for c in snap.cdc:
        cdc.add_row(c["connector"], c["state"], c["slot"], str(c["lag_bytes"]))
    lines: list[Any] = [services, topics, groups, store, cdc]
    if snap.latency.get("versions"):
        lat = snap.latency
        lines.append(
            f"fetch-to-stored latency over {lat['versions']} versions in the last {lat['window_s']:.0f}s: "
            f"p50 {lat['p50_s']:.2f}s, p99 {lat['p99_s']:.2f}s, max {lat['max_s']:.2f}s"
        )
    lines += [f"[red]{p}[/]" for p in snap.problems]
    return Group(*lines)


def status_json(snap: Snapshot, per_s: dict[str, float]) -> dict[str, Any]:
    data = asdict(snap)
    data.pop("taken_at")
    for name, rate in per_s.items():
        data["topics"][name]["records_per_s"] = rate
    return data


def status_command(
    watch: Annotated[bool, typer.Option(help="refresh live until Ctrl-C")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one machine-readable snapshot")] = False,
    interval: Annotated[float, typer.Option(help="seconds between samples (records/s)")] = 2.0,
) -> None:
    """Services, topics, consumer lag, throughput, rows, CDC: the pipeline at a glance."""
    settings = load_settings()
    first = take_snapshot(settings)
    time.sleep(interval)  # the sampling interval of the records/s figures
    snap = take_snapshot(settings)
    if as_json:
        typer.echo(json.dumps(status_json(snap, rates(first, snap)), default=str))
    elif not watch:
        console.print(render(snap, rates(first, snap)))
    else:
        with Live(render(snap, rates(first, snap)), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)  # refresh period of the live view
                first, snap = snap, take_snapshot(settings)
                live.update(render(snap, rates(first, snap)), refresh=True)
    if snap.problems or not all(s["healthy"] for s in snap.services.values()):
        raise typer.Exit(1)
