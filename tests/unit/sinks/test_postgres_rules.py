"""PostgresSink's transaction rules that tests/unit/sinks/test_postgres.py leaves open (found by
`make mutate`): how it connects and reconnects, that the offsets are stored with one statement in
the write's transaction, that prepared work is used, that a batch-wide deadlock is retried whole,
that an interrupt rolls back, and what its errors say.

The fakes are the ones of test_postgres.py (a connection with a transaction and savepoints); the
real statements run in tests/integration/test_sink_postgres.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg2
import psycopg2.extras
import pytest

from crawlstream.settings import Settings
from sinks.base import Rejection, SinkBatch, SinkRecord, SinkUnavailable, StatementFailed
from sinks.postgres import SELECT_OFFSETS, STORE_OFFSETS, Cursor, PostgresSink, Prepared
from tests.unit.sinks.test_postgres import TOPIC, FakeConnection, FakeCursor, FakeStoreSink, batch
from tests.unit.sinks.test_sqlstate import pg_error


class SetupCursor:
    def __init__(self, conn: ConnectingConnection) -> None:
        self.conn = conn

    def __enter__(self) -> SetupCursor:
        return self

    def __exit__(self, *_exc: object) -> None:
        return None


class ConnectingConnection:
    """What psycopg2.connect returns, as far as PostgresSink._connection uses it."""

    def __init__(self) -> None:
        self.closed = 0
        self.commits = 0

    def cursor(self) -> SetupCursor:
        return SetupCursor(self)

    def commit(self) -> None:
        self.commits += 1

    def close(self) -> None:
        self.closed = 1


class SetupSink(PostgresSink[str]):
    """A sink whose per-connection setup can fail (e.g. its staging table cannot be created)."""

    def __init__(self, dsn: str, setup_error: Exception | None = None, **kwargs: Any) -> None:
        super().__init__(dsn, **kwargs)
        self.setup_error = setup_error
        self.setups: list[Any] = []

    def setup(self, cur: Cursor) -> None:
        self.setups.append(cur)
        if self.setup_error is not None:
            raise self.setup_error


@pytest.fixture(name="sink")
def fake_store_sink() -> FakeStoreSink:
    return FakeStoreSink()


Connect = tuple[tuple[Any, ...], dict[str, Any], ConnectingConnection]


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[Connect]:
    made: list[Connect] = []

    def connect(*args: Any, **kwargs: Any) -> ConnectingConnection:
        conn = ConnectingConnection()
        made.append((args, kwargs, conn))
        return conn

    monkeypatch.setattr(psycopg2, "connect", connect)
    return made


def test_a_connection_is_made_once_with_the_dsn_timeout_and_name_and_set_up(connects: list[Any]) -> None:
    sink = SetupSink("host=db dbname=crawl")

    sink.open()
    sink.open()

    ((args, kwargs, conn),) = connects  # an open connection is reused
    assert args == ("host=db dbname=crawl",)
    assert kwargs == {"connect_timeout": 10, "application_name": "crawlstream-sink"}
    assert [c.conn for c in sink.setups] == [conn]  # set up once, on that connection
    assert conn.commits == 1  # the setup is committed


def test_a_closed_or_lost_connection_is_replaced(connects: list[Any]) -> None:
    sink = SetupSink("host=db", connect_timeout_s=3)
    sink.open()
    sink.close()
    sink.open()  # after close(): a new connection
    connects[-1][2].closed = 2  # the server went away
    sink.open()

    assert len(connects) == 3
    assert connects[0][2].closed  # close() closed the first
    assert [kwargs["connect_timeout"] for _a, kwargs, _c in connects] == [3, 3, 3]
    assert len(sink.setups) == 3


def test_a_connection_that_cannot_be_reached_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise psycopg2.OperationalError("could not connect to server: Connection refused")

    monkeypatch.setattr(psycopg2, "connect", refuse)

    with pytest.raises(SinkUnavailable) as caught:
        SetupSink("host=db").open()

    assert not caught.value.statement
    assert "Connection refused" in str(caught.value)


def test_a_connection_whose_setup_our_statements_break_is_closed_and_loud(connects: list[Any]) -> None:
    sink = SetupSink("host=db", setup_error=pg_error("42501", "permission denied for schema pg_temp"))

    with pytest.raises(SinkUnavailable) as caught:
        sink.open()

    assert caught.value.statement  # retried, but as our fault, not an outage
    assert caught.value.sqlstate == "42501"
    assert "sqlstate_42501" in str(caught.value)
    assert "permission denied" in str(caught.value)
    ((_args, _kwargs, conn),) = connects
    assert conn.closed  # not kept half set up
    sink.setup_error = None
    sink.open()
    assert len(connects) == 2  # the next attempt connects again


class OffsetsCursor:
    """Records what execute_values sends for STORE_OFFSETS."""

    connection = type("Conn", (), {"encoding": "UTF8"})()

    def __init__(self) -> None:
        self.statements: list[tuple[str, list[tuple[Any, ...]]]] = []
        self._values: list[tuple[Any, ...]] = []

    def mogrify(self, template: bytes, args: tuple[Any, ...]) -> bytes:
        self._values.append(args)
        return b"(...)"

    def execute(self, sql: str | bytes, values: Any = ()) -> None:
        text = sql.decode() if isinstance(sql, bytes) else sql
        self.statements.append((text, self._values))
        self._values = []


def test_the_offsets_of_every_partition_are_stored_in_one_statement_in_partition_order() -> None:
    cur = OffsetsCursor()
    offsets = {("t.b", 1): 7, ("t.a", 2): 5, ("t.a", 0): 9}

    PostgresSink[str]("host=/nonexistent")._store_offsets(cur, SinkBatch("g", [], offsets))

    ((sql, rows),) = cur.statements
    assert sql == STORE_OFFSETS.replace("%s", "(...),(...),(...)")
    assert rows == [("g", "t.a", 0, 9), ("g", "t.a", 2, 5), ("g", "t.b", 1, 7)]


def test_a_batch_without_offsets_stores_none() -> None:
    cur = OffsetsCursor()
    PostgresSink[str]("host=/nonexistent")._store_offsets(cur, SinkBatch("g", [], {}))
    assert cur.statements == []


class PreparingSink(FakeStoreSink):
    """encode() does work outside the transaction; apply() records what it was handed."""

    def __init__(self) -> None:
        super().__init__()
        self.handed: list[Any] = []

    def encode(self, records: Sequence[SinkRecord[str]]) -> Any:
        return "|".join(r.value for r in records)

    def apply(self, cur: Cursor, records: Sequence[SinkRecord[str]], prepared: Any = None) -> int:
        self.handed.append(prepared)
        self.count("applied")
        return super().apply(cur, records, prepared)


def test_the_work_prepared_for_a_batch_is_handed_to_apply() -> None:
    sink = PreparingSink()

    assert sink.write(sink.prepare(batch("a", "b"))) == 2

    assert sink.handed == ["a|b"]
    assert sink.take_counts() == {"applied": 1, "inserted": 2}  # count() counts one by default


def test_a_deadlock_of_the_whole_batch_is_retried_whole_not_split(sink: FakeStoreSink) -> None:
    sink.fake.batch_error = pg_error("40P01", "deadlock detected")  # no single record fails

    with pytest.raises(SinkUnavailable) as caught:
        sink.write(batch("a", "b"))

    assert not caught.value.statement
    assert caught.value.sqlstate == "40P01"
    assert "deadlock detected" in str(caught.value)
    assert sink.fake.rows == []
    assert sink.fake.statements == 1  # not written again record by record


def test_an_outage_during_isolation_is_an_outage_with_its_sqlstate(sink: FakeStoreSink) -> None:
    sink.fake.batch_error = pg_error("23505")
    sink.fake.errors["b"] = pg_error("40P01", "deadlock detected")

    with pytest.raises(SinkUnavailable) as caught:
        sink.write(batch("a", "b"))

    assert not caught.value.statement
    assert caught.value.sqlstate == "40P01"
    assert "deadlock detected" in str(caught.value)


def test_a_failed_offsets_statement_rolls_back_and_leaves_nothing_to_commit_later(
    sink: FakeStoreSink,
) -> None:
    sink.fake.offsets_error = pg_error("42P01", 'relation "sink_offsets" does not exist')

    with pytest.raises(SinkUnavailable) as caught:
        sink.write(batch("a"))
    assert caught.value.statement
    # What failed, why and the server's words: the worker logs this on every retry.
    assert str(caught.value).startswith("cannot write a batch record by record: sqlstate_42P01")
    assert "sink_offsets" in str(caught.value)
    assert sink.fake.pending == []  # both attempts rolled back

    sink.fake.offsets_error = None
    assert sink.write(batch("a")) == 1
    assert sink.fake.rows == ["a"]  # once


class InterruptedSink(FakeStoreSink):
    """apply() is interrupted (KeyboardInterrupt, SystemExit: not an Exception) on ``when``."""

    def __init__(self, when: str) -> None:
        super().__init__()
        self.when = when

    def apply(self, cur: Cursor, records: Sequence[SinkRecord[str]], prepared: Any = None) -> int:
        cur.execute("INSERT", [r.value for r in records])
        if any(r.value == self.when for r in records):
            raise KeyboardInterrupt
        return len(records)


@pytest.mark.parametrize("split", [False, True], ids=["batch", "record_by_record"])
def test_an_interrupted_write_rolls_back_and_propagates(split: bool) -> None:
    sink = InterruptedSink("b")
    if split:
        sink.fake.batch_error = pg_error("23505")  # the batch fails, then "b" is interrupted alone

    with pytest.raises(KeyboardInterrupt):
        sink.write(batch("a", "b"))

    assert sink.fake.pending == []
    assert sink.fake.savepoints == []
    assert sink.fake.commits == 0


def test_a_rollback_that_fails_drops_the_connection(sink: FakeStoreSink) -> None:
    def broken_rollback() -> None:
        sink.fake.closed = 2
        raise psycopg2.InterfaceError("connection already closed")

    sink.fake.errors["b"] = pg_error("22003")
    sink.fake.rollback = broken_rollback  # type: ignore[method-assign]

    with pytest.raises(SinkUnavailable) as caught:
        sink.write(batch("a", "b"))

    assert not caught.value.statement
    sink.fake.errors.clear()
    assert sink.write(batch("a", "b")) == 2
    assert sink.connections == 2


def test_an_open_connection_is_rolled_back_after_a_failed_batch() -> None:
    conn = FakeConnection()
    rolled: list[int] = []
    original = conn.rollback

    def rollback() -> None:
        rolled.append(1)
        original()

    conn.rollback = rollback  # type: ignore[method-assign]
    PostgresSink[str]("host=/nonexistent")._failed(conn, pg_error("22003"))
    assert rolled == [1]
    assert not conn.closed


def test_store_offsets_uses_execute_values_with_one_page(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def execute_values(cur: Any, sql: str, rows: list[Any], **kwargs: Any) -> None:
        calls.append({"sql": sql, "rows": rows, **kwargs})

    monkeypatch.setattr(psycopg2.extras, "execute_values", execute_values)
    offsets = {(TOPIC, p): p + 10 for p in range(150)}  # more than execute_values' default page (100)

    PostgresSink[str]("host=/nonexistent")._store_offsets(object(), SinkBatch("g", [], offsets))

    ((call),) = calls
    assert call["sql"] == STORE_OFFSETS
    assert call["page_size"] == 150  # one statement, whatever the partition count
    assert len(call["rows"]) == 150


class RenderingCursor:
    """What execute_values needs of a cursor: ``connection.encoding``, ``mogrify`` (psycopg2's
    adaptation of each argument merged into the template, as a connection-less cursor would) and
    ``execute``, which keeps the statement that PostgreSQL would receive."""

    class connection:  # the attribute psycopg2 reads
        encoding = "UTF8"

    def __init__(self) -> None:
        self.executed: list[str] = []

    def mogrify(self, template: str | bytes, args: Sequence[Any]) -> bytes:
        if isinstance(template, str):  # psycopg2 takes either
            template = template.encode()
        return template % tuple(psycopg2.extensions.adapt(a).getquoted() for a in args)

    def execute(self, sql: bytes) -> None:
        self.executed.append(sql.decode())


def test_the_offsets_statement_sends_every_partitions_row_typed() -> None:
    """The VALUES rows as PostgreSQL gets them: the group and topic, then the partition as an
    integer and the next offset as a bigint (as the sink_offsets columns are), whatever size the
    numbers are; a broken template would fail every batch's offsets at the database."""
    cur = RenderingCursor()
    offsets = {(TOPIC, 1): 5_000_000_000, (TOPIC, 0): 7}
    PostgresSink[str]("host=/nonexistent")._store_offsets(cur, SinkBatch("g", [], offsets))  # type: ignore[arg-type]
    values = f"('g', '{TOPIC}', 0::integer, 7::bigint),('g', '{TOPIC}', 1::integer, 5000000000::bigint)"
    assert cur.executed == [STORE_OFFSETS % values]


