"""The frontier's and the ledger's decisions as plain functions (streams/frontier.py,
streams/ledger.py), at their edges: when a URL is due, when a known URL is forgotten, what a
fetch keeps of a URL's validators, which budget refuses a candidate, and what the ledger's
request carries. The agents around them are tested in test_frontier.py and test_frontier_jobs.py;
the frontier agent alone is tested here for what it sends a run's ledger, keeps of a job's URLs
and counts, record by record (a replayed record included).
"""

from __future__ import annotations

import inspect
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from crawlstream.errors import RecordError
from crawlstream.records import (
    Budgets,
    DeadLetter,
    FetchOutcome,
    FrontierCommand,
    LedgerEntry,
    LinkRecord,
    Scope,
)
from crawlstream.settings import KafkaSettings, Settings, StreamsSettings
from streams import frontier, ledger, metrics
from tests.unit.streams.harness import Harness, run, sample, settings_with

NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
A = "https://example.org/a"


def link(**fields: Any) -> LinkRecord:
    values: dict[str, Any] = {
        "url": A,
        "canonical_url": A,
        "host": "example.org",
        "source_url": "https://example.org/",
        "depth": 1,
        "job_id": "job",
        "run_id": "run",
    }
    values.update(fields)
    return LinkRecord(**values)


def outcome(kind: str, **fields: Any) -> FetchOutcome:
    values: dict[str, Any] = {
        "url": A,
        "canonical_url": A,
        "host": "example.org",
        "run_id": "run",
        "depth": 2,
        "outcome": kind,
        "fetched_at": NOW,
    }
    values.update(fields)
    return FetchOutcome(**values)


# --- frontier: due, requested, forgotten ------------------------------------------------------


def test_a_fetched_url_is_due_at_its_interval_exactly_and_naive_times_are_utc() -> None:
    entry = {"l": "2026-11-25T11:00:00", "i": 3600}  # written without a zone: UTC
    assert frontier.decide(link(), entry, None, NOW) is not None  # due now, not a moment later
    assert frontier.decide(link(), entry, None, NOW - timedelta(seconds=1)) is None
    # Requested exactly when it fell due: that request stands.
    assert frontier.decide(link(), entry, "2026-11-25T12:00:00+00:00", NOW + timedelta(hours=1)) is None
    assert frontier.decide(link(), entry, "2026-11-25T11:59:59", NOW + timedelta(hours=1)) is not None


def test_a_request_carries_the_links_job_run_and_depth() -> None:
    request = frontier.decide(link(depth=3, job_id="j", run_id="r"), None, None, NOW)
    assert request is not None
    assert (request.job_id, request.run_id, request.depth, request.host) == ("j", "r", 3, "example.org")


def test_requested_reads_every_form_of_a_seen_entry() -> None:
    assert frontier.requested(None) == (None, -1)
    assert frontier.requested("2026-11-25T12:00:00") == ("2026-11-25T12:00:00", -1)
    assert frontier.requested({"t": "2026-11-25T12:00:00", "o": "17"}) == ("2026-11-25T12:00:00", 17)


@pytest.mark.parametrize(
    ("entry", "gone"),
    [
        ({"s": 404, "t": NOW.isoformat()}, True),
        ({"s": 410, "t": NOW.isoformat()}, True),
        ({"s": 500, "t": NOW.isoformat()}, False),
        ({"s": None, "t": NOW.isoformat()}, False),
        ({"t": (NOW - timedelta(seconds=100)).isoformat()}, False),  # reached exactly forget_after ago
        ({"t": (NOW - timedelta(seconds=101)).isoformat()}, True),
        ({"t": "2026-11-25T11:58:00"}, True),  # naive: UTC
        ({}, True),  # never reached
    ],
)
def test_a_known_url_is_forgotten_when_gone_or_unreached_too_long(entry: dict[str, Any], gone: bool) -> None:
    assert frontier.expired(entry, NOW, 100) is gone


def test_refusal_limits_at_their_edges() -> None:
    assert frontier.refusal(link(depth=3), 3, 2048) is None
    assert frontier.refusal(link(depth=4), 3, 2048) == "too_deep"
    assert frontier.refusal(link(depth=400), 0, 2048) is None  # 0: no limit
    long = A + "?" + "x" * 100
    assert frontier.refusal(link(url=long), 0, len(long)) is None
    assert frontier.refusal(link(url=long), 0, len(long) - 1) == "url_too_long"
    assert frontier.refusal(link(canonical_url=long), 0, len(long) - 1) == "url_too_long"  # both URLs


