"""The sink contract every sink implements, and an in-memory sink that honours it.

Modelled on quix-streams' ``BatchingSink``: the worker hands a sink one :class:`SinkBatch` at a
time, holding the decoded records *and* the Kafka offsets they came from; a sink stores both
atomically, which is what makes delivery exactly-once across crashes and rebalances: after a
restart the worker seeks every partition to :meth:`PageSink.stored_offsets`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from crawlstream.errors import CrawlstreamError
from crawlstream.records import PageRecord


@dataclass(frozen=True)
class SinkRecord:
    """A decoded page and the Kafka position it was read from."""

    page: PageRecord
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class SinkBatch:
    """Records to store plus, per (topic, partition), the next offset to read once stored.

    Offsets are explicit rather than derived from ``records`` because a batch may hold
    messages that went to the dead-letter topic: their offsets must advance too.
    """

    group: str
    records: Sequence[SinkRecord]
    next_offsets: Mapping[tuple[str, int], int] = field(default_factory=dict)


class SinkError(CrawlstreamError):
    """A sink failed in a way retrying cannot fix."""


class SinkUnavailable(SinkError):
    """The store is unreachable; nothing was stored. The worker retries the same batch."""


class RowsRejected(SinkError):
    """Some records violate a constraint; nothing was stored. ``rejected`` names them."""

    def __init__(self, rejected: Sequence[tuple[SinkRecord, str]]) -> None:
        super().__init__(f"{len(rejected)} record(s) rejected by the store")
        self.rejected = list(rejected)


class PageSink(Protocol):
    def open(self) -> None:
        """Connect; raise SinkUnavailable if the store cannot be reached."""

    def write(self, batch: SinkBatch) -> int:
        """Store the records and the offsets in one atomic step; return how many rows were new.

        Idempotent per page key: replaying a batch stores nothing new. Raises SinkUnavailable
        (retry later) or RowsRejected (drop the named records, retry the rest).
        """

    def stored_offsets(self, group: str, topic: str) -> dict[int, int]:
        """Next offset to read per partition, as committed by :meth:`write`."""

    def close(self) -> None: ...


class InMemoryPageSink:
    """A PageSink in a dict, for tests of the worker. ``reject`` and ``fail_writes`` inject faults."""

    def __init__(self, reject: Callable[[PageRecord], str | None] | None = None) -> None:
        self.pages: dict[str, PageRecord] = {}
        self.offsets: dict[tuple[str, str, int], int] = {}
        self.reject = reject
        self.fail_writes = 0  # the next N writes raise SinkUnavailable
        self.batches: list[SinkBatch] = []
        self.opened = self.closed = False

    def open(self) -> None:
        self.opened = True

    def write(self, batch: SinkBatch) -> int:
        if self.fail_writes > 0:
            self.fail_writes -= 1
            raise SinkUnavailable("injected outage")
        if self.reject is not None:
            rejected = [(r, why) for r in batch.records if (why := self.reject(r.page)) is not None]
            if rejected:
                raise RowsRejected(rejected)
        # All checks passed: from here on, apply everything (the "commit").
        inserted = 0
        for record in batch.records:
            if record.page.canonical_url not in self.pages:
                self.pages[record.page.canonical_url] = record.page
                inserted += 1
        for (topic, partition), offset in batch.next_offsets.items():
            key = (batch.group, topic, partition)
            self.offsets[key] = max(offset, self.offsets.get(key, 0))
        self.batches.append(batch)
        return inserted

    def stored_offsets(self, group: str, topic: str) -> dict[int, int]:
        return {p: o for (g, t, p), o in self.offsets.items() if g == group and t == topic}

    def close(self) -> None:
        self.closed = True
