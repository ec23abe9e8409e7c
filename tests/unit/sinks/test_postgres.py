"""PostgresSink's failure handling over a fake connection whose cursor raises given SQLSTATEs.

The fake honours what the sink relies on: a transaction (commit, rollback), savepoints, and a
connection that is closed once it is lost. Offsets are kept by the fake store too (the real
fence and offset statements are exercised in tests/integration/test_sink_postgres.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg2
import pytest

from sinks.base import RowsRejected, SinkBatch, SinkRecord, SinkUnavailable, StatementFailed
from sinks.pages import CopyReader, PostgresPageSink, Staged
from sinks.postgres import LOCK_OFFSETS, Cursor, PostgresSink
from tests.unit.sinks.test_sqlstate import pg_error

TOPIC = "t.stats"


class FakeConnection:
    """Committed rows and offsets, a pending transaction and its savepoints. ``errors[value]``:
    what inserting ``value`` raises; ``batch_error``: what a statement with several values raises
    (a failure no single value reproduces); ``lost``: the SQLSTATEs after which the connection
    is gone."""

    def __init__(self) -> None:
        self.closed = 0
        self.rows: list[str] = []
        self.offsets: dict[int, int] = {}
        self.pending: list[str] = []
        self.pending_offsets: dict[int, int] = {}
        self.savepoints: list[tuple[list[str], dict[int, int]]] = []
        self.errors: dict[str, Exception] = {}
        self.batch_error: Exception | None = None
        self.offsets_error: Exception | None = None
        self.commit_error: Exception | None = None
        self.commit_lands = False  # with commit_error: the commit happened, only its answer was lost
        self.statements = 0
        self.commits = 0

    def cursor(self) -> FakeCursor:
        return FakeCursor(self)

    def commit(self) -> None:
        if self.commit_error is not None:
            error, self.commit_error = self.commit_error, None
            if self.commit_lands:
                self.rows += self.pending
                self.offsets.update(self.pending_offsets)
            self.closed = 2  # the connection went away during the commit: its outcome is unknown
            raise error
        self.rows += self.pending
        self.offsets.update(self.pending_offsets)
        self.commits += 1
        self.rollback()

    def rollback(self) -> None:
        self.pending, self.pending_offsets, self.savepoints = [], {}, []

    def close(self) -> None:
        self.closed = 1


class FakeCursor:
    def __init__(self, conn: FakeConnection) -> None:
        self.conn = conn

    def __enter__(self) -> FakeCursor:
        return self

    def __exit__(self, *_exc: object) -> None:
        return None

    def execute(self, sql: str, values: Sequence[str] = ()) -> None:
        conn = self.conn
        conn.statements += 1
        if sql == "SAVEPOINT sink_record":
            conn.savepoints.append((list(conn.pending), dict(conn.pending_offsets)))
        elif sql == "ROLLBACK TO SAVEPOINT sink_record":
            pending, offsets = conn.savepoints[-1]
            conn.pending, conn.pending_offsets = list(pending), dict(offsets)
        elif sql == "RELEASE SAVEPOINT sink_record":
            conn.savepoints.pop()
        elif sql == "INSERT":
            if len(values) > 1 and conn.batch_error is not None:
                self._raise(conn.batch_error)
            for value in values:
                if value in conn.errors:
                    self._raise(conn.errors[value])
            conn.pending += list(values)
        else:
            raise AssertionError(f"unexpected statement {sql}")

    def _raise(self, error: Exception) -> None:
        if isinstance(error, psycopg2.OperationalError) and getattr(error, "pgcode", None) in (None, "08006"):
            self.conn.closed = 2  # a lost connection is closed
        raise error


class FakeStoreSink(PostgresSink[str]):
    """A Postgres sink of strings over FakeConnection; fence and offsets kept by the fake."""

    def __init__(self) -> None:
        super().__init__("host=/nonexistent")
        self.fake = FakeConnection()
        self.connections = 1

    def _connection(self) -> Any:
        if self.fake.closed:
            old, self.fake = self.fake, FakeConnection()
            self.fake.rows, self.fake.offsets, self.fake.errors = old.rows, old.offsets, old.errors
            self.connections += 1
        return self.fake

    def apply(self, cur: Cursor, records: Sequence[SinkRecord[str]], prepared: Any = None) -> int:
        cur.execute("INSERT", [r.value for r in records])
        self.count("inserted", len(records))
        return len(records)

    def _fence(self, cur: Cursor, batch: SinkBatch[str]) -> list[SinkRecord[str]]:
        assert isinstance(cur, FakeCursor)  # inside the write's transaction
        return [r for r in batch.records if r.offset >= self.fake.offsets.get(r.partition, 0)]

    def _store_offsets(self, cur: Cursor, batch: SinkBatch[str]) -> None:
        assert isinstance(cur, FakeCursor)  # in the same transaction as the rows
        if self.fake.offsets_error is not None:
            raise self.fake.offsets_error
        for (_topic, partition), offset in batch.next_offsets.items():
            self.fake.pending_offsets[partition] = offset


def batch(*values: str) -> SinkBatch[str]:
    records = [SinkRecord(v, TOPIC, 0, i) for i, v in enumerate(values)]
    return SinkBatch("g", records, {(TOPIC, 0): len(values)})


@pytest.fixture
def sink() -> FakeStoreSink:
    return FakeStoreSink()


def test_a_clean_batch_is_one_transaction(sink: FakeStoreSink) -> None:
    assert sink.write(batch("a", "b", "c")) == 3
    assert sink.fake.rows == ["a", "b", "c"]
    assert sink.fake.offsets == {0: 3}
    assert sink.fake.commits == 1
    assert sink.fake.statements == 1  # one statement: not stored again record by record
    assert sink.take_counts() == {"inserted": 3}


def test_an_index_row_too_large_rejects_that_record_and_stores_nothing_yet(sink: FakeStoreSink) -> None:
    sink.fake.errors["long"] = pg_error("54000", "index row size 3016 exceeds btree version 4 maximum 2704")
    todo = batch("a", "long", "b")

    with pytest.raises(RowsRejected) as caught:
        sink.write(todo)

    ((rejection),) = caught.value.rejected
    assert (rejection.record.value, rejection.reason, rejection.sqlstate) == (
        "long",
        "sqlstate_54000",
        "54000",
    )
    assert rejection.error_class is not None
    assert rejection.error_class.endswith("ProgramLimitExceeded")
    assert "index row size" in rejection.detail
    assert sink.fake.rows == []
    assert sink.fake.offsets == {}
    assert sink.take_counts() == {}
    # The worker then writes the rest, with the batch's offsets.
    rest = SinkBatch("g", [r for r in todo.records if r.value != "long"], todo.next_offsets)
    assert sink.write(rest) == 2
    assert sink.fake.rows == ["a", "b"]
    assert sink.fake.offsets == {0: 3}


@pytest.mark.parametrize("code", ["22003", "22021", "23505", "23514", "54000", "P0001"])
def test_every_record_error_class_is_isolated(sink: FakeStoreSink, code: str) -> None:
    sink.fake.errors["bad"] = pg_error(code)

    with pytest.raises(RowsRejected) as caught:
        sink.write(batch("a", "bad"))

    assert [(r.record.value, r.reason) for r in caught.value.rejected] == [("bad", f"sqlstate_{code}")]


def test_a_value_the_client_refuses_is_isolated_with_its_class(sink: FakeStoreSink) -> None:
    sink.fake.errors["nul"] = ValueError("A string literal cannot contain NUL (0x00) characters.")

    with pytest.raises(RowsRejected) as caught:
        sink.write(batch("nul", "a"))

    ((rejection),) = caught.value.rejected
    assert (rejection.record.value, rejection.reason, rejection.error_class) == (
        "nul",
        "unprocessable",
        "ValueError",
    )


def test_a_failure_no_single_record_reproduces_is_stored_record_by_record(sink: FakeStoreSink) -> None:
    sink.fake.batch_error = pg_error("54001", "statement too complex")  # only the whole batch fails

    assert sink.write(batch("a", "b", "c")) == 3

    assert sink.fake.rows == ["a", "b", "c"]
    assert sink.fake.offsets == {0: 3}
    assert sink.take_counts() == {"inserted": 3}
    assert sink.fake.statements == 1 + 3 * 3  # the batch once, then savepoint + insert + release each


@pytest.mark.parametrize("code", ["08006", "57P01", "57P03", "53100", "53200", "40001", "40P01"])
def test_infrastructure_failures_are_unavailable_and_store_nothing(sink: FakeStoreSink, code: str) -> None:
    sink.fake.errors["b"] = pg_error(code)

    with pytest.raises(SinkUnavailable) as caught:
        sink.write(batch("a", "b"))

    assert not caught.value.statement
    assert caught.value.sqlstate == code
    assert sink.fake.rows == []
    assert sink.fake.offsets == {}


def test_a_lost_connection_is_dropped_and_the_retry_reconnects(sink: FakeStoreSink) -> None:
    sink.fake.errors["b"] = psycopg2.OperationalError("server closed the connection unexpectedly")

    with pytest.raises(SinkUnavailable):
        sink.write(batch("a", "b"))
    del sink.fake.errors["b"]
    assert sink.write(batch("a", "b")) == 2

    assert sink.connections == 2
    assert sink.fake.rows == ["a", "b"]


@pytest.mark.parametrize("landed", [False, True], ids=["lost", "landed"])
def test_a_commit_whose_outcome_is_unknown_is_retried_and_stored_once(
    sink: FakeStoreSink, landed: bool
) -> None:
    sink.fake.commit_error = psycopg2.OperationalError("server closed the connection unexpectedly")
    sink.fake.commit_lands = landed

    with pytest.raises(SinkUnavailable):
        sink.write(batch("a", "b"))
    assert sink.write(batch("a", "b")) == (0 if landed else 2)  # the fence skips what landed

    assert sink.fake.rows == ["a", "b"]
    assert sink.fake.offsets == {0: 2}


def test_an_outage_during_isolation_is_unavailable_too(sink: FakeStoreSink) -> None:
    sink.fake.batch_error = pg_error("23505")
    sink.fake.errors["b"] = pg_error("40P01")  # the batch fails on data, then a deadlock

    with pytest.raises(SinkUnavailable):
        sink.write(batch("a", "b"))

    assert sink.fake.rows == []


def test_statement_errors_of_every_record_are_statement_failed(sink: FakeStoreSink) -> None:
    for value in ("a", "b"):
        sink.fake.errors[value] = pg_error("42703", 'column "url_hash" does not exist')

    with pytest.raises(StatementFailed) as caught:
        sink.write(batch("a", "b"))

    assert [(r.record.value, r.reason) for r in caught.value.rejected] == [
        ("a", "sqlstate_42703"),
        ("b", "sqlstate_42703"),
    ]
    assert sink.fake.rows == []


def test_a_statement_error_of_some_records_only_is_theirs(sink: FakeStoreSink) -> None:
    sink.fake.errors["odd"] = pg_error("42804", "datatype mismatch")

    with pytest.raises(RowsRejected) as caught:
        sink.write(batch("a", "odd", "b"))

    assert [(r.record.value, r.reason) for r in caught.value.rejected] == [("odd", "sqlstate_42804")]


def test_record_errors_go_first_when_no_record_succeeds(sink: FakeStoreSink) -> None:
    sink.fake.errors["bad"] = pg_error("22003")
    sink.fake.errors["odd"] = pg_error("42804")

    with pytest.raises(RowsRejected) as caught:
        sink.write(batch("bad", "odd"))

    # The statement error cannot be blamed on its record yet: it is tried again without "bad".
    assert [r.record.value for r in caught.value.rejected] == ["bad"]


def test_statement_errors_outside_records_are_loud_and_retried(sink: FakeStoreSink) -> None:
    sink.fake.offsets_error = pg_error("42P01", 'relation "sink_offsets" does not exist')

    with pytest.raises(SinkUnavailable) as caught:
        sink.write(batch("a"))

    assert caught.value.statement
    assert caught.value.sqlstate == "42P01"
    assert sink.fake.rows == []


def test_rejected_records_count_nothing_and_stored_ones_count_once(sink: FakeStoreSink) -> None:
    sink.fake.batch_error = pg_error("22000")
    sink.fake.errors["bad"] = pg_error("22003")

    with pytest.raises(RowsRejected):
        sink.write(batch("a", "bad"))
    assert sink.take_counts() == {}
    sink.fake.batch_error = None
    sink.write(SinkBatch("g", [SinkRecord("a", TOPIC, 0, 0)], {(TOPIC, 0): 2}))
    assert sink.take_counts() == {"inserted": 1}


class CopyCursor:
    """A cursor whose COPY reads its file as psycopg2 does: an exception in read() aborts the COPY,
    and the server answers 57014 (query_canceled)."""

    def copy_expert(self, sql: str, file: Any) -> None:
        try:
            while file.read(8192):
                pass
        except Exception as exc:
            raise pg_error("57014", f"COPY from stdin failed: error in .read() call: {exc}") from None


def test_an_encoding_error_inside_copy_is_the_records_not_a_cancelled_query() -> None:
    def chunks() -> Any:
        yield b"fine\n"
        raise ValueError("Exceeds the limit (4300 digits) for integer string conversion")

    sink = PostgresPageSink("host=/nonexistent")

    with pytest.raises(ValueError, match="4300 digits"):
        sink.stage(CopyCursor(), Staged([], chunks()))


def test_a_cancelled_copy_without_an_encoding_error_stays_a_cancelled_query() -> None:
    class Cancelled:
        def copy_expert(self, sql: str, file: CopyReader) -> None:
            raise pg_error("57014", "canceling statement due to user request")

    with pytest.raises(psycopg2.errors.QueryCanceled):
        PostgresPageSink("host=/nonexistent").stage(Cancelled(), Staged([], iter([b"x\n"])))


class OffsetRowsCursor:
    """``sink_offsets`` as the real fence sees it: LOCK_OFFSETS answers the stored rows of the
    partitions asked for, CREATE_OFFSETS (through execute_values) adds missing rows. Records which
    statements ran, so the test sees that rows are locked before anything is applied."""

    connection = type("Conn", (), {"encoding": "UTF8"})()

    def __init__(self, stored: dict[tuple[str, str, int], int]) -> None:
        self.stored = stored
        self.statements: list[str] = []
        self._answer: list[tuple[int, int]] = []
        self._values: list[tuple[Any, ...]] = []

    def mogrify(self, template: bytes, args: tuple[Any, ...]) -> bytes:
        self._values.append(args)
        return b"(...)"

    def execute(self, sql: str | bytes, values: tuple[Any, ...] = ()) -> None:
        text = sql.decode() if isinstance(sql, bytes) else sql
        self.statements.append(text)
        if text == LOCK_OFFSETS:
            group, topic, partitions = values
            self._answer = [(p, o) for (g, t, p), o in self.stored.items() if (g, t) == (group, topic)]
            self._answer = [(p, o) for p, o in self._answer if p in partitions]
        elif text.startswith("INSERT INTO sink_offsets"):
            for group, topic, partition, offset in self._values:
                self.stored.setdefault((group, topic, partition), offset)
            self._values = []
        else:
            raise AssertionError(f"unexpected statement {text}")

    def fetchall(self) -> list[tuple[int, int]]:
        return self._answer


def test_the_fence_keeps_only_records_at_or_after_each_partitions_stored_offset() -> None:
    other = "t.other"
    cur = OffsetRowsCursor({("g", TOPIC, 0): 5, ("g", TOPIC, 1): 2, ("g", other, 0): 1, ("h", TOPIC, 2): 9})
    records = [
        *(SinkRecord(f"p0-{o}", TOPIC, 0, o) for o in range(3, 8)),
        *(SinkRecord(f"p1-{o}", TOPIC, 1, o) for o in range(4)),
        *(SinkRecord(f"p2-{o}", TOPIC, 2, o) for o in range(2)),  # no row yet (another group's is 9)
        *(SinkRecord(f"o0-{o}", other, 0, o) for o in range(3)),
    ]
    next_offsets = {(TOPIC, 0): 8, (TOPIC, 1): 4, (TOPIC, 2): 2, (other, 0): 3}

    kept = PostgresSink[str]("host=/nonexistent")._fence(cur, SinkBatch("g", records, next_offsets))

    assert [r.value for r in kept] == ["p0-5", "p0-6", "p0-7", "p1-2", "p1-3", "p2-0", "p2-1", "o0-1", "o0-2"]
    assert cur.stored[("g", TOPIC, 2)] == 0  # the new partition's row was created, then locked
    assert cur.stored[("h", TOPIC, 2)] == 9
    locks = [s for s in cur.statements if s == LOCK_OFFSETS]
    assert len(locks) == 4  # each topic's rows locked, and again after the missing row was created
    assert cur.statements[-1] == LOCK_OFFSETS


def test_a_batch_entirely_below_the_stored_offsets_keeps_nothing() -> None:
    cur = OffsetRowsCursor({("g", TOPIC, 0): 10})
    sink = PostgresSink[str]("host=/nonexistent")
    replay = [SinkRecord("x", TOPIC, 0, o) for o in range(10)]
    assert sink._fence(cur, SinkBatch("g", replay, {(TOPIC, 0): 10})) == []
    assert cur.statements == [LOCK_OFFSETS]  # the row exists: locked once, nothing created
    edge = [SinkRecord("y", TOPIC, 0, 9), SinkRecord("z", TOPIC, 0, 10)]
    assert sink._fence(cur, SinkBatch("g", edge, {(TOPIC, 0): 11})) == [edge[1]]  # at the offset: kept


def test_a_batch_without_offsets_is_not_fenced() -> None:
    cur = OffsetRowsCursor({})
    records = [SinkRecord("x", TOPIC, 0, 3)]
    assert PostgresSink[str]("host=/nonexistent")._fence(cur, SinkBatch("g", records, {})) == records
    assert cur.statements == []