def test_a_links_host_must_be_its_urls() -> None:
    frontier.check_host(link())
    frontier.check_host(link(url="https://Example.ORG/a", host="example.org"))
    with pytest.raises(RecordError) as caught:
        frontier.check_host(link(host="other.org"))
    assert caught.value.reason == "host_mismatch"


def test_decoding_refuses_a_null_value_and_an_outcome_keyed_by_another_url() -> None:
    with pytest.raises(RecordError) as caught:
        frontier.decode_link(A.encode(), None)
    assert caught.value.reason == "null_value"
    with pytest.raises(RecordError) as caught:
        frontier.decode_outcome(A.encode(), b"{}")
    assert caught.value.reason == "invalid_outcome"
    with pytest.raises(RecordError) as caught:
        frontier.decode_outcome(b"https://other/", outcome("fetched").to_bytes())
    assert caught.value.reason == "key_mismatch"
    with pytest.raises(RecordError) as caught:
        frontier.decode_outcome(None, outcome("fetched").to_bytes())
    assert caught.value.reason == "key_mismatch"
    assert frontier.decode_outcome(A.encode(), outcome("fetched").to_bytes()).url == A


# --- frontier: a job's URL entries --------------------------------------------------------------


def test_a_seed_is_a_link_of_depth_zero_without_a_source() -> None:
    seed = link(source_url="", depth=0)
    assert frontier.candidate_for(seed, None, (0, 5)).reason == "seed"
    assert frontier.candidate_for(link(source_url="", depth=1), None, (0, 5)).reason == "link"
    assert frontier.candidate_for(link(depth=0), None, (0, 5)).reason == "link"
    assert frontier.candidate_for(seed, None, (0, 5), reason="recrawl").reason == "recrawl"


def test_a_candidate_carries_the_urls_validators_and_origin() -> None:
    candidate = frontier.candidate_for(link(), {"e": '"v1"', "m": "Tue, 24 Nov 2026 10:00:00 GMT"}, (2, 9))
    assert (candidate.etag, candidate.last_modified) == ('"v1"', "Tue, 24 Nov 2026 10:00:00 GMT")
    assert candidate.origin == (2, 9)
    assert (candidate.run_id, candidate.job_id, candidate.depth, candidate.type) == (
        "run",
        "job",
        1,
        "candidate",
    )


def test_reaching_a_url_keeps_its_validators_and_stamps_the_run_and_offset() -> None:
    entry = frontier.reached({"e": "x", "s": 200, "r": "old"}, link(depth=2), 41, NOW)
    assert entry == {"e": "x", "s": 200, "r": "run", "d": 2, "c": 41, "o": 41, "t": NOW.isoformat()}
    assert frontier.reached(None, link(), 1, NOW)["r"] == "run"


def test_a_fetch_replaces_the_validators_a_304_keeps_them_a_failure_leaves_them() -> None:
    known = {"e": '"v1"', "m": "old", "t": "2026-11-01T00:00:00+00:00", "r": "run0", "d": 1}
    fetched = frontier.fetched(known, outcome("fetched", status=200, etag=None, last_modified="new"), 7)
    assert fetched == {"m": "new", "t": NOW.isoformat(), "r": "run0", "d": 1, "o": 7, "s": 200}  # no ETag now
    not_modified = frontier.fetched(known, outcome("not_modified", status=304), 8)
    assert not_modified == {**known, "t": NOW.isoformat(), "o": 8, "s": 304}
    changed = frontier.fetched(known, outcome("not_modified", status=304, etag='"v2"'), 9)
    assert changed["e"] == '"v2"'
    failed = frontier.fetched(known, outcome("failed", status=None), 10)
    assert failed == {**known, "o": 10}
    first = frontier.fetched(None, outcome("failed", status=503), 11)
    assert first == {"o": 11, "r": "run", "d": 2, "s": 503}


def test_a_job_url_key_names_the_job_and_the_url() -> None:
    assert frontier.url_key("job-a", A) == f"job-a|{A}"


# --- ledger --------------------------------------------------------------------------------------