def test_a_statement_failure_says_how_many_records_failed_and_why() -> None:
    record = SinkRecord("a", TOPIC, 0, 0)
    rejected = [
        Rejection(record, "sqlstate_42703", 'column "url_hash" does not exist', None, "42703"),
        Rejection(record, "sqlstate_42703", 'column "url_hash" does not exist', None, "42703"),
    ]
    assert (
        str(StatementFailed(rejected))
        == '2 record(s) failed alike: sqlstate_42703: column "url_hash" does not exist'
    )


def test_a_sink_from_settings_connects_to_the_settings_database(connects: list[Connect]) -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    PostgresSink[str].from_settings(settings).open()
    ((args, _kwargs, _conn),) = connects
    assert args == (settings.postgres.dsn(),)


class FailingEncode(FakeStoreSink):
    def encode(self, records: Sequence[SinkRecord[str]]) -> Any:
        raise ValueError("a record the encoder cannot take")


def test_prepare_keeps_the_work_for_exactly_the_batchs_records_or_nothing() -> None:
    sink = PreparingSink()
    todo = batch("a", "b")
    prepared = sink.prepare(todo)
    assert isinstance(prepared.prepared, Prepared)
    assert prepared.prepared.records is todo.records
    assert prepared.prepared.work == "a|b"
    assert (prepared.group, prepared.records, prepared.next_offsets) == (
        todo.group,
        todo.records,
        todo.next_offsets,
    )
    assert FailingEncode().prepare(todo) is todo  # the write encodes again and isolates the record


