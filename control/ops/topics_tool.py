"""``crawlstream topics list | describe | create | export``: the topic catalog (crawlstream/topics.py)
against the cluster ``settings.kafka`` points at.

``describe`` checks each catalog topic exists with the catalog's partition count and configs
(``max.message.bytes``, ``retention.ms`` ...), and on every catalog topic and the stream stage's
own topics (faust's changelogs, ``<streams.app_id>-*``) each partition's leader, replicas and
in-sync replicas: a partition with fewer replicas than ``kafka.replication_factor``, fewer in sync
than replicas (under-replicated) or no leader (offline) is flagged. It exits 1 naming every
difference. ``export`` renders the catalog as Strimzi ``KafkaTopic``s (control/ops/manifests.py)
with the deployment's settings, for deploy/k8s.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from control.ops import admin as kadmin
from crawlstream.settings import Settings, load_settings
from crawlstream.topics import catalog, ensure_topics

console = Console(soft_wrap=True)
topics_app = typer.Typer(help="Topics of the catalog.", no_args_is_help=True)


@dataclass(frozen=True)
class PartitionState:
    """One partition's replication, as the cluster's metadata has it (broker ids; -1: no leader)."""

    partition: int
    leader: int
    replicas: list[int]
    isr: list[int]

    @property
    def status(self) -> str:
        if self.leader < 0:
            return "offline"
        if len(self.isr) < len(self.replicas):
            return "under-replicated"
        return "ok"


@dataclass
class TopicCheck:
    name: str
    partitions: int
    actual_partitions: int | None
    end_offsets: dict[int, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    replication: list[PartitionState] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def replication_problems(states: list[PartitionState], replication_factor: int) -> list[str]:
    """What is wrong with a topic's replication: too few replicas, replicas out of sync, no leader."""
    problems = []
    short = [s.partition for s in states if len(s.replicas) < replication_factor]
    if short:
        problems.append(f"partitions {_ids(short)} have fewer than {replication_factor} replicas")
    for status in ("under-replicated", "offline"):
        hit = [s for s in states if s.status == status]
        if hit:
            detail = ", ".join(f"{s.partition} (ISR {len(s.isr)}/{len(s.replicas)})" for s in hit)
            problems.append(f"{status}: partitions {detail}")
    return problems


def _ids(values: list[int]) -> str:
    return ",".join(str(v) for v in values)


def _states(topic: Any) -> list[PartitionState]:
    return [
        PartitionState(p.id, p.leader, list(p.replicas), list(p.isrs))
        for p in sorted(topic.partitions.values(), key=lambda p: p.id)
    ]


def check_topics(settings: Settings) -> list[TopicCheck]:
    """Each catalog topic compared with the cluster (existence, partitions, configs, replication),
    and the replication of the stream stage's own topics."""
    admin = kadmin.admin_client(settings)
    meta = admin.list_topics(timeout=10).topics
    existing = kadmin.topic_partitions(admin)
    rf = settings.kafka.replication_factor
    checks = []
    specs = catalog(settings).all()
    for spec in specs:
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
        check.replication = _states(meta[spec.name])
        check.problems += replication_problems(check.replication, rf)
        marks = kadmin.watermarks(admin, [(spec.name, p) for p in parts])
        check.end_offsets = {p: high for (_t, p), (_low, high) in marks.items()}
    catalog_names = {spec.name for spec in specs}
    own = sorted(
        n for n in existing if n.startswith(f"{settings.streams.app_id}-") and n not in catalog_names
    )
    for name in own:
        check = TopicCheck(name, len(existing[name]), len(existing[name]), replication=_states(meta[name]))
        check.problems += replication_problems(check.replication, rf)
        checks.append(check)
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
    """Catalog topics on the cluster: partitions, end offsets, config drift, and per partition the
    leader, replicas and in-sync replicas, under-replicated ones flagged (exit 1 on any problem)."""
    checks = check_topics(_settings())
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        **asdict(c),
                        "ok": c.ok,
                        "replication": [{**asdict(s), "status": s.status} for s in c.replication],
                    }
                    for c in checks
                ]
            )
        )
    else:
        table = Table("topic", "partitions", "records (end offsets)", "check")
        for c in checks:
            verdict = "[green]ok[/]" if c.ok else f"[red]{'; '.join(c.problems)}[/]"
            records = f"{sum(c.end_offsets.values()):,}" if c.end_offsets else "-"
            table.add_row(c.name, str(c.actual_partitions or "-"), records, verdict)
        console.print(table)
        parts = Table("topic", "partition", "leader", "replicas", "in sync", "status", title="replication")
        for c in checks:
            for s in c.replication:
                status = "[green]ok[/]" if s.status == "ok" else f"[red]{s.status.upper()}[/]"
                parts.add_row(c.name, str(s.partition), str(s.leader), _ids(s.replicas), _ids(s.isr), status)
        console.print(parts)
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
    from control.ops import manifests
    from control.stack.deploy_data import deploy_dir as installed_deploy_dir

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