def start(budgets: Budgets | None = None, scope: Scope | None = None, partitions: int = 3) -> LedgerEntry:
    return LedgerEntry(
        type="start", run_id="run", job_id="job", budgets=budgets, scope=scope, partitions=partitions
    )


def test_budgets_refuse_at_the_limit_not_before() -> None:
    run = ledger.new_run(start(Budgets(max_pages=10, max_pages_per_host=3, max_hosts=2)))
    assert ledger.budget_refusal(run, 0) is None
    run["a"] = 9
    assert ledger.budget_refusal(run, 2) is None
    run["a"] = 10
    assert ledger.budget_refusal(run, 0) == "max_pages"
    run["a"] = 5
    assert ledger.budget_refusal(run, 3) == "host_budget"
    run["h"] = 2
    assert ledger.budget_refusal(run, 0) == "max_hosts"  # a new host, and two already
    assert ledger.budget_refusal(run, 1) is None  # a host already admitted is not a new one
    run["h"] = 1
    assert ledger.budget_refusal(run, 0) is None
    run["st"] = "stopped"
    assert ledger.budget_refusal(run, 0) == "run_stopped"


def test_zero_budgets_are_no_limits() -> None:
    run = ledger.new_run(start(Budgets()))
    run["a"], run["h"] = 10**6, 10**4
    assert ledger.budget_refusal(run, 10**5) is None
    assert ledger.budget_refusal(ledger.new_run(start(None)), 5) is None


def test_links_through_only_moves_forward() -> None:
    run = ledger.new_run(start())
    assert ledger.merge_through(run, {0: 5, 1: 2})
    assert not ledger.merge_through(run, {0: 5, 1: 1})  # nothing new
    assert ledger.merge_through(run, {0: 6})
    assert run["w"] == {"0": 6, "1": 2}
    assert ledger.progress_of("run", run).links_through == {0: 6, 1: 2}


def test_refusals_are_counted_by_reason_and_nothing_is_counted_for_zero() -> None:
    run = ledger.new_run(start())
    ledger.count(run, "offsite_host")
    ledger.count(run, "offsite_host", 2)
    ledger.count(run, "filtered", 0)
    assert run["r"] == {"offsite_host": 3}


def test_a_new_runs_progress_is_running_with_nothing_done() -> None:
    run = ledger.new_run(start(partitions=3))
    progress = ledger.progress_of("run", run)
    assert (progress.state, progress.version, progress.generating) == ("running", 1, 3)
    assert (progress.admitted, progress.closed, progress.fetched, progress.hosts) == (0, 0, 0, 0)
    assert progress.job_id == "job"
    run["g"], run["st"] = -1, "stopped"
    stopped = ledger.progress_of("run", run)
    assert (stopped.state, stopped.generating) == ("stopped", 0)  # never below zero


def test_the_ledgers_request_carries_the_runs_scope_and_the_urls_validators() -> None:
    scope = Scope(follow="same-host", max_depth=2)
    run = ledger.new_run(start(scope=scope))
    candidate = LedgerEntry(
        type="candidate",
        run_id="run",
        url=A + "?x",
        canonical_url=A,
        host="example.org",
        depth=2,
        reason="link",
        etag='"v1"',
        last_modified="Tue, 24 Nov 2026 10:00:00 GMT",
    )
    request = ledger.request_for(candidate, run)
    assert (request.url, request.canonical_url, request.host, request.depth) == (
        A + "?x",
        A,
        "example.org",
        2,
    )
    assert (request.job_id, request.run_id) == ("job", "run")
    assert request.scope == scope
    assert (request.etag, request.last_modified) == ('"v1"', "Tue, 24 Nov 2026 10:00:00 GMT")
    reasons = {
        r: ledger.request_for(candidate.model_copy(update={"reason": r}), run).reason
        for r in ("seed", "recrawl", "link", "other")
    }
    assert reasons == {"seed": "seed", "recrawl": "recrawl", "link": "link", "other": "link"}
    assert ledger.request_for(candidate, ledger.new_run(start())).scope is None


def test_a_ledger_entry_must_be_keyed_by_its_run() -> None:
    entry = start()
    assert ledger.decode_entry(b"run", entry.to_bytes()) == entry
    for key, value, reason in (
        (b"run", None, "null_value"),
        (b"run", b"{", "invalid_ledger_entry"),
        (b"other", entry.to_bytes(), "key_mismatch"),
        (None, entry.to_bytes(), "key_mismatch"),
    ):
        with pytest.raises(RecordError) as caught:
            ledger.decode_entry(key, value)
        assert caught.value.reason == reason