class OffsetsConnection(FakeConnection):
    """Answers SELECT_OFFSETS from ``stored`` ((group, topic) -> {partition: offset})."""

    def __init__(self, stored: dict[tuple[str, str], dict[int, int]], error: Exception | None = None) -> None:
        super().__init__()
        self.stored, self.error, self.asked = stored, error, []  # type: ignore[var-annotated]

    def cursor(self) -> Any:
        conn = self

        class Cursor(FakeCursor):
            def execute(self, sql: str, values: Sequence[str] = ()) -> None:
                assert sql == SELECT_OFFSETS
                conn.asked.append(tuple(values))
                if conn.error is not None:
                    self._raise(conn.error)
                self.rows = [(str(p), str(o)) for p, o in conn.stored.get(tuple(values), {}).items()]  # type: ignore[arg-type]

            def fetchall(self) -> list[tuple[str, str]]:
                return self.rows

        return Cursor(self)


class OffsetsSink(PostgresSink[str]):
    def __init__(self, conn: OffsetsConnection) -> None:
        super().__init__("host=/nonexistent")
        self.conn = conn

    def _connection(self) -> Any:
        return self.conn


def test_stored_offsets_are_read_per_group_and_topic_as_integers() -> None:
    conn = OffsetsConnection({("g", "t.a"): {0: 7, 2: 11}, ("h", "t.a"): {0: 99}})
    sink = OffsetsSink(conn)

    assert sink.stored_offsets("g", "t.a") == {0: 7, 2: 11}
    assert sink.stored_offsets("g", "t.b") == {}
    assert conn.asked == [("g", "t.a"), ("g", "t.b")]
    assert conn.commits == 2  # each read ends its transaction: no lock or snapshot is held


def test_stored_offsets_that_cannot_be_read_are_unavailable_loudly_or_not() -> None:
    outage = OffsetsSink(OffsetsConnection({}, pg_error("57P01", "terminating connection")))
    with pytest.raises(SinkUnavailable) as caught:
        outage.stored_offsets("g", "t.a")
    assert (caught.value.statement, caught.value.sqlstate) == (False, "57P01")

    ours = OffsetsSink(OffsetsConnection({}, pg_error("42P01", 'relation "sink_offsets" does not exist')))
    with pytest.raises(SinkUnavailable) as caught:
        ours.stored_offsets("g", "t.a")
    assert (caught.value.statement, caught.value.sqlstate) == (True, "42P01")
    assert str(caught.value).startswith("cannot read the stored offsets: sqlstate_42P01")
