"""InMemorySink (sinks/base.py), the fake the worker's tests run on: it must honour the sink
contract exactly as PostgresSink does (fence per group and partition, offsets never back), or the
worker's tests would pass on a fake that is kinder than the real sink."""

from __future__ import annotations

import pytest

from sinks.base import InMemorySink, SinkBatch, SinkRecord, SinkUnavailable, StatementFailed

T = "t.pages.unique"


def records(partition: int, first: int, *values: str) -> list[SinkRecord[str]]:
    return [SinkRecord(v, T, partition, first + i) for i, v in enumerate(values)]


def test_records_before_the_stored_offset_of_their_group_and_partition_are_skipped() -> None:
    sink = InMemorySink[str](key=lambda v: v.split("=")[0])
    assert sink.write(SinkBatch("g", records(0, 0, "a=1", "b=1"), {(T, 0): 2})) == 2
    # A replay of offset 1 (b=old) then a new record at 2: the stale one is skipped, not the rest.
    replay = [SinkRecord("b=old", T, 0, 1), SinkRecord("c=1", T, 0, 2)]
    assert sink.write(SinkBatch("g", replay, {(T, 0): 3})) == 1
    assert sink.rows == {"a": "a=1", "b": "b=1", "c": "c=1"}
    # Another partition and another group have their own offsets.
    assert sink.write(SinkBatch("g", records(1, 0, "d=1"), {(T, 1): 1})) == 1
    assert sink.write(SinkBatch("h", [SinkRecord("a=2", T, 0, 0)], {(T, 0): 1})) == 1
    assert sink.stored_offsets("g", T) == {0: 3, 1: 1}
    assert sink.stored_offsets("h", T) == {0: 1}


def test_offsets_never_move_back() -> None:
    sink = InMemorySink[str](key=str)
    sink.write(SinkBatch("g", [], {(T, 0): 5}))
    sink.write(SinkBatch("g", [], {(T, 0): 2, (T, 1): 0}))
    assert sink.stored_offsets("g", T) == {0: 5, 1: 0}


def test_injected_faults_store_nothing() -> None:
    sink = InMemorySink[str](key=str)
    sink.open()
    assert sink.opened
    assert not sink.closed
    sink.fail_writes, sink.fail_statements = 1, 1
    with pytest.raises(SinkUnavailable, match="injected outage"):
        sink.write(SinkBatch("g", records(0, 0, "a"), {(T, 0): 1}))
    with pytest.raises(StatementFailed) as failed:
        sink.write(SinkBatch("g", records(0, 0, "a"), {(T, 0): 1}))
    assert [r.sqlstate for r in failed.value.rejected] == ["42601"]
    assert (sink.rows, sink.offsets) == ({}, {})
    assert sink.write(SinkBatch("g", records(0, 0, "a"), {(T, 0): 1})) == 1
