"""``crawlstream cdc status``: the Debezium connectors, their replication slots and WAL they hold.

For each connector the stack registers (:func:`control.stack.connect.connectors`: the raw
``pages`` connector and the outbox connector): its state from the Connect REST API
(``connect.url``), its slot from ``pg_replication_slots`` (read with the app role,
``postgres.url``): active or not, WAL retained (``pg_current_wal_lsn() - restart_lsn``) and
lag (``- confirmed_flush_lsn``) in bytes. A slot retaining more than ``connect.slot_lag_warn_bytes``
is a warning: a stopped connector's slot keeps WAL until the disk fills. The age of the slot's
row in ``cdc_heartbeat`` (upserted by the connector's ``heartbeat.action.query``) is shown too; no
beat for 6 heartbeat intervals (at least a minute) is a warning, because without heartbeats a slot
whose tables are idle retains the WAL other tables write. Exits 1 when a connector is not RUNNING
or its slot is missing, 0 otherwise (warnings included).

It is also the CDC stage's probe (:class:`CdcProbe`), which a pipeline run
(:mod:`control.run.pipeline`) composes with the stages' own probes. The CDC stage is no Python
package beside crawlers/streams/sinks/follow: it is Debezium in Kafka Connect, which the control
plane runs and registers (:mod:`control.stack.connect`), so its probe sits here, on the control
plane's side: a connector's failure (Connect's REST status) and the create events of
``cdc.public.pages`` (Debezium's envelope, :func:`debezium_creates`). The page events Debezium
routes to ``outbox.event.page`` are read through the follow stage's probe (:mod:`follow.probe`):
their header contract is that consumer's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

import psycopg2
import typer
from rich.console import Console
from rich.table import Table

from control.stack import connect
from crawlstream.settings import Settings, load_settings

cdc_app = typer.Typer(help="Change data capture: Debezium connectors and replication slots.")
console = Console()

SLOTS = (
    "SELECT slot_name, active, "
    "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, "
    "pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint "
    "FROM pg_replication_slots WHERE slot_name = ANY(%s)"
)
HEARTBEATS = (
    "SELECT slot_name, extract(epoch FROM now() - beat_at)::float8 "
    "FROM cdc_heartbeat WHERE slot_name = ANY(%s)"
)


@dataclass(frozen=True)
class ConnectorReport:
    connector: str
    state: str
    slot: str
    slot_active: bool | None
    retained_bytes: int | None
    lag_bytes: int | None
    problems: list[str]
    warnings: list[str]
    heartbeat_age_s: float | None = None


@dataclass(frozen=True)
class CdcProbe:
    """The Debezium connectors of the stack as a pipeline run sees them.

    ``status`` reads a connector's REST status document (None: not registered)."""

    settings: Settings
    status: Callable[[Settings, str], dict[str, Any] | None] = field(default=connect.connector_status)

    def connectors(self) -> tuple[str, ...]:
        """The raw ``pages`` connector and the outbox connector."""
        return (self.settings.connect.connector_name, self.settings.connect.outbox_connector_name)

    def connector_failure(self) -> str | None:
        """``<connector> <state>: <first line of its trace>`` of the first failed connector or
        task, or None while none has failed."""
        for name in self.connectors():
            state, trace = connect.describe(self.status(self.settings, name))
            if trace is not None:
                return f"{name} {state}: {trace.splitlines()[0]}"
        return None


def debezium_creates(values: Iterable[bytes | None]) -> list[tuple[str, int]]:
    """(URL, source LSN) of each Debezium create (``c``) or snapshot-read (``r``) event of
    ``cdc.public.pages``; tombstones, other operations and what is no envelope are skipped.

    A replayed event carries the LSN it had the first time; a second row insert a new one."""
    found = []
    for value in values:
        if value is None:
            continue
        try:
            envelope = json.loads(value)
            if envelope.get("op") in ("c", "r") and envelope.get("after"):
                source = envelope.get("source") or {}
                found.append((str(envelope["after"]["url"]), int(source.get("lsn") or 0)))
        except (ValueError, TypeError, KeyError, AttributeError):
            continue  # not a Debezium envelope: none of the run's create events
    return found


