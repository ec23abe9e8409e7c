"""PostgresPageSink: page events into ``pages`` (``page_history`` by trigger) and page events as
logical decoding messages, one transaction.

Reads what :mod:`sinks.worker` decodes from ``<prefix>.pages.unique`` (PageEvent, or a bare
PageRecord during the switch-over; see :mod:`sinks.rows`). Per batch: the pages are COPYed into a
temporary staging table (measured faster than a multi-row INSERT: bench/bench_sink.py), encoded
a chunk at a time while the server stores the previous chunk (:func:`sinks.rows.page_copy_line`:
the row, its ``url_hash`` and the parts of its event that need no database); then one statement
upserts ``pages`` and emits, for each row that was inserted or whose body changed, a page event
(type created / changed / gone) with ``pg_logical_emit_message(true,
<postgres.event_message_prefix>, <JSON>)``. A transactional message is decoded only if the
transaction commits, in commit order with its rows: no ``outbox`` row to insert, delete and
vacuum (migration 0007). Debezium's outbox connector decodes it
(``DecodeLogicalDecodingMessageContent``) and routes it with the ``EventRouter`` to
``outbox.event.page``: key = URL, header ``eventType``, header ``id``, value = the payload
(deploy/connect/outbox-cdc.json). An unchanged page is left alone: no UPDATE, so no event. Each
body is stored once: a new version lives in ``pages`` only; when an update replaces it, a trigger
(migrations 0004, 0005) copies the old row to ``page_history`` (the view ``page_versions`` shows
both). The payload's ``simhash`` is 16 hex digits: an unsigned 64-bit number fits neither a JSON
double nor the signed 64-bit integer Debezium maps JSON numbers to.

The same statement folds parked touches (``page_touches_pending``, see :mod:`sinks.touches`) of
the staged URLs into ``last_seen`` and deletes them; ``last_seen`` never moves backwards.

Rows are keyed by ``url_hash`` (sha256 of the URL, staged by the client; the table's check
constraint verifies it: migration 0006), so a URL of any length is stored. A page whose event
would exceed ``outbox.event.page``'s ``max.message.bytes`` (its key and payload both hold the
URL) is refused as ``too_large`` before anything is written: Debezium could not produce that
event, and its connector would stop there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import psycopg2

from crawlstream.deadletters import RECORD_OVERHEAD, check_fits
from crawlstream.records import PageEvent
from crawlstream.settings import PostgresSettings, Settings
from crawlstream.topics import BROKER_DEFAULT_MAX_MESSAGE_BYTES, catalog
from sinks.base import SinkBatch, SinkRecord
from sinks.postgres import Cursor, PostgresSink
from sinks.rows import PAGE_COLUMNS, STAGE_COLUMNS, STAGED_PAGE_COLUMNS, page_copy_line

_COLS = ", ".join(PAGE_COLUMNS)
CREATE_STAGE = (  # built from our own column names, as every statement here
    "CREATE TEMPORARY TABLE IF NOT EXISTS page_stage ON COMMIT DELETE ROWS AS SELECT url_hash, "  # noqa: S608
    f"{', '.join(STAGED_PAGE_COLUMNS)}, ''::text AS event_key, ''::text AS event_tail FROM pages WITH NO DATA"
)
COPY_STAGE = f"COPY page_stage ({', '.join(STAGE_COLUMNS)}) FROM STDIN"
COPY_CHUNK_ROWS = 64  # rows encoded per read() of COPY: the server stores one while we encode the next
# The body's sha256 (the change test and the event's body_hash) is computed by the server.
BODY_HASH = "encode(sha256(convert_to(s.body, 'UTF8')), 'hex')"
STAGED = ", ".join(BODY_HASH if c == "body_hash" else f"s.{c}" for c in PAGE_COLUMNS)
_UPDATES = ", ".join(f"{c} = EXCLUDED.{c}" for c in PAGE_COLUMNS if c != "url")
EVENT_TYPE = "CASE WHEN up.created THEN 'created' WHEN up.status IN (404, 410) THEN 'gone' ELSE 'changed' END"
RETURNED = "p.url_hash, p.version, p.status, p.fetched_at, p.body_hash"


def event_content(event_type: str) -> str:
    """SQL for a page event's JSON (the message content) from a stored row ``up`` (RETURNING
    :data:`RETURNED`) and its staged parts ``s`` (sinks.rows.event_parts: URL, payload fields).
    What Debezium's EventRouter reads: aggregatetype (the topic), aggregateid (the key), type (the
    eventType header), payload (the value), id (the id header: a random UUID, carried in the WAL,
    so the same whenever Debezium sends the event again). ``fetched_at`` is ISO 8601 in UTC (the
    sink's sessions run in UTC), as the payload always had it."""
    parts = (
        *(_lit('{"aggregatetype":"page","aggregateid":'), "s.event_key", _lit(',"type":"'), event_type),
        *(_lit('","payload":{"url":'), "s.event_key", _lit(',"type":"'), event_type),
        *(_lit('","version":'), "up.version", _lit(',"fetched_at":'), "to_json(up.fetched_at)"),
        *(_lit(',"body_hash":"'), "up.body_hash", _lit('",'), "s.event_tail"),
        *(_lit('},"id":"'), "gen_random_uuid()", _lit('"}')),
    )
    return f"concat({', '.join(parts)})"


def _lit(text: str) -> str:
    """``text`` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def emit_events(prefix: str, rows: str, event_type: str) -> str:
    """A scalar subquery that emits one page event per row of ``rows`` (``up`` joined to
    ``page_stage s``) as a transactional logical decoding message and yields how many."""
    if not re.fullmatch(r"[A-Za-z0-9._-]+", prefix):  # as settings.postgres.event_message_prefix
        raise ValueError(f"event message prefix {prefix!r} is not [A-Za-z0-9._-]+")
    content = event_content(event_type)
    return f"(SELECT count(pg_logical_emit_message(true, '{prefix}', {content})) FROM {rows})"  # noqa: S608


# Parked touches of the staged URLs are deleted and folded into last_seen. This statement takes
# ROW EXCLUSIVE on page_touches_pending before its snapshot, which is what orders it against a
# touch sink parking touches (sinks/touches.py). pages.xmax = 0 only on rows this statement
# inserted; the WHERE skips unchanged bodies, which therefore have no event. Each event is a
# transactional message (decoded only if the transaction commits, in commit order): no outbox
# row to insert, delete and vacuum (migration 0007). Result: events emitted, touches folded.
def upsert(prefix: str) -> str:
    rows = f"up JOIN page_stage s ON s.url_hash = up.url_hash, LATERAL (SELECT {EVENT_TYPE} AS type) e"
    events = emit_events(prefix, rows, "e.type")
    return f"""
WITH pending AS (
    DELETE FROM page_touches_pending t USING page_stage s WHERE t.url_hash = s.url_hash
    RETURNING t.url_hash, t.seen
), up AS (
    INSERT INTO pages AS p (url_hash, {_COLS}, last_seen, last_changed)
    SELECT s.url_hash, {STAGED}, GREATEST(s.fetched_at, pending.seen), s.fetched_at
    FROM page_stage s LEFT JOIN pending ON pending.url_hash = s.url_hash
    ORDER BY s.url_hash  -- rows locked in key order, as the touch sink locks them: no deadlock
    ON CONFLICT (url_hash) DO UPDATE SET {_UPDATES}, last_seen = GREATEST(p.last_seen, EXCLUDED.last_seen),
        last_changed = EXCLUDED.last_changed, version = p.version + 1, stored_at = now()
    WHERE p.body_hash IS DISTINCT FROM EXCLUDED.body_hash
    RETURNING {RETURNED}, (p.xmax = 0) AS created
)
SELECT {events}, (SELECT count(*) FROM pending)
"""  # noqa: S608 - built from our own column names and a checked prefix, never from data


DEFAULT_EVENT_PREFIX = PostgresSettings().event_message_prefix
# The payload's fixed part (field names, version, status, dates, hashes, type, id) and headers.
EVENT_FIXED_BYTES = 512


class PostgresPageSink(PostgresSink[PageEvent]):
    application_name = "crawlstream-sink-pages"

    def __init__(
        self,
        dsn: str,
        *,
        connect_timeout_s: int = 10,
        max_event_bytes: int = BROKER_DEFAULT_MAX_MESSAGE_BYTES,
        event_prefix: str = DEFAULT_EVENT_PREFIX,
        event_topic: str = "the page events topic",
    ) -> None:
        super().__init__(dsn, connect_timeout_s=connect_timeout_s)
        self.max_event_bytes = max_event_bytes  # the page events topic's max.message.bytes
        self.event_topic = event_topic  # named in errors only: Debezium's EventRouter writes it
        self.event_prefix = event_prefix
        self._upsert = upsert(event_prefix)
        self._staged = False  # page_stage may hold rows of this transaction

    @classmethod
    def from_settings(cls, settings: Settings) -> PostgresPageSink:
        return cls(
            settings.postgres.dsn(),
            max_event_bytes=catalog(settings).page_events.max_message_bytes,
            event_prefix=settings.postgres.event_message_prefix,
            event_topic=catalog(settings).page_events.name,
        )

    def setup(self, cur: Cursor) -> None:
        self.set_compression(cur)
        cur.execute("SET TIME ZONE 'UTC'")  # the events' fetched_at: ISO 8601 in UTC
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
        """For :meth:`prepare`: each round's pages and their COPY text, encoded now."""
        return [Staged(events, list(copy_chunks(events))) for events in self._rounds(records)]

    def write(self, batch: SinkBatch[PageEvent]) -> int:
        self._staged = False  # a new transaction: the staging table is empty (ON COMMIT DELETE ROWS)
        return super().write(batch)

    def apply(
        self, cur: Cursor, records: Sequence[SinkRecord[PageEvent]], prepared: list[Staged] | None = None
    ) -> int:
        # Every page is checked before any COPY (a RecordError fails the batch before it is sent).
        # Unless prepared, each chunk of COPY text is encoded while the server stores the previous one.
        staged = prepared or [Staged(events, copy_chunks(events)) for events in self._rounds(records)]
        changed = 0
        for round_ in staged:
            if self._staged:  # an earlier round, or record, of this transaction is still staged
                cur.execute("DELETE FROM page_stage")
            self._staged = True
            self.stage(cur, round_)
            cur.execute(self._upsert)
            events, folded = cur.fetchone()
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

    def _rounds(self, records: Sequence[SinkRecord[PageEvent]]) -> list[list[PageEvent]]:
        out = [[r.value for r in round_] for round_ in rounds(records)]
        for round_ in out:
            for event in round_:
                self.check_event_fits(event)
        return out

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
        check_fits(key, payload + b" " * EVENT_FIXED_BYTES, self.max_event_bytes, self.event_topic)


class Staged(NamedTuple):
    """One round of a batch: its pages, and their staging rows as chunks of COPY text."""

    events: list[PageEvent]
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


def copy_chunks(events: Sequence[PageEvent], chunk_rows: int = COPY_CHUNK_ROWS) -> Iterator[bytes]:
    """The staging rows of ``events`` as COPY text (:func:`sinks.rows.page_copy_line`),
    ``chunk_rows`` rows a chunk, encoded as the chunks are taken."""
    for start in range(0, len(events), chunk_rows):
        # Lone surrogates go to the server as the invalid UTF-8 they are, which it rejects with a
        # DataError (22021), as it does NUL characters; an exception here (e.g. an integer too
        # long for str()) is re-raised by PostgresPageSink.stage as the record's own error.
        lines = [page_copy_line(e) for e in events[start : start + chunk_rows]]
        yield "".join(lines).encode("utf-8", "surrogatepass")


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
