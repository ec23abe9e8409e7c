"""``crawlstream topics list | describe | create | export``: the topic catalog (crawlstream/topics.py)
against the cluster ``settings.kafka`` points at.

``describe`` checks each catalog topic exists with the catalog's partition count and configs
(``max.message.bytes``, ``retention.ms`` ...) and exits 1 naming every difference. ``export``
renders the catalog as Strimzi ``KafkaTopic``s (crawlstream/ops/manifests.py) with the
deployment's settings, for deploy/k8s.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
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


@topics_app.command("export")
def topics_export(
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="strimzi: KafkaTopic YAML on stdout; json: the catalog as JSON; "
            "k8s: every generated file of deploy/k8s/generated (topics, connectors, CronJobs)",
        ),
    ] = "strimzi",
    deploy_dir: Annotated[
        Path | None,
        typer.Option(help="the deploy folder (k8s, connect, jobs.toml); default: the installed one"),
    ] = None,
    write: Annotated[bool, typer.Option("--write", help="k8s: rewrite the generated files")] = False,
    check: Annotated[
        bool, typer.Option("--check", help="k8s: exit 1 when a generated file is stale")
    ] = False,
) -> None:
    """The catalog as deployment resources, with the settings of deploy/k8s/settings.env (not this
    shell's environment), so the Kubernetes topics are the embedded stack's topics."""
    from crawlstream.ops import manifests
    from crawlstream.stack.deploy_data import deploy_dir as installed_deploy_dir

    deploy_dir = deploy_dir if deploy_dir is not None else installed_deploy_dir()
    settings = manifests.deployment_settings(manifests.read_env_file(deploy_dir / "k8s" / "settings.env"))
    if fmt == "strimzi":
        typer.echo(manifests.dump_yaml(manifests.strimzi_topics(settings)), nl=False)
    elif fmt == "json":
        typer.echo(json.dumps([asdict(spec) for spec in catalog(settings).all()], indent=2))
    elif fmt == "k8s":
        files = manifests.generated_files(deploy_dir)
        if write:
            for path, text in files.items():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
                console.print(f"wrote {path}")
        if check:
            stale = manifests.stale_files(deploy_dir)
            for path in stale:
                console.print(
                    f"[red]{path} is stale: run `crawlstream topics export --format k8s --write`[/]"
                )
            if stale:
                raise typer.Exit(1)
        if not write and not check:
            for path, text in files.items():
                typer.echo(f"# --- {path}\n{text}", nl=False)
    else:
        raise typer.BadParameter(f"unknown format {fmt!r}: strimzi, json or k8s", param_hint="--format")
