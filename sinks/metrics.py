"""Prometheus metrics of the sink workers, served on ``settings.metrics.sink_port``.

Base units, ``_total`` counters, bounded labels: ``family`` (pages, touches, stats, runs; see
:mod:`sinks.families`), the dead-letter ``reason`` (``sqlstate_<code>`` or a record error's
reason), the ``sqlstate`` of statement errors and the parked-touch ``action``. A registry can
be passed so tests read their own counters instead of the process-wide default registry.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

BATCH_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class SinkMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        family = ["family"]
        self.records_written = Counter(
            "sink_records_written_total",
            "Decoded records written to the sink (replays and unchanged records included)",
            family,
            registry=registry,
        )
        self.rows_changed = Counter(
            "sink_rows_changed_total",
            "Rows inserted or changed (pages: new or changed content, one outbox event each)",
            family,
            registry=registry,
        )
        self.batches = Counter(
            "sink_batches_total", "Batches committed to the sink", family, registry=registry
        )
        self.batch_seconds = Histogram(
            "sink_batch_seconds",
            "Time to store a decoded batch, from the start of its write to its commit, retries included",
            family,
            buckets=BATCH_SECONDS_BUCKETS,
            registry=registry,
        )
        self.dead_letters = Counter(
            "sink_dead_letters_total",
            "Records sent to the dead-letter topic, by reason",
            ["family", "reason"],
            registry=registry,
        )
        self.touches_pending = Counter(
            "sink_touches_pending_total",
            "Touches of URLs without a pages row yet: parked in page_touches_pending (family "
            "touches, action parked), folded into last_seen when the page row came (pages, folded)",
            ["family", "action"],
            registry=registry,
        )
        self.db_retries = Counter(
            "sink_db_retries_total",
            "Batch writes retried because the database was unavailable",
            family,
            registry=registry,
        )
        self.statement_errors = Counter(
            "sink_statement_errors_total",
            "Writes that failed with an error of our own statements (SQLSTATE 42xxx and unknown: SQL, "
            "schema or grants), retried for sink.statement_retry_s before their records are dead-lettered",
            ["family", "sqlstate"],
            registry=registry,
        )
        self.dead_letter_retries = Counter(
            "sink_dead_letter_retries_total",
            "Rounds of dead letters the broker did not take, retried with backoff before the batch is stored",
            family,
            registry=registry,
        )
        self.dead_letters_unproducible = Counter(
            "sink_dead_letters_unproducible_total",
            "Dead letters refused for their size even without key and payload: logged with their "
            "origin (the record stays there) and skipped",
            ["family", "reason"],
            registry=registry,
        )
        self.consumers_replaced = Counter(
            "sink_consumers_replaced_total",
            "Kafka consumers replaced after a fatal error (a static member fenced off when the group "
            "coordinator moved); the new one re-reads from the stored offsets",
            family,
            registry=registry,
        )
        self.last_commit = Gauge(
            "sink_last_commit_timestamp_seconds",
            "Unix time of the last committed batch",
            family,
            registry=registry,
        )
