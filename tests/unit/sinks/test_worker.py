"""SinkWorker (pages family) with a fake consumer/producer and the in-memory sink (no services)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from crawlstream.records import DeadLetter, PageRecord
from sinks.base import SinkError

UNIQUE = "t.pages.unique"
DEAD = "t.deadletter"
GROUP = "sink-test"

MakePage = Callable[..., PageRecord]


def fill(rig: Any, make_page: MakePage, partition: int, urls: list[str]) -> None:
    for url in urls:
        rig.consumer.append(partition, make_page(url).to_bytes(), key=url.encode())


def dead_letters(rig: Any) -> list[DeadLetter]:
    assert all(topic == DEAD for topic, _, _ in rig.producer.delivered)
    return [DeadLetter.model_validate_json(value) for _, value, _ in rig.producer.delivered]


def test_batches_by_size_then_latency_and_stores_next_offsets(rig: Any, make_page: MakePage) -> None:
    fill(rig, make_page, 0, [f"https://a.test/{i}" for i in range(7)])

    rig.worker.run(max_idle_s=5)

    assert [len(b.records) for b in rig.sink.batches] == [3, 3, 1]
    assert [dict(b.next_offsets) for b in rig.sink.batches] == [{(UNIQUE, 0): n} for n in (3, 6, 7)]
    assert sorted(rig.sink.pages) == sorted(f"https://a.test/{i}" for i in range(7))
    assert rig.sink.stored_offsets(GROUP, UNIQUE) == {0: 7}
    # Kafka gets the same offsets, after each store commit, for lag tools.
    assert rig.consumer.commits == [[(UNIQUE, 0, 3)], [(UNIQUE, 0, 6)], [(UNIQUE, 0, 7)]]
    assert rig.metric("sink_batches_total") == 3
    assert rig.metric("sink_records_written_total") == 7
    assert rig.metric("sink_rows_changed_total") == 7
    assert rig.metric("sink_last_commit_timestamp_seconds") > 0
    assert rig.consumer.closed
    assert rig.sink.closed


def test_offsets_are_tracked_per_partition(make_rig: Any, make_page: MakePage) -> None:
    rig = make_rig(batch_size=100)
    fill(rig, make_page, 0, ["https://a.test/1", "https://a.test/2"])
    fill(rig, make_page, 1, ["https://b.test/1", "https://b.test/2", "https://b.test/3"])

    rig.worker.run(max_idle_s=5)

    assert rig.sink.stored_offsets(GROUP, UNIQUE) == {0: 2, 1: 3}
    assert rig.consumer.commits == [[(UNIQUE, 0, 2), (UNIQUE, 1, 3)]]


def test_duplicate_urls_count_as_written_but_insert_once(rig: Any, make_page: MakePage) -> None:
    fill(rig, make_page, 0, ["https://a.test/x", "https://a.test/x", "https://a.test/y", "https://a.test/x"])

    rig.worker.run(max_idle_s=5)

    assert sorted(rig.sink.pages) == ["https://a.test/x", "https://a.test/y"]
    assert rig.metric("sink_records_written_total") == 4
    assert rig.metric("sink_rows_changed_total") == 2


def test_malformed_records_go_to_dead_letters_and_offsets_move_past_them(
    rig: Any, make_page: MakePage
) -> None:
    rig.consumer.append(0, b"{not json", key=b"k1")
    rig.consumer.append(0, None, key=b"k2")
    rig.consumer.append(0, json.dumps({"url": "https://a.test/"}).encode(), key=b"k3")
    fill(rig, make_page, 0, ["https://a.test/ok"])

    rig.worker.run(max_idle_s=5)

    letters = dead_letters(rig)
    assert [(d.reason, d.source_offset) for d in letters] == [
        ("invalid_json", 0),
        ("null_value", 1),
        ("invalid_record", 2),
    ]
    assert {d.stage for d in letters} == {"sink"}
    assert {d.source_topic for d in letters} == {UNIQUE}
    assert letters[0].original_value() == b"{not json"
    assert [key for _, _, key in rig.producer.delivered] == [b"k1", b"k2", b"k3"]
    assert list(rig.sink.pages) == ["https://a.test/ok"]
    assert rig.sink.stored_offsets(GROUP, UNIQUE) == {0: 4}
    assert rig.metric("sink_dead_letters_total", reason="invalid_json") == 1
    assert rig.metric("sink_dead_letters_total", reason="invalid_record") == 1


def test_a_batch_of_only_dead_letters_still_stores_its_offsets(rig: Any) -> None:
    rig.consumer.append(0, b"garbage")

    rig.worker.run(max_idle_s=5)

    assert rig.sink.stored_offsets(GROUP, UNIQUE) == {0: 1}
    assert rig.sink.pages == {}


def test_on_assign_seeks_to_stored_offsets_else_keeps_the_default(rig: Any, make_page: MakePage) -> None:
    fill(rig, make_page, 0, [f"https://a.test/{i}" for i in range(5)])
    fill(rig, make_page, 1, [f"https://b.test/{i}" for i in range(2)])
    rig.sink.offsets[(GROUP, UNIQUE, 0)] = 3  # as if a previous run had stored 0..2
    rig.sink.offsets[("other-group", UNIQUE, 1)] = 2  # another group's offsets do not apply

    rig.worker.run(max_idle_s=5)

    assert rig.consumer.assigned_offsets == [(UNIQUE, 0, 3), (UNIQUE, 1, 0)]
    assert sorted(rig.sink.pages) == [
        "https://a.test/3",
        "https://a.test/4",
        "https://b.test/0",
        "https://b.test/1",
    ]
    assert rig.sink.stored_offsets(GROUP, UNIQUE) == {0: 5, 1: 2}


def test_stored_offsets_win_over_kafka_committed_ones(rig: Any, make_page: MakePage) -> None:
    fill(rig, make_page, 0, [f"https://a.test/{i}" for i in range(4)])
    rig.consumer.committed[(UNIQUE, 0)] = 1  # a Kafka commit that lagged behind the store
    rig.sink.offsets[(GROUP, UNIQUE, 0)] = 3

    rig.worker.run(max_idle_s=5)

    assert list(rig.sink.pages) == ["https://a.test/3"]


def test_rejected_rows_become_constraint_violation_dead_letters(make_rig: Any, make_page: MakePage) -> None:
    rig = make_rig(reject=lambda p: "integer out of range" if p.body_bytes > 2**31 else None)
    rig.consumer.append(0, make_page("https://a.test/big", body_bytes=2**40).to_bytes(), key=b"big")
    fill(rig, make_page, 0, ["https://a.test/ok"])

    rig.worker.run(max_idle_s=5)

    letters = dead_letters(rig)
    assert [(d.reason, d.error, d.source_offset) for d in letters] == [
        ("constraint_violation", "integer out of range", 0)
    ]
    assert rig.producer.delivered[0][2] == b"big"
    assert list(rig.sink.pages) == ["https://a.test/ok"]
    assert rig.sink.stored_offsets(GROUP, UNIQUE) == {0: 2}
    assert rig.metric("sink_dead_letters_total", reason="constraint_violation") == 1


def test_unavailable_sink_is_retried_without_advancing_offsets(rig: Any, make_page: MakePage) -> None:
    fill(rig, make_page, 0, ["https://a.test/1", "https://a.test/2"])
    rig.sink.fail_writes = 3
    commits_seen_during_outage: list[int] = []
    original_write = rig.sink.write

    def write(batch: Any) -> int:
        commits_seen_during_outage.append(len(rig.consumer.commits))
        return original_write(batch)

    rig.sink.write = write

    rig.worker.run(max_idle_s=5)

    assert commits_seen_during_outage == [0, 0, 0, 0]  # 3 failures + 1 success, no commit before
    assert rig.metric("sink_db_retries_total") == 3
    assert len(rig.sink.batches) == 1
    assert rig.sink.stored_offsets(GROUP, UNIQUE) == {0: 2}


def test_stop_during_an_outage_leaves_offsets_unstored(rig: Any, make_page: MakePage) -> None:
    fill(rig, make_page, 0, ["https://a.test/1"])
    rig.sink.fail_writes = 10**9
    original_write = rig.sink.write

    def write(batch: Any) -> int:
        rig.worker.request_stop()  # SIGTERM arrives while the database is down
        return original_write(batch)

    rig.sink.write = write

    rig.worker.run()

    assert rig.sink.stored_offsets(GROUP, UNIQUE) == {}
    assert rig.consumer.commits == []
    assert rig.consumer.closed


def test_stop_finishes_the_current_batch_then_returns(rig: Any, make_page: MakePage) -> None:
    fill(rig, make_page, 0, [f"https://a.test/{i}" for i in range(10)])
    calls = 0

    def stop_after_first_consume(_messages: list[Any]) -> None:
        nonlocal calls
        calls += 1
        rig.worker.request_stop()

    rig.consumer.after_consume = stop_after_first_consume

    rig.worker.run()  # no max_idle_s: only the stop ends it

    assert calls == 1
    assert len(rig.sink.pages) == 3
    assert rig.sink.stored_offsets(GROUP, UNIQUE) == {0: 3}


def test_undelivered_dead_letters_stop_the_worker_before_offsets_are_stored(rig: Any) -> None:
    rig.consumer.append(0, b"garbage")
    rig.producer.fail = True

    with pytest.raises(SinkError, match="undelivered"):
        rig.worker.run(max_idle_s=5)

    assert rig.sink.stored_offsets(GROUP, UNIQUE) == {}
    assert rig.consumer.closed


def test_revoke_drops_unwritten_messages_of_revoked_partitions(rig: Any, make_page: MakePage) -> None:
    fill(rig, make_page, 0, ["https://a.test/1"])
    calls = 0

    def revoke_on_second_consume(_messages: list[Any]) -> None:
        # librdkafka runs rebalance callbacks inside consume(): here while a batch is open.
        nonlocal calls
        calls += 1
        if calls == 2:
            rig.worker._on_revoke(rig.consumer, [TopicPartition(UNIQUE, 0)])
            rig.worker.request_stop()

    rig.consumer.after_consume = revoke_on_second_consume

    rig.worker.run()

    assert calls == 2
    assert rig.sink.batches == []  # nothing written for a partition this worker no longer owns
    assert rig.sink.stored_offsets(GROUP, UNIQUE) == {}


class CountingSink:
    """A sink whose committed writes count parked-touch events, as PostgresSink.take_counts does."""

    def __init__(self, inner: Any, per_write: dict[str, int]) -> None:
        self.inner, self.per_write, self.owed = inner, per_write, dict[str, int]()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def write(self, batch: Any) -> int:
        changed = int(self.inner.write(batch))
        for event, n in self.per_write.items():
            self.owed[event] = self.owed.get(event, 0) + n
        return changed

    def take_counts(self) -> dict[str, int]:
        owed, self.owed = self.owed, {}
        return owed


def test_counts_of_committed_writes_become_the_touches_pending_metric(rig: Any, make_page: MakePage) -> None:
    rig.worker._sink = CountingSink(rig.sink, {"touches_folded": 2})
    fill(rig, make_page, 0, [f"https://a.test/{i}" for i in range(6)])  # two batches of 3

    rig.worker.run(max_idle_s=1)

    assert rig.metric("sink_touches_pending_total", action="folded") == 4
    assert rig.metric("sink_batches_total") == 2
