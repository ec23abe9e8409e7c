"""The ledger's rules (streams/ledger.py), each at its edge: every URL counts once per run whatever
the replays, every refusal is counted once by its reason and in ``streams_frontier_refused_total``,
``version`` counts the changes, a run's progress is keyed by the run and never held back past the
throttle's promises, and ``stop`` purges the run's entries a chunk per record until none is left.

The ledger agent runs alone through faust's ``test_context`` (memory stores, outputs recorded);
ledger entries are fed to it as the frontier (and the ledger itself) would send them.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from crawlstream.deadletters import RECORD_OVERHEAD
from crawlstream.records import Budgets, CrawlRequest, DeadLetter, LedgerEntry, RunProgress, Scope
from crawlstream.settings import FrontierSettings, KafkaSettings, Settings, StreamsSettings
from crawlstream.topics import catalog
from streams import ledger, metrics
from streams import outputs as streams_outputs
from tests.unit.streams.harness import Harness, sample

RUN, JOB = "run-1", "job-a"
MIB = 1024 * 1024
SCOPE = Scope(follow="same-domain", max_depth=3)


def settings(interval_s: float = 0, rocksdb_in: Path | None = None) -> Settings:
    store = {"store": "rocksdb://", "data_dir": rocksdb_in} if rocksdb_in else {"store": "memory://"}
    return Settings(
        _env_file=None,
        kafka=KafkaSettings(topic_prefix="unit", partitions=3, max_message_bytes=MIB),
        streams=StreamsSettings(app_id="unit-streams", **store),
        frontier=FrontierSettings(progress_interval_s=interval_s),
    )


Scenario = Callable[[Harness, Any], Awaitable[None]]


def run_ledger(scenario: Scenario, interval_s: float = 0, rocksdb_in: Path | None = None) -> Harness:
    async def main() -> Harness:
        h = Harness(settings(interval_s, rocksdb_in))
        channel = h.app.channel(key_type=bytes, value_type=bytes)
        async with h.ledger.agent.test_context(channel=channel) as agent:
            await scenario(h, agent)
        return h

    return asyncio.run(main())


async def feed(agent: Any, *entries: LedgerEntry, partition: int = 0) -> None:
    for entry in entries:
        await agent.put(entry.to_bytes(), key=entry.run_id.encode(), partition=partition)


def start(
    run: str = RUN, budgets: Budgets | None = None, scope: Scope | None = SCOPE, partitions: int = 0
) -> LedgerEntry:
    return LedgerEntry(
        type="start", run_id=run, job_id=JOB, scope=scope, budgets=budgets, partitions=partitions
    )


def candidate(url: str, run: str = RUN) -> LedgerEntry:
    return LedgerEntry(
        type="candidate", run_id=run, url=url, canonical_url=url, host=url.split("/")[2], reason="link"
    )


def closed(url: str, outcome: str = "fetched", run: str = RUN, **fields: Any) -> LedgerEntry:
    return LedgerEntry(
        type="closed",
        run_id=run,
        url=url,
        canonical_url=url,
        host=url.split("/")[2],
        outcome=outcome,
        **fields,
    )


def refused(reason: str, origin: tuple[int, int], n: int = 1) -> LedgerEntry:
    return LedgerEntry(type="refused", run_id=RUN, reason=reason, origin=origin, count=n)


def progresses(h: Harness) -> list[RunProgress]:
    return [RunProgress.model_validate_json(v) for _, v in h.on("progress")]


def requests(h: Harness) -> list[CrawlRequest]:
    return [CrawlRequest.model_validate_json(v) for _, v in h.on("requests")]


# --- the accounts ---------------------------------------------------------------------------------


def test_a_new_run_has_counted_nothing_and_its_progress_is_stamped_in_utc() -> None:
    progress = ledger.progress_of(RUN, ledger.new_run(start(partitions=2)))
    assert (progress.admitted, progress.closed, progress.fetched, progress.not_modified, progress.failed) == (
        0,
        0,
        0,
        0,
        0,
    )
    assert progress.updated_at.utcoffset() is not None
    assert abs(progress.updated_at - datetime.now(UTC)).total_seconds() < 3600


def test_the_first_offset_of_a_links_partition_is_remembered() -> None:
    run = ledger.new_run(start())
    assert ledger.merge_through(run, {0: 0, 1: 1})
    assert ledger.progress_of(RUN, run).links_through == {0: 0, 1: 1}


def test_each_outcome_is_counted_by_its_kind_and_a_refused_outcome_by_its_reason() -> None:
    urls = [f"http://a.test/{n}" for n in range(4)]

    async def scenario(h: Harness, agent: Any) -> None:
        await feed(agent, start(), *(candidate(url) for url in urls))
        await feed(
            agent,
            closed(urls[0], "fetched", reason="ignored"),
            closed(urls[1], "not_modified"),
            closed(urls[2], "failed", reason="timeout"),
            closed(urls[3], "refused", reason="robots"),
        )

    progress = progresses(run_ledger(scenario))[-1]
    assert (progress.closed, progress.fetched, progress.not_modified, progress.failed) == (4, 1, 1, 1)
    assert progress.refused == {"robots": 1}  # only a refused outcome counts its reason


def test_a_version_counts_each_change_of_the_run_exactly() -> None:
    async def scenario(h: Harness, agent: Any) -> None:
        await feed(agent, start(), candidate("http://a.test/1"), closed("http://a.test/1"))

    h = run_ledger(scenario)
    assert [p.version for p in progresses(h)] == [2, 3, 4]
    assert all(key == RUN.encode() for key, _ in h.on("progress"))  # keyed by the run: compacted per run


# --- each URL and each refusal once ---------------------------------------------------------------


def test_a_repeated_candidate_is_admitted_once_and_changes_nothing() -> None:
    url = "http://a.test/1"

    async def scenario(h: Harness, agent: Any) -> None:
        await feed(agent, start(), candidate(url), candidate(url))

    h = run_ledger(scenario)
    assert [r.canonical_url for r in requests(h)] == [url]
    assert [p.version for p in progresses(h)] == [2, 3]  # the repeat published nothing
    assert h.ledger.runs.data[RUN]["v"] == 3


def test_a_closed_url_is_not_admitted_again_in_its_run() -> None:
    url = "http://a.test/1"

    async def scenario(h: Harness, agent: Any) -> None:
        await feed(agent, start(), candidate(url), closed(url), candidate(url))

    h = run_ledger(scenario)
    assert len(requests(h)) == 1
    assert (progresses(h)[-1].admitted, progresses(h)[-1].closed) == (1, 1)


def test_a_refused_candidate_is_counted_once_whatever_its_repeats() -> None:
    before = sample("streams_frontier_refused_total", reason="max_pages")

    async def scenario(h: Harness, agent: Any) -> None:
        await feed(agent, start(budgets=Budgets(max_pages=1)), candidate("http://a.test/1"))
        await feed(agent, candidate("http://a.test/2"), candidate("http://a.test/2"))

    h = run_ledger(scenario)
    assert progresses(h)[-1].refused == {"max_pages": 1}
    assert sample("streams_frontier_refused_total", reason="max_pages") - before == 1


def test_refused_links_are_counted_by_their_count_once_per_origin() -> None:
    async def scenario(h: Harness, agent: Any) -> None:
        await feed(agent, start(), refused("offsite_host", (0, 0), 3), refused("offsite_host", (0, 0), 3))
        await feed(agent, refused("too_deep", (1, 5)), refused("too_deep", (1, 5)))  # a replay
        await feed(agent, refused("too_deep", (1, 4)))  # older than the partition's last: replayed
        await feed(agent, refused("too_deep", (0, 5)))  # another partition's offset 5

    h = run_ledger(scenario)
    assert progresses(h)[-1].refused == {"offsite_host": 3, "too_deep": 2}
    assert [p.version for p in progresses(h)] == [2, 3, 4, 5]


def test_an_entry_of_an_unknown_run_is_counted_as_run_over() -> None:
    before = sample("streams_frontier_refused_total", reason="run_over")

    async def scenario(h: Harness, agent: Any) -> None:
        await feed(agent, candidate("http://a.test/1", run="gone"))

    h = run_ledger(scenario)
    assert sample("streams_frontier_refused_total", reason="run_over") - before == 1
    assert h.on("requests") == []
    assert h.on("progress") == []


def test_each_admitted_request_is_counted_by_its_reason() -> None:
    before = sample("streams_requests_total", reason="link")

    async def scenario(h: Harness, agent: Any) -> None:
        await feed(agent, start(), candidate("http://a.test/1"), candidate("http://b.test/1"))

    run_ledger(scenario)
    assert sample("streams_requests_total", reason="link") - before == 2


def test_a_partition_generates_once_however_often_it_says_so() -> None:
    done = LedgerEntry(type="generated", run_id=RUN, partition=1)

    async def scenario(h: Harness, agent: Any) -> None:
        await feed(agent, start(partitions=3), done, done)

    h = run_ledger(scenario)
    assert [p.generating for p in progresses(h)] == [3, 2]


def test_a_repeated_stop_changes_nothing() -> None:
    stop = LedgerEntry(type="stop", run_id=RUN)

    async def scenario(h: Harness, agent: Any) -> None:
        await feed(agent, start(), stop, stop)

    h = run_ledger(scenario)
    assert [(p.state, p.version) for p in progresses(h)] == [("running", 2), ("stopped", 3)]


def test_an_entry_dead_lettered_as_too_large_leaves_the_runs_accounts_as_they_were() -> None:
    """A change whose records do not fit is dead-lettered before anything happens: the stored
    accounts must not hold what it counted, or later entries are judged against it."""
    huge = "x" * MIB

    async def scenario(h: Harness, agent: Any) -> None:
        await feed(agent, start(partitions=2))
        await feed(agent, refused(huge, (0, 5)))  # its reason makes the progress too large
        await feed(agent, closed("http://a.test/never", links_through=dict.fromkeys(range(MIB // 8), 1)))
        assert len(h.on("dead_letter")) == 2
        await feed(agent, refused("too_deep", (0, 3)))  # offset 5 of partition 0 was never counted

    h = run_ledger(scenario)
    last = progresses(h)[-1]
    assert last.refused == {"too_deep": 1}
    assert last.links_through == {}
    assert h.ledger.runs.data[RUN]["r"] == {"too_deep": 1}


def test_a_generated_entry_dead_lettered_as_too_large_is_not_remembered() -> None:
    """A run brought within a few bytes of its table's limit: a ``generated`` entry whose partition
    does not fit is dead-lettered, and the next (small) one is counted, not judged against it."""
    far = 123456789  # nine more bytes in the run's list of generated partitions

    async def scenario(h: Harness, agent: Any) -> None:
        # a long scope: the run's accounts, not its progress, are the record nearest the limit
        await feed(agent, start(partitions=3, scope=Scope(deny=["/" + "y" * 10_000])))
        runs = h.ledger.runs
        limit = streams_outputs.of(h.app).limit(runs.changelog_topic.get_topic_name())
        at_one = {**runs.data[RUN], "v": 3, "r": {"x": 1}, "m": {"0": 0}}
        size = sum(map(len, runs.encode(RUN, at_one))) + RECORD_OVERHEAD
        spare = 5
        await feed(agent, refused("x" * (1 + limit - size - spare), (0, 0)))
        assert h.on("dead_letter") == []
        await feed(agent, LedgerEntry(type="generated", run_id=RUN, partition=far))
        assert len(h.on("dead_letter")) == 1
        await feed(agent, LedgerEntry(type="generated", run_id=RUN, partition=1))

    h = run_ledger(scenario)
    assert len(h.on("dead_letter")) == 1
    assert progresses(h)[-1].generating == 2
    assert h.ledger.runs.data[RUN]["gp"] == [1]


# --- scopes per run -------------------------------------------------------------------------------


def test_each_runs_requests_carry_that_runs_scope() -> None:
    other = Scope(follow="same-host", max_depth=1)

    async def scenario(h: Harness, agent: Any) -> None:
        await feed(agent, start("r1", scope=SCOPE), start("r2", scope=other))
        await feed(agent, candidate("http://a.test/1", run="r1"), candidate("http://a.test/1", run="r2"))

    h = run_ledger(scenario)
    assert [(r.run_id, r.scope) for r in requests(h)] == [("r1", SCOPE), ("r2", other)]


def test_more_runs_than_remembered_still_get_their_requests() -> None:
    runs = [f"r{n}" for n in range(ledger.RUNS_REMEMBERED + 2)]

    async def scenario(h: Harness, agent: Any) -> None:
        for run in runs:
            await feed(agent, start(run), candidate("http://a.test/1", run=run))

    h = run_ledger(scenario)
    assert [r.run_id for r in requests(h)] == runs
    assert not h.crashes


# --- the progress throttle ------------------------------------------------------------------------


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The ledger's throttle clock, set by the test (the harness registers the ledger with it)."""
    now = [1000.0]
    register = ledger.register

    def with_clock(app: Any, settings: Settings, topics: Any) -> ledger.LedgerAgent:
        return register(app, settings, topics, clock=lambda: now[0])

    monkeypatch.setattr(ledger, "register", with_clock)
    return now


