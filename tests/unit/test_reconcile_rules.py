"""Reconciliation rules test_pipeline_logic.py leaves open (found by `make mutate`): which crawl
checks apply when, that a killed crawl's raw-topic check fails its own stage, and that a duplicate
check counts the rows it found doubled (the number the failure report shows)."""

from __future__ import annotations

from control.run.reconcile import Check, CrawlCounts, reconcile
from tests.unit.control.run.test_pipeline_logic import URLS, clean, failed

STAGES = ["crawl", "kafka", "streams", "sink", "cdc", "events"]


def failing(counts: object) -> list[Check]:
    return [c for c in reconcile(counts).checks if not c.ok]  # type: ignore[arg-type]


def test_a_single_crawl_process_must_fetch_what_the_site_serves() -> None:
    assert failed(clean(expected_pages=14)) == ["crawl"]
    (check,) = failing(clean(expected_pages=14))
    assert (check.expected, check.actual) == (14, 13)


def test_several_or_killed_crawl_processes_are_not_held_to_the_page_count() -> None:
    urls = frozenset(URLS)
    several = CrawlCounts(pages_fetched=13, records_delivered=13, urls=urls, processes=2)
    killed = CrawlCounts(pages_fetched=13, records_delivered=13, urls=urls, processes=1, killed=1)
    # Processes overlap (or a killed one is run again): fetches are not the site's page count.
    assert reconcile(clean(expected_pages=14, crawl=several)).ok
    assert reconcile(clean(expected_pages=14, crawl=killed)).ok


def test_the_crawl_must_reach_every_url_the_site_serves() -> None:
    assert failed(clean(expected_urls=11)) == ["crawl"]
    (check,) = failing(clean(expected_urls=11))
    assert (check.expected, check.actual) == (11, 10)


def test_delivery_failures_fail_the_crawl() -> None:
    crawl = CrawlCounts(pages_fetched=13, records_delivered=13, urls=frozenset(URLS), delivery_failures=1)
    assert failed(clean(crawl=crawl)) == ["crawl"]


def test_a_killed_crawl_with_fewer_raw_records_than_delivered_fails_kafka() -> None:
    crawl = CrawlCounts(pages_fetched=13, records_delivered=13, urls=frozenset(URLS), killed=1)
    assert reconcile(clean(crawl=crawl, raw_records=13)).ok
    assert failed(clean(crawl=crawl, raw_records=12)) == ["kafka"]
    (check,) = failing(clean(crawl=crawl, raw_records=12))
    assert (check.expected, check.actual, check.at_least) == (13, 12, True)


def test_a_killed_crawls_refetches_are_a_kafka_replay_naming_the_killed_processes() -> None:
    crawl = CrawlCounts(pages_fetched=13, records_delivered=13, urls=frozenset(URLS), killed=2)
    result = reconcile(clean(crawl=crawl, raw_records=16, touch_records=6))
    assert result.ok, failing(clean(crawl=crawl, raw_records=16, touch_records=6))
    ((replay),) = [r for r in result.replays if r.stage == "kafka"]
    assert replay.records == 3
    assert "2 crawl process(es) were killed" in replay.line()


def test_a_duplicate_check_counts_the_rows_found_doubled() -> None:
    creates = dict(clean().cdc_creates)
    events = dict(clean().page_events)
    for url in URLS[:3]:
        creates[url] = creates[url] | {100}
        events[url] = events[url] | {"again"}
    result = reconcile(
        clean(cdc_creates=creates, cdc_create_records=13, page_events=events, page_event_records=13)
    )
    doubled = {c.stage: c.actual for c in result.checks if not c.ok}
    assert doubled == {"cdc": 3, "events": 3}


def test_every_failing_check_names_one_of_the_stages() -> None:
    broken = clean(
        expected_urls=11,
        raw_records=12,
        touch_records=1,
        rows_new_urls=frozenset(URLS[1:]),
        cdc_creates={},
        page_events={},
    )
    stages = {c.stage for c in failing(broken)}
    assert stages == set(STAGES)
    assert failed(broken) == sorted(STAGES)


def _described(checks: list[Check]) -> None:
    for check in checks:
        assert isinstance(check.what, str), check
        assert check.what.strip(), check
    # Within a stage each check says something else: a failed one is told apart in the report.
    pairs = [(c.stage, c.what) for c in checks]
    assert len(pairs) == len(set(pairs)), pairs


def test_every_check_says_what_it_checks() -> None:
    clean_run = reconcile(clean()).checks
    crawl = CrawlCounts(pages_fetched=13, records_delivered=13, urls=frozenset(URLS), killed=1)
    killed_run = reconcile(clean(crawl=crawl)).checks
    # A known site, one crawl process: every check the reconciliation has, the killed branch too.
    assert len(clean_run) == 20
    assert len(killed_run) == 19
    _described(clean_run)
    _described(killed_run)


def test_every_replay_says_why_the_stage_repeated() -> None:
    creates = {u: frozenset({i}) for i, u in enumerate(URLS)}
    events = {u: frozenset({f"id-{i}"}) for i, u in enumerate(URLS)}
    result = reconcile(
        clean(
            touch_records=3 + 36,
            cdc_creates=creates,
            cdc_create_records=12,
            page_events=events,
            page_event_records=11,
        )
    )
    assert result.ok, failing(clean(touch_records=39))
    assert {r.stage: r.records for r in result.replays} == {"streams": 36, "cdc": 2, "events": 1}
    for replay in result.replays:
        assert isinstance(replay.what, str)
        assert replay.what.strip()
        assert replay.line().endswith(f"(at-least-once; {replay.what})")
    # The line the README quotes for a stream worker killed before its commit.
    (streams,) = [r for r in result.replays if r.stage == "streams"]
    readme = "streams: replayed: 36 records (at-least-once; outputs sent again after a restart)"
    assert streams.line() == readme
