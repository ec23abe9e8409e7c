"""Prometheus metrics of the stream stage, served on ``metrics.streams_port`` by ``python -m streams``.

Seconds and ``_total`` counters; labels are bounded (agent names, duplicate kinds, change kinds,
dead-letter reasons, table names), never a URL. A worker also installs faust's own Prometheus
sensor (``faust_*``: offsets per partition, commits, rebalances, sends; latencies in ms) on the
faust web server's ``/metrics`` (``streams.web_port``), scraped as job crawlstream-streams-faust.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("streams_events_total", "Events consumed by an agent", ["agent"])
CHANGES = Counter(
    "streams_changes_total", "Pages classified by the URL table: new, changed or unchanged", ["change"]
)
DUPLICATES = Counter(
    "streams_duplicates_total", "Duplicates found: url (unchanged recrawl), content (exact), near", ["kind"]
)
DEAD_LETTERS = Counter(
    "streams_dead_letters_total", "Events sent to the dead-letter topic", ["agent", "reason"]
)
REQUESTS = Counter(
    "streams_requests_total",
    "Crawl requests produced by the frontier (link, recrawl, seed) and candidates it sent a frontier "
    "job's ledger (candidate)",
    ["reason"],
)
FRONTIER_REFUSED = Counter(
    "streams_frontier_refused_total",
    "Links the frontier refused to request: too_deep, url_too_long, scheme, no_host, invalid_url; "
    "for frontier jobs also offsite_host, offsite_domain, filtered, the ledger's budgets max_pages, "
    "host_budget, max_hosts, run_stopped, entries of a run already purged (run_over) and known URLs "
    "forgotten (expired)",
    ["reason"],
)
WINDOWS_CLOSED = Counter("streams_windows_closed_total", "Stats windows emitted on close", ["window"])
PROCESSING = Histogram("streams_processing_seconds", "Time an agent spends on one event", ["agent"])
ENRICHMENT = Histogram(
    "streams_enrichment_seconds",
    "Time to enrich one HTML page (parse, extract, fingerprint)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
TABLE_KEYS = Gauge("streams_table_keys", "Keys held by this worker in a table", ["table"])
EVENT_LAG = Histogram(
    "streams_event_lag_seconds",
    "Time from fetch (PageRecord.fetched_at) to processing by the agent",
    ["agent"],
    # Pages can sit in Kafka for minutes while a worker is down or catching up.
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
DELIVERY_FAILURES = Counter(
    "streams_delivery_failures_total",
    "Agent outputs the broker did not acknowledge for a reason of its own (the worker stops; the "
    "event is replayed); records it refused for their size or timestamp are dead letters instead",
    ["agent"],
)
REPLAYS = Counter(
    "streams_replays_total",
    "Events seen again after a restart whose table update was already stored (output re-sent)",
    ["agent"],
)


def table_size(table: Any) -> int:
    """Keys in a faust table on this worker: RocksDB's estimate per partition, else ``len``.

    ``len()`` of a RocksDB-backed table iterates every key, so it is never called per event.
    """
    dbs = getattr(table.data, "_dbs", None)
    if dbs is None:
        return len(table)
    return sum(int(db.property_int_value("rocksdb.estimate-num-keys") or 0) for db in list(dbs.values()))


def watch_table(app: Any, name: str, table: Any, interval_s: float = 10.0) -> None:
    """Set ``streams_table_keys{table=name}`` every ``interval_s`` on the worker's event loop."""

    async def report_table_keys() -> None:
        TABLE_KEYS.labels(name).set(table_size(table))

    app.timer(interval_s, name=f"streams.metrics.table_keys.{name}")(report_table_keys)
