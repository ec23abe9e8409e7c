"""``crawlstream stack up | down | status``: the typer sub-app mounted by control/cli.py.

Settings come from crawlstream.settings.load_settings(). The supervisor (and with it
confluent-kafka) is imported inside each command, so mounting this app costs nothing.
Errors derived from CrawlstreamError are printed in red and exit with status 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from crawlstream.errors import CrawlstreamError
from crawlstream.settings import Settings, load_settings

stack_app = typer.Typer(
    help="Run the embedded stack: Kafka (KRaft), PostgreSQL, Kafka Connect + Debezium.", no_args_is_help=True
)
console = Console(soft_wrap=True)
# The schema migration `stack up` applies before registering Debezium. The core cannot import
# the sinks stage, so the composition root (control/cli.py) installs it here.
migrate_hook: Callable[[Settings], None] | None = None
err_console = Console(stderr=True, soft_wrap=True)


@contextmanager
def _errors_exit() -> Iterator[None]:
    try:
        yield
    except CrawlstreamError as exc:
        err_console.print(str(exc), highlight=False, markup=False, style="red")
        raise typer.Exit(1) from None


def run_up(
    migrate: Callable[[Settings], None] | None = None,
    timeout: float | None = None,
    *,
    brokers: int | None = None,
    secure: bool | None = None,
) -> Settings:
    """``stack up`` for callers that supply the migration (control/cli.py wires the real one).
    ``brokers`` and ``secure`` override ``stack.brokers`` and ``stack.secure``."""
    from control.stack.supervisor import up

    shape = {k: v for k, v in (("brokers", brokers), ("secure", secure)) if v is not None}
    with _errors_exit():
        settings = load_settings()
        if shape:
            settings = load_settings(stack=settings.stack.model_copy(update=shape).model_dump())
        up(settings, migrate, console=console, timeout_s=timeout)
    return load_settings()  # re-read: stack.env now holds the endpoints, shape and secrets


@stack_app.command("up")
def up_command(
    timeout: Annotated[
        float | None, typer.Option(help="seconds each service may take to become healthy")
    ] = None,
    with_prometheus: Annotated[
        bool, typer.Option(help="also start the lag exporter and Prometheus with deploy/prometheus")
    ] = False,
    brokers: Annotated[
        int | None,
        typer.Option(
            help="Kafka nodes (1, 3 or 5), each a broker and a controller; 3: replication factor 3, "
            "min.insync.replicas 2 (default: stack.brokers, as the state dir was made)"
        ),
    ] = None,
    secure: Annotated[
        bool | None,
        typer.Option(
            "--secure/--no-secure",
            help="SASL_SSL (SCRAM-SHA-512) with a local CA, mutual TLS between nodes, ACLs with one "
            "principal per stage (default: stack.secure, as the state dir was made)",
        ),
    ] = None,
) -> None:
    """Start Postgres, Kafka and Connect (idempotent: only what is not running), migrate the
    schema, register the CDC connectors."""
    settings = run_up(migrate_hook, timeout, brokers=brokers, secure=secure)
    if with_prometheus:
        from control.ops.prom_server import start_prometheus

        with _errors_exit():
            start_prometheus(settings, console)


@stack_app.command("down")
def down_command() -> None:
    """Stop workers, then Connect, Kafka and Postgres (only processes this stack started)."""
    from control.stack.supervisor import down

    with _errors_exit():
        down(load_settings(), console=console)


@stack_app.command("status")
def status_command(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Endpoints, pids and health of each service (exit 1 when one is down). Never prints secrets."""
    from control.stack.supervisor import status

    with _errors_exit():
        report = status(load_settings())
    healthy = all(svc["healthy"] for svc in report["services"].values())
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        if not healthy:
            raise typer.Exit(1)
        return
    table = Table(title="crawlstream stack")
    for column in ("service", "endpoint", "pid", "health", "detail"):
        table.add_column(column)
    for name, svc in report["services"].items():
        health = "[green]healthy[/]" if svc["healthy"] else "[red]down[/]"
        table.add_row(name, svc["endpoint"], str(svc["pid"] or "-"), health, svc["detail"])
    console.print(table)
    if len(report["brokers"]) > 1:
        nodes = Table(title="kafka nodes (each a broker and a controller)")
        for column in ("node", "process", "pid", "address", "controller", "health"):
            nodes.add_column(column)
        for b in report["brokers"]:
            role = "active controller" if b["active_controller"] else "voter"
            health = "[green]up[/]" if b["healthy"] else "[red]down[/]"
            nodes.add_row(str(b["node_id"]), b["name"], str(b["pid"] or "-"), b["address"], role, health)
        console.print(nodes)
    console.print(f"kafka: {report['kafka_security']}", highlight=False)
    console.print(f"postgres url: {report['postgres_url']} (password in stack.env)", highlight=False)
    if not healthy:
        raise typer.Exit(1)


@stack_app.command("acls")
def acls_command() -> None:
    """The ACLs a secured cluster needs (one principal per stage), as kafka-acls commands; `stack up
    --secure` applies them to the embedded stack."""
    from crawlstream.acls import acl_plan

    for grant in acl_plan(load_settings()):
        typer.echo(grant.kafka_acls_command())
