"""The reconciliation of one pipeline run: a pure function from stage counts to checks.

:mod:`control.run.pipeline` reads what each stage left behind (its probes: the crawl reports,
the records in the run's window of each topic, the rows in Postgres) into one
:class:`StageCounts`; :func:`reconcile` turns those counts into :class:`Check` s, each naming its
stage, and :class:`Replay` s. Nothing here does I/O, so every rule is unit-tested with plain
values (tests/unit/control/run/test_pipeline_logic.py).

The rules compare DISTINCT keys, because every stage is at-least-once: a crawl process killed
and run again re-fetches pages (more raw records, the same canonical URLs), a stream worker
killed before its commit re-sends outputs (more records on ``pages.unique`` and
``pages.touches``, the same URLs), Kafka Connect restarted from its last flushed offset
re-publishes change events (the same LSN, the same outbox event id). Such repeats are
replays: reported, never a failure. What fails is a URL missing at some stage (lost), or a
second distinct change event or page event for one new row (duplicated): a replay carries the
same identity, a duplicate a new one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CrawlCounts:
    """What the crawl processes of one run reported. A process killed before it wrote its
    report counts in ``killed``: its records are on the raw topic, its report is not."""

    pages_fetched: int = 0
    records_delivered: int = 0
    delivery_failures: int = 0
    urls: frozenset[str] = frozenset()
    processes: int = 1
    killed: int = 0


@dataclass(frozen=True)
class StageCounts:
    """Every stage's figures for one run (the window of topic offsets and rows it produced).

    URL sets are restricted to the run where the stage could see other writers: the keys of
    records on a topic are all in the run's window, the rows and change events are those of
    ``crawl.urls``.
    """

    crawl: CrawlCounts
    # The generated demo site knows what a full crawl must fetch (None for other sites).
    expected_pages: int | None = None
    expected_urls: int | None = None
    # <prefix>.pages.raw: records and their distinct keys (canonical URLs).
    raw_records: int = 0
    raw_urls: frozenset[str] = frozenset()
    # <prefix>.pages.unique: records, and the distinct keys of new and of changed pages.
    unique_records: int = 0
    unique_new_urls: frozenset[str] = frozenset()
    unique_changed_urls: frozenset[str] = frozenset()
    # <prefix>.pages.touches: unchanged recrawls (one per fetch, so several per URL are normal).
    touch_records: int = 0
    touch_urls: frozenset[str] = frozenset()
    # <prefix>.deadletter, by stage: letters and the distinct keys they carry.
    stream_dead_letters: int = 0
    stream_dead_letter_urls: frozenset[str] = frozenset()
    sink_dead_letter_urls: frozenset[str] = frozenset()
    # Postgres ``pages``: crawled URLs whose row existed before the run, and those whose row
    # the run created (``first_seen`` after the run started).
    rows_before_urls: frozenset[str] = frozenset()
    rows_new_urls: frozenset[str] = frozenset()
    # cdc.public.pages: create events of crawled URLs, URL -> distinct source LSNs.
    cdc_create_records: int = 0
    cdc_creates: Mapping[str, frozenset[int]] = field(default_factory=dict)
    # outbox.event.page: ``created`` events of crawled URLs, URL -> distinct outbox event ids.
    page_event_records: int = 0
    page_events: Mapping[str, frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    stage: str
    what: str
    expected: int
    actual: int
    # ``actual >= expected`` instead of equality (outputs of an at-least-once stage).
    at_least: bool = False

    @property
    def ok(self) -> bool:
        return self.actual >= self.expected if self.at_least else self.actual == self.expected

    @property
    def expected_text(self) -> str:
        return f">= {self.expected}" if self.at_least else str(self.expected)


@dataclass(frozen=True)
class Replay:
    """Records a stage repeated (at-least-once): counted, not a failure."""

    stage: str
    records: int
    what: str

    def line(self) -> str:
        return f"{self.stage}: replayed: {self.records} records (at-least-once; {self.what})"


@dataclass(frozen=True)
class Reconciliation:
    checks: list[Check]
    replays: list[Replay]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failed_stages(self) -> list[str]:
        return sorted({c.stage for c in self.checks if not c.ok})

    def replayed(self, stage: str) -> int:
        return sum(r.records for r in self.replays if r.stage == stage)


def reconcile(counts: StageCounts) -> Reconciliation:
    """The checks of a run, stage by stage, and the replays seen on the way."""
    crawled = counts.crawl.urls
    checks = [*_crawl_checks(counts)]
    replays: list[Replay] = []

    # kafka: every crawled URL reached the raw topic, and nothing else did.
    checks += [
        Check("kafka", "crawled URLs on the raw topic", len(crawled), len(counts.raw_urls & crawled)),
        Check("kafka", "raw topic URLs the crawl did not report", 0, len(counts.raw_urls - crawled)),
    ]
    if counts.crawl.killed:
        # A killed process reported nothing: what it delivered before dying was fetched again.
        checks.append(
            Check(
                "kafka",
                "raw topic records >= records reported delivered",
                counts.crawl.records_delivered,
                counts.raw_records,
                at_least=True,
            )
        )
        _replay(
            replays,
            "kafka",
            counts.raw_records - counts.crawl.records_delivered,
            f"pages re-fetched after {counts.crawl.killed} crawl process(es) were killed",
        )
    else:
        checks.append(
            Check(
                "kafka",
                "raw topic records = records delivered",
                counts.crawl.records_delivered,
                counts.raw_records,
            )
        )

    # streams: each raw record becomes exactly one output (a new or changed page, a touch, or a
    # dead letter); a worker killed before committing sends some outputs again.
    outputs = counts.unique_records + counts.touch_records + counts.stream_dead_letters
    unique_urls = counts.unique_new_urls | counts.unique_changed_urls
    accounted = unique_urls | counts.touch_urls | counts.stream_dead_letter_urls
    # A URL the stage dead-lettered (with its reason) is accounted for, not lost.
    unseen = crawled - counts.rows_before_urls
    stream_letters = counts.stream_dead_letter_urls
    checks += [
        Check(
            "streams",
            "new URLs on pages.unique (+ stream dead letters) = distinct URLs not seen before",
            len(unseen),
            len((counts.unique_new_urls | stream_letters) & unseen),
        ),
        Check(
            "streams",
            "URLs with a row before the run that pages.unique calls new",
            0,
            len(counts.unique_new_urls & counts.rows_before_urls),
        ),
        Check("streams", "pages.unique URLs the crawl did not report", 0, len(unique_urls - crawled)),
        Check(
            "streams",
            "raw URLs with an output (page, touch or dead letter)",
            len(counts.raw_urls),
            len(counts.raw_urls & accounted),
        ),
        Check(
            "streams",
            "outputs (pages + touches + dead letters) >= raw records",
            counts.raw_records,
            outputs,
            at_least=True,
        ),
    ]
    _replay(replays, "streams", outputs - counts.raw_records, "outputs sent again after a restart")

    # sink: one row per crawled URL (or a dead letter saying why not); new rows = new URLs.
    rows = counts.rows_before_urls | counts.rows_new_urls
    new_on_unique = counts.unique_new_urls & crawled
    sink_letters = counts.sink_dead_letter_urls
    checks += [
        Check(
            "sink",
            "rows in pages (+ dead letters) = distinct URLs crawled",
            len(crawled),
            len((rows | sink_letters | stream_letters) & crawled),
        ),
        Check(
            "sink",
            "new rows (+ sink dead letters) = new URLs on pages.unique",
            len(new_on_unique),
            len(counts.rows_new_urls | (sink_letters & new_on_unique)),
        ),
    ]

    # cdc: one Debezium create event per new row; the same event again (same LSN) is a replay.
    new_rows = counts.rows_new_urls
    cdc_distinct = sum(len(lsns) for lsns in counts.cdc_creates.values())
    checks += [
        Check(
            "cdc", "new rows with a create event", len(new_rows), len(new_rows & counts.cdc_creates.keys())
        ),
        Check(
            "cdc",
            "rows with more than one distinct create event",
            0,
            sum(1 for lsns in counts.cdc_creates.values() if len(lsns) > 1),
        ),
    ]
    _replay(replays, "cdc", counts.cdc_create_records - cdc_distinct, "Debezium re-sent events (same LSN)")

    # events: one outbox page event per new row, counted by distinct outbox event id.
    events_distinct = sum(len(ids) for ids in counts.page_events.values())
    checks += [
        Check(
            "events",
            "new rows with a created page event",
            len(new_rows),
            len(new_rows & counts.page_events.keys()),
        ),
        Check(
            "events",
            "rows with more than one distinct created event id",
            0,
            sum(1 for ids in counts.page_events.values() if len(ids) > 1),
        ),
    ]
    _replay(
        replays,
        "events",
        counts.page_event_records - events_distinct,
        "Debezium re-sent outbox events (same event id)",
    )
    return Reconciliation(checks, replays)


def _crawl_checks(counts: StageCounts) -> list[Check]:
    crawl = counts.crawl
    checks = []
    if counts.expected_pages is not None and crawl.processes == 1 and not crawl.killed:
        checks.append(
            Check(
                "crawl",
                "HTML pages fetched = pages the site serves",
                counts.expected_pages,
                crawl.pages_fetched,
            )
        )
    if counts.expected_urls is not None:
        checks.append(
            Check(
                "crawl",
                "distinct URLs crawled = pages the site serves",
                counts.expected_urls,
                len(crawl.urls),
            )
        )
    checks += [
        Check(
            "crawl",
            "page records delivered = HTML pages fetched",
            crawl.pages_fetched,
            crawl.records_delivered,
        ),
        Check("crawl", "delivery failures", 0, crawl.delivery_failures),
    ]
    if counts.expected_pages is not None or counts.expected_urls is not None:
        # A site we generated has nothing a stage may refuse: a dead letter there is a bug.
        sink_letters = len(counts.sink_dead_letter_urls & crawl.urls)
        checks += [
            Check("streams", "dead letters (none on a known site)", 0, counts.stream_dead_letters),
            Check("sink", "dead letters (none on a known site)", 0, sink_letters),
        ]
    return checks


def _replay(replays: list[Replay], stage: str, records: int, what: str) -> None:
    if records > 0:
        replays.append(Replay(stage, records, what))
