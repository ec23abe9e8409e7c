"""``crawlstream offsets groups | describe | show | reset | delete``: kafka-consumer-groups' work.

``groups`` lists the consumer groups (``--list --state --type``), ``describe`` shows a group's state,
members and per-partition committed offset, end offset and lag (``--describe``), ``show`` the
offsets a reset starts from (with the partitions' bounds and a sink's stored offsets), ``reset``
replays or skips records (``--reset-offsets``) and ``delete`` deletes a group's offsets
(``--delete`` / ``--delete-offsets``). ``reset`` and ``delete`` are dry runs unless ``--execute``
and refuse while the group has active members. Plans are CSV in kafka-consumer-groups' own format
(control/ops/reset_plan.py), so a plan exported here is applied by Kafka's tool and back.

Reads Kafka through the admin API (control/ops/admin.py; a group's offsets on some topics are
deleted through kafka-python, which has the OffsetDelete request) and, for sink groups, the
Postgres table ``sink_offsets`` (sinks/probe.py): the sink's stored offsets are
the ones that count, so a reset of a sink group must rewrite them too (``--apply-to-store``),
and ``delete`` only warns that they stay.
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

from control.ops import admin as kadmin
from control.ops.reset_plan import (
    TP,
    PlanRow,
    ResetTarget,
    compute_plan,
    parse_target,
    parse_topics,
    plan_csv,
    read_plan_csv,
    write_plan_csv,
)
from crawlstream.errors import CrawlstreamError
from crawlstream.settings import Settings, load_settings
from sinks.probe import stored_offsets, write_stored_offsets

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)
offsets_app = typer.Typer(
    help="Consumer groups and their offsets: list, describe, reset (replay/skip), delete.",
    no_args_is_help=True,
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
    from_file = read_plan_csv(target.value, group) if isinstance(target.value, Path) else None
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
    to_earliest: Annotated[bool, typer.Option(help="to each partition's earliest offset")] = False,
    to_latest: Annotated[bool, typer.Option(help="to each partition's end (skip everything)")] = False,
    to_current: Annotated[bool, typer.Option(help="to the committed offsets (no change)")] = False,
    to_datetime: Annotated[str | None, typer.Option(help="ISO 8601, UTC unless an offset is given")] = None,
    by_duration: Annotated[
        str | None, typer.Option(help="ISO 8601 duration back from now, e.g. PT15M")
    ] = None,
    to_offset: Annotated[int | None, typer.Option(help="to this offset on every partition")] = None,
    shift_by: Annotated[
        int | None, typer.Option(help="move the committed offsets by N (negative: replay)")
    ] = None,
    from_file: Annotated[
        Path | None,
        typer.Option(help="plan CSV as kafka-consumer-groups writes it: topic,partition,offset lines"),
    ] = None,
    execute: Annotated[bool, typer.Option(help="apply the plan (default: dry run)")] = False,
    export: Annotated[
        Path | None,
        typer.Option(
            help="write the plan as kafka-consumer-groups' CSV (topic,partition,offset); - prints it"
        ),
    ] = None,
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
    to_stdout = export == Path("-")
    # With `--export -` stdout carries only the CSV, as `kafka-consumer-groups --export` prints it.
    out = err_console if to_stdout else console
    if to_stdout:
        typer.echo(plan_csv(plan.rows), nl=False)
    else:
        console.print(render_plan(plan, f"offsets of group {group} (--{target.mode})"))
    if plan.sink_group:
        out.print(f"[yellow]{SINK_NOTE.format(group=group)}[/]", highlight=False)
    if export is not None and not to_stdout:
        write_plan_csv(plan.rows, export)
        console.print(f"plan written to {export}")
    if not execute:
        out.print("dry run: nothing changed (add --execute to apply)")
        return
    execute_plan(settings, plan, apply_to_store=apply_to_store)
    where = "Kafka and sink_offsets" if apply_to_store else "Kafka"
    out.print(f"[green]applied[/] to {where}: {len(plan.rows)} partition(s) of group {group}")


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


@offsets_app.command("groups")
def groups_command(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Every consumer group with its state and type (kafka-consumer-groups --list --state --type)."""
    settings = _settings()
    listings = kadmin.group_listings(kadmin.admin_client(settings))
    if as_json:
        typer.echo(json.dumps([asdict(g) for g in listings]))
        return
    table = Table(title=f"{len(listings)} consumer group(s)", title_justify="left")
    for column in ("group", "state", "type"):
        table.add_column(column, overflow="fold")
    for g in listings:
        table.add_row(g.group, g.state, g.type + (" (simple)" if g.simple else ""))
    console.print(table)


@dataclass(frozen=True)
class PartitionState:
    """One row of ``kafka-consumer-groups --describe``."""

    topic: str
    partition: int
    committed: int | None
    end: int
    lag: int | None
    member_id: str | None
    host: str | None
    client_id: str | None
    stored: int | None = None  # sink groups: the offset stored in Postgres with the rows


