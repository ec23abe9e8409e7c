"""PostgresTouchSink: ``<prefix>.pages.touches`` (PageTouch) into ``pages.last_seen`` only.

A touch is a recrawl whose content did not change: no version, no outbox event. The UPDATE only
moves ``last_seen`` forward, so a replayed touch changes no row. A touch for a URL that is not in
``pages`` yet (its page event is on another topic and may come later) is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import psycopg2.extras

from crawlstream.records import PageTouch
from sinks.base import SinkRecord
from sinks.postgres import Cursor, PostgresSink

TOUCH = (
    "UPDATE pages AS p SET last_seen = t.seen FROM (VALUES %s) AS t(url, seen) "
    "WHERE p.url = t.url AND p.last_seen < t.seen RETURNING 1"
)


class PostgresTouchSink(PostgresSink[PageTouch]):
    application_name = "crawlstream-sink-touches"

    def apply(self, cur: Cursor, records: Sequence[SinkRecord[PageTouch]]) -> int:
        latest: dict[str, datetime] = {}
        for record in records:
            touch = record.value
            if touch.canonical_url not in latest or latest[touch.canonical_url] < touch.fetched_at:
                latest[touch.canonical_url] = touch.fetched_at
        rows = sorted(latest.items())  # a fixed lock order between concurrent workers
        template = "(%s, %s::timestamptz)"
        found = psycopg2.extras.execute_values(cur, TOUCH, rows, template=template, fetch=True)
        return len(found)
