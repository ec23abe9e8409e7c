"""The sink contract every sink implements, and an in-memory sink that honours it.

Modelled on quix-streams' ``BatchingSink``: the worker hands a sink one :class:`SinkBatch` at a
time, holding the decoded records *and* the Kafka offsets they came from; a sink stores both
atomically, which is what makes delivery exactly-once across crashes and rebalances: after a
restart the worker seeks every partition to :meth:`Sink.stored_offsets`, and a sink skips the
records of a batch that lie before the offsets it already stored (a fence against zombies).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from crawlstream.errors import CrawlstreamError

R = TypeVar("R")


@dataclass(frozen=True)
class SinkRecord(Generic[R]):
    """A decoded record and the Kafka position it was read from."""

    value: R
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class SinkBatch(Generic[R]):
    """Records to store plus, per (topic, partition), the next offset to read once stored.

    Offsets are explicit rather than derived from ``records`` because a batch may hold
    messages that went to the dead-letter topic: their offsets must advance too. ``prepared`` is
    what :meth:`Sink.prepare` worked out ahead for exactly these records (None: nothing).
    """

    group: str
    records: Sequence[SinkRecord[R]]
    next_offsets: Mapping[tuple[str, int], int] = field(default_factory=dict)
    prepared: Any = None


class SinkError(CrawlstreamError):
    """A sink failed in a way retrying cannot fix."""


class SinkUnavailable(SinkError):
    """Nothing was stored and the records are not at fault; the worker retries the same batch.

    Usually the store is unreachable. ``statement`` marks the other kind: our own statements fail
    outside any record (the offsets table is missing, a grant is lacking): retried as well, since
    no record can be blamed and no progress can be stored, but loudly (``sqlstate`` names it)."""

    def __init__(self, message: str, *, sqlstate: str | None = None, statement: bool = False) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.statement = statement


@dataclass(frozen=True)
class Rejection:
    """A record the store refused, and why: what its dead letter carries."""

    record: SinkRecord[Any]
    reason: str  # e.g. sqlstate_54000, too_large, unprocessable
    detail: str
    error_class: str | None = None
    sqlstate: str | None = None


class RowsRejected(SinkError):
    """Some records cannot be stored; nothing was stored. ``rejected`` names them: the worker
    dead-letters them and writes the rest of the batch."""

    def __init__(self, rejected: Sequence[Rejection]) -> None:
        super().__init__(f"{len(rejected)} record(s) rejected by the store")
        self.rejected = list(rejected)


class StatementFailed(SinkError):
    """Every record of the batch failed alone, with errors of our statements rather than of data
    (e.g. SQLSTATE 42xxx): likely our SQL, schema or grants. Nothing was stored. The worker retries
    for a bounded time (a deploy or migration may fix it), then dead-letters ``rejected``."""

    def __init__(self, rejected: Sequence[Rejection]) -> None:
        first = rejected[0] if rejected else None
        super().__init__(
            f"{len(rejected)} record(s) failed alike: {first.reason}: {first.detail}"
            if first
            else "no records"
        )
        self.rejected = list(rejected)


class Sink(Protocol[R]):
    def open(self) -> None:
        """Connect; raise SinkUnavailable if the store cannot be reached."""

    def prepare(self, batch: SinkBatch[R]) -> SinkBatch[R]:
        """The batch with the work that needs no store done ahead (e.g. encoding its rows), so that
        the worker can do it while the previous batch is being written. Touches no store."""

    def write(self, batch: SinkBatch[R]) -> int:
        """Store the records and the offsets in one atomic step; return how many rows changed.

        Idempotent: records before the stored offsets are skipped, and a record equal to what
        is stored changes nothing. Raises SinkUnavailable (retry later), RowsRejected (dead-letter
        the named records, write the rest) or StatementFailed (retry for a while, then as
        RowsRejected).
        """

    def stored_offsets(self, group: str, topic: str) -> dict[int, int]:
        """Next offset to read per partition, as committed by :meth:`write`."""

    def close(self) -> None: ...


class InMemorySink(Generic[R]):
    """A Sink in a dict, for tests of the worker: the last value per ``key`` wins, a value equal
    to the stored one changes nothing. ``reject`` (a reason per value, or None), ``fail_writes``
    and ``fail_statements`` inject faults."""

    def __init__(self, key: Callable[[R], Hashable], reject: Callable[[R], str | None] | None = None) -> None:
        self.rows: dict[Hashable, R] = {}
        self.offsets: dict[tuple[str, str, int], int] = {}
        self.key = key
        self.reject = reject
        self.fail_writes = 0  # the next N writes raise SinkUnavailable
        self.fail_statements = 0  # the next N writes raise StatementFailed (every record, 42601)
        self.batches: list[SinkBatch[R]] = []
        self.opened = self.closed = False

    def open(self) -> None:
        self.opened = True

    def prepare(self, batch: SinkBatch[R]) -> SinkBatch[R]:
        return batch

    def write(self, batch: SinkBatch[R]) -> int:
        if self.fail_writes > 0:
            self.fail_writes -= 1
            raise SinkUnavailable("injected outage")
        if self.fail_statements > 0 and batch.records:
            self.fail_statements -= 1
            raise StatementFailed(
                [
                    Rejection(r, "sqlstate_42601", "injected syntax error", None, "42601")
                    for r in batch.records
                ]
            )
        if self.reject is not None:
            rejected = [
                Rejection(r, why, f"rejected by the in-memory store: {why}", "InMemorySink")
                for r in batch.records
                if (why := self.reject(r.value)) is not None
            ]
            if rejected:
                raise RowsRejected(rejected)
        # All checks passed: from here on, apply everything (the "commit").
        changed = 0
        for record in batch.records:
            if record.offset < self.offsets.get((batch.group, record.topic, record.partition), 0):
                continue  # already stored: the fence
            key = self.key(record.value)
            if self.rows.get(key) != record.value:
                self.rows[key] = record.value
                changed += 1
        for (topic, partition), offset in batch.next_offsets.items():
            position = (batch.group, topic, partition)
            self.offsets[position] = max(offset, self.offsets.get(position, 0))
        self.batches.append(batch)
        return changed

    def stored_offsets(self, group: str, topic: str) -> dict[int, int]:
        return {p: o for (g, t, p), o in self.offsets.items() if g == group and t == topic}

    def close(self) -> None:
        self.closed = True
