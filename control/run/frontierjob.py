"""A frontier job run through the whole pipeline: the crawl (:mod:`crawlers.frontierrun`) as the
crawl step of :func:`control.run.pipeline.run_pipeline`, so its summary reconciles stage by stage
like ``crawlstream run`` (fetched = delivered = raw; unique = distinct new URLs; rows; CDC creates).

Used by ``crawlstream jobs run NAME`` (a job with ``source = "frontier"``; the composition root
installs :func:`run_frontier_job` as the jobs command's hook) and ``crawlstream run URL
--frontier``. Progress lines (admitted, in flight, fetched, not modified, failed, refused, hosts,
stored rows, pages/s) go to ``on_progress``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2

from control.run.pipeline import CrawlArgs, RunSummary, run_pipeline
from crawlers.frontierrun import FrontierRun, install_stop_handler
from crawlers.jobs import JobSpec
from crawlstream.errors import StackError
from crawlstream.records import RunProgress
from crawlstream.settings import Settings
from sinks.probe import SinkProbe

PROGRESS_EVERY_S = 2.0


def stored_rows(settings: Settings, run_id: str) -> int | None:
    """Rows of ``pages`` last written by this run (the sink's probe), for a progress line: None
    when Postgres cannot be asked, soon (a progress line is due every few seconds)."""
    try:
        return SinkProbe(settings, connect_timeout_s=3).run_rows(run_id)
    except (psycopg2.Error, StackError):
        return None


def progress_line(progress: RunProgress, elapsed_s: float, stored: int | None) -> str:
    fetched = progress.fetched + progress.not_modified
    refused = sum(progress.refused.values())
    return (
        f"admitted {progress.admitted}, in flight {progress.in_flight}, fetched {fetched} "
        f"(not modified {progress.not_modified}), failed {progress.failed}, refused {refused}, "
        f"hosts {progress.hosts}, stored {'?' if stored is None else stored}, "
        f"{fetched / max(elapsed_s, 1e-9):.1f} pages/s"
    )


def run_frontier_job(
    settings: Settings,
    job: JobSpec,
    run_id: str,
    *,
    crawlers: int | None = None,
    allow_private_hosts: list[str] | None = None,
    on_progress: Callable[[str], None] = lambda _msg: None,
    timeout_s: float = 300.0,
    extra_scrapy: dict[str, Any] | None = None,
) -> RunSummary:
    """Run ``job`` (a frontier job) once and reconcile it; SIGTERM/SIGINT stop it cleanly."""
    last = [0.0]

    def show(progress: RunProgress, elapsed_s: float) -> None:
        if time.monotonic() - last[0] >= PROGRESS_EVERY_S:
            last[0] = time.monotonic()
            on_progress(progress_line(progress, elapsed_s, stored_rows(settings, run_id)))

    run = FrontierRun(
        settings,
        job,
        run_id,
        crawlers or job.crawlers,
        Path(settings.stack.state_dir) / "logs",
        allow_private_hosts=list(allow_private_hosts or []),
        extra_scrapy=dict(extra_scrapy or {}),
        on_progress=show,
    )
    install_stop_handler(run)

    def crawl(_args: CrawlArgs, report_path: Path, _log: Path, _progress: Callable[[str], None]) -> int:
        run.run(report_path)
        return 0

    args = CrawlArgs(start_urls=list(job.start_urls), job_id=job.name, run_id=run_id)
    return run_pipeline(settings, args, timeout_s=timeout_s, on_progress=on_progress, crawl=crawl)
