"""PostgresPageSink: page events into ``pages`` and ``outbox`` (``page_history`` by trigger), one transaction.

Reads what :mod:`sinks.worker` decodes from ``<prefix>.pages.unique`` (PageEvent, or a bare
PageRecord during the switch-over; see :mod:`sinks.rows`). Per batch: the rows are COPYed into a
temporary staging table (measured faster than a multi-row INSERT: bench/bench_sink.py), encoded
a chunk at a time while the server stores the previous chunk; then one statement upserts
``pages`` and adds an ``outbox`` row (aggregate ``page``, type created / changed / gone) for
Debezium's EventRouter for each row that was inserted or whose body changed. An unchanged page
is left alone: no UPDATE, so no change event. Each body is stored once: a new version lives in
``pages`` only; when an update replaces it, a trigger (migrations 0004, 0005) copies the old row to
``page_history`` (the view ``page_versions`` shows both). Outbox rows are deleted again in the
same transaction, by ``ctid`` (the WAL keeps the insert). The payload's ``simhash`` is 16 hex
digits: an unsigned 64-bit number fits neither a JSON double nor the signed 64-bit integer
Debezium's payload expansion maps JSON numbers to.

The same statement folds parked touches (``page_touches_pending``, see :mod:`sinks.touches`) of
the staged URLs into ``last_seen`` and deletes them; ``last_seen`` never moves backwards.

Rows are keyed by ``url_hash`` (sha256 of the URL, computed in the statement: migration 0006), so
a URL of any length is stored. A page whose outbox event would exceed ``outbox.event.page``'s
``max.message.bytes`` (its key and payload both hold the URL) is refused as ``too_large`` before
anything is written: Debezium could not produce that event, and its connector would stop there.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import psycopg2

from crawlstream.deadletters import RECORD_OVERHEAD, check_fits
from crawlstream.records import PageEvent
from crawlstream.settings import Settings
from crawlstream.topics import BROKER_DEFAULT_MAX_MESSAGE_BYTES, catalog
from sinks.base import SinkRecord
from sinks.postgres import Cursor, PostgresSink
from sinks.rows import PAGE_COLUMNS, copy_text, page_row
from sinks.tables import url_hash_sql

_COLS = ", ".join(PAGE_COLUMNS)
CREATE_STAGE = (  # built from our own column names, as every statement here
    "CREATE TEMPORARY TABLE IF NOT EXISTS page_stage ON COMMIT DELETE ROWS AS SELECT "  # noqa: S608
    f"{_COLS} FROM pages WITH NO DATA"
)
COPY_STAGE = f"COPY page_stage ({_COLS}) FROM STDIN"
COPY_CHUNK_ROWS = 64  # rows encoded per read() of COPY: the server stores one while we encode the next
_UPDATES = ", ".join(f"{c} = EXCLUDED.{c}" for c in PAGE_COLUMNS if c != "url")
_STAGED = ", ".join(f"s.{c}" for c in PAGE_COLUMNS)
PAYLOAD = (  # compact: what a subscriber needs to decide whether to fetch the page
    "jsonb_build_object('url', up.url, 'version', up.version, 'status', up.status, "
    "'fetched_at', up.fetched_at, 'body_hash', up.body_hash, 'content_hash', up.content_hash, "
    "'simhash', lpad(to_hex(up.simhash), 16, '0'), 'run_id', up.run_id, 'type', e.type)"
)
# Parked touches of the staged URLs are deleted and folded into last_seen. This statement takes
# ROW EXCLUSIVE on page_touches_pending before its snapshot, which is what orders it against a
# touch sink parking touches (sinks/touches.py). pages.xmax = 0 only on rows this statement
# inserted; the WHERE skips unchanged bodies. The events come from RETURNING (the row as stored),
# so nothing joins the stage again. Result: events written, their ctids, touches folded.
UPSERT = f"""
WITH pending AS (
    DELETE FROM page_touches_pending t USING page_stage s WHERE t.url_hash = {url_hash_sql("s.url")}
    RETURNING t.url_hash, t.seen
), up AS (
    INSERT INTO pages AS p (url_hash, {_COLS}, last_seen, last_changed)
    SELECT h.url_hash, {_STAGED}, GREATEST(s.fetched_at, pending.seen), s.fetched_at
    FROM page_stage s CROSS JOIN LATERAL (SELECT {url_hash_sql("s.url")} AS url_hash) h
    LEFT JOIN pending ON pending.url_hash = h.url_hash
    ORDER BY h.url_hash  -- rows locked in key order, as the touch sink locks them: no deadlock
    ON CONFLICT (url_hash) DO UPDATE SET {_UPDATES}, last_seen = GREATEST(p.last_seen, EXCLUDED.last_seen),
        last_changed = EXCLUDED.last_changed, version = p.version + 1, stored_at = now()
    WHERE p.body_hash IS DISTINCT FROM EXCLUDED.body_hash
    RETURNING p.url, p.version, p.status, p.fetched_at, p.body_hash, p.content_hash, p.simhash,
        p.run_id, (p.xmax = 0) AS created
), events AS (
    INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload)
    SELECT gen_random_uuid(), 'page', up.url, e.type, {PAYLOAD}
    FROM up, LATERAL (SELECT CASE WHEN up.created THEN 'created'
                      WHEN up.status IN (404, 410) THEN 'gone' ELSE 'changed' END AS type) e
    RETURNING ctid
)
SELECT (SELECT count(*) FROM events), (SELECT array_agg(ctid) FROM events)::text,
    (SELECT count(*) FROM pending)
