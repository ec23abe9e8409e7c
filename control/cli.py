"""The ``crawlstream`` command: the composition root of the platform.

It is the one place that wires stages together, and it does so by starting them as
processes (``python -m streams``, ``python -m sinks``, ``python -m crawlers``) or, for the
database migration, by a lazy import at call time, so the stages still never import each other.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from control.ops.cdc import cdc_app
from control.ops.exporter import exporter_command
from control.ops.offsets_tool import offsets_app
from control.ops.status import status_command
from control.ops.topics_tool import topics_app
from control.run.pipeline import CrawlArgs
from control.stack import cli as stack_cli
from control.stack.cli import stack_app
from crawlers import cli as crawlers_cli
from crawlers.cli import jobs_app, scheduler_command
from crawlstream import __version__
from crawlstream.errors import CrawlstreamError
from crawlstream.logs import setup_logging
from crawlstream.settings import Settings, load_settings
from follow.follow import follow_app

console = Console()
app = typer.Typer(
    help="crawlstream: Scrapy -> Kafka -> faust -> PostgreSQL -> Debezium.", no_args_is_help=True
)
app.add_typer(
    stack_app, name="stack", help="The embedded stack: Kafka, PostgreSQL, Kafka Connect + Debezium."
)
db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
workers_app = typer.Typer(help="The stream and sink worker processes.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(offsets_app, name="offsets")
app.command("exporter")(exporter_command)
app.command("status")(status_command)
app.add_typer(db_app, name="db")
app.add_typer(workers_app, name="workers")
app.add_typer(cdc_app, name="cdc")
app.add_typer(follow_app, name="follow")
app.add_typer(jobs_app, name="jobs")
app.command("scheduler")(scheduler_command)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"crawlstream {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", help="print the version and exit", callback=_print_version, is_eager=True),
    ] = False,
) -> None:
    """crawlstream: Scrapy -> Kafka -> faust -> PostgreSQL -> Debezium."""


def _settings() -> Settings:
    settings = load_settings()
    setup_logging(settings.log_level, json_lines=settings.log_json)
    return settings


def migrate(settings: Settings) -> None:
    """Apply the sink schema's migrations (the stack calls this before registering Debezium)."""
    from sinks.migrate import upgrade  # the composition root may reach into a stage

    upgrade(settings)


stack_cli.migrate_hook = migrate


def _frontier_job(settings: Settings, job: object, run_id: str, report: Path | None, progress: bool) -> int:
    """``jobs run`` of a frontier job: the run through the whole pipeline, its summary printed."""
    from control.run.frontierjob import run_frontier_job
    from control.run.report import render_summary
    from crawlers.jobs import JobSpec

    assert isinstance(job, JobSpec)
    console.print(f"frontier job {job.name}, run {run_id}: {job.crawlers} crawler process(es)")
    summary = run_frontier_job(settings, job, run_id, on_progress=lambda m: console.log(m))
    if report is not None:
        report.write_text(json.dumps(summary.crawl, indent=2) + "\n", encoding="utf-8")
    render_summary(summary, console)
    _print_frontier(summary.crawl)
    if summary.crawl.get("finish_reason") not in ("finished", "stopped"):
        return 3
    return 0 if summary.ok else 2


def _print_frontier(report: dict[str, object]) -> None:
    progress = report.get("frontier") or {}
    assert isinstance(progress, dict)
    console.print(
        f"frontier: {report.get('finish_reason')}; admitted {progress.get('admitted', 0)}, "
        f"closed {progress.get('closed', 0)}, fetched {progress.get('fetched', 0)}, "
        f"not modified {progress.get('not_modified', 0)}, failed {progress.get('failed', 0)}, "
        f"hosts {progress.get('hosts', 0)}, refused {progress.get('refused', {})}"
    )


crawlers_cli.frontier_hook = _frontier_job

