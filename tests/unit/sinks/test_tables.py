"""Row building from PageRecord and in-batch dedup (no services)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from crawlstream.records import PageRecord
from sinks.base import SinkBatch, SinkRecord, SinkUnavailable
from sinks.postgres import PostgresPageSink, first_per_url
from sinks.tables import PAGE_COLUMNS, page_row, pages

MakePage = Callable[..., PageRecord]


def test_page_row_maps_every_written_column(make_page: MakePage) -> None:
    record = make_page(
        "https://a.test/x?utm_source=n",
        canonical_url="https://a.test/x",
        final_url="https://a.test/final",
        status=301,
        content_type="text/html",
        encoding="utf-8",
        title="T",
        body="<p>b</p>",
        body_truncated=True,
        body_bytes=12345,
        fetch_latency_s=0.25,
        depth=2,
        referrer="https://a.test/",
        job_id="job",
        run_id="run",
    )

    row = dict(zip(PAGE_COLUMNS, page_row(record), strict=True))

    assert row == {
        "url": "https://a.test/x",  # the canonical URL is the key, not the requested one
        "final_url": "https://a.test/final",
        "status": 301,
        "content_type": "text/html",
        "encoding": "utf-8",
        "title": "T",
        "body": "<p>b</p>",
        "body_truncated": True,
        "body_bytes": 12345,
        "fetched_at": datetime(2026, 11, 25, 10, 0, tzinfo=UTC),
        "fetch_latency_s": 0.25,
        "depth": 2,
        "referrer": "https://a.test/",
        "job_id": "job",
        "run_id": "run",
    }


def test_server_stamped_columns_are_not_written() -> None:
    assert set(c.name for c in pages.columns) - set(PAGE_COLUMNS) == {"first_seen", "stored_at"}


def test_first_per_url_keeps_the_first_record_of_each_url(make_page: MakePage) -> None:
    records = [
        SinkRecord(make_page("https://a.test/1", title="first"), "t", 0, 10),
        SinkRecord(make_page("https://a.test/2"), "t", 1, 4),
        SinkRecord(make_page("https://a.test/1", title="second"), "t", 2, 7),
    ]

    kept = first_per_url(records)

    assert [(r.page.canonical_url, r.page.title, r.offset) for r in kept] == [
        ("https://a.test/1", "first", 10),
        ("https://a.test/2", "", 4),
    ]


def test_unreachable_database_raises_sink_unavailable() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = PostgresPageSink(f"postgresql://nobody@127.0.0.1:{port}/none", connect_timeout_s=2)

    with pytest.raises(SinkUnavailable, match="cannot connect"):
        sink.write(SinkBatch("g", [], {("t", 0): 1}))
