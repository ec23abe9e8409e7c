"""Prometheus metrics of the stream stage, served on ``metrics.streams_port`` by ``python -m streams``.

Seconds and ``_total`` counters; labels are bounded (agent names, duplicate kinds, dead-letter
reasons), never a URL. faust's own prometheus sensor is not installed: its latencies are in
milliseconds and these counters cover what the pipeline dashboards need.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EVENTS = Counter("streams_events_total", "Events consumed by an agent", ["agent"])
UNIQUE = Counter("streams_unique_total", "Pages forwarded as the first sighting of their canonical URL")
DUPLICATES = Counter("streams_duplicates_total", "Pages dropped as duplicates", ["kind"])
DEAD_LETTERS = Counter("streams_dead_letters_total", "Events sent to the dead-letter topic", ["reason"])
PROCESSING = Histogram("streams_processing_seconds", "Time an agent spends on one event", ["agent"])
EVENT_LAG = Histogram(
    "streams_event_lag_seconds",
    "Time from fetch (PageRecord.fetched_at) to processing by the agent",
    ["agent"],
    # Pages can sit in Kafka for minutes while a worker is down or catching up.
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
