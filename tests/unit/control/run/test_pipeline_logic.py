"""Pure parts of the pipeline run: the reconciliation (control.run.reconcile), the composition of
the stages' probes (their own tests: tests/unit/{streams,sinks,crawlers,follow}/test_*_probe.py,
tests/unit/control/ops/test_cdc_probe.py), offsets arithmetic, the catalog, and the run
command's failure path."""

from __future__ import annotations

import json

import pytest

from control.run.pipeline import PipelineProbe, RunSummary, crawl_counts
from control.run.reconcile import Check, CrawlCounts, Reconciliation, StageCounts, reconcile
from crawlstream import offsets
from crawlstream.errors import CrawlstreamError
from crawlstream.settings import load_settings
from crawlstream.topics import catalog


def test_summary_names_the_stages_that_do_not_reconcile() -> None:
    summary = RunSummary(run_id="r", crawl={})
    assert not summary.ok  # no checks ran: nothing was shown to reconcile
    summary.reconciliation = Reconciliation(
        [Check("crawl", "fetched", 10, 10), Check("sink", "rows", 10, 9), Check("cdc", "creates", 9, 8)], []
    )
    assert not summary.ok
    assert summary.failed_stages() == ["cdc", "sink"]
    summary.caught_up_s["sink"] = 2.0
    assert summary.throughput("sink", 10) == 5.0
    assert summary.throughput("cdc", 10) is None


def test_offsets_arithmetic() -> None:
    before = {0: 5, 1: 0}
    after = {0: 8, 1: 4, 2: 1}  # a partition may appear after the first reading
    assert offsets.delta(after, before) == 8
    assert offsets.lag(after, {0: 8, 1: 2}) == 3
    assert offsets.total(after) == 13


