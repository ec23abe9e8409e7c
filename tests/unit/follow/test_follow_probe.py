"""follow/probe.py: page events of outbox.event.page, as the follower reads their headers."""

from __future__ import annotations

from follow import follow as follower
from follow.probe import EVENT_ID_HEADER, EVENT_TYPE_HEADER, Record, page_event_ids


def test_page_event_ids_read_the_event_routers_headers() -> None:
    records: list[Record] = [
        (b"http://x/a", b"{}", [("id", b"e1"), ("eventType", b"created")]),
        (b"http://x/a", b"{}", [("id", b"e2"), ("eventType", b"changed")]),
        (b"http://x/b", None, [("id", b"e3"), ("eventType", b"created")]),  # tombstone
        (None, b"{}", [("id", b"e5"), ("eventType", b"created")]),  # no URL: no row's event
        (b"http://x/c", b"{}", [("eventType", b"created"), ("id", b"e4")]),
        (b"http://x/c", b"{}", [("eventType", b"created"), ("id", b"e4")]),  # re-published: kept
        (b"http://x/d", b"{}", [("eventType", b"created")]),  # no id header
    ]
    assert page_event_ids(records) == [
        ("http://x/a", "e1"),
        ("http://x/c", "e4"),
        ("http://x/c", "e4"),
        ("http://x/d", ""),
    ]
    assert page_event_ids(records, "changed") == [("http://x/a", "e2")]


def test_the_follower_and_the_probe_read_the_same_headers() -> None:
    assert (EVENT_TYPE_HEADER, EVENT_ID_HEADER) == ("eventType", "id")
    assert follower._USED_HEADERS == (EVENT_TYPE_HEADER, EVENT_ID_HEADER)
