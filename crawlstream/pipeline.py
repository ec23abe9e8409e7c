"""One pipeline run: crawl a site, wait until every stage has caught up, reconcile the counts.

This is the main job behind ``make run`` (the demo site) and ``crawlstream run URL``. It
drives no stage itself: the crawl runs in its own process (``python -m crawlers crawl``), the
faust and sink workers are already running, Debezium runs in Kafka Connect. It only reads
what each stage left behind: topic end offsets, consumer-group and Postgres-stored offsets,
rows in ``pages``, and the change events on the CDC topic. Counts are per run, so runs of
one pipeline must not overlap.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
from confluent_kafka import Consumer, TopicPartition

from crawlstream import offsets
from crawlstream.errors import CrawlstreamError
from crawlstream.settings import Settings
from crawlstream.topics import catalog


@dataclass
class Check:
    stage: str
    what: str
    expected: int
    actual: int

    @property
    def ok(self) -> bool:
        return self.expected == self.actual


@dataclass
class RunSummary:
    run_id: str
    crawl: dict[str, Any]
    raw_records: int = 0
    unique_new: int = 0
    duplicates_dropped: int = 0
    # Recrawls of a known URL with unchanged content: PageTouch records on <prefix>.pages.touches.
    touches: int = 0
    dead_letters: int = 0
    rows_new: int = 0
    rows_for_crawl: int = 0
    cdc_creates: int = 0
    caught_up_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    crawl_log: str = ""
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failed_stages(self) -> list[str]:
        return sorted({c.stage for c in self.checks if not c.ok})

    def throughput(self, stage: str, records: int) -> float | None:
        seconds = self.caught_up_s.get(stage)
        return records / seconds if seconds else None


@dataclass(frozen=True)
class CrawlArgs:
    start_urls: list[str]
    allowed_domains: list[str] = field(default_factory=list)
    allow_private_hosts: list[str] = field(default_factory=list)
    max_pages: int = 0
    max_depth: int = 0
    job_id: str = "adhoc"
    run_id: str = ""
    # When the site is known (the generated demo site), the HTML pages a full crawl must fetch.
    expected_pages: int | None = None


def run_crawl_process(
    args: CrawlArgs,
    report_path: Path,
    log_path: Path,
    on_progress: Callable[[str], None] = lambda _msg: None,
) -> int:
    """Run ``python -m crawlers crawl`` in a fresh process (Twisted reactors are one per process).

    Its log goes to ``log_path``; progress lines and errors are passed to ``on_progress``.
    """
    argv = [sys.executable, "-m", "crawlers", "crawl", "--report", str(report_path), "--job-id", args.job_id]
    for url in args.start_urls:
        argv += ["--start-url", url]
    for domain in args.allowed_domains:
        argv += ["--allowed-domain", domain]
    for host in args.allow_private_hosts:
        argv += ["--allow-private-host", host]
    if args.run_id:
        argv += ["--run-id", args.run_id]
    if args.max_pages:
        argv += ["--max-pages", str(args.max_pages)]
    if args.max_depth:
        argv += ["--max-depth", str(args.max_depth)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log, log_path.open("rb") as follow:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        while True:
            code = proc.poll()
            for raw in follow.readlines():
                line = raw.decode("utf-8", "replace").rstrip()
                if "progress:" in line or " ERROR" in line or "CRITICAL" in line:
                    on_progress(line.split("] ", 1)[-1] if "] " in line else line)
            if code is not None:
                return code
            time.sleep(0.5)  # the crawl's progress is read while it runs


class PipelineProbe:
    """Reads the state each stage leaves behind (offsets, rows, change events)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = catalog(settings)

    def end(self, topic: str) -> offsets.Offsets:
        return offsets.end_offsets(self.settings, topic)

    def streams_committed(self) -> offsets.Offsets:
        return offsets.committed_offsets(
            self.settings, self.settings.streams.app_id, self.topics.raw_pages.name
        )

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg2.connect(self.settings.postgres.dsn()) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            rows: list[tuple[Any, ...]] = cur.fetchall()
        conn.close()
        return rows

    def lags(self) -> tuple[int, int]:
        """(streams lag on the raw and its repartition topics, sink lag on the unique topic by its
        Postgres offsets)."""
        streams = offsets.lag(self.end(self.topics.raw_pages.name), self.streams_committed())
        for spec in (self.topics.pages_by_band, self.topics.dedup_verdicts):
            committed = offsets.committed_offsets(self.settings, self.settings.streams.app_id, spec.name)
            streams += offsets.lag(self.end(spec.name), committed)
        sink = offsets.lag(self.end(self.topics.unique_pages.name), self.sink_stored())
        return streams, sink

    def wait_drained(self, timeout_s: float, on_progress: Callable[[str], None]) -> None:
        """Wait until no stage has a backlog, so that a run's deltas count only that run."""
        deadline = time.monotonic() + timeout_s
        while (lags := self.lags()) != (0, 0):
            if time.monotonic() > deadline:
                raise CrawlstreamError(
                    f"the pipeline has a backlog that does not drain (streams lag {lags[0]}, sink lag "
                    f"{lags[1]}): check the workers with `crawlstream stack status` and their logs"
                )
            on_progress(f"draining earlier records first: streams lag {lags[0]}, sink lag {lags[1]}")
            time.sleep(1.0)  # polling interval of a deadline-bounded wait

    def connector_failure(self) -> str | None:
        """The first line of the CDC connector's failure trace, or None while it runs."""
        from crawlstream.stack.connect import connector_status, describe

        state, trace = describe(connector_status(self.settings))
        return None if trace is None else f"{state}: {trace.splitlines()[0]}"

    def db_now(self) -> Any:
        return self._query("SELECT now()")[0][0]

    def sink_stored(self) -> offsets.Offsets:
        rows = self._query(
            "SELECT partition, next_offset FROM sink_offsets WHERE consumer_group = %s AND topic = %s",
            (self.settings.sink.group_id, self.topics.unique_pages.name),
        )
        return {int(p): int(o) for p, o in rows}

    def rows_present(self, urls: list[str]) -> int:
        return int(self._query("SELECT count(*) FROM pages WHERE url = ANY(%s)", (urls,))[0][0])

    def rows_stored_before(self, urls: list[str], before: Any) -> int:
        return int(
            self._query("SELECT count(*) FROM pages WHERE url = ANY(%s) AND stored_at < %s", (urls, before))[
                0
            ][0]
        )

    def read_range(
        self, topic: str, start: offsets.Offsets, end: offsets.Offsets, timeout_s: float = 30.0
    ) -> list[tuple[bytes | None, bytes | None]]:
        """(key, value) of every record in [start, end) per partition."""
        wanted = {p: o for p, o in end.items() if o > start.get(p, 0)}
        if not wanted:
            return []
        consumer = Consumer(
            self.settings.kafka.librdkafka(
                **{
                    "group.id": "crawlstream-inspector",
                    "enable.auto.commit": False,
                    "fetch.max.bytes": self.settings.kafka.max_message_bytes * 4,
                    "max.partition.fetch.bytes": self.settings.kafka.max_message_bytes,
                }
            )
        )
        consumer.assign([TopicPartition(topic, p, start.get(p, 0)) for p in wanted])
        out: list[tuple[bytes | None, bytes | None]] = []
        deadline = time.monotonic() + timeout_s
        try:
            while wanted and time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is None or msg.error():
                    continue
                p, o = msg.partition(), msg.offset()
                if p is None or o is None:
                    continue
                if p in wanted and o < wanted[p]:
                    out.append((msg.key(), msg.value()))
                if p in wanted and o + 1 >= wanted[p]:
                    del wanted[p]
        finally:
            consumer.close()
        return out


