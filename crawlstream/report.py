"""Human-readable tables for a pipeline run (rich), and the JSON form for scripts."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.table import Table

from crawlstream.pipeline import RunSummary
from crawlstream.settings import Settings


def _rate(value: float | None) -> str:
    return f"{value:,.1f}/s" if value else "-"


def render_summary(summary: RunSummary, console: Console) -> None:
    crawl = summary.crawl
    stages = Table(title=f"crawlstream run {summary.run_id}", title_justify="left")
    for column in ("stage", "records", "throughput", "caught up after", "detail"):
        stages.add_column(column, justify="right" if column != "stage" and column != "detail" else "left")

    def caught(stage: str) -> str:
        seconds = summary.caught_up_s.get(stage)
        return f"{seconds:.1f}s" if seconds is not None else "NOT REACHED"

    fetched = int(crawl.get("pages_fetched", 0))
    stages.add_row(
        "crawl (pages fetched)",
        f"{fetched:,}",
        _rate(summary.throughput("crawl", fetched)),
        caught("crawl"),
        f"{crawl.get('responses_total', 0)} responses, {crawl.get('non_html', 0)} non-HTML, "
        f"{crawl.get('robots_denied', 0)} robots denials, {crawl.get('fetch_errors', 0)} fetch errors",
    )
    stages.add_row(
        "kafka (raw topic)",
        f"{summary.raw_records:,}",
        _rate(summary.throughput("kafka", summary.raw_records)),
        caught("kafka"),
        f"{crawl.get('delivery_failures', 0)} delivery failures",
    )
    stages.add_row(
        "streams (unique)",
        f"{summary.unique_new:,}",
        _rate(summary.throughput("streams", summary.raw_records)),
        caught("streams"),
        f"{summary.duplicates_dropped} duplicates dropped, {summary.dead_letters} dead letters",
    )
    stages.add_row(
        "sink (stored)",
        f"{summary.rows_new:,}",
        _rate(summary.throughput("sink", summary.unique_new)),
        caught("sink"),
        f"{summary.rows_for_crawl} of the crawl's URLs in pages",
    )
    stages.add_row(
        "cdc (change events)",
        f"{summary.cdc_creates:,}",
        _rate(summary.throughput("cdc", summary.cdc_creates)),
        caught("cdc"),
        "Debezium create events",
    )
    console.print(stages)

    checks = Table(title="reconciliation", title_justify="left")
    for column in ("stage", "check", "expected", "actual", "ok"):
        checks.add_column(column)
    for c in summary.checks:
        checks.add_row(
            c.stage, c.what, str(c.expected), str(c.actual), "[green]yes[/]" if c.ok else "[red]NO[/]"
        )
    console.print(checks)
    console.print(f"crawl log: {summary.crawl_log}")
    for note in summary.notes:
        console.print(f"[yellow]{note}[/]")
    if summary.ok:
        console.print("[green]All counts reconcile.[/]")
    else:
        console.print(
            "[red]Counts do not reconcile: lost or doubled records at "
            f"{', '.join(summary.failed_stages())}[/]"
        )


def render_endpoints(settings: Settings, console: Console) -> None:
    pg = settings.postgres.dsn()
    safe_pg = pg.split("@", 1)[-1] if "@" in pg else pg
    m = settings.metrics
    console.print(
        "\n[bold]Where things are[/]\n"
        f"  Kafka bootstrap : {settings.kafka.bootstrap_servers}\n"
        f"  Postgres        : postgresql://{settings.postgres.app_role}@{safe_pg} "
        "(passwords in .crawlstream/stack.env)\n"
        f"  Kafka Connect   : {settings.connect.url}/connectors/{settings.connect.connector_name}/status\n"
        f"  Metrics         : crawler http://{m.host}:{m.crawler_port}/metrics (during a crawl), "
        f"streams http://{m.host}:{m.streams_port}/metrics, sink http://{m.host}:{m.sink_port}/metrics\n"
        f"  Lag exporter    : `crawlstream exporter` serves http://{m.host}:{m.exporter_port}/metrics; "
        f"`crawlstream stack up --with-prometheus` adds Prometheus at "
        f"http://127.0.0.1:{settings.stack.prometheus_port} (catalog: docs/metrics.md)\n"
        "  Pipeline view   : .venv/bin/crawlstream status --watch\n"
        "  Status          : .venv/bin/crawlstream stack status\n"
        "  Stop everything : make down"
    )


def summary_json(summary: RunSummary) -> dict[str, Any]:
    data = asdict(summary)
    data["crawl"] = {k: v for k, v in summary.crawl.items() if k != "canonical_urls"}
    data["ok"] = summary.ok
    return data