# --- the frontier agent: what it tells a run's ledger and keeps of a job's URLs -----------------
#
# The agent alone (no ledger agent): what it sends the ledger topic, writes to its tables and
# counts, record by record, including a record replayed after a crash (same offset again).

JOB_SCOPE = Scope(follow="same-host", max_depth=3)
JOB_URL = "http://a.test/p"


def job_link(url: str = JOB_URL, **fields: Any) -> LinkRecord:
    values: dict[str, Any] = {
        "url": url,
        "canonical_url": url,
        "host": url.split("/")[2],
        "source_url": "http://a.test/",
        "depth": 1,
        "job_id": "job",
        "run_id": "run-2",
        "scope": JOB_SCOPE,
    }
    values.update(fields)
    return LinkRecord(**values)


def ledger_entries(h: Harness) -> list[LedgerEntry]:
    return [LedgerEntry.model_validate_json(value) for _, value in h.on("ledger")]


def candidates(h: Harness) -> list[LedgerEntry]:
    return [entry for entry in ledger_entries(h) if entry.type == "candidate"]


def dead_letter_reasons(h: Harness) -> list[str]:
    return [DeadLetter.model_validate_json(value).reason for _, value in h.on("dead_letter")]


async def feed(agent: Any, record: LinkRecord | FetchOutcome, partition: int = 1) -> None:
    await agent.put(record.to_bytes(), key=record.canonical_url.encode(), partition=partition)


def frontier_run(scenario: Any, settings: Settings | None = None) -> Harness:
    return run(lambda h: h.frontier.agent, scenario, settings)


def counted(name: str, scenario: Any, labels: dict[str, str]) -> tuple[Harness, float]:
    before = sample(name, **labels)
    h = frontier_run(scenario)
    return h, sample(name, **labels) - before


def test_a_url_reached_again_in_the_same_run_is_one_candidate_and_a_replay_sends_it_again() -> None:
    async def scenario(h: Harness, agent: Any) -> None:
        await feed(agent, job_link())  # offset 0: the candidate
        await feed(agent, job_link(source_url="http://a.test/other"))  # offset 1: reached before
        agent.sent_offset = 0  # a restart from the last committed offset: 0 is replayed
        await feed(agent, job_link())

    before = sample("streams_replays_total", agent="plan_requests")
    h = frontier_run(scenario)
    assert [(c.canonical_url, c.origin) for c in candidates(h)] == [(JOB_URL, (1, 0)), (JOB_URL, (1, 0))]
    assert sample("streams_replays_total", agent="plan_requests") - before == 1
    assert h.on("dead_letter") == []
    entry = h.frontier.urls.data[f"job|{JOB_URL}"]
    assert (entry["r"], entry["c"], entry["o"], entry["d"]) == ("run-2", 0, 0, 1)


def test_a_candidate_is_counted_by_the_frontier() -> None:
    async def scenario(h: Harness, agent: Any) -> None:
        await feed(agent, job_link())
        await feed(agent, job_link("http://a.test/q"))

    _, n = counted("streams_requests_total", scenario, {"reason": "candidate"})
    assert n == 2


def test_a_new_run_reaching_a_known_url_asks_with_its_validators_and_keeps_them() -> None:
    known = {
        "r": "run-1",
        "d": 2,
        "c": 5,
        "o": 9,
        "e": '"v1"',
        "m": "Mon, 01 Jan 2024 00:00:00 GMT",
        "s": 200,
    }

    async def scenario(h: Harness, agent: Any) -> None:
        h.frontier.urls.data[f"job|{JOB_URL}"] = known
        await feed(agent, job_link())

    h = frontier_run(scenario)
    [candidate] = candidates(h)
    assert (candidate.etag, candidate.last_modified, candidate.origin) == (known["e"], known["m"], (1, 0))
    entry = h.frontier.urls.data[f"job|{JOB_URL}"]
    assert (entry["e"], entry["m"], entry["s"]) == (known["e"], known["m"], 200)
    assert (entry["r"], entry["d"], entry["c"], entry["o"]) == ("run-2", 1, 0, 0)
    assert datetime.fromisoformat(entry["t"]).utcoffset() == timedelta(0)  # stored with its zone


