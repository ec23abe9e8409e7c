"""The whole pipeline on the real stack: demo site -> Kafka -> faust -> Postgres -> Debezium.

Each test serves its site on a fresh 127.0.0.1 port, so its canonical URLs are new to the
pipeline's dedup table and to Postgres, and the counts of one run are exact.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from control.demosite import generate_demo_site, serve_directory
from control.run.pipeline import CrawlArgs, PipelineProbe, RunSummary, run_pipeline
from crawlstream.settings import Settings

pytestmark = pytest.mark.e2e


def _crawl(settings: Settings, base_url: str) -> RunSummary:
    args = CrawlArgs(
        start_urls=[f"{base_url}/index.html"],
        allow_private_hosts=[base_url],  # that host, on its port only
        job_id="e2e-demo",
        run_id=uuid.uuid4().hex,
    )
    return run_pipeline(settings, args, timeout_s=180)


def test_demo_site_counts_reconcile_and_a_recrawl_only_touches(
    stack_settings: Settings, tmp_path: Path
) -> None:
    manifest = generate_demo_site(tmp_path / "site", pages=300)
    server, served = serve_directory(tmp_path / "site")
    base_url = served.rstrip("/")
    try:
        first = _crawl(stack_settings, base_url)
        assert first.ok, [c for c in first.checks if not c.ok]
        crawl = first.crawl
        # What the crawler fetched is what the generated site says a crawl must fetch.
        assert crawl["pages_fetched"] == manifest.expected_html_responses
        assert crawl["distinct_canonical_urls"] == manifest.expected_distinct_canonical_urls
        assert crawl["delivery_failures"] == 0
        assert not any("/private/" in url for url in crawl["canonical_urls"])
        # Records produced = pages fetched; unique = distinct URLs; rows = distinct URLs; one create each.
        assert first.raw_records == crawl["pages_fetched"]
        assert first.unique_new == manifest.expected_distinct_canonical_urls
        assert (
            first.duplicates_dropped
            == manifest.expected_html_responses - manifest.expected_distinct_canonical_urls
        )
        assert first.duplicates_dropped > 0  # the site links some pages with tracking parameters
        # Those tracking-parameter refetches are unchanged recrawls: one PageTouch each.
        assert first.touches == first.duplicates_dropped
        assert first.rows_new == first.rows_for_crawl == manifest.expected_distinct_canonical_urls
        assert first.cdc_creates == manifest.expected_distinct_canonical_urls

        second = _crawl(stack_settings, base_url)
        assert second.ok, [c for c in second.checks if not c.ok]
        assert second.raw_records == manifest.expected_html_responses
        assert second.unique_new == 0
        # Nothing changed: every fetch of the recrawl is a PageTouch, none a page event.
        assert second.touches == manifest.expected_html_responses
        assert second.rows_new == 0
        assert second.rows_for_crawl == manifest.expected_distinct_canonical_urls
        assert second.cdc_creates == 0
    finally:
        server.shutdown()
        server.server_close()  # shutdown stops serving; this closes its socket


def test_change_events_carry_the_debezium_envelope(stack_settings: Settings, tmp_path: Path) -> None:
    generate_demo_site(tmp_path / "site", pages=20)
    server, served = serve_directory(tmp_path / "site")
    base_url = served.rstrip("/")
    probe = PipelineProbe(stack_settings)
    cdc = probe.topics.cdc_pages.name
    before = probe.end(cdc)
    try:
        summary = _crawl(stack_settings, base_url)
    finally:
        server.shutdown()
        server.server_close()  # shutdown stops serving; this closes its socket
    assert summary.ok, [c for c in summary.checks if not c.ok]
    events = probe.read_range(cdc, before, probe.end(cdc))
    ours = [json.loads(v) for _k, v in events if v is not None and base_url.encode() in v]
    # Recrawls of a known URL within the run (utm_* variants) are touches: they move last_seen
    # only, which the raw table stream shows as an update of version 1 with unchanged content.
    touches = [e for e in ours if e["op"] == "u"]
    for envelope in touches:
        assert envelope["after"]["version"] == 1
        assert envelope["after"]["last_changed"] == envelope["after"]["fetched_at"]
        assert envelope["after"]["last_seen"] > envelope["after"]["fetched_at"]
    ours = [e for e in ours if e["op"] != "u"]
    assert len(ours) == summary.rows_new > 0
    for envelope in ours:
        assert envelope["op"] == "c"
        assert envelope["before"] is None
        assert envelope["source"]["table"] == "pages"
        assert envelope["source"]["connector"] == "postgresql"
        assert envelope["after"]["url"].startswith(base_url)
        assert envelope["after"]["status"] == 200
