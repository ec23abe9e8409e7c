"""Debezium on the stack: outbox rows become page events; the raw ``pages`` stream stays.

The page sink writes with this test's URLs; the outbox connector (EventRouter) must publish one
event per page change on ``outbox.event.page`` (key: URL, header eventType, payload JSON with the
version), and the pages connector the raw envelope on ``cdc.public.pages``. A touch parked before
its page produces neither (its time is in the page's insert). A recrawl with the same body
produces neither: once a later sentinel change has arrived, both topics are read to
their end and hold nothing else for these URLs. Order is checked per URL (the events topic has
several partitions, keyed by URL).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crawlstream.records import Enrichment, PageChangeEvent, PageEvent, PageTouch
from crawlstream.settings import Settings
from crawlstream.topics import catalog
from sinks.base import SinkBatch, SinkRecord
from sinks.pages import PostgresPageSink
from sinks.rows import body_hash, url_hash
from sinks.touches import PostgresTouchSink
from tests.integration.sinks_support import Tail, owner, page, settings, tag

__all__ = ["owner", "settings", "tag"]  # fixtures

pytestmark = pytest.mark.integration


def ours(tag: str, messages: list[Any]) -> list[Any]:
    return [m for m in messages if m.key() is not None and f"{tag}.invalid".encode() in m.key()]


def ours_raw(tag: str, messages: list[Any]) -> list[Any]:
    """Raw change events are keyed by the primary key, the URL's sha256 (migration 0006)."""
    return [m for m in messages if f"{tag}.invalid".encode() in (m.value() or b"")]


def test_one_page_event_per_change_and_none_for_an_unchanged_recrawl(
    settings: Settings, owner: Any, tag: str
) -> None:
    topics = catalog(settings)
    events, raw = Tail(settings, topics.page_events.name), Tail(settings, topics.cdc_pages.name)
    a, b, sentinel = (f"https://{tag}.invalid/{name}" for name in ("a", "b", "sentinel"))
    # Not ASCII: the event's JSON escapes it, Debezium must give the same URL back as key and value.
    unicode = f"https://{tag}.invalid/uni-\u00e9-\U0001f600-\u2028"
    sink = PostgresPageSink.from_settings(settings)
    offset = 0

    def write(*pages: PageEvent) -> None:
        nonlocal offset
        records = [SinkRecord(p, "t", 0, offset + i) for i, p in enumerate(pages)]
        offset += len(pages)
        sink.write(SinkBatch(tag, records, {("t", 0): offset}))

    touches = PostgresTouchSink.from_settings(settings)
    parked_at = datetime.now(UTC) + timedelta(minutes=5)  # later than the page's fetch
    try:
        # A touch of b before b's page: parked, folded into b's insert; no event of its own.
        touch = PageTouch(canonical_url=b, fetched_at=parked_at, status=200)
        touches.write(SinkBatch(tag, [SinkRecord(touch, "touches", 0, 0)], {("touches", 0): 1}))
        write(
            PageEvent(change="new", page=page(a, body="1")),
            PageEvent(change="new", page=page(b, body="b")),
            PageEvent(change="new", page=page(unicode, body="\u00fc\u20ac\U0001f600", run_id='r"\\1')),
        )
        big = Enrichment(text="2", simhash=2**64 - 2)  # over the signed 64-bit range
        write(PageEvent(change="changed", page=page(a, body="2"), enrichment=big))
        write(PageEvent(change="new", page=page(b, body="b")))  # recrawl, same body
        write(PageEvent(change="changed", page=page(a, body="gone", status=404)))
        write(PageEvent(change="new", page=page(sentinel)))

        def has_sentinel(messages: list[Any]) -> bool:
            return any(m.key() == sentinel.encode() for m in messages)

        events.until(has_sentinel, 60, "the sentinel's page event")
        got = ours(tag, events.drain())
        envelopes = ours_raw(
            tag,
            raw.until(
                lambda ms: any(sentinel.encode() in (m.value() or b"") for m in ms),
                60,
                "the sentinel's raw change event",
            ),
        )
        envelopes = ours_raw(tag, raw.drain())
    finally:
        sink.close()
        touches.close()
        events.close()
        raw.close()

    summary = [
        (m.key().decode(), dict(m.headers() or [])["eventType"].decode(), json.loads(m.value())["version"])
        for m in got
    ]
    assert sorted(summary, key=lambda s: s[0]) == [  # stable sort: Kafka order per URL
        (a, "created", 1),
        (a, "changed", 2),
        (a, "gone", 3),
        (b, "created", 1),
        (sentinel, "created", 1),
        (unicode, "created", 1),
    ]
    payload = json.loads(next(m for m in got if m.key() == a.encode()).value())
    assert payload["url"] == a
    assert payload["type"] == "created"  # the payload is expanded JSON, not an escaped string
    assert set(payload) >= {"fetched_at", "body_hash", "status", "run_id"}
    changed = next(m for m in got if dict(m.headers())["eventType"] == b"changed")
    assert json.loads(changed.value())["simhash"] == "fffffffffffffffe"
    odd = next(m for m in got if m.key() == unicode.encode())
    assert PageChangeEvent.model_validate_json(odd.value()).model_dump(include={"url", "run_id", "type"}) == {
        "url": unicode,
        "run_id": 'r"\\1',
        "type": "created",
    }
    # The server hashes the body's UTF-8 bytes, as rows.body_hash does.
    assert json.loads(odd.value())["body_hash"] == body_hash("\u00fc\u20ac\U0001f600")
    # The event id (header id) is a UUID, the same whenever Debezium re-sends this event.
    assert all(uuid.UUID(dict(m.headers())["id"].decode()) for m in got)
    assert len({dict(m.headers())["id"] for m in got}) == len(got)

    # One transaction writes its rows in url_hash order (sinks/pages.py): order holds per URL only.
    changes = sorted((json.loads(m.value()) for m in envelopes), key=lambda e: str(e["after"]["url"]))
    assert [(e["op"], e["after"]["url"], e["after"]["version"]) for e in changes] == [
        ("c", a, 1),
        ("u", a, 2),
        ("u", a, 3),
        ("c", b, 1),
        ("c", sentinel, 1),
        ("c", unicode, 1),
    ]
    assert changes[0]["source"]["table"] == "pages"
    first_of_a = next(m for m in envelopes if json.loads(m.value())["after"]["url"] == a)
    assert json.loads(first_of_a.key()) == {"url_hash": url_hash(a).hex()}
    assert datetime.fromisoformat(changes[3]["after"]["last_seen"]) == parked_at  # b's parked touch
    assert changes[0]["before"] is None
