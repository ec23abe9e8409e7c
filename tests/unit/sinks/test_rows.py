"""Rows from records, decoders of each family, COPY text, page rounds (no services)."""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from crawlstream.errors import RecordError
from crawlstream.records import Enrichment, PageChangeEvent, PageEvent, PageRecord
from sinks.base import SinkBatch, SinkRecord, SinkUnavailable
from sinks.pages import CopyReader, PostgresPageSink, copy_chunks, rounds
from sinks.rows import (
    PAGE_COLUMNS,
    STAGE_COLUMNS,
    copy_text,
    decode_page_event,
    decode_stats,
    page_copy_line,
    page_row,
    simhash_from_db,
    simhash_to_db,
    url_hash,
)
from sinks.tables import pages
from tests.unit.sinks.conftest import page

MakePage = Callable[..., PageRecord]


def test_bare_page_record_is_read_as_a_new_page_without_enrichment(make_page: MakePage) -> None:
    record = make_page("https://a.test/x")

    decoded = decode_page_event(record.to_bytes())

    assert decoded == PageEvent(change="new", page=record, enrichment=None)


def test_page_event_is_read_as_is(make_page: MakePage) -> None:
    event = PageEvent(change="changed", page=make_page("https://a.test/x"), enrichment=Enrichment(text="t"))

    assert decode_page_event(event.to_bytes()) == event


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "null_value"),
        (b"{nope", "invalid_json"),
        (b'{"change": "new", "page": {"url": "x"}}', "invalid_record"),
        (b"[1, 2]", "invalid_record"),
    ],
)
def test_bad_page_messages_raise_record_errors(raw: bytes | None, reason: str) -> None:
    with pytest.raises(RecordError) as caught:
        decode_page_event(raw)
    assert caught.value.reason == reason


def test_stats_decoder_names_the_bad_field() -> None:
    with pytest.raises(RecordError, match="domain"):
        decode_stats(json.dumps({"window": "tumbling_1m"}).encode())


@pytest.mark.parametrize("value", [0, 1, 2**63 - 1, 2**63, 2**64 - 1])
def test_simhash_round_trips_through_a_signed_bigint(value: int) -> None:
    stored = simhash_to_db(value)
    assert stored is not None
    assert -(2**63) <= stored < 2**63
    assert simhash_from_db(stored) == value


def test_simhash_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="unsigned 64-bit"):
        simhash_to_db(2**64)


def test_page_row_maps_page_and_enrichment(make_page: MakePage) -> None:
    record = make_page("https://a.test/x?utm_source=n", canonical_url="https://a.test/x", body="<p>b</p>")
    enrichment = Enrichment(text="b", title="Better", language="en", word_count=1, simhash=2**64 - 1)
    event = PageEvent(change="new", page=record, enrichment=enrichment, near_duplicate_of="https://a.test/y")

    row = dict(zip(STAGE_COLUMNS, page_row(event), strict=True))

    assert row["url"] == "https://a.test/x"  # the canonical URL is the key, not the requested one
    assert row["url_hash"] == hashlib.sha256(b"https://a.test/x").digest() == url_hash("https://a.test/x")
    assert row["title"] == "Better"
    assert "body_hash" not in row  # the server computes it (sinks/pages.py BODY_HASH)
    assert row["body"] == "<p>b</p>"
    assert row["simhash"] == -1
    assert (row["language"], row["text"], row["near_duplicate_of"]) == ("en", "b", "https://a.test/y")
    assert set(PAGE_COLUMNS) <= {c.name for c in pages.columns}
    assert set(STAGE_COLUMNS) == {"url_hash", *PAGE_COLUMNS, "event_key", "event_tail"} - {"body_hash"}


def payload_json(event: PageEvent) -> dict[str, Any]:
    """The payload fields of a page's event that the sink stages (sinks/pages.py wraps them with
    type, version, fetched_at and body_hash from the stored row)."""
    row = dict(zip(STAGE_COLUMNS, page_row(event), strict=True))
    assert row["event_key"].isascii()  # any JVM charset reads it alike
    assert row["event_tail"].isascii()
    payload: dict[str, Any] = json.loads(f'{{"url":{row["event_key"]},{row["event_tail"]}}}')
    return payload


HOSTILE_URL = 'https://\u00e9x.test/a"b\\c\u2028d/\U0001f600?q=1\t2'


def test_page_event_parts_are_ascii_json_with_what_subscribers_read(make_page: MakePage) -> None:
    record = make_page(HOSTILE_URL, status=404, run_id='run "1"\u00e9', body="<p>b</p>")
    event = PageEvent(
        change="changed", page=record, enrichment=Enrichment(content_hash="c\u2028", simhash=2**64 - 2)
    )

    payload = payload_json(event)

    assert payload == {
        "url": HOSTILE_URL,
        "status": 404,
        "content_hash": "c\u2028",
        "simhash": "fffffffffffffffe",
        "run_id": 'run "1"\u00e9',
    }
    stored = {"version": 3, "fetched_at": record.fetched_at.isoformat(), "body_hash": "ab", "type": "gone"}
    assert PageChangeEvent.model_validate({**payload, **stored}).simhash == "fffffffffffffffe"


