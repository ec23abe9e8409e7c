"""PostgresPageSink: one transaction per batch into ``pages`` and ``sink_offsets``.

Used by :mod:`sinks.worker`; connects with the app role (``settings.postgres.url``), which may
only SELECT/INSERT/UPDATE the two tables. Pages are inserted with ``ON CONFLICT (url) DO
NOTHING`` rather than DO UPDATE: a replayed batch then changes no row, so Debezium publishes
no spurious update events downstream.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from crawlstream.settings import Settings
from sinks.base import RowsRejected, SinkBatch, SinkError, SinkRecord, SinkUnavailable
from sinks.tables import PAGE_COLUMNS, page_row

log = logging.getLogger(__name__)

# Built from our own column names, never from data.
INSERT_PAGES = (
    f"INSERT INTO pages ({', '.join(PAGE_COLUMNS)}) VALUES %s "  # noqa: S608
    "ON CONFLICT (url) DO NOTHING RETURNING 1"
)
# GREATEST: a zombie worker that lost its partitions cannot move an offset backwards (the
# rows it might replay are harmless anyway). To re-read a partition, edit the row by hand.
UPSERT_OFFSETS = (
    'INSERT INTO sink_offsets (consumer_group, topic, "partition", next_offset) VALUES %s '
    'ON CONFLICT (consumer_group, topic, "partition") DO UPDATE SET '
    "next_offset = GREATEST(sink_offsets.next_offset, EXCLUDED.next_offset), updated_at = now()"
)
SELECT_OFFSETS = 'SELECT "partition", next_offset FROM sink_offsets WHERE consumer_group = %s AND topic = %s'
# Bad data: constraint or type violations from the server, and NUL characters (text columns
# cannot hold them), which psycopg2 refuses with ValueError before sending anything.
_BAD_ROW_ERRORS = (psycopg2.DataError, psycopg2.IntegrityError, ValueError)
_UNAVAILABLE_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)


class PostgresPageSink:
    def __init__(self, dsn: str, *, connect_timeout_s: int = 10) -> None:
        self._dsn = dsn
        self._connect_timeout_s = connect_timeout_s
        self._conn: psycopg2.extensions.connection | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> PostgresPageSink:
        return cls(settings.postgres.dsn())

    def open(self) -> None:
        self._connection()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def write(self, batch: SinkBatch) -> int:
        records = first_per_url(batch.records)
        try:
            with self._transaction() as cur:
                inserted = self._insert_pages(cur, records)
                self._store_offsets(cur, batch)
            return inserted
        except _BAD_ROW_ERRORS as exc:
            log.warning("batch of %d rejected (%s); isolating bad rows", len(records), exc)
            rejected = self._find_bad_rows(records)
            if not rejected:
                raise SinkError(f"batch rejected but no single row fails on its own: {exc}") from exc
            raise RowsRejected(rejected) from exc

    def stored_offsets(self, group: str, topic: str) -> dict[int, int]:
        with self._transaction() as cur:
            cur.execute(SELECT_OFFSETS, (group, topic))
            return {int(p): int(o) for p, o in cur.fetchall()}

    def _insert_pages(self, cur: psycopg2.extensions.cursor, records: Sequence[SinkRecord]) -> int:
        if not records:
            return 0
        rows = [page_row(r.page) for r in records]
        returned = psycopg2.extras.execute_values(cur, INSERT_PAGES, rows, page_size=len(rows), fetch=True)
        return len(returned)

    def _store_offsets(self, cur: psycopg2.extensions.cursor, batch: SinkBatch) -> None:
        rows = [(batch.group, t, p, o) for (t, p), o in sorted(batch.next_offsets.items())]
        if rows:
            psycopg2.extras.execute_values(cur, UPSERT_OFFSETS, rows, page_size=len(rows))

    def _find_bad_rows(self, records: Sequence[SinkRecord]) -> list[tuple[SinkRecord, str]]:
        """Try each row under a savepoint in a transaction that is rolled back, collecting failures."""
        rejected: list[tuple[SinkRecord, str]] = []
        with self._transaction(rollback=True) as cur:
            for record in records:
                cur.execute("SAVEPOINT row_check")
                try:
                    self._insert_pages(cur, [record])
                    cur.execute("RELEASE SAVEPOINT row_check")
                except _BAD_ROW_ERRORS as exc:
                    cur.execute("ROLLBACK TO SAVEPOINT row_check")
                    rejected.append((record, str(exc).strip()))
        return rejected

    def _connection(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg2.connect(
                    self._dsn, connect_timeout=self._connect_timeout_s, application_name="crawlstream-sink"
                )
            except psycopg2.OperationalError as exc:
                raise SinkUnavailable(f"cannot connect to PostgreSQL: {exc}".strip()) from exc
        return self._conn

    @contextmanager
    def _transaction(self, *, rollback: bool = False) -> Iterator[Any]:
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                yield cur
            if rollback:
                conn.rollback()
            else:
                conn.commit()
        except _UNAVAILABLE_ERRORS as exc:
            # The connection is unusable or the commit's outcome unknown; either way retrying the
            # whole batch on a fresh connection is safe because writes are idempotent.
            self.close()
            raise SinkUnavailable(f"PostgreSQL unavailable: {exc}".strip()) from exc
        except BaseException:
            if not conn.closed:
                conn.rollback()
            raise


def first_per_url(records: Iterable[SinkRecord]) -> list[SinkRecord]:
    """Keep the first record of each URL in a batch, as ``ON CONFLICT DO NOTHING`` does across
    batches (and so the RETURNING count is the number of distinct new URLs)."""
    seen: set[str] = set()
    kept = []
    for record in records:
        if record.page.canonical_url not in seen:
            seen.add(record.page.canonical_url)
            kept.append(record)
    return kept
