"""Frontier jobs in the stream stage: scoped links -> candidates -> the run's ledger -> requests.

Both agents run through faust's ``test_context`` on one harness (memory stores, outputs recorded);
what the frontier sends to the ledger topic is fed to the ledger agent as the broker would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from crawlstream.records import (
    Budgets,
    CrawlRequest,
    FetchOutcome,
    FrontierCommand,
    LedgerEntry,
    LinkRecord,
    RunProgress,
    Scope,
)
from crawlstream.settings import FrontierSettings, KafkaSettings, Settings, StreamsSettings
from streams.ledger import ProgressThrottle
from tests.unit.streams.harness import Harness, sample

RUN, JOB = "run-1", "job-a"
SCOPE = Scope(follow="same-domain", max_depth=3, deny=[r"/private/"])


def link(url: str, source: str = "", depth: int = 1, run: str = RUN) -> LinkRecord:
    host = url.split("/")[2]
    return LinkRecord(
        url=url,
        canonical_url=url,
        host=host,
        source_url=source,
        depth=depth,
        job_id=JOB,
        run_id=run,
        scope=SCOPE,
    )


def outcome(url: str, **fields: Any) -> FetchOutcome:
    values: dict[str, Any] = {"outcome": "fetched", "status": 200, "links_through": {0: 7}}
    values.update(fields)
    return FetchOutcome(url=url, canonical_url=url, host=url.split("/")[2], job_id=JOB, run_id=RUN, **values)


Scenario = Callable[[Harness, Any, Any], Awaitable[None]]


def run_both(scenario: Scenario, settings: Settings | None = None) -> Harness:
    async def main() -> Harness:
        h = Harness(settings)
        frontier_in = h.app.channel(key_type=bytes, value_type=bytes)
        ledger_in = h.app.channel(key_type=bytes, value_type=bytes)
        async with (
            h.frontier.agent.test_context(channel=frontier_in) as frontier,
            h.ledger.agent.test_context(channel=ledger_in) as ledger,
        ):
            await scenario(h, frontier, ledger)
        return h

    return asyncio.run(main())


async def forward(h: Harness, ledger: Any, done: list[int]) -> None:
    """Feed the ledger what the frontier sent it since the last call (in order, as Kafka would)."""
    entries = h.on("ledger")
    for key, value in entries[len(done) :]:
        done.append(1)
        await ledger.put(value, key=key, partition=0)


def start(budgets: Budgets | None = None, partitions: int = 0) -> LedgerEntry:
    return LedgerEntry(
        type="start", run_id=RUN, job_id=JOB, scope=SCOPE, budgets=budgets, partitions=partitions
    )


def requests(h: Harness) -> list[CrawlRequest]:
    return [CrawlRequest.model_validate_json(v) for _, v in h.on("requests")]


def last_progress(h: Harness) -> RunProgress:
    return RunProgress.model_validate_json(h.on("progress")[-1][1])


def test_links_in_scope_become_requests_once_and_out_of_scope_is_counted_by_reason() -> None:
    seed = "http://www.shop.example.co.uk/"
    inside = "http://blog.shop.example.co.uk/a"  # same registrable domain
    other = "http://www.example2.co.uk/b"  # co.uk is a public suffix: another domain
    private = "http://www.shop.example.co.uk/private/x"
    deep = "http://www.shop.example.co.uk/deep"

    async def scenario(h: Harness, frontier: Any, ledger: Any) -> None:
        fed: list[int] = []
        await ledger.put(start().to_bytes(), key=RUN.encode(), partition=0)
        for record in (
            link(seed, depth=0),
            link(inside, seed),
            link(inside, seed),  # again: reached already in this run
            link(other, seed),
            link(private, seed),
            link(deep, seed, depth=4),
        ):
            await frontier.put(record.to_bytes(), key=record.canonical_url.encode(), partition=0)
        await forward(h, ledger, fed)

    h = run_both(scenario)
    got = requests(h)
    assert [(r.canonical_url, r.reason, r.host) for r in got] == [
        (seed, "seed", "www.shop.example.co.uk"),
        (inside, "link", "blog.shop.example.co.uk"),
    ]
    assert all(r.scope == SCOPE and r.run_id == RUN and r.job_id == JOB for r in got)
    assert [key for key, _ in h.on("requests")] == [b"www.shop.example.co.uk", b"blog.shop.example.co.uk"]
    progress = last_progress(h)
    assert progress.refused == {"offsite_domain": 1, "filtered": 1, "too_deep": 1}
    assert (progress.admitted, progress.closed, progress.hosts) == (2, 0, 2)
    assert sample("streams_frontier_refused_total", reason="offsite_domain") >= 1


def test_budgets_refuse_by_reason_and_outcomes_close_each_url_once() -> None:
    urls = [f"http://h{n % 3}.test/{n}" for n in range(8)]

    async def scenario(h: Harness, frontier: Any, ledger: Any) -> None:
        fed: list[int] = []
        budgets = Budgets(max_pages=5, max_pages_per_host=2, max_hosts=2)
        await ledger.put(start(budgets).to_bytes(), key=RUN.encode(), partition=0)
        for url in urls:
            record = link(url, depth=0)
            await frontier.put(record.to_bytes(), key=url.encode(), partition=0)
        await forward(h, ledger, fed)
        for request in requests(h):
            done = outcome(request.canonical_url, etag='"v1"', links=3, refused={"offsite_host": 2})
            await frontier.put(done.to_bytes(), key=done.canonical_url.encode(), partition=0)
            await frontier.put(done.to_bytes(), key=done.canonical_url.encode(), partition=0)  # duplicate
        await forward(h, ledger, fed)

    h = run_both(scenario)
    admitted = [r.canonical_url for r in requests(h)]
    # h0: 0, 3 (then its budget of 2 is spent: 6); h1: 1, 4 (7 spent); h2 would be a third host
    # (2, 5); max_pages (5) is never reached.
    assert admitted == [urls[0], urls[1], urls[3], urls[4]]
    progress = last_progress(h)
    assert progress.refused == {"max_hosts": 2, "host_budget": 2, "offsite_host": 8}
    assert (progress.admitted, progress.closed, progress.fetched, progress.links) == (4, 4, 4, 12)
    assert progress.quiet
    assert progress.links_through == {0: 7}
    # The validators are kept for the next run of the job.
    entry = h.frontier.urls.data[f"{JOB}|{urls[0]}"]
    assert (entry["e"], entry["s"]) == ('"v1"', 200)


def test_next_run_generates_known_urls_with_validators_and_forgets_gone_and_stale_ones() -> None:
    now = datetime.now(UTC)
    known = {
        "http://a.test/kept": {"r": "run-0", "d": 2, "e": '"e1"', "m": "Mon, 01 Jan 2024 00:00:00 GMT",
                               "s": 200, "t": now.isoformat()},
        "http://a.test/gone": {"r": "run-0", "d": 1, "s": 404, "t": now.isoformat()},
        "http://a.test/stale": {"r": "run-0", "d": 1, "s": 200, "t": (now - timedelta(days=40)).isoformat()},
    }  # fmt: skip

    async def scenario(h: Harness, frontier: Any, ledger: Any) -> None:
        for url, entry in known.items():
            h.frontier.urls.data[f"{JOB}|{url}"] = entry
        h.frontier.urls.data["other-job|http://a.test/x"] = {"r": "run-9", "d": 0, "t": now.isoformat()}
        fed: list[int] = []
        await ledger.put(start(partitions=1).to_bytes(), key=RUN.encode(), partition=0)
        command = FrontierCommand(job_id=JOB, run_id=RUN, scope=SCOPE)
        await frontier.put(command.to_bytes(), key=None, partition=0)
        await forward(h, ledger, fed)

    h = run_both(scenario)
    [request] = requests(h)
    assert (request.canonical_url, request.reason, request.depth) == ("http://a.test/kept", "recrawl", 2)
    assert (request.etag, request.last_modified) == ('"e1"', "Mon, 01 Jan 2024 00:00:00 GMT")
    assert f"{JOB}|http://a.test/gone" not in h.frontier.urls.data
    assert f"{JOB}|http://a.test/stale" not in h.frontier.urls.data
    assert "other-job|http://a.test/x" in h.frontier.urls.data
    tombstones = [key for _topic, _p, key, value in h.producer.changelog if value is None]
    assert sorted(tombstones) == [b'"job-a|http://a.test/gone"', b'"job-a|http://a.test/stale"']
    progress = last_progress(h)
    assert (progress.generating, progress.admitted) == (0, 1)


def test_stop_refuses_later_candidates_and_purges_the_runs_entries() -> None:
    async def scenario(h: Harness, frontier: Any, ledger: Any) -> None:
        fed: list[int] = []
        await ledger.put(start().to_bytes(), key=RUN.encode(), partition=0)
        first = link("http://a.test/1", depth=0)
        await frontier.put(first.to_bytes(), key=first.canonical_url.encode(), partition=0)
        await forward(h, ledger, fed)
        await ledger.put(LedgerEntry(type="stop", run_id=RUN).to_bytes(), key=RUN.encode(), partition=0)
        later = link("http://a.test/2", depth=0)
        await frontier.put(later.to_bytes(), key=later.canonical_url.encode(), partition=0)
        await forward(h, ledger, fed)

    h = run_both(scenario)
    assert [r.canonical_url for r in requests(h)] == ["http://a.test/1"]
    progress = last_progress(h)
    assert progress.state == "stopped"
    assert progress.refused == {"run_stopped": 1}
    assert f"{RUN}|http://a.test/1" not in h.ledger.urls.data  # purged
    assert f"{RUN}|a.test" not in h.ledger.hosts.data


def test_max_pages_caps_the_requests_of_a_run() -> None:
    async def scenario(h: Harness, frontier: Any, ledger: Any) -> None:
        fed: list[int] = []
        await ledger.put(start(Budgets(max_pages=3)).to_bytes(), key=RUN.encode(), partition=0)
        for n in range(5):
            record = link(f"http://a.test/{n}", depth=0)
            await frontier.put(record.to_bytes(), key=record.canonical_url.encode(), partition=0)
        await forward(h, ledger, fed)

    h = run_both(scenario)
    assert [r.canonical_url for r in requests(h)] == [f"http://a.test/{n}" for n in range(3)]
    assert last_progress(h).refused == {"max_pages": 2}


def test_a_304_of_a_known_page_is_a_touch_not_a_new_version() -> None:
    from tests.unit.streams.harness import page, run

    url = "http://a.test/p"

    async def scenario(h: Harness, agent: Any) -> None:
        first = page(url, body="<main><p>the page as it was first fetched, with words</p></main>")
        await agent.put(first.to_bytes(), key=url.encode(), partition=0)
        again = first.model_copy(update={"status": 304, "body": "", "kind": "metadata"})
        await agent.put(again.to_bytes(), key=url.encode(), partition=0)

    h = run(lambda h: h.changes.agent, scenario)
    assert len(h.on("touches")) == 1
    assert len(h.on("by_band")) == 1  # the first fetch's dedup probe only


def test_progress_is_throttled_while_requests_are_open_but_never_a_quiet_state() -> None:
    """With a long progress interval: the run's first state, every quiet state and the first change
    after a quiet one are published at once; changes while requests are open wait (the table has
    them all), so the runner never takes an older quiet progress for the current state."""
    urls = [f"http://h.test/{n}" for n in range(3)]
    seen: list[RunProgress] = []

    async def scenario(h: Harness, frontier: Any, ledger: Any) -> None:
        fed: list[int] = []
        await ledger.put(start().to_bytes(), key=RUN.encode(), partition=0)
        await frontier.put(link(urls[0], depth=0).to_bytes(), key=urls[0].encode(), partition=0)
        await forward(h, ledger, fed)
        done = outcome(urls[0])
        await frontier.put(done.to_bytes(), key=urls[0].encode(), partition=0)
        await forward(h, ledger, fed)
        seen.append(last_progress(h))  # quiet: 1 admitted, 1 closed
        for url in urls[1:]:
            await frontier.put(link(url, urls[0]).to_bytes(), key=url.encode(), partition=0)
        await forward(h, ledger, fed)
        seen.append(last_progress(h))  # the first change after quiet, not the second
        for url in urls[1:]:
            await frontier.put(outcome(url).to_bytes(), key=url.encode(), partition=0)
        await forward(h, ledger, fed)

    settings = Settings(
        _env_file=None,
        kafka=KafkaSettings(topic_prefix="unit", partitions=3),
        streams=StreamsSettings(app_id="unit-streams", store="memory://"),
        frontier=FrontierSettings(progress_interval_s=10),
    )
    h = run_both(scenario, settings)
    published = [RunProgress.model_validate_json(v) for _, v in h.on("progress")]
    # start (nothing admitted, no partition generating: quiet), candidate 1 (after a quiet one),
    # closed 1 (quiet), candidate 2 (after a quiet one), closed 3 (quiet); candidate 3 and
    # closed 2 were held back.
    assert [(p.admitted, p.closed) for p in published] == [(0, 0), (1, 0), (1, 1), (2, 1), (3, 3)]
    assert [(p.admitted, p.closed, p.quiet) for p in seen] == [(1, 1, True), (2, 1, False)]
    final = published[-1]
    assert final.quiet
    assert final.version == h.ledger.runs.data[RUN]["v"]


def test_progress_throttle_sends_open_changes_after_the_interval_and_forgets_on_rebalance() -> None:
    now = [100.0]
    throttle = ProgressThrottle(2.0, clock=lambda: now[0])
    running = {"a": 3, "c": 1, "g": 0, "st": "running"}
    assert throttle.due("r", running)  # first sight
    now[0] += 1.0
    assert not throttle.due("r", running)  # open, within the interval
    now[0] += 1.5
    assert throttle.due("r", running)  # the interval passed
    assert throttle.due("r", {**running, "c": 3})  # quiet: at once
    assert throttle.due("r", running)  # the change after a quiet one: at once
    assert not throttle.due("r", running)
    assert throttle.due("r", {**running, "st": "stopped"})  # stopped: at once
    assert throttle.due("r", running)
    throttle.forget()  # a rebalance: another worker may have published meanwhile
    assert throttle.due("r", running)
    assert throttle.due("other", running)  # each run on its own
