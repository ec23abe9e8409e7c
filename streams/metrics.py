"""Prometheus metrics of the stream stage, served on ``metrics.streams_port`` by ``python -m streams``.

Seconds and ``_total`` counters; labels are bounded (agent names, duplicate kinds, change kinds,
dead-letter reasons, table names), never a URL. faust's own prometheus sensor is not installed:
its latencies are in milliseconds and these cover what the pipeline dashboards need.
"""

from __future__ import annotations

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
REQUESTS = Counter("streams_requests_total", "Crawl requests produced by the frontier", ["reason"])
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