def test_the_throttle_uses_the_clock_it_is_given(clock: list[float]) -> None:
    async def scenario(h: Harness, agent: Any) -> None:
        await feed(agent, start())
        for n in range(3):
            await feed(agent, candidate(f"http://a.test/{n}"))
            clock[0] += 100  # past the interval each time

    h = run_ledger(scenario, interval_s=10)
    assert [p.admitted for p in progresses(h)] == [0, 1, 2, 3]


def test_a_rebalance_sends_the_next_change_at_once(clock: list[float]) -> None:
    async def scenario(h: Harness, agent: Any) -> None:
        await feed(agent, start(), candidate("http://a.test/1"), candidate("http://a.test/2"))
        await h.app.on_partitions_revoked.send(set())
        await feed(agent, candidate("http://a.test/3"))

    h = run_ledger(scenario, interval_s=10)
    assert [p.admitted for p in progresses(h)] == [0, 1, 3]  # the second was held back


def test_each_run_is_throttled_on_its_own(clock: list[float]) -> None:
    async def scenario(h: Harness, agent: Any) -> None:
        await feed(agent, start("b"), start("a"), candidate("http://a.test/1", run="a"))
        await feed(agent, candidate("http://a.test/1", run="b"))  # b's first change after a quiet one

    h = run_ledger(scenario, interval_s=10)
    assert [(p.run_id, p.admitted) for p in progresses(h)] == [("b", 0), ("a", 0), ("a", 1), ("b", 1)]