"""  # noqa: S608 - built from our own column names, never from data
# Our own uncommitted rows: nobody else can move them, so their ctids hold until commit.
CLEAR_OUTBOX = "DELETE FROM outbox WHERE ctid = ANY(%s::tid[])"
# The payload's fixed part (field names, version, status, dates, hashes, type) and record headers.
EVENT_FIXED_BYTES = 512


class PostgresPageSink(PostgresSink[PageEvent]):
    application_name = "crawlstream-sink-pages"

    def __init__(
        self,
        dsn: str,
        *,
        connect_timeout_s: int = 10,
        max_event_bytes: int = BROKER_DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        super().__init__(dsn, connect_timeout_s=connect_timeout_s)
        self.max_event_bytes = max_event_bytes  # outbox.event.page's max.message.bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> PostgresPageSink:
        return cls(settings.postgres.dsn(), max_event_bytes=catalog(settings).page_events.max_message_bytes)

    def setup(self, cur: Cursor) -> None:
        self.set_compression(cur)
        cur.execute(CREATE_STAGE)

    @staticmethod
    def set_compression(cur: Cursor) -> None:
        """lz4 compresses page bodies several times faster than the default pglz (PostgreSQL 14+,
        when built with lz4; otherwise the server default stays)."""
        cur.execute(
            "SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)"
        )
        if cur.fetchone() is not None:
            cur.execute("SET default_toast_compression = lz4")

    def encode(self, records: Sequence[SinkRecord[PageEvent]]) -> list[Staged]:
        """For :meth:`prepare`: each round's rows and their COPY text, encoded now."""
        return [Staged(rows, list(copy_chunks(rows))) for rows in self._rows(records)]

    def apply(
        self, cur: Cursor, records: Sequence[SinkRecord[PageEvent]], prepared: list[Staged] | None = None
    ) -> int:
        # Rows first: a record that cannot become a row (ValueError) fails before any COPY. Unless
        # prepared, each chunk of COPY text is encoded while the server stores the previous one.
        staged = prepared or [Staged(rows, copy_chunks(rows)) for rows in self._rows(records)]
        changed = 0
        for round_ in staged:
            # Not empty when bad-row isolation applied an earlier record in this transaction.
            cur.execute("DELETE FROM page_stage")
            self.stage(cur, round_)
            cur.execute(UPSERT)
            events, ctids, folded = cur.fetchone()
            if events:
                cur.execute(CLEAR_OUTBOX, (ctids,))
            changed += int(events)
            self.count("touches_folded", int(folded))
        return changed

    def stage(self, cur: Cursor, staged: Staged) -> None:
        """Load a round into ``page_stage`` (bench/bench_sink.py compares this with INSERT)."""
        reader = CopyReader(staged.copy)
        try:
            cur.copy_expert(COPY_STAGE, reader)
        except psycopg2.Error:
            if reader.error is not None:  # a record could not be encoded: that, not 57014 (cancel)
                raise reader.error from None
            raise

    def _rows(self, records: Sequence[SinkRecord[PageEvent]]) -> list[list[tuple[Any, ...]]]:
        return [[self._row(r.value) for r in round_] for round_ in rounds(records)]

    def _row(self, event: PageEvent) -> tuple[Any, ...]:
        self.check_event_fits(event)
        return page_row(event)

    def check_event_fits(self, event: PageEvent) -> None:
        """Raise RecordError ``too_large`` when the page's outbox event would not fit its topic."""
        page = event.page
        found = event.enrichment
        content_hash = found.content_hash if found else ""
        variable = len(page.canonical_url) + len(page.run_id) + len(content_hash)
        # A character is at most 4 bytes in the key (UTF-8) and 6 in the payload (JSON escapes):
        # pages well under the limit need no encoding here.
        if (4 + 6) * variable + EVENT_FIXED_BYTES + RECORD_OVERHEAD <= self.max_event_bytes:
            return
        key = page.canonical_url.encode("utf-8", "surrogatepass")
        payload = json.dumps(
            {"url": page.canonical_url, "run_id": page.run_id, "content_hash": content_hash},
            ensure_ascii=False,
        ).encode("utf-8", "surrogatepass")
        check_fits(key, payload + b" " * EVENT_FIXED_BYTES, self.max_event_bytes, "outbox.event.page")


class Staged(NamedTuple):
    """One round of a batch: its ``pages`` rows, and the same rows as chunks of COPY text."""

    rows: list[tuple[Any, ...]]
    copy: Iterable[bytes]


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


def copy_chunks(rows: Sequence[Sequence[Any]], chunk_rows: int = COPY_CHUNK_ROWS) -> Iterator[bytes]:
    """``rows`` as COPY text, ``chunk_rows`` rows a chunk, encoded as the chunks are taken."""
    for start in range(0, len(rows), chunk_rows):
        # Lone surrogates go to the server as the invalid UTF-8 they are, which it rejects with a
        # DataError (22021), as it does NUL characters; an exception here (e.g. an integer too
        # long for str()) is re-raised by PostgresPageSink.stage as the record's own error.
        yield copy_text(rows[start : start + chunk_rows]).encode("utf-8", "surrogatepass")


class CopyReader:
    """A file-like object for copy_expert over chunks of COPY text (:func:`copy_chunks`), one
    chunk per read(): psycopg2 sends each chunk while the server parses and stores the previous
    one, so lazily encoded chunks overlap the server's work instead of preceding it
    (bench/bench_sink.py)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        # What read() raised: psycopg2 turns it into the server's "COPY ... failed" (57014,
        # query_canceled, which means an outage elsewhere); the caller raises this instead.
        self.error: Exception | None = None

    def read(self, size: int = -1) -> bytes:
        """The next chunk, whatever ``size`` (psycopg2 sends what it gets); b"" at the end."""
        try:
            return next(self._chunks, b"")
        except Exception as exc:
            self.error = exc
            raise

    def readline(self, size: int = -1) -> bytes:
        return self.read(size)
