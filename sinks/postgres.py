"""PostgresSink: the transaction, offset fence and bad-record isolation every Postgres sink shares.

A subclass implements :meth:`PostgresSink.apply` (write a batch's records with a cursor); this
class wraps it in one transaction with the ``sink_offsets`` rows of the batch's partitions:
they are locked first (``FOR UPDATE``), records before the stored offsets are skipped (a worker
that lost its partitions cannot apply them twice), and the new offsets are stored last. Connects
with the app role (``settings.postgres.url``): DML on the sink's tables only.

When a write fails, :func:`sinks.sqlstate.classify` says why. The database's fault (connection
lost, disk full, deadlock, a commit whose outcome is unknown: TRANSIENT) raises SinkUnavailable and
the worker retries the batch with backoff. Anything else rolls back and writes the batch again,
record by record, each under a savepoint in one transaction, so that what fails is told apart
from what does not, whether or not some single record reproduces the failure:

- nothing fails alone (the batch failed as a whole only): that transaction is committed: stored;
- records fail with data errors (22, 23, 54, ... and ValueError from encoding: RECORD): it is
  rolled back and RowsRejected names them; the worker dead-letters them (delivery confirmed) and
  writes the rest, which holds fewer records each round, so this ends;
- records fail with errors of our statements (42xxx and unknown: STATEMENT) while others of the
  batch are stored: the statement works, these records break it: RowsRejected as well;
- every record fails with errors of our statements: our SQL, schema or grants are wrong, not the
  data (e.g. a migration not run yet): StatementFailed, which the worker retries loudly for a
  bounded time (``sink.statement_retry_s``) before it dead-letters the records, so that a deploy
  can heal it and nothing is dead-lettered for it, yet no partition stops for ever;
- our statements fail outside any record (locking or storing offsets, savepoints, the commit):
  no record can be blamed and no progress can be stored: SinkUnavailable marked ``statement``,
  retried like an outage but logged as an error and counted by SQLSTATE.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from crawlstream.deadletters import error_class
from crawlstream.settings import Settings
from sinks.base import Rejection, RowsRejected, SinkBatch, SinkRecord, SinkUnavailable, StatementFailed
from sinks.sqlstate import Failure, classify, detail, reason, sqlstate

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
        except Exception:  # any record's fault: write() encodes again and isolates the record
            return batch

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
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                todo = self._fence(cur, batch)
                changed = self.apply(cur, todo, Prepared.work_for(batch, todo)) if todo else 0
                self._store_offsets(cur, batch)
            conn.commit()
        except Exception as exc:
            if self._failed(conn, exc) is Failure.TRANSIENT:
                raise SinkUnavailable(
                    f"PostgreSQL unavailable: {exc}".strip(), sqlstate=sqlstate(exc)
                ) from exc
            log.warning(
                "batch of %d failed (%s: %s); writing it record by record",
                len(batch.records),
                reason(exc),
                detail(exc),
            )
            return self._write_record_by_record(batch)
        except BaseException:
            self._failed(conn, None)
            raise
        self._committed.update(self._counting)
        return changed

    def stored_offsets(self, group: str, topic: str) -> dict[int, int]:
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                cur.execute(SELECT_OFFSETS, (group, topic))
                found = {int(p): int(o) for p, o in cur.fetchall()}
            conn.commit()
            return found
        except Exception as exc:
            raise self._unavailable(conn, exc, "read the stored offsets") from exc

    def _write_record_by_record(self, batch: SinkBatch[R]) -> int:
        """The batch again, each record under a savepoint: commit if none fails alone, else roll
        back and name the records that fail (RowsRejected or StatementFailed; see module doc)."""
        self._counting = collections.Counter()
        rejected: list[tuple[Rejection, Failure]] = []
        stored = changed = 0
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                for record in self._fence(cur, batch):
                    counted = self._counting.copy()
                    cur.execute("SAVEPOINT sink_record")
                    try:
                        changed += self.apply(cur, [record])
                    except Exception as exc:
                        failure = classify(exc)
                        if failure is Failure.TRANSIENT or conn.closed:
                            raise
                        cur.execute("ROLLBACK TO SAVEPOINT sink_record")
                        self._counting = counted  # what the rolled-back record counted is undone
                        rejected.append((rejection(record, exc), failure))
                    else:
                        cur.execute("RELEASE SAVEPOINT sink_record")
                        stored += 1
                if not rejected:
                    self._store_offsets(cur, batch)
            if rejected:
                conn.rollback()  # dead letters first: the rest is stored once they are delivered
            else:
                conn.commit()
        except Exception as exc:
            raise self._unavailable(conn, exc, "write a batch record by record") from exc
        except BaseException:
            self._failed(conn, None)
            raise
        if not rejected:
            self._committed.update(self._counting)
            return changed
        by_record = [r for r, failure in rejected if failure is Failure.RECORD]
        by_statement = [r for r, failure in rejected if failure is Failure.STATEMENT]
        for r in by_statement:
            log.error(
                "statement error on %s[%d]@%d: %s: %s",
                r.record.topic,
                r.record.partition,
                r.record.offset,
                r.reason,
                r.detail,
            )
        if by_record or stored:
            # The statements work for other records of the batch: these records break them.
            raise RowsRejected(by_record + by_statement if stored else by_record)
        raise StatementFailed(by_statement)

    def _failed(self, conn: psycopg2.extensions.connection, exc: BaseException | None) -> Failure:
        """Clean up after a failed transaction: roll back, or drop a connection that is gone (the
        next call reconnects). TRANSIENT when the connection is gone, whatever ``exc`` says."""
        if not conn.closed:
            try:
                conn.rollback()
            except psycopg2.Error:
                log.warning("rollback failed; dropping the connection", exc_info=True)
        if conn.closed:
            self.close()
            return Failure.TRANSIENT
        return classify(exc) if exc is not None else Failure.STATEMENT

    def _unavailable(
        self, conn: psycopg2.extensions.connection, exc: Exception, what: str
    ) -> SinkUnavailable:
        """SinkUnavailable for a failure outside any record: an outage, or (loud) our statements."""
        failure = self._failed(conn, exc)
        if failure is Failure.TRANSIENT:
            return SinkUnavailable(f"PostgreSQL unavailable: {exc}".strip(), sqlstate=sqlstate(exc))
        log.error("cannot %s: %s: %s (%s)", what, reason(exc), detail(exc), error_class(exc))
        return SinkUnavailable(
            f"cannot {what}: {reason(exc)}: {detail(exc)}", sqlstate=sqlstate(exc), statement=True
        )

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

    def _connection(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            conn: psycopg2.extensions.connection | None = None
            try:
                conn = psycopg2.connect(
                    self._dsn, connect_timeout=self._connect_timeout_s, application_name=self.application_name
                )
                with conn.cursor() as cur:
                    self.setup(cur)
                conn.commit()
            except Exception as exc:
                if conn is not None:
                    conn.close()
                failure = classify(exc)
                if failure is Failure.TRANSIENT:
                    raise SinkUnavailable(f"cannot connect to PostgreSQL: {exc}".strip()) from exc
                # e.g. the staging table cannot be created (a grant is missing): loud, retried
                log.error(
                    "cannot set up a connection: %s: %s (%s)", reason(exc), detail(exc), error_class(exc)
                )
                raise SinkUnavailable(
                    f"cannot set up a connection: {reason(exc)}: {detail(exc)}",
                    sqlstate=sqlstate(exc),
                    statement=True,
                ) from exc
            self._conn = conn
        return self._conn


def rejection(record: SinkRecord[Any], exc: BaseException) -> Rejection:
    """What the dead letter of ``record`` says about ``exc``."""
    return Rejection(record, reason(exc), detail(exc), error_class(exc), sqlstate(exc))