def test_an_open_change_is_sent_once_the_interval_has_passed_exactly() -> None:
    now = [0.0]
    throttle = ledger.ProgressThrottle(2.0, clock=lambda: now[0])
    running = {"a": 3, "c": 1, "g": 0, "st": "running"}
    assert throttle.due("r", running)
    now[0] = 1.999
    assert not throttle.due("r", running)
    now[0] = 2.0
    assert throttle.due("r", running)


def test_the_throttle_remembers_the_latest_runs_it_published() -> None:
    throttle = ledger.ProgressThrottle(2.0, clock=lambda: 0.0)
    running = {"a": 3, "c": 1, "g": 0, "st": "running"}
    runs = [f"r{n}" for n in range(ledger.RUNS_REMEMBERED + 1)]
    for run in runs:
        assert throttle.due(run, running)
    # the oldest is forgotten (its next change is sent at once), the latest are remembered
    assert [throttle.due(run, running) for run in (runs[1], runs[-1])] == [False, False]
    assert throttle.due(runs[0], running)


# --- stop: a chunk per record until nothing is left -----------------------------------------------


def test_stop_purges_a_chunk_per_record_on_the_runs_partition_until_none_is_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ledger, "PURGE_CHUNK", 4)
    urls = [f"http://a.test/{n}" for n in range(5)]  # 5 URL entries and one host entry
    after_first: dict[str, Any] = {}

    async def scenario(h: Harness, agent: Any) -> None:
        await feed(agent, start(), *(candidate(url) for url in urls), partition=2)
        await feed(agent, LedgerEntry(type="stop", run_id=RUN), partition=2)
        after_first["tombstones"] = tombstones(h)
        after_first["continued"] = list(h.on("ledger"))
        for key, value in list(h.on("ledger")):  # the continuation, as the broker delivers it
            await agent.put(value, key=key, partition=2)

    h = run_ledger(scenario)
    assert len(after_first["tombstones"]) == 4
    assert after_first["continued"] == [(RUN.encode(), LedgerEntry(type="stop", run_id=RUN).to_bytes())]
    assert len(h.on("ledger")) == 1  # the second record finished the purge: no third
    assert len(tombstones(h)) == 6
    assert {partition for partition, _ in tombstones(h)} == {2}
    leftover = [k for t in (h.ledger.urls, h.ledger.hosts) for k in t.data if str(k).startswith(f"{RUN}|")]
    assert leftover == []


