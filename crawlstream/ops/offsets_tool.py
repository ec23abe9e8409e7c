"""``crawlstream offsets reset | show``: replay or skip records by moving a consumer group.

Reads Kafka through the admin API (crawlstream/ops/admin.py) and, for sink groups, the
Postgres table ``sink_offsets`` (crawlstream/ops/sink_store.py): the sink's stored offsets are
the ones that count, so a reset of a sink group must rewrite them too (``--apply-to-store``).
A reset is a dry run unless ``--execute``; it refuses while the group has active members.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from crawlstream.errors import CrawlstreamError
from crawlstream.ops import admin as kadmin
from crawlstream.ops.reset_plan import (
    TP,
    PlanRow,
    ResetTarget,
    compute_plan,
    parse_target,
    parse_topics,
    read_plan_csv,
    write_plan_csv,
)
from crawlstream.ops.sink_store import stored_offsets, write_stored_offsets
from crawlstream.settings import Settings, load_settings

console = Console(soft_wrap=True)
offsets_app = typer.Typer(
    help="Consumer-group offsets: show them, reset them (replay/skip).", no_args_is_help=True
)
SINK_NOTE = (
    "group {group} is a sink group: the offsets that count are its rows in Postgres table "
    "sink_offsets (column 'stored'); the worker seeks there on every assignment and its offsets "
    "in Kafka only mirror them. Resetting Kafka alone replays nothing: add --apply-to-store to "
    "rewrite sink_offsets in the same run. A replay is safe: pages are inserted ON CONFLICT DO "
    "NOTHING, so it changes no row and emits no change event."
)


class GroupActiveError(CrawlstreamError):
    """The group has live members; Kafka would refuse (or they would overwrite) the reset."""


@dataclass(frozen=True)
class ResetPlan:
    group: str
    rows: list[PlanRow]
    kafka_committed: dict[TP, int]
    stored: dict[TP, int]  # sink_offsets of the group ({} for other groups)
    sink_group: bool


def is_sink_group(settings: Settings, group: str, stored: dict[TP, int]) -> bool:
    return bool(stored) or group == settings.sink.group_id


def build_plan(
    settings: Settings, group: str, target: ResetTarget, topics: dict[str, list[int] | None] | None = None
) -> ResetPlan:
    """What a reset would do; reads Kafka and sink_offsets, changes nothing."""
    admin = kadmin.admin_client(settings)
    committed = kadmin.group_offsets(admin, group)
    stored = stored_offsets(settings, group)
    sink = is_sink_group(settings, group, stored)
    current = {**committed, **stored} if sink else committed
    from_file = read_plan_csv(target.value) if isinstance(target.value, Path) else None
    if topics:
        partitions = [
            (topic, p)
            for topic, parts in topics.items()
            for p in (parts or kadmin.partitions_of(admin, topic))
        ]
        if from_file is not None:
            partitions = [tp for tp in partitions if tp in from_file]
    else:
        partitions = sorted(from_file if from_file is not None else current)
    if not partitions:
        raise CrawlstreamError(f"group {group} has no committed offsets; name the topics with --topic")
    known = kadmin.topic_partitions(admin)
    missing = [f"{t}[{p}]" for t, p in partitions if p not in known.get(t, [])]
    if missing:
        raise CrawlstreamError(f"no such partition: {', '.join(missing)}")
    bounds = kadmin.watermarks(admin, partitions)
    found = from_file
    if isinstance(target.value, datetime):
        found = kadmin.offsets_for_time(admin, partitions, int(target.value.timestamp() * 1000))
    rows = compute_plan(target, partitions, current, bounds, found)
    return ResetPlan(group, rows, committed, stored, sink)


def execute_plan(settings: Settings, plan: ResetPlan, *, apply_to_store: bool) -> None:
    """Apply ``plan`` to Kafka (and to sink_offsets with ``apply_to_store``)."""
    if plan.sink_group and not apply_to_store:
        raise CrawlstreamError(SINK_NOTE.format(group=plan.group) + " Nothing was changed.")
    if apply_to_store and not plan.sink_group:
        raise CrawlstreamError(f"--apply-to-store: group {plan.group} has no rows in sink_offsets")
    admin = kadmin.admin_client(settings)
    info = kadmin.describe_group(admin, plan.group)
    if info.members:
        raise GroupActiveError(
            f"group {plan.group} has {info.members} active member(s) (state {info.state}); stop its "
            "consumers first (the pipeline's: `crawlstream workers down`), then run the reset again"
        )
    new = {(r.topic, r.partition): r.new for r in plan.rows}
    kadmin.alter_group_offsets(admin, plan.group, new)
    if apply_to_store:
        write_stored_offsets(settings, plan.group, new)


def render_plan(plan: ResetPlan, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("topic", "partition", "current", "new", "earliest", "latest", "note"):
        table.add_column(column, justify="left" if column in ("topic", "note") else "right")
    for r in plan.rows:
        note = "clamped" if r.clamped else ""
        if plan.sink_group and plan.kafka_committed.get((r.topic, r.partition)) != r.current:
            note = f"{note} kafka has {plan.kafka_committed.get((r.topic, r.partition), '-')}".strip()
        table.add_row(
            r.topic, str(r.partition), _fmt(r.current), str(r.new), str(r.earliest), str(r.latest), note
        )
    return table


def _fmt(value: int | None) -> str:
    return "-" if value is None else str(value)


def _settings() -> Settings:
    from crawlstream.logs import setup_logging

    settings = load_settings()
    setup_logging(settings.log_level, json_lines=settings.log_json)
    return settings


@offsets_app.command("reset")
def reset_command(
    group: Annotated[str, typer.Option(help="consumer group id")],
    topic: Annotated[
        list[str] | None, typer.Option(help="TOPIC or TOPIC:P[,P...]; default: the group's")
    ] = None,
    to_earliest: bool = False,
    to_latest: bool = False,
    to_current: bool = False,
    to_datetime: Annotated[str | None, typer.Option(help="ISO 8601, UTC unless an offset is given")] = None,
    by_duration: Annotated[
        str | None, typer.Option(help="ISO 8601 duration back from now, e.g. PT15M")
    ] = None,
    to_offset: int | None = None,
    shift_by: int | None = None,
    from_file: Annotated[
        Path | None, typer.Option(help="CSV topic,partition,...,offset (see --export)")
    ] = None,
    execute: Annotated[bool, typer.Option(help="apply the plan (default: dry run)")] = False,
    export: Annotated[Path | None, typer.Option(help="write the plan as CSV")] = None,
    apply_to_store: Annotated[bool, typer.Option(help="sink groups: rewrite sink_offsets too")] = False,
) -> None:
    """Plan (and with --execute apply) new offsets for GROUP; offsets clamp to earliest/latest."""
    settings = _settings()
    target = parse_target(
        {
            "to-earliest": to_earliest,
            "to-latest": to_latest,
            "to-current": to_current,
            "to-datetime": to_datetime,
            "by-duration": by_duration,
            "to-offset": to_offset,
            "shift-by": shift_by,
            "from-file": str(from_file) if from_file is not None else None,
        }
    )
    plan = build_plan(settings, group, target, parse_topics(topic or []))
    console.print(render_plan(plan, f"offsets of group {group} (--{target.mode})"))
    if plan.sink_group:
        console.print(f"[yellow]{SINK_NOTE.format(group=group)}[/]", highlight=False)
    if export is not None:
        write_plan_csv(plan.rows, export)
        console.print(f"plan written to {export}")
    if not execute:
        console.print("dry run: nothing changed (add --execute to apply)")
        return
    execute_plan(settings, plan, apply_to_store=apply_to_store)
    where = "Kafka and sink_offsets" if apply_to_store else "Kafka"
    console.print(f"[green]applied[/] to {where}: {len(plan.rows)} partition(s) of group {group}")


@offsets_app.command("show")
def show_command(
    group: Annotated[str, typer.Option(help="consumer group id")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Committed (and sink-stored) offsets of GROUP, the partitions' bounds and the lag."""
    settings = _settings()
    plan = build_plan(settings, group, ResetTarget("to-current"))
    info = kadmin.describe_group(kadmin.admin_client(settings), group)
    if as_json:
        rows = [{**asdict(r), "lag": r.latest - r.new} for r in plan.rows]
        typer.echo(
            json.dumps({"group": group, "state": info.state, "members": info.members, "partitions": rows})
        )
        return
    console.print(render_plan(plan, f"group {group}: {info.state}, {info.members} member(s)"))
    console.print(f"lag: {sum(r.latest - r.new for r in plan.rows)} records")
    if plan.sink_group:
        console.print("sink group: 'current' is the offset stored in Postgres sink_offsets", highlight=False)
