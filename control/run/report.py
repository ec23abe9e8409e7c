"""Human-readable tables for a pipeline run (rich), and the JSON form for scripts."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.table import Table

from control.run.pipeline import RunSummary
from crawlstream.settings import Settings


def _rate(value: float | None) -> str:
    return f"{value:,.1f}/s" if value else "-"


def render_summary(summary: RunSummary, console: Console) -> None:
    crawl = summary.crawl
    stages = Table(title=f"crawlstream run {summary.run_id}", title_justify="left")
    for column in ("stage", "records", "throughput", "caught up after", "replayed", "detail"):
        stages.add_column(column, justify="left" if column in ("stage", "detail") else "right")
    rec = summary.reconciliation

    def caught(stage: str) -> str:
        seconds = summary.caught_up_s.get(stage)
        return f"{seconds:.1f}s" if seconds is not None else "NOT REACHED"

    def row(stage: str, label: str, records: int, rate_of: int, detail: str) -> None:
        replayed = rec.replayed(stage)
        stages.add_row(
            label,
            f"{records:,}",
            _rate(summary.throughput(stage, rate_of)),
            caught(stage),
            f"{replayed:,}" if replayed else "-",
            detail,
        )

    fetched = int(crawl.get("pages_fetched", 0))
    row(
        "crawl",
        "crawl (pages fetched)",
        fetched,
        fetched,
        f"{crawl.get('responses_total', 0)} responses, {crawl.get('non_html', 0)} non-HTML, "
        f"{crawl.get('robots_denied', 0)} robots denials, {crawl.get('fetch_errors', 0)} fetch errors",
    )
    row(
        "kafka",
        "kafka (raw topic)",
        summary.raw_records,
        summary.raw_records,
        f"{len(summary.counts.raw_urls):,} distinct URLs, "
        f"{crawl.get('delivery_failures', 0)} delivery failures",
    )
    row(
        "streams",
        "streams (unique)",
        summary.unique_new,
        summary.raw_records,
        f"{summary.duplicates_dropped} recrawls touched, {summary.dead_letters} dead letters",
    )
    row(
        "sink",
        "sink (stored)",
        summary.rows_new,
        summary.unique_new,
        f"{summary.rows_for_crawl} of the crawl's URLs in pages",
    )
    row("cdc", "cdc (change events)", summary.cdc_creates, summary.cdc_creates, "Debezium create events")
    row("events", "events (outbox)", summary.page_events, summary.page_events, "page events, distinct ids")
    console.print(stages)

    checks = Table(title="reconciliation (distinct keys)", title_justify="left")
    for column in ("stage", "check", "expected", "actual", "ok"):
        checks.add_column(column)
    for c in summary.checks:
        checks.add_row(
            c.stage, c.what, c.expected_text, str(c.actual), "[green]yes[/]" if c.ok else "[red]NO[/]"
        )
    console.print(checks)
    for replay in summary.replays:
        console.print(f"[cyan]{replay.line()}[/]", highlight=False)
    console.print(f"crawl log: {summary.crawl_log}")
    for note in summary.notes:
        console.print(f"[yellow]{note}[/]")
    if summary.ok:
        replayed = sum(r.records for r in summary.replays)
        extra = f" ({replayed} replayed records, none lost or duplicated)" if replayed else ""
        console.print(f"[green]All counts reconcile{extra}.[/]")
    else:
        console.print(
            "[red]Counts do not reconcile: lost or duplicated records at "
            f"{', '.join(summary.failed_stages()) or 'no stage (no checks ran)'}[/]"
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
    """The summary for scripts: figures, checks, replays; URL sets as their sizes."""
    return {
        "run_id": summary.run_id,
        "ok": summary.ok,
        "failed_stages": summary.failed_stages(),
        "crawl": {k: v for k, v in summary.crawl.items() if k != "canonical_urls"},
        "figures": {
            "raw_records": summary.raw_records,
            "raw_distinct_urls": len(summary.counts.raw_urls),
            "unique_new": summary.unique_new,
            "duplicates_dropped": summary.duplicates_dropped,
            "touches": summary.touches,
            "dead_letters": summary.dead_letters,
            "rows_new": summary.rows_new,
            "rows_for_crawl": summary.rows_for_crawl,
            "cdc_creates": summary.cdc_creates,
            "page_events": summary.page_events,
        },
        "checks": [asdict(c) | {"ok": c.ok} for c in summary.checks],
        "replays": [asdict(r) for r in summary.replays],
        "caught_up_s": summary.caught_up_s,
        "notes": summary.notes,
        "crawl_log": summary.crawl_log,
    }