def test_catalog_declares_every_topic_once(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("CRAWLSTREAM_KAFKA__TOPIC_PREFIX", "acme")
    monkeypatch.setenv("CRAWLSTREAM_KAFKA__PARTITIONS", "6")
    monkeypatch.setenv("CRAWLSTREAM_STACK__STATE_DIR", str(tmp_path))
    topics = catalog(load_settings())
    names = [spec.name for spec in topics.all()]
    assert names == [
        "acme.pages.raw",
        "acme.pages.unique",
        "acme.deadletter",
        "cdc.public.pages",
        "acme.pages.touches",
        "acme.links",
        "acme.requests",
        "acme.runs",
        "acme.stats",
        "acme.streams.pages-by-band",
        "acme.streams.dedup-verdicts",
        "outbox.event.page",
        "__debezium-heartbeat.cdc",
        "__debezium-heartbeat.outbox",
        "acme.frontier.ledger",
        "acme.frontier.progress",
        "acme.hosts",
    ]
    assert len(set(names)) == len(names)
    # Requests and host state are partitioned alike (one host, one crawler), on their own count.
    assert topics.requests.partitions == topics.hosts.partitions == 12
    assert (
        topics.hosts.config["cleanup.policy"]
        == topics.frontier_progress.config["cleanup.policy"]
        == "compact"
    )
    assert topics.raw_pages.partitions == topics.unique_pages.partitions == 6
    # Pages up to the body cap must fit, and a change event (a JSON-escaped row) even more so.
    raw_limit = int(topics.raw_pages.config["max.message.bytes"])
    assert raw_limit >= 8 * 1024 * 1024
    assert int(topics.cdc_pages.config["max.message.bytes"]) > raw_limit


# --- the reconciliation -------------------------------------------------------------------------

URLS = [f"http://site/{i}" for i in range(10)]
UTM = URLS[:3]  # fetched a second time under a tracking-parameter URL: touches


def clean(**changes: object) -> StageCounts:
    """A run of 10 new pages, 3 of them fetched twice: everything where it belongs."""
    urls = frozenset(URLS)
    counts = StageCounts(
        crawl=CrawlCounts(pages_fetched=13, records_delivered=13, urls=urls),
        expected_pages=13,
        expected_urls=10,
        raw_records=13,
        raw_urls=urls,
        unique_records=10,
        unique_new_urls=urls,
        touch_records=3,
        touch_urls=frozenset(UTM),
        rows_new_urls=urls,
        cdc_create_records=10,
        cdc_creates={u: frozenset({i}) for i, u in enumerate(URLS)},
        page_event_records=10,
        page_events={u: frozenset({f"id-{i}"}) for i, u in enumerate(URLS)},
    )
    return StageCounts(**{**counts.__dict__, **changes})  # type: ignore[arg-type]


def failed(counts: StageCounts) -> list[str]:
    return reconcile(counts).failed_stages()


def test_a_clean_run_reconciles_with_no_replays() -> None:
    result = reconcile(clean())
    assert result.ok, [c for c in result.checks if not c.ok]
    assert result.replays == []
    assert {c.stage for c in result.checks} == {"crawl", "kafka", "streams", "sink", "cdc", "events"}


def test_replays_of_every_stage_are_reported_not_failed() -> None:
    """A stream worker killed before its commit re-sends outputs, Connect restarted from its last
    flushed offset re-sends events, a killed crawl is run again: same keys, more records."""
    base = clean()
    counts = clean(
        # The crawl was killed once after delivering 4 pages; its re-run fetched all 13 again.
        crawl=CrawlCounts(
            pages_fetched=13, records_delivered=13, urls=base.crawl.urls, processes=1, killed=1
        ),
        raw_records=17,
        # 4 outputs re-sent (2 pages, 2 touches) after a stream worker restart; the 4 re-fetched
        # pages were recrawls of known URLs: 4 more touches.
        unique_records=12,
        touch_records=3 + 4 + 2,
        touch_urls=base.touch_urls | frozenset(URLS[:4]),
        cdc_create_records=13,
        page_event_records=11,
    )
    result = reconcile(counts)
    assert result.ok, [c for c in result.checks if not c.ok]
    assert {r.stage: r.records for r in result.replays} == {"kafka": 4, "streams": 4, "cdc": 3, "events": 1}
    assert all("at-least-once" in r.line() for r in result.replays)
    assert result.replays[0].line().startswith("kafka: replayed: 4 records (at-least-once")


def test_a_lost_row_fails_the_sink() -> None:
    assert failed(clean(rows_new_urls=frozenset(URLS[1:]))) == ["sink"]


def test_a_page_a_stage_dead_lettered_is_accounted_for_except_on_a_known_site() -> None:
    unknown_site = {"expected_pages": None, "expected_urls": None}
    # The sink refused one row; the record is in the dead-letter topic, with its reason: not lost.
    sink = clean(**unknown_site, rows_new_urls=frozenset(URLS[1:]), sink_dead_letter_urls=frozenset(URLS[:1]))
    assert reconcile(sink).ok, [c for c in reconcile(sink).checks if not c.ok]
    # The stream stage refused one page (e.g. too large once enriched): no event, no row, one letter.
    letter = frozenset(URLS[:1])
    streams = clean(
        **unknown_site,
        unique_records=9,
        unique_new_urls=frozenset(URLS[1:]),
        stream_dead_letters=1,
        stream_dead_letter_urls=letter,
        rows_new_urls=frozenset(URLS[1:]),
    )
    assert reconcile(streams).ok, [c for c in reconcile(streams).checks if not c.ok]
    # Without the letters they are lost.
    assert failed(clean(**unknown_site, rows_new_urls=frozenset(URLS[1:]))) == ["sink"]
    assert "streams" in failed(
        clean(**{**streams.__dict__, "stream_dead_letters": 0, "stream_dead_letter_urls": frozenset()})
    )
    # The generated demo site has nothing to refuse: there a dead letter fails its stage.
    assert failed(clean(rows_new_urls=frozenset(URLS[1:]), sink_dead_letter_urls=letter)) == ["sink"]
    assert failed(clean(**{**streams.__dict__, "expected_pages": 13})) == ["streams"]


def test_a_second_distinct_page_event_for_one_row_fails_the_events_stage() -> None:
    events = dict(clean().page_events)
    events[URLS[0]] = frozenset({"id-0", "id-other"})
    assert failed(clean(page_events=events, page_event_records=11)) == ["events"]


def test_the_same_event_id_twice_is_a_debezium_replay() -> None:
    result = reconcile(clean(page_event_records=12))
    assert result.ok
    assert [(r.stage, r.records) for r in result.replays] == [("events", 2)]


def test_a_second_create_event_with_a_new_lsn_fails_cdc_and_a_missing_one_too() -> None:
    creates = dict(clean().cdc_creates)
    creates[URLS[0]] = frozenset({0, 99})
    assert failed(clean(cdc_creates=creates, cdc_create_records=11)) == ["cdc"]
    del creates[URLS[0]]
    assert failed(clean(cdc_creates=creates, cdc_create_records=9)) == ["cdc"]


def test_a_page_missing_from_pages_unique_fails_the_streams_stage() -> None:
    counts = clean(unique_records=9, unique_new_urls=frozenset(URLS[1:]), rows_new_urls=frozenset(URLS[1:]))
    assert "streams" in failed(counts)


def test_a_record_the_streams_stage_dropped_fails_it_even_when_its_url_has_an_output() -> None:
    assert failed(clean(touch_records=2)) == ["streams"]


def test_a_record_lost_between_crawl_and_raw_topic_fails_kafka() -> None:
    assert failed(clean(raw_records=12)) == ["kafka"]
    assert "kafka" in failed(clean(raw_urls=frozenset(URLS[1:]), raw_records=12))


def test_known_pages_are_not_new_rows() -> None:
    """A recrawl: every URL had its row before the run; the stream stage touches them all."""
    counts = clean(
        unique_records=0,
        unique_new_urls=frozenset(),
        touch_records=13,
        touch_urls=frozenset(URLS),
        rows_new_urls=frozenset(),
        rows_before_urls=frozenset(URLS),
        cdc_create_records=0,
        cdc_creates={},
        page_event_records=0,
        page_events={},
    )
    assert reconcile(counts).ok
    # The same recrawl claiming one URL is new again is a duplicate at the stream stage.
    assert "streams" in failed(
        clean(
            **{
                **counts.__dict__,
                "unique_records": 1,
                "unique_new_urls": frozenset(URLS[:1]),
                "touch_records": 12,
            }
        )
    )


def test_crawl_counts_add_up_the_reports_of_every_process() -> None:
    reports = [
        {"pages_fetched": 5, "records_delivered": 5, "canonical_urls": ["a", "b"]},
        {"pages_fetched": 3, "records_delivered": 2, "delivery_failures": 1, "canonical_urls": ["b", "c"]},
    ]
    crawl = crawl_counts(reports, killed=1)
    assert (crawl.pages_fetched, crawl.records_delivered, crawl.delivery_failures) == (8, 7, 1)
    assert crawl.urls == {"a", "b", "c"}
    assert (crawl.processes, crawl.killed) == (2, 1)


def test_the_run_command_exits_non_zero_naming_the_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    """`crawlstream run URL --external` on a run whose sink lost a row: exit 2, the stage named."""
    from typer.testing import CliRunner

    import control.run.pipeline
    from control.cli import app

    def lossy_run(_settings: object, args: object, **_kw: object) -> RunSummary:
        summary = RunSummary(run_id="r1", crawl={"pages_fetched": 13})
        summary.counts = clean(rows_new_urls=frozenset(URLS[1:]))
        summary.reconciliation = reconcile(summary.counts)
        return summary

    monkeypatch.setattr(control.run.pipeline, "run_pipeline", lossy_run)
    result = CliRunner().invoke(app, ["run", "http://127.0.0.1:1/", "--external"], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert "Counts do not reconcile: lost or duplicated records at sink" in result.output
    monkeypatch.setattr(
        control.run.pipeline,
        "run_pipeline",
        lambda *_a, **_k: _replayed_summary(),
    )
    result = CliRunner().invoke(app, ["run", "http://127.0.0.1:1/", "--external"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "streams: replayed: 2 records (at-least-once" in result.output
    assert "All counts reconcile (2 replayed records, none lost or duplicated)" in result.output


def _replayed_summary() -> RunSummary:
    summary = RunSummary(run_id="r2", crawl={"pages_fetched": 13})
    summary.counts = clean(unique_records=12)
    summary.reconciliation = reconcile(summary.counts)
    return summary


class FakeProbe:
    """The probe interface RunReader uses, over in-memory topics (one partition each) and rows."""

    def __init__(
        self, topics: dict[str, list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]]]
    ):
        from types import SimpleNamespace

        names = ["raw", "unique", "touches", "dead", "cdc", "events"]
        self.topics = SimpleNamespace(
            raw_pages=SimpleNamespace(name="raw"),
            unique_pages=SimpleNamespace(name="unique"),
            page_touches=SimpleNamespace(name="touches"),
            dead_letter=SimpleNamespace(name="dead"),
            cdc_pages=SimpleNamespace(name="cdc"),
            page_events=SimpleNamespace(name="events"),
        )
        self.data = {name: list(topics.get(name, [])) for name in names}
        self.rows: dict[str, bool] = {}  # url -> existed before the run

    def end(self, topic: str) -> dict[int, int]:
        return {0: len(self.data[topic])}

    def db_now(self) -> object:
        return "start"

    def read_records(
        self, topic: str, start: dict[int, int], end: dict[int, int], timeout_s: float = 60.0
    ) -> list:
        return self.data[topic][start.get(0, 0) : end[0]]

    def rows_of(self, urls: object, start: object) -> tuple[frozenset[str], frozenset[str]]:
        wanted = set(urls)  # type: ignore[call-overload]
        return (
            frozenset(u for u, before in self.rows.items() if before and u in wanted),
            frozenset(u for u, before in self.rows.items() if not before and u in wanted),
        )


def test_the_run_reader_counts_only_the_window_and_survives_garbage() -> None:
    from control.run.pipeline import RunReader
    from crawlstream.records import DeadLetter

    old = (b"http://old/", b"{}", [])
    probe = FakeProbe({"raw": [old], "unique": [old]})
    reader = RunReader(probe)  # type: ignore[arg-type]
    a, b = "http://x/a", "http://x/b"
    letter = DeadLetter(stage="streams", reason="invalid_json", error="e", source_topic="raw").to_bytes()
    probe.data["raw"] += [(a.encode(), b"{}", []), (b.encode(), b"{}", []), (a.encode(), b"{}", [])]
    probe.data["unique"] += [
        (a.encode(), json.dumps({"change": "new"}).encode(), []),
        (a.encode(), json.dumps({"change": "new"}).encode(), []),  # re-sent after a restart
        (b.encode(), b"\xff not json", []),  # garbage on the topic: counted, never a crash
    ]
    probe.data["touches"] += [(a.encode(), b"{}", [])]
    probe.data["dead"] += [(b"k", letter, []), (b"k2", b"not a letter", [])]
    probe.data["cdc"] += [
        (None, json.dumps({"op": "c", "after": {"url": a}, "source": {"lsn": 5}}).encode(), []),
        (None, json.dumps({"op": "c", "after": {"url": a}, "source": {"lsn": 5}}).encode(), []),
    ]
    probe.data["events"] += [(a.encode(), b"{}", [("id", b"e1"), ("eventType", b"created")])]
    probe.rows = {a: False, b: True}
    reader.poll()
    reader.poll()  # a second poll reads nothing twice
    counts = reader.counts(
        crawl_counts([{"canonical_urls": [a, b], "records_delivered": 3, "pages_fetched": 3}])
    )
    assert (counts.raw_records, counts.raw_urls) == (3, {a, b})
    assert (counts.unique_records, counts.unique_new_urls) == (3, {a})
    assert counts.touch_records == 1
    assert counts.stream_dead_letters == 1
    assert reader.dead_letters("?") == ["k2"]
    assert (counts.rows_new_urls, counts.rows_before_urls) == ({a}, {b})
    assert (counts.cdc_create_records, dict(counts.cdc_creates)) == (2, {a: frozenset({5})})
    assert dict(counts.page_events) == {a: frozenset({"e1"})}
    result = reconcile(counts)
    assert [(r.stage, r.records) for r in result.replays] == [("streams", 2), ("cdc", 1)]


class FakeStageProbe:
    """A stage's probe reduced to the lag it reports (StreamsProbe and SinkProbe answer lag())."""

    def __init__(self, lags: list[int]) -> None:
        self.lags = lags

    def lag(self) -> int:
        return self.lags.pop(0) if len(self.lags) > 1 else self.lags[0]


def composed(streams: list[int], sink: list[int]) -> PipelineProbe:
    return PipelineProbe(
        load_settings(),
        streams=FakeStageProbe(streams),  # type: ignore[arg-type]
        sink=FakeStageProbe(sink),  # type: ignore[arg-type]
    )


def test_the_pipeline_probe_asks_each_stage_its_own_lag() -> None:
    probe = composed([4], [7])
    assert probe.lags() == (4, 7)
    assert (probe.streams_lag(), probe.sink_lag()) == (4, 7)


def test_a_drained_pipeline_is_not_waited_for_and_a_backlog_fails_naming_both_lags() -> None:
    messages: list[str] = []
    composed([0], [0]).wait_drained(0.0, messages.append)
    assert messages == []
    with pytest.raises(CrawlstreamError, match="streams lag 2, sink lag 0"):
        composed([2], [0]).wait_drained(0.0, messages.append)
