"""PostgresSink: the transaction, offset fence and bad-row isolation every Postgres sink shares.

A subclass implements :meth:`PostgresSink.apply` (write a batch's records with a cursor); this
class wraps it in one transaction with the ``sink_offsets`` rows of the batch's partitions:
they are locked first (``FOR UPDATE``), records before the stored offsets are skipped (a worker
that lost its partitions cannot apply them twice), and the new offsets are stored last. Connects
with the app role (``settings.postgres.url``): DML on the sink's tables only.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from crawlstream.settings import Settings
from sinks.base import RowsRejected, SinkBatch, SinkError, SinkRecord, SinkUnavailable

log = logging.getLogger(__name__)

R = TypeVar("R")
Cursor = Any  # psycopg2's cursor is untyped
Partition = tuple[str, int]  # topic, partition

# Missing offset rows are created, then locked, so that every partition of the batch has a row to lock.
CREATE_OFFSETS = (
    'INSERT INTO sink_offsets (consumer_group, topic, "partition", next_offset) VALUES %s '
    "ON CONFLICT DO NOTHING"
)
LOCK_OFFSETS = (
    'SELECT "partition", next_offset FROM sink_offsets WHERE consumer_group = %s AND topic = %s '
    'AND "partition" = ANY(%s) ORDER BY "partition" FOR UPDATE'
)
# GREATEST: offsets never go backwards. To re-read a partition, edit the row by hand.
STORE_OFFSETS = (
    "UPDATE sink_offsets AS o SET next_offset = GREATEST(o.next_offset, v.next_offset), updated_at = now() "
    'FROM (VALUES %s) AS v(consumer_group, topic, "partition", next_offset) '
    'WHERE o.consumer_group = v.consumer_group AND o.topic = v.topic AND o."partition" = v."partition"'
)
SELECT_OFFSETS = 'SELECT "partition", next_offset FROM sink_offsets WHERE consumer_group = %s AND topic = %s'
# Bad data: constraint or type violations from the server, and NUL characters (text columns
# cannot hold them), which psycopg2 refuses with ValueError before sending anything.
BAD_ROW_ERRORS = (psycopg2.DataError, psycopg2.IntegrityError, ValueError)
UNAVAILABLE_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)


@dataclass(frozen=True)
class Prepared:
    """What :meth:`PostgresSink.encode` made of ``records`` (the very sequence of the batch)."""

    records: Sequence[Any]
    work: Any

    @staticmethod
    def work_for(batch: SinkBatch[Any], todo: Sequence[Any]) -> Any:
        """The prepared work if it is for exactly ``todo``: not after the worker dropped rejected
        records from the batch (a new sequence), nor when the fence skipped stored ones (a replay)."""
        prepared = batch.prepared
        if (
            isinstance(prepared, Prepared)
            and prepared.records is batch.records
            and len(todo) == len(batch.records)
        ):
            return prepared.work
        return None


class PostgresSink(Generic[R]):
    application_name = "crawlstream-sink"

    def __init__(self, dsn: str, *, connect_timeout_s: int = 10) -> None:
        self._dsn = dsn
        self._connect_timeout_s = connect_timeout_s
        self._conn: psycopg2.extensions.connection | None = None
        self._counting: collections.Counter[str] = collections.Counter()
        self._committed: collections.Counter[str] = collections.Counter()

    @classmethod
    def from_settings(cls, settings: Settings) -> PostgresSink[R]:
        return cls(settings.postgres.dsn())

    def apply(self, cur: Cursor, records: Sequence[SinkRecord[R]], prepared: Any = None) -> int:
        """Write ``records`` (in offset order per partition); return how many rows changed.
        ``prepared``: what :meth:`encode` made of exactly these records, or None."""
        raise NotImplementedError

    def encode(self, records: Sequence[SinkRecord[R]]) -> Any:
        """Work on ``records`` that needs no database (e.g. COPY text), for :meth:`prepare`."""
        return None

    def prepare(self, batch: SinkBatch[R]) -> SinkBatch[R]:
        try:
            return replace(batch, prepared=Prepared(batch.records, self.encode(batch.records)))
        except BAD_ROW_ERRORS:
            return batch  # write() encodes again, where a bad row is isolated and reported

    def count(self, event: str, n: int = 1) -> None:
        """For apply(): count ``n`` events of the write in progress (see :meth:`take_counts`)."""
        if n:
            self._counting[event] += n

    def take_counts(self) -> dict[str, int]:
        """Events counted by committed writes since the last call (for the worker's metrics);
        writes rolled back count nothing."""
        counts, self._committed = dict(self._committed), collections.Counter()
        return counts

    def setup(self, cur: Cursor) -> None:
        """Once per connection, e.g. create temporary staging tables."""

    def open(self) -> None:
        self._connection()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def write(self, batch: SinkBatch[R]) -> int:
        self._counting = collections.Counter()
        try:
            with self._transaction() as cur:
                todo = self._fence(cur, batch)
                changed = self.apply(cur, todo, Prepared.work_for(batch, todo)) if todo else 0
                self._store_offsets(cur, batch)
            self._committed.update(self._counting)
            return changed
        except BAD_ROW_ERRORS as exc:
            log.warning("batch of %d rejected (%s); isolating bad rows", len(batch.records), exc)
            rejected = self._find_bad_rows(batch)
            if not rejected:
                raise SinkError(f"batch rejected but no single row fails on its own: {exc}") from exc
            raise RowsRejected(rejected) from exc

    def stored_offsets(self, group: str, topic: str) -> dict[int, int]:
        with self._transaction() as cur:
            cur.execute(SELECT_OFFSETS, (group, topic))
            return {int(p): int(o) for p, o in cur.fetchall()}

    def _fence(self, cur: Cursor, batch: SinkBatch[R]) -> list[SinkRecord[R]]:
        """Lock the batch's offset rows; keep only records at or after the stored offsets."""
        positions = sorted(batch.next_offsets)
        if not positions:
            return list(batch.records)
        stored = self._lock_offsets(cur, batch.group, positions)
        if len(stored) < len(positions):  # a partition's first batch: create its row, then lock it
            psycopg2.extras.execute_values(
                cur, CREATE_OFFSETS, [(batch.group, t, p, 0) for t, p in positions if (t, p) not in stored]
            )
            stored = self._lock_offsets(cur, batch.group, positions)
        return [r for r in batch.records if r.offset >= stored.get((r.topic, r.partition), 0)]

    @staticmethod
    def _lock_offsets(cur: Cursor, group: str, positions: list[Partition]) -> dict[Partition, int]:
        stored: dict[Partition, int] = {}
        for topic in sorted({t for t, _ in positions}):
            cur.execute(LOCK_OFFSETS, (group, topic, [p for t, p in positions if t == topic]))
            stored.update({(topic, int(p)): int(o) for p, o in cur.fetchall()})
        return stored

    def _store_offsets(self, cur: Cursor, batch: SinkBatch[R]) -> None:
        """One statement for all partitions (their rows are locked by :meth:`_fence`)."""
        rows = [(batch.group, t, p, o) for (t, p), o in sorted(batch.next_offsets.items())]
        if rows:
            template = "(%s, %s, %s::integer, %s::bigint)"
            psycopg2.extras.execute_values(cur, STORE_OFFSETS, rows, template=template, page_size=len(rows))

    def _find_bad_rows(self, batch: SinkBatch[R]) -> list[tuple[SinkRecord[Any], str]]:
        """Try each row under a savepoint in a transaction that is rolled back, collecting failures."""
        rejected: list[tuple[SinkRecord[Any], str]] = []
        with self._transaction(rollback=True) as cur:
            for record in self._fence(cur, batch):
                cur.execute("SAVEPOINT row_check")
                try:
                    self.apply(cur, [record])
                    cur.execute("RELEASE SAVEPOINT row_check")
                except BAD_ROW_ERRORS as exc:
                    cur.execute("ROLLBACK TO SAVEPOINT row_check")
                    rejected.append((record, str(exc).strip()))
        return rejected

    def _connection(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            try:
                conn = psycopg2.connect(
                    self._dsn, connect_timeout=self._connect_timeout_s, application_name=self.application_name
                )
                with conn.cursor() as cur:
                    self.setup(cur)
                conn.commit()
            except psycopg2.OperationalError as exc:
                raise SinkUnavailable(f"cannot connect to PostgreSQL: {exc}".strip()) from exc
            self._conn = conn
        return self._conn

    @contextmanager
    def _transaction(self, *, rollback: bool = False) -> Iterator[Cursor]:
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                yield cur
            if rollback:
                conn.rollback()
            else:
                conn.commit()
        except UNAVAILABLE_ERRORS as exc:
            # The connection is unusable or the commit's outcome unknown; either way retrying the
            # whole batch on a fresh connection is safe: the fence skips what was committed.
            self.close()
            raise SinkUnavailable(f"PostgreSQL unavailable: {exc}".strip()) from exc
        except BaseException:
            if not conn.closed:
                conn.rollback()
            raise