def test_page_event_leaves_out_what_a_page_without_enrichment_lacks(make_page: MakePage) -> None:
    payload = payload_json(PageEvent(change="new", page=make_page("https://a.test/x")))
    assert "simhash" not in payload  # as null fields were left out before
    assert payload["content_hash"] == ""


@pytest.mark.parametrize(
    "event",
    [
        PageEvent(change="new", page=page("https://a.test/plain")),
        PageEvent(
            change="changed",
            page=page(
                HOSTILE_URL,
                title="t\tt",
                body="<p>\\N</p>\r\n\tx",
                referrer="\\N",
                content_type="text/html",
                run_id="r\\1",
                job_id="j\n",
                fetch_latency_s=0.125,
                body_truncated=True,
                canonical_link="https://a.test/c",
                kind="metadata",
            ),
            enrichment=Enrichment(text="a\nb", title="", language=None, word_count=2, simhash=0),
            duplicate_of="https://a.test/d\\",
            near_duplicate_of="https://a.test/n",
            near_distance=3,
        ),
        PageEvent(
            change="new",
            page=page("https://a.test/e", title="T", canonical_link="https://a.test/own"),
            enrichment=Enrichment(title="E", language="de", canonical_link=None, simhash=2**63),
        ),
        # Control characters pass as they are (the server refuses NUL itself: the record is
        # dead-lettered, sinks/postgres.py).
        PageEvent(
            change="new", page=page("https://a.test/m", title="a\x01b", body="x\x00\ty", referrer=None)
        ),
        PageEvent(change="new", page=page("https://a.test/n", title="\x01", referrer="\x01\x00")),
    ],
)
def test_page_copy_line_is_the_copy_text_of_the_page_row(event: PageEvent) -> None:
    assert page_copy_line(event) == copy_text([page_row(event)])
    assert page_copy_line(event).count("\t") == len(STAGE_COLUMNS) - 1  # tabs inside values escaped


def test_nul_characters_in_content_are_stored_as_replacement_characters(make_page: MakePage) -> None:
    record = make_page("https://a.test/nul", body="<title>a\x00b</title>x\x00y", title="a\x00b")
    event = PageEvent(change="new", page=record, enrichment=Enrichment(text="x\x00y"))

    row = dict(zip(STAGE_COLUMNS, page_row(event), strict=True))

    assert (row["body"], row["title"], row["text"]) == (
        "<title>a\ufffdb</title>x\ufffdy",
        "a\ufffdb",
        "x\ufffdy",
    )
    assert "\x00" not in copy_text([page_row(event)])
    assert page_copy_line(event) == copy_text([page_row(event)])


def test_copy_text_escapes_and_marks_nulls() -> None:
    when = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    text = copy_text([("a\tb\nc\\d", None, True, 3, when, b"\x01\xff")])
    assert text == "a\\tb\\nc\\\\d\t\\N\tt\t3\t2026-11-25T10:00:00+00:00\t\\\\x01ff\n"


def test_copy_reader_yields_the_copy_text_a_chunk_of_rows_per_read(make_page: MakePage) -> None:
    events = [PageEvent(change="new", page=make_page(f"https://a.test/{i}", title="a\tb")) for i in range(5)]
    reader = CopyReader(copy_chunks(events, chunk_rows=2))

    chunks = [reader.read(8192) for _ in range(4)]

    assert chunks[3] == b""  # the end, however often read() is called
    assert [c.count(b"\n") for c in chunks[:3]] == [2, 2, 1]
    assert b"".join(chunks).decode() == copy_text([page_row(e) for e in events])


def test_copy_reader_sends_lone_surrogates_for_the_server_to_reject(make_page: MakePage) -> None:
    # An exception inside read() would abort COPY as a connection-level error, not a bad row.
    event = PageEvent(change="new", page=make_page("https://a.test/x", title="a\ud800b"))
    assert b"\ta\xed\xa0\x80b\t" in CopyReader(copy_chunks([event])).read()


def test_rounds_keep_each_url_once_per_round_in_kafka_order(make_page: MakePage) -> None:
    def rec(url: str, offset: int) -> SinkRecord[PageEvent]:
        return SinkRecord(PageEvent(change="new", page=make_page(url)), "t", 0, offset)

    batch = [rec("https://a/1", 0), rec("https://a/2", 1), rec("https://a/1", 2), rec("https://a/1", 3)]

    assert [[r.offset for r in r_] for r_ in rounds(batch)] == [[0, 1], [2], [3]]


def test_unreachable_database_raises_sink_unavailable() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = PostgresPageSink(f"postgresql://nobody@127.0.0.1:{port}/none", connect_timeout_s=2)

    with pytest.raises(SinkUnavailable, match="cannot connect"):
        sink.write(SinkBatch("g", [], {("t", 0): 1}))