def test_a_scoped_links_url_must_be_fetchable_and_its_depth_is_the_scopes_alone() -> None:
    long_url = JOB_URL + "?q=" + "x" * 100
    settings = settings_with(max_url_length=100, max_depth=1)

    async def scenario(h: Harness, agent: Any) -> None:
        await feed(agent, job_link(long_url))
        await feed(agent, job_link("http://a.test/deep", depth=3))  # the scope's limit, not crawl's

    before = sample("streams_frontier_refused_total", reason="url_too_long")
    h = run(lambda h: h.frontier.agent, scenario, settings)
    assert sample("streams_frontier_refused_total", reason="url_too_long") - before == 1
    refused = [e for e in ledger_entries(h) if e.type == "refused"]
    assert [(e.reason, e.run_id, e.job_id, e.origin) for e in refused] == [
        ("url_too_long", "run-2", "job", (1, 0))
    ]
    assert [c.canonical_url for c in candidates(h)] == ["http://a.test/deep"]


def test_a_scoped_link_refused_by_its_scope_is_counted_by_reason() -> None:
    async def scenario(h: Harness, agent: Any) -> None:
        await feed(agent, job_link("http://b.test/x"))

    h, n = counted("streams_frontier_refused_total", scenario, {"reason": "offsite_host"})
    assert n == 1
    assert [(e.type, e.reason, e.job_id) for e in ledger_entries(h)] == [("refused", "offsite_host", "job")]


@pytest.mark.parametrize("missing", ["job_id", "run_id"])
def test_a_scoped_link_without_its_job_or_run_is_dead_lettered_as_an_invalid_link(missing: str) -> None:
    async def scenario(h: Harness, agent: Any) -> None:
        await feed(agent, job_link(**{missing: ""}))

    h = frontier_run(scenario)
    assert dead_letter_reasons(h) == ["invalid_link"]
    assert h.on("ledger") == []


def test_an_outcome_closes_its_url_in_the_ledger_with_everything_it_reported() -> None:
    known = {"r": "run-2", "d": 1, "c": 3, "o": 3, "e": '"v1"', "m": "old", "s": 200, "t": NOW.isoformat()}
    done = FetchOutcome(
        url=JOB_URL + "?x",
        canonical_url=JOB_URL,
        host="a.test",
        depth=1,
        job_id="job",
        run_id="run-2",
        outcome="failed",
        status=503,
        reason="http_503",
        links=4,
        refused={"offsite_host": 2},
        links_through={0: 7},
    )

    async def scenario(h: Harness, agent: Any) -> None:
        h.frontier.urls.data[f"job|{JOB_URL}"] = known
        await feed(agent, done)

    h = frontier_run(scenario)
    [closed] = ledger_entries(h)
    assert closed.model_dump(exclude={"schema_version"}) == LedgerEntry(
        type="closed",
        run_id="run-2",
        job_id="job",
        url=JOB_URL + "?x",
        canonical_url=JOB_URL,
        host="a.test",
        outcome="failed",
        status=503,
        reason="http_503",
        count=4,
        refused={"offsite_host": 2},
        links_through={0: 7},
        origin=(1, 0),
    ).model_dump(exclude={"schema_version"})
    # A failure keeps the validators of the last response, and the status is the new one.
    assert h.frontier.urls.data[f"job|{JOB_URL}"] == {**known, "s": 503, "o": 0}


def test_a_fetch_without_last_modified_forgets_the_old_one_a_304_with_one_replaces_it() -> None:
    known = {"e": '"v1"', "m": "old", "t": "2026-11-01T00:00:00+00:00", "r": "run0", "d": 1}
    fetched = frontier.fetched(known, outcome("fetched", status=200, etag='"v2"', last_modified=None), 7)
    assert "m" not in fetched
    not_modified = frontier.fetched(known, outcome("not_modified", status=304, last_modified="new"), 8)
    assert (not_modified["e"], not_modified["m"]) == ('"v1"', "new")


# --- the frontier agent: generating a job's known URLs -------------------------------------------


def known_entry(**fields: Any) -> dict[str, Any]:
    return {"r": "run-1", "d": 2, "c": 4, "o": 4, "s": 200, "t": datetime.now(UTC).isoformat(), **fields}


