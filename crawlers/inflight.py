"""Which offsets of the requests topic a distributed crawler may commit (used by DistributedSpider).

A request is done when its response (or failure) has been handled, or when Scrapy dropped it
(a duplicate). Requests finish out of order, so per partition the committable position is the
lowest offset still in flight, or one past the last consumed offset when none is: a crash then
re-delivers exactly the unfinished requests (at least once). No topic or setting is used here.
"""

from __future__ import annotations

Partition = tuple[str, int]  # topic, partition


class InFlightOffsets:
    def __init__(self) -> None:
        self._open: dict[Partition, set[int]] = {}
        self._next: dict[Partition, int] = {}

    def consumed(self, topic: str, partition: int, offset: int) -> None:
        key = (topic, partition)
        self._open.setdefault(key, set()).add(offset)
        self._next[key] = max(self._next.get(key, 0), offset + 1)

    def done(self, topic: str, partition: int, offset: int) -> int:
        """Mark one offset finished; returns the partition's committable position."""
        key = (topic, partition)
        self._open.get(key, set()).discard(offset)
        return self.position(topic, partition)

    def position(self, topic: str, partition: int) -> int:
        key = (topic, partition)
        pending = self._open.get(key)
        return min(pending) if pending else self._next.get(key, 0)

    def revoke(self, topic: str, partition: int) -> None:
        """The partition moved to another process: forget it (the new owner re-delivers)."""
        self._open.pop((topic, partition), None)
        self._next.pop((topic, partition), None)

    def in_flight(self) -> int:
        return sum(len(v) for v in self._open.values())
