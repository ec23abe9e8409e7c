"""streams/recoveryguard.py on faust's real table recovery: a changelog tail deleted while a
worker restores it ends the recovery; records that may still come never do."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import faust
import pytest
from faust.types import TP

from streams.recoveryguard import DeletedTailGuard

CHANGELOG = TP("crawlstream-streams-domain_5m-changelog", 0)


@dataclass
class FakeConsumer:
    """faust's ``Consumer.position``: the next offset the consumer will return for ``tp``; and
    ``Consumer.earliest_offsets``: the broker's log start of each partition (0 when not set)."""

    positions: dict[TP, int | None] = field(default_factory=dict)
    log_starts: dict[TP, int] = field(default_factory=dict)

    async def position(self, tp: TP) -> int | None:
        return self.positions.get(tp)

    async def earliest_offsets(self, *partitions: TP) -> dict[TP, int]:
        return {tp: self.log_starts.get(tp, 0) for tp in partitions}


@dataclass
class Worker:
    tables: Any  # the real faust TableManager (its Recovery, its changelog queue)
    consumer: FakeConsumer


@pytest.fixture
def worker() -> Worker:
    app = faust.App("recoveryguard-test", broker="kafka://127.0.0.1:1", store="memory://")
    recovery = app.tables.recovery
    recovery.in_recovery = True
    recovery.active_highwaters[CHANGELOG] = 18692
    recovery.active_offsets[CHANGELOG] = 16962
    return Worker(app.tables, FakeConsumer())


def checks(guard: DeletedTailGuard, n: int) -> list[list[TP]]:
    return [asyncio.run(guard.check()) for _ in range(n)]


def test_a_deleted_tail_ends_the_recovery_after_two_idle_checks(worker: Worker) -> None:
    recovery = worker.tables.recovery
    assert recovery.need_recovery()
    # Retention deleted 16963..18692: the fetch was out of range and reset to the log start.
    worker.consumer.positions[CHANGELOG] = 18693
    guard = DeletedTailGuard(worker)
    assert checks(guard, 2) == [[], [CHANGELOG]]
    assert recovery.active_offsets[CHANGELOG] == 18692
    assert not recovery.need_recovery()  # faust's own loop ends the recovery at its next check


def test_records_that_may_still_come_are_waited_for(worker: Worker) -> None:
    guard = DeletedTailGuard(worker)
    worker.consumer.positions[CHANGELOG] = 18692  # the record at the highwater is still to read
    assert checks(guard, 3) == [[], [], []]
    worker.consumer.positions[CHANGELOG] = None  # no position yet (just assigned)
    assert checks(guard, 3) == [[], [], []]
    assert worker.tables.recovery.need_recovery()


def test_progress_between_checks_defers_the_release(worker: Worker) -> None:
    recovery = worker.tables.recovery
    worker.consumer.positions[CHANGELOG] = 18693
    guard = DeletedTailGuard(worker)
    assert checks(guard, 1) == [[]]
    recovery.active_offsets[CHANGELOG] = 17000  # records fetched before the reset were applied
    assert checks(guard, 1) == [[]]
    assert recovery.active_offsets[CHANGELOG] == 17000
    assert checks(guard, 1) == [[CHANGELOG]]


def test_a_queued_changelog_record_or_no_recovery_means_no_release(worker: Worker) -> None:
    recovery = worker.tables.recovery
    worker.consumer.positions[CHANGELOG] = 18693
    guard = DeletedTailGuard(worker)
    worker.tables.changelog_queue.put_nowait("a record still to apply")
    assert checks(guard, 3) == [[], [], []]
    worker.tables.changelog_queue.clear()
    recovery.in_recovery = False
    assert checks(guard, 3) == [[], [], []]
    assert recovery.active_offsets[CHANGELOG] == 16962


def test_without_a_position_a_log_start_past_the_highwater_ends_the_recovery(worker: Worker) -> None:
    recovery = worker.tables.recovery
    # The fetch was out of range and the consumer waits on its offset reset: no position. The
    # broker deleted every record up to the highwater (its log start is past it).
    worker.consumer.positions[CHANGELOG] = None
    worker.consumer.log_starts[CHANGELOG] = 18700
    guard = DeletedTailGuard(worker)
    assert checks(guard, 2) == [[], [CHANGELOG]]
    assert recovery.active_offsets[CHANGELOG] == 18692
    assert not recovery.need_recovery()


def test_without_a_position_records_the_broker_still_has_are_waited_for(worker: Worker) -> None:
    guard = DeletedTailGuard(worker)
    worker.consumer.positions[CHANGELOG] = None
    worker.consumer.log_starts[CHANGELOG] = 18692  # the record at the highwater still exists
    assert checks(guard, 3) == [[], [], []]
    worker.consumer.positions[CHANGELOG] = 17000  # a position before the highwater: also not
    worker.consumer.log_starts[CHANGELOG] = 16000
    assert checks(guard, 3) == [[], [], []]
    assert worker.tables.recovery.active_offsets[CHANGELOG] == 16962