def describe(settings: Settings, group: str) -> tuple[kadmin.GroupInfo, list[PartitionState]]:
    """The group's members and, per partition it committed or is assigned, offset, end and lag."""
    admin = kadmin.admin_client(settings)
    info = kadmin.describe_group(admin, group)
    committed = kadmin.group_offsets(admin, group)
    stored = stored_offsets(settings, group)
    owner = {tp: m for m in info.member_list for tp in m.assignment}
    tps = sorted(set(committed) | set(owner) | set(stored))
    ends = {tp: high for tp, (_low, high) in kadmin.watermarks(admin, tps).items()}
    rows = []
    for tp in tps:
        member = owner.get(tp)
        offset = committed.get(tp)
        rows.append(
            PartitionState(
                tp[0],
                tp[1],
                offset,
                ends[tp],
                None if offset is None else max(ends[tp] - offset, 0),
                member.member_id if member else None,
                member.host if member else None,
                member.client_id if member else None,
                stored.get(tp),
            )
        )
    return info, rows


@offsets_app.command("describe")
def describe_command(
    group: Annotated[str, typer.Option(help="consumer group id")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """State, members and per-partition committed offset, end offset and lag of GROUP
    (kafka-consumer-groups --describe, with --members and --state)."""
    settings = _settings()
    info, rows = describe(settings, group)
    if as_json:
        payload = {**asdict(info), "partitions": [asdict(r) for r in rows]}
        typer.echo(json.dumps(payload))
        return
    console.print(
        f"group {group}: state {info.state}, {info.members} member(s), type {info.type or '-'}, "
        f"assignor {info.assignor or '-'}, coordinator {info.coordinator or '-'}",
        highlight=False,
    )
    if info.member_list:
        members = Table(title="members", title_justify="left")
        for column in ("consumer id", "host", "client id", "#partitions", "assignment"):
            members.add_column(column, overflow="fold")  # ids are what an operator copies: never cut
        for m in info.member_list:
            assignment = "; ".join(
                f"{t}:{','.join(str(p) for tt, p in m.assignment if tt == t)}"
                for t in sorted({t for t, _p in m.assignment})
            )
            members.add_row(m.member_id, m.host, m.client_id, str(len(m.assignment)), assignment or "-")
        console.print(members)
    sink = any(r.stored is not None for r in rows)
    table = Table(title="partitions", title_justify="left")
    columns = ["topic", "partition", "current offset", "log end offset", "lag"]
    columns += ["sink stored"] if sink else []
    for column in [*columns, "consumer id", "host", "client id"]:
        table.add_column(column, justify="right" if column in columns[1:] else "left", overflow="fold")
    for r in rows:
        cells = [r.topic, str(r.partition), _fmt(r.committed), str(r.end), _fmt(r.lag)]
        cells += [_fmt(r.stored)] if sink else []
        table.add_row(*cells, r.member_id or "-", r.host or "-", r.client_id or "-")
    console.print(table)
    if sink:
        console.print(
            "sink group: the offsets that count are 'sink stored' (Postgres sink_offsets)", highlight=False
        )


def deletion_plan(settings: Settings, group: str, topics: dict[str, list[int] | None]) -> list[TP]:
    """The committed partitions of ``group`` that ``offsets delete`` would delete (all without topics)."""
    admin = kadmin.admin_client(settings)
    committed = kadmin.group_offsets(admin, group)
    if not topics:
        return sorted(committed)
    wanted = {(t, p) for t, parts in topics.items() for p in (parts or kadmin.partitions_of(admin, t))}
    return sorted(tp for tp in committed if tp in wanted)


def execute_deletion(settings: Settings, group: str, tps: list[TP], *, whole_group: bool) -> None:
    admin = kadmin.admin_client(settings)
    info = kadmin.describe_group(admin, group)
    if info.members:
        raise GroupActiveError(
            f"group {group} has {info.members} active member(s) (state {info.state}); stop its "
            "consumers first (the pipeline's: `crawlstream workers down`), then run the delete again"
        )
    if whole_group:
        kadmin.delete_group(admin, group)
    else:
        kadmin.delete_group_offsets(settings, group, tps)


@offsets_app.command("delete")
def delete_command(
    group: Annotated[str, typer.Option(help="consumer group id")],
    topic: Annotated[
        list[str] | None,
        typer.Option(help="TOPIC or TOPIC:P[,P...]: delete only these offsets; default: the whole group"),
    ] = None,
    execute: Annotated[bool, typer.Option(help="delete (default: dry run)")] = False,
) -> None:
    """Delete GROUP's committed offsets: all of them and the group itself (kafka-consumer-groups
    --delete), or those of --topic (--delete-offsets). Refused while the group has members."""
    settings = _settings()
    topics = parse_topics(topic or [])
    tps = deletion_plan(settings, group, topics)
    committed = kadmin.group_offsets(kadmin.admin_client(settings), group)
    table = Table(title=f"offsets of group {group} to delete", title_justify="left")
    for column in ("topic", "partition", "committed"):
        table.add_column(column, justify="left" if column == "topic" else "right")
    for t, p in tps:
        table.add_row(t, str(p), str(committed[(t, p)]))
    console.print(table)
    if stored_offsets(settings, group):
        console.print(
            f"[yellow]group {group} is a sink group: its offsets in Postgres sink_offsets stay and keep "
            "counting (the sink seeks there); this deletes only Kafka's mirror of them[/]",
            highlight=False,
        )
    if not tps and topics:
        console.print(
            f"group {group} has no committed offsets on {', '.join(topic or [])}: nothing to delete"
        )
        return
    whole = not topics
    what = (
        f"group {group} and its {len(tps)} offset(s)" if whole else f"{len(tps)} offset(s) of group {group}"
    )
    if not execute:
        console.print(f"dry run: would delete {what} (add --execute to delete)")
        return
    execute_deletion(settings, group, tps, whole_group=whole)
    console.print(f"[green]deleted[/] {what}")