def generate_command(**fields: Any) -> FrontierCommand:
    values: dict[str, Any] = {"job_id": "job", "run_id": "run-2", "scope": JOB_SCOPE, **fields}
    return FrontierCommand(**values)


async def put_command(agent: Any, command: FrontierCommand, partition: int = 1) -> None:
    await agent.put(command.to_bytes(), key=None, partition=partition)


def test_generating_turns_each_known_url_into_one_indexed_candidate_with_its_validators() -> None:
    urls = [f"http://a.test/{n}" for n in range(3)]

    async def scenario(h: Harness, agent: Any) -> None:
        h.frontier.urls.data["job|http://a.test/0"] = "not an entry"  # skipped, the rest still generated
        for n, url in enumerate(urls[1:], 1):
            h.frontier.urls.data[f"job|{url}"] = known_entry(e=f'"e{n}"', m=f"m{n}")
        h.frontier.urls.data["job|http://a.test/3?q=a|b"] = known_entry()  # a | in the URL itself
        await feed(agent, job_link(JOB_URL + "0"))  # offset 0: nothing known of it
        await put_command(agent, generate_command())  # offset 1

    h = frontier_run(scenario)
    generated = [c for c in candidates(h) if c.reason == "recrawl"]
    assert [(c.canonical_url, c.url, c.host, c.depth, c.job_id, c.run_id) for c in generated] == [
        (url, url, "a.test", 2, "job", "run-2") for url in [*urls[1:], "http://a.test/3?q=a|b"]
    ]
    assert [(c.index, c.origin) for c in generated] == [(0, (1, 1)), (1, (1, 1)), (2, (1, 1))]
    assert [(c.etag, c.last_modified) for c in generated] == [('"e1"', "m1"), ('"e2"', "m2"), (None, None)]
    entry = h.frontier.urls.data["job|http://a.test/1"]
    assert (entry["e"], entry["m"], entry["s"], entry["r"], entry["c"], entry["o"]) == (
        '"e1"',
        "m1",
        200,
        "run-2",
        [1, 0],
        1,
    )
    [done] = [e for e in ledger_entries(h) if e.type == "generated"]
    assert (done.run_id, done.job_id, done.partition) == ("run-2", "job", 1)


def test_generating_skips_urls_this_run_reached_but_a_replayed_command_generates_again() -> None:
    async def scenario(h: Harness, agent: Any) -> None:
        for name in ("a", "b", "c"):
            h.frontier.urls.data[f"job|http://a.test/{name}"] = known_entry()
        await feed(agent, job_link("http://a.test/a"))  # offset 0: reached by a link of this run
        await put_command(agent, generate_command())  # offset 1: b and c
        agent.sent_offset = 1  # replayed after a crash
        await put_command(agent, generate_command())

    h = frontier_run(scenario)
    assert [(c.canonical_url, c.reason, c.origin, c.index) for c in candidates(h)] == [
        ("http://a.test/a", "link", (1, 0), 0),
        ("http://a.test/b", "recrawl", (1, 1), 0),
        ("http://a.test/c", "recrawl", (1, 1), 1),
        ("http://a.test/b", "recrawl", (1, 1), 0),
        ("http://a.test/c", "recrawl", (1, 1), 1),
    ]
    assert h.on("dead_letter") == []


def test_generating_goes_on_a_chunk_at_a_time_through_the_links_partition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(frontier, "GENERATE_CHUNK", 2)
    urls = [f"http://a.test/{n}" for n in range(5)]

    async def scenario(h: Harness, agent: Any) -> None:
        for url in urls:
            h.frontier.urls.data[f"job|{url}"] = known_entry()
        await put_command(agent, generate_command(), partition=2)
        for sent in range(4):  # each next chunk, to the same partition, as Kafka would (2 expected)
            if len(h.on("links")) > sent:
                await agent.put(h.on("links")[sent][1], key=None, partition=2)

    h = frontier_run(scenario)
    assert [c.canonical_url for c in candidates(h)] == urls
    assert [c.index for c in candidates(h)] == [0, 1, 0, 1, 0]
    more = [FrontierCommand.model_validate_json(value) for _, value in h.on("links")]
    assert [(c.after, c.job_id, c.run_id) for c in more] == [
        (f"job|{urls[1]}", "job", "run-2"),
        (f"job|{urls[3]}", "job", "run-2"),
    ]
    assert h.producer.partitions["links"] == [2, 2]
    done = [e for e in ledger_entries(h) if e.type == "generated"]
    assert [(e.partition, e.job_id) for e in done] == [(2, "job")]


