"""One pipeline run: crawl a site, wait until every stage has caught up, reconcile the counts.

This is the main job behind ``make run`` (the demo site) and ``crawlstream run URL``. It
drives no stage itself: the crawl runs in its own process (``python -m crawlers crawl``), the
faust and sink workers are already running, Debezium runs in Kafka Connect. It only reads
what each stage left behind, and composes what each stage says of itself through its own probe:

- crawl: :func:`crawlers.probe.crawl_tally` adds up the reports of the crawl processes;
- streams: :class:`streams.probe.StreamsProbe`, the group's committed offsets and lag on its
  inputs; :func:`streams.probe.unique_change` reads the kind of a ``pages.unique`` record;
- sink: :class:`sinks.probe.SinkProbe`, its Postgres-stored offsets, lag, and the rows of the
  run's URLs (the SQL stays in the sink's package);
- cdc: :class:`control.ops.cdc.CdcProbe` (connector failures) and
  :func:`control.ops.cdc.debezium_creates` (create events of ``cdc.public.pages``);
- events: :func:`follow.probe.page_event_ids` (``outbox.event.page``, as its consumer reads it).

What belongs to no stage stays here: the run's window of each topic (``<prefix>.pages.raw``,
``.pages.unique``, ``.pages.touches``, ``.deadletter``, ``cdc.public.pages``,
``outbox.event.page``: the end offsets when the run started to the end offsets now) and the
records in it. Those figures become one :class:`~control.run.reconcile.StageCounts`, and
:func:`~control.run.reconcile.reconcile` (pure) turns them into checks and replays. Counts
are per window, so runs of one pipeline must not overlap.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from control.ops.cdc import CdcProbe, debezium_creates
from control.run.reconcile import (
    Check,
    CrawlCounts,
    Reconciliation,
    Replay,
    StageCounts,
    reconcile,
)
from crawlers.probe import crawl_tally
from crawlstream import offsets
from crawlstream.errors import CrawlstreamError
from crawlstream.kafka import consumer_config
from crawlstream.records import DeadLetter
from crawlstream.settings import Settings
from crawlstream.topics import catalog
from follow.probe import page_event_ids
from sinks.probe import SinkProbe
from streams.probe import StreamsProbe, unique_change

__all__ = [
    "Check",
    "CrawlArgs",
    "PipelineProbe",
    "Replay",
    "RunReader",
    "RunSummary",
    "crawl_counts",
    "run_pipeline",
]

# (key, value, headers) of one record; headers as (name, value) pairs.
Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]
STAGES = ("crawl", "kafka", "streams", "sink", "cdc", "events")


@dataclass(frozen=True)
class CrawlArgs:
    start_urls: list[str]
    allowed_domains: list[str] = field(default_factory=list)
    # Private hosts the crawl may reach: a URL or host:port (that host on that port only).
    allow_private_hosts: list[str] = field(default_factory=list)
    max_pages: int = 0
    max_depth: int = 0
    job_id: str = "adhoc"
    run_id: str = ""
    # When the site is known (the generated demo site), the HTML pages a full crawl must fetch
    # and the distinct canonical URLs among them.
    expected_pages: int | None = None
    expected_urls: int | None = None
    # Extra Scrapy settings for the crawl process (``--set NAME=VALUE``).
    scrapy_settings: dict[str, str] = field(default_factory=dict)


def crawl_argv(args: CrawlArgs, report_path: Path) -> list[str]:
    """The command line of one crawl process (``python -m crawlers crawl``)."""
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
    for name, value in args.scrapy_settings.items():
        argv += ["--set", f"{name}={value}"]
    return argv


def run_crawl_process(
    args: CrawlArgs,
    report_path: Path,
    log_path: Path,
    on_progress: Callable[[str], None] = lambda _msg: None,
) -> int:
    """Run ``python -m crawlers crawl`` in a fresh process (Twisted reactors are one per process).

    Its log goes to ``log_path``; progress lines and errors are passed to ``on_progress``.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log, log_path.open("rb") as follow:
        proc = subprocess.Popen(
            crawl_argv(args, report_path), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        while True:
            code = proc.poll()
            for raw in follow.readlines():
                line = raw.decode("utf-8", "replace").rstrip()
                if "progress:" in line or " ERROR" in line or "CRITICAL" in line:
                    on_progress(line.split("] ", 1)[-1] if "] " in line else line)
            if code is not None:
                return code
            time.sleep(0.5)  # the crawl's progress is read while it runs


def crawl_counts(reports: Iterable[Mapping[str, Any]], killed: int = 0) -> CrawlCounts:
    """The crawl stage's figures (:func:`crawlers.probe.crawl_tally`) as the reconciliation's
    :class:`~control.run.reconcile.CrawlCounts` (``killed``: processes without a report)."""
    tally = crawl_tally(reports, killed)
    return CrawlCounts(
        pages_fetched=tally.pages_fetched,
        records_delivered=tally.records_delivered,
        delivery_failures=tally.delivery_failures,
        urls=tally.urls,
        processes=tally.processes,
        killed=tally.killed,
    )


class PipelineProbe:
    """The probes of every stage, composed, and the run's windows of the topics between them.

    Each stage answers for itself: the stream stage its group's committed offsets and lag
    (:class:`streams.probe.StreamsProbe`), the sink its stored offsets, lag and rows
    (:class:`sinks.probe.SinkProbe`, whose SQL stays in the sink's package), the CDC stage its
    connectors (:class:`control.ops.cdc.CdcProbe`). What is left here is what belongs to no stage:
    the topics' end offsets and the records of a window of them. The methods named after a stage
    (``streams_lag``, ``sink_stored``, ``rows_of``, ...) hand the question to that stage's probe;
    the tests and the chaos harness call them by these names."""

    def __init__(
        self,
        settings: Settings,
        *,
        streams: StreamsProbe | None = None,
        sink: SinkProbe | None = None,
        cdc: CdcProbe | None = None,
    ) -> None:
        self.settings = settings
        self.topics = catalog(settings)
        self.streams = streams or StreamsProbe(settings)
        self.sink = sink or SinkProbe(settings)
        self.cdc = cdc or CdcProbe(settings)

    def end(self, topic: str) -> offsets.Offsets:
        return offsets.end_offsets(self.settings, topic)

    def streams_committed(self) -> offsets.Offsets:
        return self.streams.committed()

    def streams_lag(self) -> int:
        """Records of the raw topic and of the stage's repartition topics not yet committed."""
        return self.streams.lag()

    def sink_lag(self) -> int:
        """Records of the unique topic past the sink's Postgres-stored offsets."""
        return self.sink.lag()

    def sink_stored(self) -> offsets.Offsets:
        return self.sink.stored()

    def lags(self) -> tuple[int, int]:
        """(streams lag on the raw and its repartition topics, sink lag on the unique topic)."""
        return self.streams_lag(), self.sink_lag()

    def wait_drained(self, timeout_s: float, on_progress: Callable[[str], None]) -> None:
        """Wait until no stage has a backlog, so that a run's window counts only that run."""
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
        """The first line of a CDC connector's failure trace, or None while they run."""
        return self.cdc.connector_failure()

    def db_now(self) -> datetime:
        return self.sink.now()

    def rows_of(self, urls: Iterable[str], start: datetime) -> tuple[frozenset[str], frozenset[str]]:
        """(URLs whose row existed before ``start``, URLs whose row was created since), among
        ``urls`` (the sink's probe)."""
        return self.sink.rows_of(urls, start)

    def read_records(
        self, topic: str, start: offsets.Offsets, end: offsets.Offsets, timeout_s: float = 60.0
    ) -> list[Record]:
        """(key, value, headers) of every record in [start, end) per partition.

        Raises when the records are not all read within ``timeout_s``: a partial read would
        make a reconciliation count records as lost.
        """
        wanted = {p: o for p, o in end.items() if o > start.get(p, 0)}
        if not wanted:
            return []
        max_bytes = max(self.settings.kafka.max_message_bytes, 16 * 1024 * 1024)
        consumer = Consumer(
            consumer_config(
                self.settings,
                "admin",
                "crawlstream-inspector",
                **{
                    "enable.auto.commit": False,
                    "fetch.max.bytes": max_bytes * 4,
                    "max.partition.fetch.bytes": max_bytes,
                },
            )
        )
        consumer.assign([TopicPartition(topic, p, start.get(p, 0)) for p in wanted])
        out: list[Record] = []
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
                    out.append((msg.key(), msg.value(), _headers(msg.headers())))
                if p in wanted and o + 1 >= wanted[p]:
                    del wanted[p]
        finally:
            consumer.close()
        if wanted:
            raise CrawlstreamError(
                f"could not read {topic} up to {end} within {timeout_s:.0f}s (partitions left: {wanted})"
            )
        return out

    def read_range(
        self, topic: str, start: offsets.Offsets, end: offsets.Offsets, timeout_s: float = 60.0
    ) -> list[tuple[bytes | None, bytes | None]]:
        """(key, value) of every record in [start, end) per partition."""
        return [(key, value) for key, value, _headers in self.read_records(topic, start, end, timeout_s)]


def _headers(raw: Any) -> list[tuple[str, bytes | None]]:
    # confluent's stubs type headers loosely: a list of (name, value) pairs or None.
    pairs: list[tuple[Any, Any]] = list(raw or [])
    return [(str(name), value if isinstance(value, bytes) else None) for name, value in pairs]


def _key(raw: bytes | None) -> str:
    return "" if raw is None else raw.decode("utf-8", "replace")


class RunReader:
    """Reads a run's window of every topic the reconciliation looks at, incrementally.

    ``poll()`` reads each topic from where the last call stopped to its current end, so a long
    run (or a chaos test) is read as it goes; :meth:`counts` then adds the rows of ``pages``.
    """

    def __init__(self, probe: PipelineProbe) -> None:
        self.probe = probe
        t = probe.topics
        self.topics = {
            "raw": t.raw_pages.name,
            "unique": t.unique_pages.name,
            "touches": t.page_touches.name,
            "dead_letters": t.dead_letter.name,
            "cdc": t.cdc_pages.name,
            "events": t.page_events.name,
        }
        self.start = {name: probe.end(topic) for name, topic in self.topics.items()}
        self.cursors = {name: dict(start) for name, start in self.start.items()}
        self.db_start = probe.db_now()
        self.raw_records = 0
        self.raw_urls: set[str] = set()
        self.unique_records = 0
        self.unique_new: set[str] = set()
        self.unique_changed: set[str] = set()
        self.touch_records = 0
        self.touch_urls: set[str] = set()
        self.letters: dict[str, list[str]] = {}  # stage -> keys of its dead letters
        # URL -> records seen (replays included) and distinct identities (LSNs, event ids).
        self.cdc_records: dict[str, int] = {}
        self.cdc: dict[str, set[int]] = {}
        self.event_records: dict[str, int] = {}
        self.events: dict[str, set[str]] = {}

    def raw_end(self) -> offsets.Offsets:
        return self.probe.end(self.topics["raw"])

    def raw_delta(self) -> int:
        return offsets.delta(self.raw_end(), self.start["raw"])

    def poll(self) -> None:
        for name, topic in self.topics.items():
            end = self.probe.end(topic)
            if offsets.delta(end, self.cursors[name]) <= 0:
                continue
            records = self.probe.read_records(topic, self.cursors[name], end)
            self.cursors[name] = end
            getattr(self, f"_add_{name}")(records)

    def _add_raw(self, records: list[Record]) -> None:
        self.raw_records += len(records)
        self.raw_urls.update(_key(k) for k, _v, _h in records)

    def _add_unique(self, records: list[Record]) -> None:
        self.unique_records += len(records)
        for key, value, _h in records:
            change = unique_change(value)
            if change == "changed":
                self.unique_changed.add(_key(key))
            elif change == "new":
                self.unique_new.add(_key(key))
            # Anything else is not a page event (the sink dead-letters it): counted, not a page.

    def _add_touches(self, records: list[Record]) -> None:
        self.touch_records += len(records)
        self.touch_urls.update(_key(k) for k, _v, _h in records)

    def _add_dead_letters(self, records: list[Record]) -> None:
        for key, value, _h in records:
            stage = "?"
            if value is not None:
                with contextlib.suppress(ValueError):
                    stage = DeadLetter.model_validate_json(value).stage
            self.letters.setdefault(stage, []).append(_key(key))

    def _add_cdc(self, records: list[Record]) -> None:
        for url, lsn in debezium_creates(value for _k, value, _h in records):
            self.cdc_records[url] = self.cdc_records.get(url, 0) + 1
            self.cdc.setdefault(url, set()).add(lsn)

    def _add_events(self, records: list[Record]) -> None:
        for url, event_id in page_event_ids(records):
            self.event_records[url] = self.event_records.get(url, 0) + 1
            self.events.setdefault(url, set()).add(event_id)

    def dead_letters(self, stage: str) -> list[str]:
        return self.letters.get(stage, [])

    def counts(
        self,
        crawl: CrawlCounts,
        expected_pages: int | None = None,
        expected_urls: int | None = None,
    ) -> StageCounts:
        """Everything read so far, with the rows of the crawled URLs, as stage counts."""
        crawled = crawl.urls
        rows_before, rows_new = self.probe.rows_of(crawled, self.db_start)
        return StageCounts(
            crawl=crawl,
            expected_pages=expected_pages,
            expected_urls=expected_urls,
            raw_records=self.raw_records,
            raw_urls=frozenset(self.raw_urls),
            unique_records=self.unique_records,
            unique_new_urls=frozenset(self.unique_new),
            unique_changed_urls=frozenset(self.unique_changed),
            touch_records=self.touch_records,
            touch_urls=frozenset(self.touch_urls),
            stream_dead_letters=len(self.dead_letters("streams")),
            stream_dead_letter_urls=frozenset(self.dead_letters("streams")),
            sink_dead_letter_urls=frozenset(self.dead_letters("sink")),
            rows_before_urls=rows_before,
            rows_new_urls=rows_new,
            # Only this run's URLs: other writers of `pages` may add events to the same window.
            cdc_create_records=sum(n for url, n in self.cdc_records.items() if url in crawled),
            cdc_creates={u: frozenset(v) for u, v in self.cdc.items() if u in crawled},
            page_event_records=sum(n for url, n in self.event_records.items() if url in crawled),
            page_events={u: frozenset(v) for u, v in self.events.items() if u in crawled},
        )


@dataclass
class RunSummary:
    run_id: str
    crawl: dict[str, Any]
    counts: StageCounts = field(default_factory=lambda: StageCounts(crawl=CrawlCounts()))
    reconciliation: Reconciliation = field(default_factory=lambda: Reconciliation([], []))
    caught_up_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    crawl_log: str = ""

    @property
    def checks(self) -> list[Check]:
        return self.reconciliation.checks

    @property
    def replays(self) -> list[Replay]:
        return self.reconciliation.replays

    @property
    def ok(self) -> bool:
        return self.reconciliation.ok and bool(self.checks)

    def failed_stages(self) -> list[str]:
        return self.reconciliation.failed_stages()

    def throughput(self, stage: str, records: int) -> float | None:
        seconds = self.caught_up_s.get(stage)
        return records / seconds if seconds else None

    # The figures of the stage table (distinct keys; replays are separate).
    @property
    def raw_records(self) -> int:
        return self.counts.raw_records

    @property
    def unique_new(self) -> int:
        return len(self.counts.unique_new_urls & self.counts.crawl.urls)

    @property
    def dead_letters(self) -> int:
        return self.counts.stream_dead_letters

    @property
    def duplicates_dropped(self) -> int:
        """Raw records that made no new page: recrawls of known URLs (utm variants included)."""
        c = self.counts
        pages = len(c.unique_new_urls | c.unique_changed_urls)
        return c.raw_records - pages - len(c.stream_dead_letter_urls)

    @property
    def touches(self) -> int:
        return self.counts.touch_records

    @property
    def rows_new(self) -> int:
        return len(self.counts.rows_new_urls)

    @property
    def rows_for_crawl(self) -> int:
        return len((self.counts.rows_before_urls | self.counts.rows_new_urls) & self.counts.crawl.urls)

    @property
    def cdc_creates(self) -> int:
        return len(self.counts.cdc_creates.keys() & self.counts.rows_new_urls)

    @property
    def page_events(self) -> int:
        return len(self.counts.page_events.keys() & self.counts.rows_new_urls)


def wait_caught_up(
    reader: RunReader,
    crawl: CrawlCounts,
    *,
    started: float,
    timeout_s: float,
    caught_up_s: dict[str, float],
    on_progress: Callable[[str], None] = lambda _msg: None,
) -> str | None:
    """Poll until every stage has caught up with the crawl; record when each did (seconds since
    ``started``, a ``time.monotonic()``) in ``caught_up_s``. Returns a note when a CDC connector
    failed or the deadline passed, else None."""
    probe = reader.probe
    deadline = time.monotonic() + timeout_s

    def stage_done(stage: str) -> None:
        if stage not in caught_up_s:
            caught_up_s[stage] = time.monotonic() - started
            on_progress(f"{stage} caught up after {caught_up_s[stage]:.1f}s")

    while True:
        if reader.raw_delta() >= crawl.records_delivered:
            stage_done("kafka")
        # The stream stage commits a raw record only once its outputs are delivered (its page
        # waits in memory for the dedup hops' verdict: raw -> by band -> verdicts -> unique), so
        # a raw lag of 0 means every hop is done with this run's records.
        streams_lag = probe.streams_lag() if "kafka" in caught_up_s else -1
        if streams_lag == 0:
            stage_done("streams")
        sink_lag = probe.sink_lag() if "streams" in caught_up_s else -1
        if sink_lag == 0:
            stage_done("sink")
        if "sink" in caught_up_s:
            reader.poll()
            new = reader.unique_new & crawl.urls
            if new <= reader.cdc.keys():
                stage_done("cdc")
            if new <= reader.events.keys():
                stage_done("events")
        if "cdc" in caught_up_s and "events" in caught_up_s:
            return None
        if "sink" in caught_up_s and (failure := probe.connector_failure()) is not None:
            return f"a Debezium connector failed: {failure}"
        if time.monotonic() > deadline:
            missing = [s for s in STAGES[1:] if s not in caught_up_s]
            return f"not caught up within {timeout_s:.0f}s: {', '.join(missing)}"
        on_progress(f"waiting: streams lag {streams_lag}, sink lag {sink_lag}")
        time.sleep(0.5)  # polling interval of a deadline-bounded wait


CrawlStep = Callable[[CrawlArgs, Path, Path, Callable[[str], None]], int]


def run_pipeline(
    settings: Settings,
    args: CrawlArgs,
    *,
    timeout_s: float = 180.0,
    on_progress: Callable[[str], None] = lambda _msg: None,
    crawl: CrawlStep | None = None,
) -> RunSummary:
    """Crawl, wait for every stage, and return the reconciled summary (see control.run.reconcile).

    ``crawl`` replaces the crawl step (:func:`run_crawl_process`): it writes the crawl's report
    (CrawlReport fields) to the path it is given and returns an exit status (a frontier job's
    run, :mod:`control.run.frontierjob`)."""
    probe = PipelineProbe(settings)
    probe.wait_drained(timeout_s, on_progress)
    reader = RunReader(probe)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="crawlstream-run-") as tmp:
        report_path = Path(tmp) / "report.json"
        crawl_log = Path(settings.stack.state_dir) / "logs" / f"crawl-{args.run_id or 'adhoc'}.log"
        code = (crawl or run_crawl_process)(args, report_path, crawl_log, on_progress)
        if not report_path.exists():
            raise CrawlstreamError(
                f"the crawl process exited with {code} and wrote no report; see {crawl_log}"
            )
        report: dict[str, Any] = json.loads(report_path.read_text())
    summary = RunSummary(
        run_id=str(report.get("run_id", args.run_id)), crawl=report, crawl_log=str(crawl_log)
    )
    summary.caught_up_s["crawl"] = time.monotonic() - started
    counted = crawl_counts([report])
    note = wait_caught_up(
        reader,
        counted,
        started=started,
        timeout_s=timeout_s,
        caught_up_s=summary.caught_up_s,
        on_progress=on_progress,
    )
    if note is not None:
        summary.notes.append(note)
    reader.poll()
    summary.counts = reader.counts(counted, args.expected_pages, args.expected_urls)
    summary.reconciliation = reconcile(summary.counts)
    return summary