def assess(
    name: str,
    state: str,
    running: bool,
    slot: str,
    row: tuple[bool, int, int] | None,
    warn_bytes: int,
    *,
    heartbeat_age_s: float | None = None,
    heartbeat_warn_s: float | None = None,
) -> ConnectorReport:
    problems: list[str] = []
    warnings: list[str] = []
    age = float("inf") if heartbeat_age_s is None else heartbeat_age_s
    if heartbeat_warn_s is not None and running and age > heartbeat_warn_s:
        seen = "never" if heartbeat_age_s is None else f"{heartbeat_age_s:.0f} s ago"
        warnings.append(
            f"slot {slot}: last heartbeat {seen} (> {heartbeat_warn_s:.0f} s); check the connector's "
            "heartbeat.action.query, or the slot retains WAL while its tables are idle"
        )
    if not running:
        problems.append(f"connector {name} is not running ({state})")
    if row is None:
        problems.append(f"replication slot {slot} does not exist")
        return ConnectorReport(name, state, slot, None, None, None, problems, warnings)
    active, retained, lag = row
    if retained > warn_bytes:
        warnings.append(
            f"slot {slot} retains {retained} bytes of WAL (> {warn_bytes}, connect.slot_lag_warn_bytes)"
        )
    if not active:
        warnings.append(f"slot {slot} has no consumer: WAL accumulates until its connector runs")
    return ConnectorReport(name, state, slot, active, retained, lag, problems, warnings, heartbeat_age_s)


def report(settings: Settings) -> list[ConnectorReport]:
    configs = connect.connectors(settings)
    slots = {name: config["slot.name"] for name, config in configs.items()}
    with psycopg2.connect(settings.postgres.dsn(), connect_timeout=5) as conn, conn.cursor() as cur:
        cur.execute(SLOTS, (list(slots.values()),))
        rows = {str(r[0]): (bool(r[1]), int(r[2] or 0), int(r[3] or 0)) for r in cur.fetchall()}
        cur.execute(HEARTBEATS, (list(slots.values()),))
        beats = {str(r[0]): float(r[1]) for r in cur.fetchall()}
    conn.close()
    out = []
    for name, slot in slots.items():
        status = connect.connector_status(settings, name)
        summary, _trace = connect.describe(status)
        running = connect.running(status)
        interval_s = int(configs[name].get("heartbeat.interval.ms", "0")) / 1000
        out.append(
            assess(
                name,
                summary,
                running,
                slot,
                rows.get(slot),
                settings.connect.slot_lag_warn_bytes,
                heartbeat_age_s=beats.get(slot),
                heartbeat_warn_s=max(60.0, 6 * interval_s) if interval_s > 0 else None,
            )
        )
    return out


@cdc_app.command("status")
def status(json_out: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False) -> None:
    """Connector states, slot names, slot lag and retained WAL in bytes, with warnings."""
    reports = report(load_settings())
    if json_out:
        print(json.dumps([asdict(r) for r in reports], indent=2))
    else:
        table = Table(
            "connector", "state", "slot", "active", "retained WAL (bytes)", "lag (bytes)", "last heartbeat"
        )
        for r in reports:
            beat = "-" if r.heartbeat_age_s is None else f"{r.heartbeat_age_s:.0f} s ago"
            table.add_row(
                r.connector,
                r.state,
                r.slot,
                str(r.slot_active),
                str(r.retained_bytes),
                str(r.lag_bytes),
                beat,
            )
        console.print(table)
        for r in reports:
            for message in r.warnings:
                console.print(f"[yellow]warning[/]: {message}")
            for message in r.problems:
                console.print(f"[red]problem[/]: {message}")
    if any(r.problems for r in reports):
        raise typer.Exit(1)
