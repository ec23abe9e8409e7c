"""Postgres facts the exporter and the status view publish: table sizes and end-to-end latency.

Reads with the app role (``settings.postgres.url``): ``pg_stat_user_tables`` (live-row
estimates, cheap at any size) and ``page_versions`` (one row per page version the sink stored,
with the crawler's ``fetched_at`` and the database's ``stored_at``: their difference is the time
a page took from fetch to Postgres, through Kafka, the stream stage and the sink).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg2

from crawlstream.settings import Settings
from sinks.probe import query

TABLE_ROWS = "SELECT relname, n_live_tup FROM pg_stat_user_tables WHERE schemaname = current_schema()"
# Over the versions stored in the window; NULLs when none was stored.
LATENCY = (
    "SELECT count(*), "
    "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - fetched_at)), "
    "percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - fetched_at)), "
    "max(extract(epoch FROM stored_at - fetched_at)) "
    "FROM page_versions WHERE stored_at > now() - make_interval(secs => %s)"
)


@dataclass(frozen=True)
class Latency:
    window_s: float
    versions: int
    p50_s: float | None
    p99_s: float | None
    max_s: float | None


def _query(settings: Settings, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    return query(settings, sql, params, timeout_s=5)


def table_rows(settings: Settings) -> dict[str, int]:
    """Estimated live rows per table of the schema (autovacuum statistics)."""
    return {str(name): int(rows) for name, rows in _query(settings, TABLE_ROWS)}


def e2e_latency(settings: Settings, window_s: float = 300.0) -> Latency:
    """Fetch-to-stored latency of the page versions stored in the last ``window_s`` seconds."""
    try:
        ((count, p50, p99, top),) = _query(settings, LATENCY, (window_s,))
    except psycopg2.errors.UndefinedTable:
        return Latency(window_s, 0, None, None, None)

    def seconds(value: Any) -> float | None:
        return None if value is None else float(value)

    return Latency(window_s, int(count), seconds(p50), seconds(p99), seconds(top))
