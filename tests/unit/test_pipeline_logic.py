"""Pure parts of the pipeline run: change-event parsing, checks, offsets arithmetic, the catalog."""

from __future__ import annotations

import json

import pytest

from crawlstream import offsets
from crawlstream.pipeline import Check, RunSummary, cdc_created_urls
from crawlstream.settings import load_settings
from crawlstream.topics import catalog


def _event(op: str, url: str | None) -> bytes:
    after = None if url is None else {"url": url, "status": 200}
    return json.dumps({"before": None, "after": after, "op": op, "source": {"table": "pages"}}).encode()


def test_cdc_created_urls_counts_creates_and_snapshot_reads_only() -> None:
    events: list[tuple[bytes | None, bytes | None]] = [
        (b'{"url":"a"}', _event("c", "http://x/a")),
        (b'{"url":"b"}', _event("r", "http://x/b")),
        (b'{"url":"a"}', _event("u", "http://x/a")),
        (b'{"url":"a"}', _event("d", None)),
        (b'{"url":"a"}', None),  # the tombstone after a delete
    ]
    assert cdc_created_urls(events) == ["http://x/a", "http://x/b"]


def test_summary_names_the_stages_that_do_not_reconcile() -> None:
    summary = RunSummary(run_id="r", crawl={})
    summary.checks = [
        Check("crawl", "fetched", 10, 10),
        Check("sink", "rows", 10, 9),
        Check("cdc", "creates", 9, 8),
    ]
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
    ]
    assert len(set(names)) == len(names)
    assert topics.raw_pages.partitions == topics.unique_pages.partitions == 6
    # Pages up to the body cap must fit, and a change event (a JSON-escaped row) even more so.
    raw_limit = int(topics.raw_pages.config["max.message.bytes"])
    assert raw_limit >= 8 * 1024 * 1024
    assert int(topics.cdc_pages.config["max.message.bytes"]) > raw_limit
