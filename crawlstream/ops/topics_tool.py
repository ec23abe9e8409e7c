"""``crawlstream topics list | describe | create``: the topic catalog (crawlstream/topics.py)
against the cluster ``settings.kafka`` points at.

``describe`` checks each catalog topic exists with the catalog's partition count and configs
(``max.message.bytes``, ``retention.ms`` ...) and exits 1 naming every difference.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from crawlstream.ops import admin as kadmin
from crawlstream.settings import Settings, load_settings
from crawlstream.topics import catalog, ensure_topics

console = Console(soft_wrap=True)
topics_app = typer.Typer(help="Topics of the catalog.", no_args_is_help=True)


@dataclass
class TopicCheck:
    name: str
    partitions: int
    actual_partitions: int | None
    end_offsets: dict[int, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_topics(settings: Settings) -> list[TopicCheck]:
    """Each catalog topic compared with the cluster: existence, partitions, configs."""
    admin = kadmin.admin_client(settings)
    existing = kadmin.topic_partitions(admin)
    checks = []
    for spec in catalog(settings).all():
        parts = existing.get(spec.name)
        check = TopicCheck(spec.name, spec.partitions, len(parts) if parts else None)
        checks.append(check)
        if parts is None:
            check.problems.append("missing (run `crawlstream topics create`)")
            continue
        if len(parts) != spec.partitions:
            check.problems.append(f"{len(parts)} partitions, catalog says {spec.partitions}")
        actual = kadmin.topic_configs(admin, spec.name)
        check.problems += [
            f"{key}={actual.get(key)}, catalog says {value}"
            for key, value in sorted(spec.config.items())
            if actual.get(key) != value
        ]
        marks = kadmin.watermarks(admin, [(spec.name, p) for p in parts])
        check.end_offsets = {p: high for (_t, p), (_low, high) in marks.items()}
    return checks


def _settings() -> Settings:
    from crawlstream.logs import setup_logging

    settings = load_settings()
    setup_logging(settings.log_level, json_lines=settings.log_json)
    return settings


@topics_app.command("list")
def topics_list() -> None:
    """The topic catalog: names, partitions, keys, what each carries."""
    table = Table("topic", "partitions", "key", "carries")
    for spec in catalog(_settings()).all():
        table.add_row(spec.name, str(spec.partitions), spec.key, spec.description)
    console.print(table)


@topics_app.command("describe")
def topics_describe(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Catalog topics on the cluster: partitions, end offsets, config drift (exit 1 on drift)."""
    checks = check_topics(_settings())
    if as_json:
        typer.echo(json.dumps([{**asdict(c), "ok": c.ok} for c in checks]))
    else:
        table = Table("topic", "partitions", "records (end offsets)", "check")
        for c in checks:
            verdict = "[green]ok[/]" if c.ok else f"[red]{'; '.join(c.problems)}[/]"
            table.add_row(
                c.name, str(c.actual_partitions or "-"), f"{sum(c.end_offsets.values()):,}", verdict
            )
        console.print(table)
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


@topics_app.command("create")
def topics_create() -> None:
    """Create every catalog topic that does not exist yet, then check them all."""
    settings = _settings()
    created = ensure_topics(settings)
    console.print(f"created: {', '.join(created)}" if created else "all topics exist")
    drift = [c for c in check_topics(settings) if not c.ok]
    for c in drift:
        console.print(f"[red]{c.name}: {'; '.join(c.problems)}[/]")
    if drift:
        raise typer.Exit(1)