def test_stop_purges_the_runs_entries_from_the_store_of_its_partition(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With RocksDB (a store per partition; the memory store keeps every partition in one dict):
    the purge scans the stop's own partition, where the run's entries are, and deletes them all."""
    monkeypatch.setattr(ledger, "PURGE_CHUNK", 4)
    urls = [f"http://a.test/{n}" for n in range(5)]  # 5 URL entries and one host entry

    async def scenario(h: Harness, agent: Any) -> None:
        await feed(agent, start(), *(candidate(url) for url in urls), partition=2)
        await feed(agent, LedgerEntry(type="stop", run_id=RUN), partition=2)
        for key, value in list(h.on("ledger")):  # the continuation, as the broker delivers it
            await agent.put(value, key=key, partition=2)

    h = run_ledger(scenario, rocksdb_in=tmp_path)
    assert len(tombstones(h)) == 6
    assert {partition for partition, _ in tombstones(h)} == {2}


def tombstones(h: Harness) -> list[tuple[int, bytes]]:
    return [(partition, key) for _topic, partition, key, value in h.producer.changelog if value is None]


# --- the topic and its records --------------------------------------------------------------------


def test_the_ledger_reads_its_topic_raw_with_the_catalogs_partitions() -> None:
    async def scenario(h: Harness, agent: Any) -> None:
        spec = catalog(h.settings).frontier_ledger
        assert h.ledger.topic.get_topic_name() == spec.name
        assert h.ledger.topic.partitions == spec.partitions
        value = start().to_bytes()
        message = agent.to_message(RUN.encode(), value, partition=0, offset=0)
        event = await h.ledger.topic.decode(message)
        assert (event.key, event.value) == (RUN.encode(), value)

    run_ledger(scenario)


def test_an_entry_keyed_by_another_run_is_dead_lettered_naming_the_key() -> None:
    async def scenario(h: Harness, agent: Any) -> None:
        await agent.put(start().to_bytes(), key=b"other", partition=0)

    h = run_ledger(scenario)
    [letter] = [DeadLetter.model_validate_json(v) for _, v in h.on("dead_letter")]
    assert letter.reason == "key_mismatch"
    assert "other" in letter.error
    assert RUN in letter.error
    assert base64.b64decode(letter.key_b64 or "") == b"other"
    assert h.on("progress") == []


def test_the_ledgers_tables_report_their_sizes_by_name() -> None:
    names = ("ledger_runs", "ledger_urls", "ledger_hosts")
    for name in names:  # the gauges are process-wide: no value left by an earlier test may pass
        metrics.TABLE_KEYS.labels(name).set(-1)

    async def scenario(h: Harness, agent: Any) -> None:
        await feed(agent, start(), candidate("http://a.test/1"), candidate("http://a.test/2"))
        for timer in h.app._app_tasks:  # what the app's timers run, as the worker would
            if "report_table_keys" in getattr(timer, "__qualname__", ""):
                await inspect.unwrap(timer)()

    run_ledger(scenario)
    sizes = {name: sample("streams_table_keys", table=name) for name in names}
    assert sizes == {"ledger_runs": 1, "ledger_urls": 2, "ledger_hosts": 1}
