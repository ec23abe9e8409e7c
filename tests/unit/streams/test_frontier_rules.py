"""The frontier's and the ledger's decisions as plain functions (streams/frontier.py,
streams/ledger.py), at their edges: when a URL is due, when a known URL is forgotten, what a
fetch keeps of a URL's validators, which budget refuses a candidate, and what the ledger's
request carries. The agents around them are tested in test_frontier.py and test_frontier_jobs.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crawlstream.errors import RecordError
from crawlstream.records import Budgets, FetchOutcome, LedgerEntry, LinkRecord, Scope
from streams import frontier, ledger

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