def test_generating_forgets_gone_urls_in_the_commands_partition_and_counts_them() -> None:
    async def scenario(h: Harness, agent: Any) -> None:
        h.frontier.urls.data["job|http://a.test/gone"] = known_entry(s=410)
        await put_command(agent, generate_command(), partition=2)

    h, n = counted("streams_frontier_refused_total", scenario, {"reason": "expired"})
    assert n == 1
    assert "job|http://a.test/gone" not in h.frontier.urls.data
    tombstones = [(partition, key) for _topic, partition, key, value in h.producer.changelog if value is None]
    assert tombstones == [(2, b'"job|http://a.test/gone"')]


def test_an_invalid_generate_command_is_dead_lettered_as_such() -> None:
    async def scenario(h: Harness, agent: Any) -> None:
        await agent.put(b'{"schema_version":1,"type":"generate","job_id":""}', key=None, partition=1)

    assert dead_letter_reasons(frontier_run(scenario)) == ["invalid_command"]


# --- the frontier agent: links without a scope ----------------------------------------------------


def test_a_request_and_a_replayed_request_are_counted_and_the_time_is_stored_with_its_zone() -> None:
    plain = link(job_id="", run_id="")

    async def scenario(h: Harness, agent: Any) -> None:
        await agent.put(plain.to_bytes(), key=A.encode(), partition=0)
        agent.sent_offset = 0
        await agent.put(plain.to_bytes(), key=A.encode(), partition=0)

    replays = sample("streams_replays_total", agent="plan_requests")
    requests = sample("streams_requests_total", reason="link")
    h = frontier_run(scenario)
    assert sample("streams_replays_total", agent="plan_requests") - replays == 1
    assert sample("streams_requests_total", reason="link") - requests == 2
    assert datetime.fromisoformat(h.frontier.seen[A]["t"]).utcoffset() == timedelta(0)


def test_generating_reads_and_forgets_the_known_urls_of_the_commands_partition(tmp_path: Path) -> None:
    """With RocksDB (a store per partition): the known URLs a link wrote in partition 2 are what
    a generate command of partition 2 finds, and a gone one is deleted from that partition."""
    settings = Settings(
        _env_file=None,
        kafka=KafkaSettings(topic_prefix="unit", partitions=3),
        streams=StreamsSettings(app_id="unit-streams", store="rocksdb://", data_dir=tmp_path),
    )

    async def scenario(h: Harness, agent: Any) -> None:
        await feed(agent, job_link(run_id="run-1"), partition=2)
        await feed(agent, job_link("http://a.test/gone", run_id="run-1"), partition=2)
        gone = outcome("failed", url="http://a.test/gone", canonical_url="http://a.test/gone", host="a.test")
        await feed(
            agent, gone.model_copy(update={"job_id": "job", "run_id": "run-1", "status": 404}), partition=2
        )
        await put_command(agent, generate_command(), partition=2)
        await put_command(agent, generate_command(run_id="run-3"), partition=2)

    h = run(lambda h: h.frontier.agent, scenario, settings)
    assert [(c.run_id, c.canonical_url, c.reason) for c in candidates(h)] == [
        ("run-1", JOB_URL, "link"),
        ("run-1", "http://a.test/gone", "link"),
        ("run-2", JOB_URL, "recrawl"),
        ("run-3", JOB_URL, "recrawl"),  # the gone URL was deleted by run-2's generate
    ]


def test_each_table_reports_its_key_count_under_its_name() -> None:
    async def scenario(h: Harness, agent: Any) -> None:
        await agent.put(link(job_id="", run_id="").to_bytes(), key=A.encode(), partition=0)
        await feed(agent, job_link())
        await feed(agent, job_link("http://a.test/q"))
        for table in ("frontier_seen", "frontier_urls"):
            metrics.TABLE_KEYS.labels(table).set(-1)
        for task in h.app._app_tasks:
            reporter = inspect.unwrap(task)  # the timer's function
            if reporter.__qualname__.endswith("report_table_keys"):
                await reporter()

    frontier_run(scenario)
    assert sample("streams_table_keys", table="frontier_seen") == 1
    assert sample("streams_table_keys", table="frontier_urls") == 2
