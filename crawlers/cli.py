"""``crawlstream jobs list | validate | run NAME`` and ``crawlstream scheduler``.

Mounted in :mod:`control.cli`. The jobs file is ``--jobs`` (env ``CRAWLSTREAM_JOBS_FILE``,
default ``deploy/jobs.toml``). ``jobs run`` crawls in this process (pages to the job's output
topic, dead letters to ``<prefix>.deadletter``, run events to ``<prefix>.runs``) with a progress
bar; exit status 0 when clean, 1 on delivery failures, 3 when fetches failed (dead-lettered).
Scrapy's log goes to ``<state_dir>/logs/job-<name>-<run>.log`` while the bar is shown.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from crawlers.jobs import get_job, load_jobs
from crawlstream.logs import setup_logging
from crawlstream.metrics import serve_metrics
from crawlstream.settings import load_settings
from crawlstream.topics import catalog

console = Console()
jobs_app = typer.Typer(help="Crawl jobs declared in a jobs file (TOML).", no_args_is_help=True)
JobsFile = Annotated[
    Path, typer.Option("--jobs", envvar="CRAWLSTREAM_JOBS_FILE", help="the jobs file (TOML)")
]
DEFAULT_JOBS = Path("deploy/jobs.toml")
# How a frontier job runs: installed by the composition root (control.cli), which runs it
# through the whole pipeline and reconciles it; returns the exit status.
frontier_hook: Callable[[Any, Any, str, Path | None, bool], int] | None = None


@jobs_app.command("list")
def jobs_list(jobs: JobsFile = DEFAULT_JOBS) -> None:
    """The jobs of the file: source, seeds, schedule, output topic."""
    settings = load_settings()
    crawl, raw_pages = settings.crawl, catalog(settings).raw_pages.name
    table = Table("job", "source", "seeds", "schedule", "limits", "output")
    for job in load_jobs(jobs).values():
        pages = crawl.max_pages if job.max_pages is None else job.max_pages
        depth = crawl.max_depth if job.max_depth is None else job.max_depth
        table.add_row(
            job.name,
            job.source,
            "\n".join(job.seed_urls()),
            job.schedule or "-",
            f"pages {pages or '∞'}, depth {depth or '∞'}",
            job.output_topic or raw_pages,
        )
    console.print(table)


@jobs_app.command("validate")
def jobs_validate(jobs: JobsFile = DEFAULT_JOBS) -> None:
    """Validate the jobs file; errors name the job and the field (exit 1)."""
    found = load_jobs(jobs)
    console.print(f"[green]{jobs}: {len(found)} valid job(s)[/]: {', '.join(found)}")


class _Bar:
    def __init__(self, progress: Progress, max_pages: int) -> None:
        self.progress = progress
        self.task = progress.add_task("crawling", total=max_pages or None, pages=0, rate=0.0, errors=0)
        self.started = time.monotonic()

    def __call__(self, stats: dict[str, Any]) -> None:
        from crawlers.metrics import fetch_errors

        pages = int(stats.get("crawlstream/page_records", 0)) + int(
            stats.get("crawlstream/metadata_records", 0)
        )
        rate = pages / max(time.monotonic() - self.started, 1e-9)
        errors = fetch_errors(stats) + int(stats.get("crawlstream/delivery_failed", 0))
        self.progress.update(self.task, completed=pages, pages=pages, rate=rate, errors=errors)


@jobs_app.command("run")
def jobs_run(
    name: Annotated[str, typer.Argument(help="the job's name in the jobs file")],
    jobs: JobsFile = DEFAULT_JOBS,
    run_id: Annotated[str | None, typer.Option(help="run id (default: a new UUID)")] = None,
    progress: Annotated[bool, typer.Option(help="progress bar (off: Scrapy's log on stderr)")] = True,
    metrics_port: Annotated[int, typer.Option(help="/metrics port; -1 disables, 0 any")] = -1,
    report_path: Annotated[Path | None, typer.Option("--report", help="also write the report JSON")] = None,
) -> None:
    """Run one job now, in this process, and print its summary."""
    from crawlers.jobrun import outcome, run_job

    settings = load_settings()
    if not progress:  # with the bar, Scrapy logs to its LOG_FILE only
        setup_logging(settings.log_level, json_lines=settings.log_json)
    job = get_job(load_jobs(jobs), name)
    run_id = run_id or uuid.uuid4().hex
    if job.source == "frontier":
        if frontier_hook is None:
            raise typer.BadParameter("frontier jobs run through `crawlstream jobs run`")
        code = frontier_hook(settings, job, run_id, report_path, progress)
        if code:
            raise typer.Exit(code)
        return
    extra: dict[str, Any] = {}
    if progress:
        log_file = Path(settings.stack.state_dir) / "logs" / f"job-{name}-{run_id}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        extra = {"LOG_FILE": str(log_file), "LOG_FILE_APPEND": False}
        console.print(f"job {name}, run {run_id} (log: {log_file})")
        columns = (
            SpinnerColumn(),
            TextColumn("{task.description}"),
            *Progress.get_default_columns()[1:3],
            TextColumn("{task.fields[pages]} pages, {task.fields[rate]:.1f} pages/s"),
            TextColumn("[red]{task.fields[errors]} errors"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as bar:
            report = run_job(settings, job, run_id, _Bar(bar, job.max_pages or 0), metrics_port, extra)
    else:
        report = run_job(settings, job, run_id, None, metrics_port)
    if report_path is not None:
        report_path.write_text(json.dumps(report.to_json_dict(), indent=2) + "\n", encoding="utf-8")
    table = Table(title=f"job {name} run {run_id}: {outcome(report)}", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for label, value in (
        ("HTML pages", report.pages_fetched),
        ("metadata records (non-HTML)", report.metadata_records),
        ("records delivered", report.records_delivered),
        ("delivery failures", report.delivery_failures),
        ("fetch errors", report.fetch_errors),
        ("dead letters", report.dead_letters),
        ("robots.txt denials", report.robots_denied),
        ("private addresses refused", report.private_refused),
        ("distinct canonical URLs", report.distinct_canonical_urls),
        ("duration", f"{report.duration_s:.1f}s"),
        ("finish reason", report.finish_reason),
        *((f"refused: {reason.replace('_', ' ')}", n) for reason, n in report.refused.items()),
    ):
        table.add_row(label, str(value))
    console.print(table)
    if report.delivery_failures:
        raise typer.Exit(1)
    if report.dead_letters:
        raise typer.Exit(3)


@jobs_app.command("stop")
def jobs_stop(name: Annotated[str, typer.Argument(help="the job whose run to stop")]) -> None:
    """Stop the running run of a frontier job: nothing more is admitted, requests in flight end and
    are committed, its crawlers exit, and the run is announced finished (outcome stopped)."""
    from crawlers.frontierrun import stop_job

    pid, run = stop_job(load_settings(), name)
    console.print(f"asked the runner of job {name} (pid {pid}, run {run}) to stop")


def scheduler_command(
    jobs: JobsFile = DEFAULT_JOBS,
    poll: Annotated[float, typer.Option(help="seconds between checks of the schedules")] = 1.0,
) -> None:
    """Long-running: start jobs on their cron schedules (UTC), one run per job at a time."""
    import signal
    import threading

    from crawlers.jobs import JobSpec
    from crawlers.scheduler import JobState, ProcessLauncher, Scheduler

    settings = load_settings()
    setup_logging(settings.log_level, json_lines=settings.log_json, worker="scheduler")
    serve_metrics(settings.metrics.host, settings.metrics.scheduler_port)
    state_dir = Path(settings.stack.state_dir)

    def lost(job: JobSpec, state: JobState) -> None:
        from crawlers.jobrun import produce_run_event
        from crawlstream.records import RunEvent, utcnow

        started = datetime.fromisoformat(state.started_at) if state.started_at else utcnow()
        event = RunEvent(
            run_id=state.run_id or "unknown",
            job_id=job.name,
            event="finished",
            started_at=started,
            finished_at=utcnow(),
            outcome="failed",
            detail="the run process ended without a report (killed?)",
        )
        produce_run_event(settings, event)

    launcher = ProcessLauncher(jobs.resolve(), state_dir / "logs")
    scheduler = Scheduler(
        load_jobs(jobs), state_dir, launcher, on_lost=lost, metrics_host=settings.metrics.host
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    console.print(f"scheduler: {len(scheduler.jobs)} scheduled job(s); state in {scheduler.state_path}")
    scheduler.run_forever(stop, poll)
