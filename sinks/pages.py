"""PostgresPageSink: page events into ``pages``, ``page_versions`` and ``outbox``, one transaction.

Reads what :mod:`sinks.worker` decodes from ``<prefix>.pages.unique`` (PageEvent, or a bare
PageRecord during the switch-over; see :mod:`sinks.rows`). Per batch: the rows are COPYed into a
temporary staging table (measured faster than a multi-row INSERT: bench/bench_sink.py), then
one statement upserts ``pages`` and, for each row that was inserted or whose body changed,
adds a ``page_versions`` row and an ``outbox`` row (aggregate ``page``, type created / changed /
gone) for Debezium's EventRouter. An unchanged page is left alone: no UPDATE, so no change event.
Outbox rows are deleted again in the same transaction (the WAL keeps the insert). The payload's
``simhash`` is 16 hex digits: an unsigned 64-bit number fits neither a JSON double nor the
signed 64-bit integer Debezium's payload expansion maps JSON numbers to.
"""

from __future__ import annotations

from collections.abc import Sequence

from crawlstream.records import PageEvent
from sinks.base import SinkRecord
from sinks.postgres import Cursor, PostgresSink
from sinks.rows import PAGE_COLUMNS, copy_text, page_row

_COLS = ", ".join(PAGE_COLUMNS)
CREATE_STAGE = (  # built from our own column names, as every statement here
    "CREATE TEMPORARY TABLE IF NOT EXISTS page_stage ON COMMIT DELETE ROWS AS SELECT "  # noqa: S608
    f"{_COLS} FROM pages WITH NO DATA"
)
COPY_STAGE = f"COPY page_stage ({_COLS}) FROM STDIN"
_UPDATES = ", ".join(f"{c} = EXCLUDED.{c}" for c in PAGE_COLUMNS if c != "url")
_PAYLOAD = (  # compact: what a subscriber needs to decide whether to fetch the page
    "jsonb_build_object('url', up.url, 'version', up.version, 'status', up.status, "
    "'fetched_at', up.fetched_at, 'body_hash', up.body_hash, 'content_hash', up.content_hash, "
    "'simhash', lpad(to_hex(up.simhash), 16, '0'), 'run_id', up.run_id)"
)
_VERSION_COLUMNS = (
    "url, version, status, title, body, text, body_hash, content_hash, simhash, fetched_at, run_id"
)
# pages.xmax = 0 only on rows this statement inserted; the WHERE skips unchanged bodies. The
# versions and events come from RETURNING (the row as stored), so nothing joins the stage again.
UPSERT = f"""
WITH up AS (
    INSERT INTO pages AS p ({_COLS}, last_seen, last_changed)
    SELECT {_COLS}, fetched_at, fetched_at FROM page_stage
    ON CONFLICT (url) DO UPDATE SET {_UPDATES}, last_seen = EXCLUDED.last_seen,
        last_changed = EXCLUDED.last_changed, version = p.version + 1, stored_at = now()
    WHERE p.body_hash IS DISTINCT FROM EXCLUDED.body_hash
    RETURNING p.*, (p.xmax = 0) AS created
), versions AS (
    INSERT INTO page_versions ({_VERSION_COLUMNS}) SELECT {_VERSION_COLUMNS} FROM up
), events AS (
    INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload)
    SELECT gen_random_uuid(), 'page', up.url, e.type, {_PAYLOAD} || jsonb_build_object('type', e.type)
    FROM up, LATERAL (SELECT CASE WHEN up.created THEN 'created'
                      WHEN up.status IN (404, 410) THEN 'gone' ELSE 'changed' END AS type) e
    RETURNING id
)
SELECT id FROM events
"""  # noqa: S608 - built from our own column names, never from data
CLEAR_OUTBOX = "DELETE FROM outbox WHERE id = ANY(%s::uuid[])"


class PostgresPageSink(PostgresSink[PageEvent]):
    application_name = "crawlstream-sink-pages"

    def prepare(self, cur: Cursor) -> None:
        # lz4 compresses page bodies several times faster than the default pglz (PostgreSQL 14+,
        # when built with lz4; otherwise the server default stays).
        cur.execute(
            "SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)"
        )
        if cur.fetchone() is not None:
            cur.execute("SET default_toast_compression = lz4")
        cur.execute(CREATE_STAGE)

    def apply(self, cur: Cursor, records: Sequence[SinkRecord[PageEvent]]) -> int:
        changed = 0
        for round_ in rounds(records):
            cur.execute("DELETE FROM page_stage")
            self.stage(cur, [page_row(r.value) for r in round_])
            cur.execute(UPSERT)
            ids = [str(row[0]) for row in cur.fetchall()]
            if ids:
                cur.execute(CLEAR_OUTBOX, (ids,))
            changed += len(ids)
        return changed

    def stage(self, cur: Cursor, rows: list[tuple[object, ...]]) -> None:
        """Load the rows into ``page_stage`` (bench/bench_sink.py compares this with INSERT)."""
        cur.copy_expert(COPY_STAGE, _Reader(copy_text(rows)))


def rounds(records: Sequence[SinkRecord[PageEvent]]) -> list[list[SinkRecord[PageEvent]]]:
    """Split a batch so that no URL appears twice in a round; rounds keep Kafka order per URL
    (one upsert cannot touch a row twice)."""
    out: list[list[SinkRecord[PageEvent]]] = []
    seen: dict[str, int] = {}
    for record in records:
        url = record.value.page.canonical_url
        index = seen.get(url, -1) + 1
        seen[url] = index
        if index == len(out):
            out.append([])
        out[index].append(record)
    return out


class _Reader:
    """A file-like object over a str for copy_expert (cheaper than io.StringIO for one read)."""

    def __init__(self, text: str) -> None:
        self._data = text.encode("utf-8")
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._pos + size
        chunk = self._data[self._pos : end]
        self._pos += len(chunk)
        return chunk

    def readline(self, size: int = -1) -> bytes:
        return self.read(size)
