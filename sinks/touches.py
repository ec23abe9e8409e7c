"""PostgresTouchSink: ``<prefix>.pages.touches`` (PageTouch) into ``pages.last_seen`` only.

A touch is a recrawl whose content did not change: no version, no outbox event. The UPDATE only
moves ``last_seen`` forward, so a replayed touch changes no row.

A touch for a URL that has no ``pages`` row yet (its page event is on another topic, read by
another worker, and may come later) is *parked* in ``page_touches_pending`` (latest time per URL);
the page sink's upsert deletes the parked touches of the URLs it stages and folds them into the
``last_seen`` of the row it inserts (sinks/pages.py). Nothing is lost and nothing applied twice,
because the two never miss each other: only the page sink inserts ``pages`` rows, always in a
statement that also deletes from ``page_touches_pending`` and so holds ROW EXCLUSIVE on it until
commit, taken before that statement's snapshot. A touch batch with URLs missing from ``pages``
first takes ``LOCK page_touches_pending IN SHARE ROW EXCLUSIVE MODE`` (conflicts with that mode
and with itself), before it locks any page row (so no deadlock): it waits for page sinks that
may be inserting those URLs to commit, and page sinks that start later wait for it. Its UPDATE
and its parking INSERT (a ``pages`` check in the same statement) then see every page row that
exists, so a touch is either applied to its page or parked where the page's insert will find it.
Batches whose URLs all have rows take no lock. Counted as ``touches_parked`` (see
:meth:`~sinks.postgres.PostgresSink.take_counts`; the page sink counts ``touches_folded``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg2.extras

from crawlstream.records import PageTouch
from sinks.base import SinkRecord
from sinks.postgres import Cursor, PostgresSink
from sinks.tables import url_hash_sql

# Rows are found by url_hash (the key; url itself is not indexed: migration 0006).
MISSING = (
    "SELECT t.url FROM unnest(%s::text[]) AS t(url) "  # noqa: S608 - our own SQL, no data
    f"WHERE NOT EXISTS (SELECT 1 FROM pages p WHERE p.url_hash = {url_hash_sql('t.url')})"
)
LOCK_PENDING = "LOCK TABLE page_touches_pending IN SHARE ROW EXCLUSIVE MODE"
# The UPDATE's join decides its row order; taking the row locks first in key order, as the page
# upsert takes them (ORDER BY url_hash), keeps the two sinks from deadlocking on shared pages.
LOCK_ROWS = (
    "SELECT 1 FROM pages WHERE url_hash = ANY(ARRAY("  # noqa: S608
    f"SELECT {url_hash_sql('u')} FROM unnest(%s::text[]) AS u)) ORDER BY url_hash FOR UPDATE"
)
TOUCH = (
    "UPDATE pages AS p SET last_seen = t.seen FROM (VALUES %s) AS t(url, seen) "  # noqa: S608
    f"WHERE p.url_hash = {url_hash_sql('t.url')} AND p.last_seen < t.seen RETURNING 1"
)
PARK = (
    "INSERT INTO page_touches_pending AS q (url_hash, url, seen) "  # noqa: S608
    f"SELECT {url_hash_sql('t.url')}, t.url, t.seen FROM (VALUES %s) AS t(url, seen) "
    f"WHERE NOT EXISTS (SELECT 1 FROM pages p WHERE p.url_hash = {url_hash_sql('t.url')}) "
    "ON CONFLICT (url_hash) DO UPDATE SET seen = EXCLUDED.seen WHERE q.seen < EXCLUDED.seen RETURNING 1"
)
TEMPLATE = "(%s, %s::timestamptz)"


class PostgresTouchSink(PostgresSink[PageTouch]):
    application_name = "crawlstream-sink-touches"

    def apply(self, cur: Cursor, records: Sequence[SinkRecord[PageTouch]], prepared: Any = None) -> int:
        latest: dict[str, datetime] = {}
        for record in records:
            touch = record.value
            if touch.canonical_url not in latest or latest[touch.canonical_url] < touch.fetched_at:
                latest[touch.canonical_url] = touch.fetched_at
        rows = sorted(latest.items())  # a fixed lock order between concurrent workers
        cur.execute(MISSING, ([url for url, _ in rows],))
        missing = {url for (url,) in cur.fetchall()}
        if missing:
            cur.execute(LOCK_PENDING)
        cur.execute(LOCK_ROWS, ([url for url, _ in rows],))  # key order, as the page upsert
        found = psycopg2.extras.execute_values(cur, TOUCH, rows, template=TEMPLATE, fetch=True)
        if missing:
            park = [row for row in rows if row[0] in missing]
            parked = psycopg2.extras.execute_values(cur, PARK, park, template=TEMPLATE, fetch=True)
            self.count("touches_parked", len(parked))
        return len(found)