EXTERNAL_HELP = (
    "use the services and workers the settings point at (a production cluster): "
    "start no embedded stack and no local workers"
)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply database migrations up to the newest (as the owner role)."""
    migrate(_settings())
    console.print("database schema is up to date")


@workers_app.command("up")
def workers_up(
    follow: Annotated[bool, typer.Option(help="also run `crawlstream follow` as a managed worker")] = False,
    streams: Annotated[
        int | None,
        typer.Option(min=1, max=32, help="stream workers (default: as many as ran before, at least 1)"),
    ] = None,
    sinks: Annotated[
        int | None,
        typer.Option(min=1, max=32, help="sink workers (default: as many as ran before, at least 1)"),
    ] = None,
) -> None:
    """Start the faust stream workers and the Postgres sink workers, those of them that are not
    running (a follower that ran and died too). Workers of a stage split its partitions; each is a
    static member of its groups under its own name, so a restart does not rebalance the others."""
    from control.workers import start_workers

    start_workers(_settings(), console, follower=follow, streams=streams, sinks=sinks)


@workers_app.command("down")
def workers_down() -> None:
    """Stop the worker processes that `workers up` started."""
    from control.workers import stop_workers

    stop_workers(_settings(), console)


def _run(settings: Settings, args: CrawlArgs, *, json_out: bool, timeout: float, external: bool) -> None:
    from control.run.pipeline import run_pipeline
    from control.run.report import render_endpoints, render_summary, summary_json

    if not external:
        from control.stack.supervisor import up
        from control.workers import start_workers

        up(settings, migrate=migrate, console=console)
        settings = load_settings()  # `up` wrote the stack's endpoints and secrets
        start_workers(settings, console)
    console.print(f"crawling {', '.join(args.start_urls)} (run {args.run_id})")
    summary = run_pipeline(settings, args, timeout_s=timeout, on_progress=lambda m: console.log(m))
    if json_out:
        print(json.dumps(summary_json(summary), default=str))
    else:
        render_summary(summary, console)
        render_endpoints(settings, console)
    if not summary.ok:
        raise typer.Exit(2)


@app.command("run")
def run(
    url: Annotated[str, typer.Argument(help="start URL; its host:port is allowed even if private")],
    max_pages: Annotated[int, typer.Option(help="0 = no limit")] = 0,
    max_depth: Annotated[int, typer.Option(help="0 = no limit")] = 0,
    job_id: Annotated[str, typer.Option(help="job id the records and the run carry")] = "adhoc",
    json_out: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the stages after the crawl")] = 300.0,
    external: Annotated[bool, typer.Option(help=EXTERNAL_HELP)] = False,
    frontier: Annotated[
        bool, typer.Option(help="a frontier job from URL: distributed crawlers fed by the stream stage")
    ] = False,
    crawlers: Annotated[int, typer.Option(help="--frontier: crawler processes")] = 1,
    follow: Annotated[str, typer.Option(help="--frontier: same-host | same-domain | any")] = "same-domain",
) -> None:
    """Crawl URL through the whole pipeline and reconcile the counts stage by stage."""
    if frontier:
        _run_frontier(url, max_pages, max_depth, job_id, json_out, timeout, external, crawlers, follow)
        return
    args = CrawlArgs(
        start_urls=[url],
        allow_private_hosts=[url],  # that URL's host, on that port only
        max_pages=max_pages,
        max_depth=max_depth,
        job_id=job_id,
        run_id=uuid.uuid4().hex,
    )
    _run(_settings(), args, json_out=json_out, timeout=timeout, external=external)


def _run_frontier(
    url: str,
    max_pages: int,
    max_depth: int,
    job_id: str,
    json_out: bool,
    timeout: float,
    external: bool,
    crawlers: int,
    follow: str,
) -> None:
    from control.run.frontierjob import run_frontier_job
    from control.run.report import render_endpoints, render_summary, summary_json
    from crawlers.jobs import JobSpec

    settings = _settings()
    try:
        job = JobSpec.model_validate(
            {
                "name": job_id,
                "source": "frontier",
                "start_urls": [url],
                "allow_private_hosts": [url],  # that URL's host, on that port only
                "max_pages": max_pages,
                "max_depth": max_depth,
                "crawlers": crawlers,
                "follow": follow,
            }
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if not external:
        from control.stack.supervisor import up
        from control.workers import start_workers

        up(settings, migrate=migrate, console=console)
        settings = load_settings()
        start_workers(settings, console)
    run_id = uuid.uuid4().hex
    console.print(f"frontier crawl from {url} (run {run_id}, {crawlers} crawler process(es))")
    summary = run_frontier_job(settings, job, run_id, on_progress=lambda m: console.log(m), timeout_s=timeout)
    if json_out:
        print(json.dumps(summary_json(summary), default=str))
    else:
        render_summary(summary, console)
        _print_frontier(summary.crawl)
        render_endpoints(settings, console)
    if not summary.ok or summary.crawl.get("finish_reason") != "finished":
        raise typer.Exit(2)


@app.command("demo")
def demo(
    pages: Annotated[int, typer.Option(help="pages of the generated demo site")] = 300,
    json_out: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the stages after the crawl")] = 300.0,
    external: Annotated[bool, typer.Option(help=EXTERNAL_HELP)] = False,
) -> None:
    """The main job: generate the demo site, serve it on 127.0.0.1 and run the pipeline on it."""
    from control.demosite import generate_demo_site, serve_directory

    settings = _settings()
    root = Path(settings.stack.state_dir) / "demo-site"
    manifest = generate_demo_site(root, pages=pages)
    server, base_url = serve_directory(root)
    try:
        console.print(
            f"demo site: {pages} pages at {base_url} (a full crawl fetches "
            f"{manifest.expected_html_responses} HTML pages, "
            f"{manifest.expected_distinct_canonical_urls} distinct URLs)"
        )
        args = CrawlArgs(
            start_urls=[f"{base_url}index.html"],
            allow_private_hosts=[base_url],  # the demo site's host, on its port only
            job_id="demo",
            run_id=uuid.uuid4().hex,
            expected_pages=manifest.expected_html_responses,
        )
        _run(settings, args, json_out=json_out, timeout=timeout, external=external)
    finally:
        server.shutdown()


def main() -> None:
    try:
        app()
    except CrawlstreamError as exc:
        console.print(f"[red]error:[/] {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