def cdc_created_urls(events: list[tuple[bytes | None, bytes | None]]) -> list[str]:
    """URLs of Debezium create (``c``) and snapshot-read (``r``) events; tombstones are skipped."""
    urls = []
    for _key, value in events:
        if value is None:
            continue
        envelope = json.loads(value)
        if envelope.get("op") in ("c", "r") and envelope.get("after"):
            urls.append(str(envelope["after"]["url"]))
    return urls


def run_pipeline(
    settings: Settings,
    args: CrawlArgs,
    *,
    timeout_s: float = 180.0,
    on_progress: Callable[[str], None] = lambda _msg: None,
) -> RunSummary:
    """Crawl, wait for every stage, and return the reconciled summary (see :class:`Check`)."""
    probe = PipelineProbe(settings)
    t = probe.topics
    probe.wait_drained(timeout_s, on_progress)
    before = {
        spec.name: probe.end(spec.name)
        for spec in (t.raw_pages, t.unique_pages, t.page_touches, t.dead_letter, t.cdc_pages)
    }
    db_start = probe.db_now()

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="crawlstream-run-") as tmp:
        report_path = Path(tmp) / "report.json"
        crawl_log = Path(settings.stack.state_dir) / "logs" / f"crawl-{args.run_id or 'adhoc'}.log"
        code = run_crawl_process(args, report_path, crawl_log, on_progress)
        if not report_path.exists():
            raise CrawlstreamError(
                f"the crawl process exited with {code} and wrote no report; see {crawl_log}"
            )
        report: dict[str, Any] = json.loads(report_path.read_text())
    crawl_s = time.monotonic() - started
    summary = RunSummary(
        run_id=str(report.get("run_id", args.run_id)), crawl=report, crawl_log=str(crawl_log)
    )
    summary.caught_up_s["crawl"] = crawl_s
    urls: list[str] = list(report.get("canonical_urls", []))
    delivered = int(report.get("records_delivered", 0))

    def stage_done(stage: str) -> None:
        summary.caught_up_s.setdefault(stage, time.monotonic() - started)
        on_progress(f"{stage} caught up after {summary.caught_up_s[stage]:.1f}s")

    deadline = time.monotonic() + timeout_s
    # Unique keys and CDC creates are read incrementally: [cursor, end) on each round.
    cursors = {
        t.unique_pages.name: dict(before[t.unique_pages.name]),
        t.cdc_pages.name: dict(before[t.cdc_pages.name]),
    }
    new_urls: list[str] = []
    created: list[str] = []

    def read_new() -> None:
        for topic, sink_list in ((t.unique_pages.name, new_urls), (t.cdc_pages.name, created)):
            end = probe.end(topic)
            records = probe.read_range(topic, cursors[topic], end)
            if topic == t.unique_pages.name:
                sink_list.extend(k.decode() for k, _ in records if k is not None)
            else:
                sink_list.extend(cdc_created_urls(records))
            cursors[topic] = end

    while True:
        raw_end = probe.end(t.raw_pages.name)
        if offsets.delta(raw_end, before[t.raw_pages.name]) >= delivered:
            stage_done("kafka")
        # The stream stage commits a raw record only once its outputs are delivered (its page
        # waits in memory for the dedup hops' verdict: raw -> by band -> verdicts -> unique), so
        # a raw lag of 0 means every hop is done with this run's records.
        streams_lag, sink_lag = probe.lags()
        if "kafka" in summary.caught_up_s and streams_lag == 0:
            stage_done("streams")
        if "streams" in summary.caught_up_s and sink_lag == 0:
            stage_done("sink")
        if "sink" in summary.caught_up_s:
            read_new()
            if set(new_urls) <= set(created):
                stage_done("cdc")
            elif (failure := probe.connector_failure()) is not None:
                summary.notes.append(f"the Debezium connector failed: {failure}")
                break
        if "cdc" in summary.caught_up_s or time.monotonic() > deadline:
            break
        on_progress(f"waiting: streams lag {streams_lag}, sink lag {sink_lag}")
        time.sleep(0.5)  # polling interval of a deadline-bounded wait

    read_new()
    raw_end = probe.end(t.raw_pages.name)
    unique_end = probe.end(t.unique_pages.name)
    summary.raw_records = offsets.delta(raw_end, before[t.raw_pages.name])
    unique_total = offsets.delta(unique_end, before[t.unique_pages.name])
    # Stream-stage dead letters: the crawl's own (failed fetches and deliveries) share the topic.
    summary.dead_letters = offsets.delta(probe.end(t.dead_letter.name), before[t.dead_letter.name]) - int(
        report.get("dead_letters", 0)
    )
    summary.duplicates_dropped = summary.raw_records - unique_total - summary.dead_letters
    summary.touches = offsets.delta(probe.end(t.page_touches.name), before[t.page_touches.name])
    crawled = set(urls)
    summary.unique_new = sum(1 for url in new_urls if url in crawled)
    # Only this run's URLs: other writers of `pages` (and the connector's first snapshot) may
    # add change events to the same range of the CDC topic.
    summary.cdc_creates = sum(1 for url in created if url in crawled)
    summary.rows_for_crawl = probe.rows_present(urls) if urls else 0
    preexisting = probe.rows_stored_before(urls, db_start) if urls else 0
    summary.rows_new = summary.rows_for_crawl - preexisting
    distinct = int(report.get("distinct_canonical_urls", len(urls)))
    if args.expected_pages is not None:
        summary.checks.append(
            Check(
                "crawl",
                "HTML pages fetched = pages the site serves",
                args.expected_pages,
                int(report.get("pages_fetched", 0)),
            )
        )
    summary.checks += [
        Check(
            "crawl",
            "page records delivered = HTML pages fetched",
            int(report.get("pages_fetched", 0)),
            delivered,
        ),
        Check("crawl", "delivery failures", 0, int(report.get("delivery_failures", 0))),
        Check("kafka", "raw topic records = records delivered", delivered, summary.raw_records),
        Check(
            "streams",
            "unique pages = distinct URLs not seen before",
            distinct - preexisting,
            summary.unique_new,
        ),
        Check("sink", "rows in pages = distinct URLs crawled", distinct, summary.rows_for_crawl),
        Check("sink", "new rows = unique pages", summary.unique_new, summary.rows_new),
        Check("cdc", "create events = new rows", summary.rows_new, summary.cdc_creates),
        Check("streams", "unique records = this run's new URLs", unique_total, summary.unique_new),
        Check(
            "streams",
            "unchanged touches = raw records - unique records - dead letters",
            summary.duplicates_dropped,
            summary.touches,
        ),
        Check(
            "cdc", "every new URL has its create event", len(set(new_urls)), len(set(new_urls) & set(created))
        ),
    ]
    return summary
