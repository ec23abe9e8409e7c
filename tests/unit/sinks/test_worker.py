"""SinkWorker (pages family) with a fake consumer/producer and the in-memory sink (no services)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from confluent_kafka import KafkaError, TopicPartition

from crawlstream.records import DeadLetter, PageRecord
from sinks.base import SinkError, SinkUnavailable
from sinks.families import FAMILIES
from sinks.worker import IDLE_POLL_S, SinkWorker
from tests.unit.sinks.conftest import FakeConsumer

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


def test_rejected_rows_become_dead_letters_with_their_reason_and_class(
    make_rig: Any, make_page: MakePage
) -> None:
    rig = make_rig(reject=lambda p: "sqlstate_22003" if p.body_bytes > 2**31 else None)
    rig.consumer.append(0, make_page("https://a.test/big", body_bytes=2**40).to_bytes(), key=b"big")
    fill(rig, make_page, 0, ["https://a.test/ok"])

    rig.worker.run(max_idle_s=5)

    letters = dead_letters(rig)
    assert [(d.reason, d.error_class, d.source_offset) for d in letters] == [
        ("sqlstate_22003", "InMemorySink", 0)
    ]
    assert "sqlstate_22003" in letters[0].error
    assert rig.producer.delivered[0][2] == b"big"
    assert list(rig.sink.pages) == ["https://a.test/ok"]
    assert rig.sink.stored_offsets(GROUP, UNIQUE) == {0: 2}
    assert rig.metric("sink_dead_letters_total", reason="sqlstate_22003") == 1


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


def test_undelivered_dead_letters_are_retried_before_the_offsets_are_stored(
    rig: Any, make_page: MakePage
) -> None:
    rig.consumer.append(0, b"garbage")
    fill(rig, make_page, 0, ["https://a.test/ok"])
    rig.producer.fail_flushes = 3  # the broker is unreachable for a while
    delivered_at_write: list[int] = []
    original_write = rig.sink.write

    def write(batch: Any) -> int:
        delivered_at_write.append(len(rig.producer.delivered))
        return original_write(batch)

    rig.sink.write = write

    rig.worker.run(max_idle_s=5)

    assert rig.producer.flushes == 4
    assert [(d.reason, d.source_offset) for d in dead_letters(rig)] == [("invalid_json", 0)]
    assert delivered_at_write == [1]  # the batch is written only once its dead letter is delivered
    assert rig.sink.stored_offsets(GROUP, UNIQUE) == {0: 2}
    assert list(rig.sink.pages) == ["https://a.test/ok"]
    assert rig.metric("sink_dead_letter_retries_total") == 3
    assert rig.metric("sink_dead_letters_total", reason="invalid_json") == 1


def test_stop_while_dead_letters_cannot_be_delivered_stores_nothing(rig: Any, make_page: MakePage) -> None:
    rig.consumer.append(0, b"garbage")
    fill(rig, make_page, 0, ["https://a.test/ok"])
    rig.producer.fail_flushes = 10**9
    flush = rig.producer.flush

    def flush_then_stop(timeout: float) -> int:
        rig.worker.request_stop()  # SIGTERM arrives while the broker is down
        return flush(timeout)

    rig.producer.flush = flush_then_stop

    rig.worker.run()

    assert rig.sink.batches == []
    assert rig.sink.stored_offsets(GROUP, UNIQUE) == {}
    assert rig.consumer.commits == []
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


class GatedSink:
    """A sink whose writes wait until ``gate`` is set: the test holds a write in flight.

    Records which threads wrote, how many writes ran at once, and what was written at close()."""

    def __init__(self, inner: Any, gate: threading.Event) -> None:
        self.inner, self.gate = inner, gate
        self.entered = threading.Event()
        self.writer_threads: list[str] = []
        self.active = self.most_at_once = 0
        self.written_at_close: int | None = None
        self.preparing_threads: list[str] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def prepare(self, batch: Any) -> Any:
        self.preparing_threads.append(threading.current_thread().name)
        return replace(batch, prepared=len(self.preparing_threads))

    def write(self, batch: Any) -> int:
        with self._lock:
            self.writer_threads.append(threading.current_thread().name)
            self.active += 1
            self.most_at_once = max(self.most_at_once, self.active)
        self.entered.set()
        try:
            assert self.gate.wait(10), "the test never opened the gate"
            return int(self.inner.write(batch))
        finally:
            with self._lock:
                self.active -= 1

    def close(self) -> None:
        self.written_at_close = len(self.inner.batches)
        self.inner.close()


class Running:
    """worker.run() in a thread of its own, so the test can act while it runs."""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(worker, kwargs), name="worker-main")
        self.thread.start()

    def _run(self, worker: Any, kwargs: dict[str, Any]) -> None:
        try:
            worker.run(**kwargs)
        except BaseException as exc:
            self.error = exc

    def join(self) -> None:
        self.thread.join(10)
        assert not self.thread.is_alive(), "run() did not return"
        if self.error is not None:
            raise self.error


def test_the_next_batch_is_decoded_while_the_previous_one_is_written(rig: Any, make_page: MakePage) -> None:
    gate = threading.Event()
    sink = rig.worker._sink = GatedSink(rig.sink, gate)
    decode = rig.worker.family.decode
    decoded: list[str] = []
    second_batch_decoded = threading.Event()

    def counting_decode(value: bytes | None) -> Any:
        event = decode(value)
        decoded.append(threading.current_thread().name)
        if len(decoded) == 6:
            second_batch_decoded.set()
        return event

    rig.worker.family = replace(rig.worker.family, decode=counting_decode)
    commit = rig.consumer.commit
    committing_threads: list[str] = []

    def recording_commit(**kwargs: Any) -> Any:
        committing_threads.append(threading.current_thread().name)
        return commit(**kwargs)

    rig.consumer.commit = recording_commit
    fill(rig, make_page, 0, [f"https://a.test/{i}" for i in range(6)])  # two batches of 3

    running = Running(rig.worker, max_idle_s=5)
    assert second_batch_decoded.wait(10)
    assert rig.sink.batches == []  # batch 2 is decoded while batch 1's write waits at the gate
    gate.set()
    running.join()

    assert [len(b.records) for b in rig.sink.batches] == [3, 3]
    assert [b.prepared for b in rig.sink.batches] == [1, 2]  # each written as prepared
    assert set(decoded) == {"worker-main"}  # decoding stays in the thread that runs the worker
    assert sink.preparing_threads == ["worker-main", "worker-main"]  # so does preparing
    assert committing_threads == ["worker-main", "worker-main"]  # so do Kafka commits
    assert len(sink.writer_threads) == 2
    assert all(name.startswith("sink-writer-pages") for name in sink.writer_threads)
    assert sink.most_at_once == 1  # batch 2 waits for batch 1: one write in flight at most
    assert rig.consumer.commits == [[(UNIQUE, 0, 3)], [(UNIQUE, 0, 6)]]
    assert rig.metric("sink_batches_total") == 2


def test_revoke_waits_for_the_write_in_flight_then_drops_unwritten_messages(
    rig: Any, make_page: MakePage
) -> None:
    revoking = threading.Event()
    rig.worker._sink = GatedSink(rig.sink, revoking)  # batch 1's write ends only once the revoke began
    fill(rig, make_page, 0, [f"https://a.test/{i}" for i in range(5)])
    calls = 0
    written_when_revoke_returned: list[int] = []
    committed_when_revoke_returned: list[int] = []

    def revoke_on_third_consume(_messages: list[Any]) -> None:
        # Consume 1 filled batch 1 (now writing), 2 collected two messages of batch 2, 3 found none.
        nonlocal calls
        calls += 1
        if calls == 3:
            revoking.set()
            rig.worker._on_revoke(rig.consumer, [TopicPartition(UNIQUE, 0)])
            written_when_revoke_returned.append(len(rig.sink.batches))
            committed_when_revoke_returned.append(len(rig.consumer.commits))
            rig.worker.request_stop()

    rig.consumer.after_consume = revoke_on_third_consume

    rig.worker.run()

    assert written_when_revoke_returned == [1]
    assert committed_when_revoke_returned == [1]  # Kafka has its offsets before the partition moves
    assert [len(b.records) for b in rig.sink.batches] == [3]  # the two collected ones were dropped
    assert rig.sink.stored_offsets(GROUP, UNIQUE) == {0: 3}
    assert rig.consumer.commits == [[(UNIQUE, 0, 3)]]


def test_a_failed_write_stops_run_with_its_error(rig: Any, make_page: MakePage) -> None:
    fill(rig, make_page, 0, [f"https://a.test/{i}" for i in range(9)])

    def write(_batch: Any) -> int:
        raise SinkError("disk full")

    rig.sink.write = write

    with pytest.raises(SinkError, match="disk full"):
        rig.worker.run(max_idle_s=5)

    assert rig.sink.stored_offsets(GROUP, UNIQUE) == {}
    assert rig.consumer.commits == []
    assert rig.consumer.closed
    assert rig.sink.closed


def test_a_failed_write_stops_run_even_when_no_message_follows(rig: Any, make_page: MakePage) -> None:
    fill(rig, make_page, 0, [f"https://a.test/{i}" for i in range(3)])  # one batch, then silence
    failed = threading.Event()
    idle_consumes = 0

    def write(_batch: Any) -> int:
        failed.set()
        raise SinkError("disk full")

    def wait_for_the_failure(messages: list[Any]) -> None:
        nonlocal idle_consumes
        if not messages:
            assert failed.wait(10)
            idle_consumes += 1
            if idle_consumes == 100_000:
                rig.worker.request_stop()  # give up: run() never noticed the failure

    rig.sink.write = write
    rig.consumer.after_consume = wait_for_the_failure

    with pytest.raises(SinkError, match="disk full"):
        rig.worker.run()  # neither max_idle_s nor a stop: only the failure ends it

    assert idle_consumes == 1  # with nothing to decode, run() waits for the write at once
    assert rig.consumer.closed


def test_stop_waits_for_the_write_in_flight_before_closing(rig: Any, make_page: MakePage) -> None:
    gate = threading.Event()
    sink = rig.worker._sink = GatedSink(rig.sink, gate)
    written_at_consumer_close: list[int] = []
    close_consumer = rig.consumer.close

    def close() -> None:
        written_at_consumer_close.append(len(rig.sink.batches))
        close_consumer()

    rig.consumer.close = close
    fill(rig, make_page, 0, [f"https://a.test/{i}" for i in range(3)])

    running = Running(rig.worker)  # no max_idle_s: only the stop ends it
    assert sink.entered.wait(10)
    rig.worker.request_stop()  # while batch 1 is being written
    gate.set()
    running.join()

    assert written_at_consumer_close == [1]
    assert sink.written_at_close == 1
    assert rig.sink.stored_offsets(GROUP, UNIQUE) == {0: 3}
    assert rig.consumer.commits == [[(UNIQUE, 0, 3)]]


def test_stop_still_raises_the_error_of_the_write_in_flight(rig: Any, make_page: MakePage) -> None:
    gate = threading.Event()

    def write(_batch: Any) -> int:
        raise SinkError("disk full")

    rig.sink.write = write
    sink = rig.worker._sink = GatedSink(rig.sink, gate)
    fill(rig, make_page, 0, [f"https://a.test/{i}" for i in range(3)])

    running = Running(rig.worker)
    assert sink.entered.wait(10)
    rig.worker.request_stop()
    gate.set()

    with pytest.raises(SinkError, match="disk full"):
        running.join()
    assert rig.consumer.commits == []
    assert rig.consumer.closed


def test_the_kafka_commit_follows_the_store_before_waiting_for_more(rig: Any, make_page: MakePage) -> None:
    fill(rig, make_page, 0, [f"https://a.test/{i}" for i in range(3)])  # one batch
    consume = rig.consumer.consume
    calls: list[tuple[float, int]] = []  # (timeout, Kafka commits made) per consume()

    def recording_consume(num_messages: int = 1, timeout: float = -1) -> Any:
        calls.append((timeout, len(rig.consumer.commits)))
        return consume(num_messages, timeout)

    rig.consumer.consume = recording_consume

    rig.worker.run(max_idle_s=5)

    # The batch; a look for more without waiting while it is written; then idle waits, committed.
    assert calls[:2] == [(IDLE_POLL_S, 0), (0.0, 0)]
    assert set(calls[2:]) == {(IDLE_POLL_S, 1)}
    assert rig.consumer.commits == [[(UNIQUE, 0, 3)]]


def test_any_exception_of_the_decoder_dead_letters_the_record_with_its_class(
    rig: Any, make_page: MakePage
) -> None:
    decode = rig.worker.family.decode

    def fragile_decode(value: bytes | None) -> Any:
        if value == b"boom":
            raise KeyError("a field the decoder did not expect")  # not a RecordError
        return decode(value)

    rig.worker.family = replace(rig.worker.family, decode=fragile_decode)
    rig.consumer.append(0, b"boom", key=b"k")
    fill(rig, make_page, 0, ["https://a.test/ok"])

    rig.worker.run(max_idle_s=5)

    (letter,) = dead_letters(rig)
    assert (letter.reason, letter.error_class, letter.source_offset) == ("unprocessable", "KeyError", 0)
    assert letter.original_value() == b"boom"
    assert list(rig.sink.pages) == ["https://a.test/ok"]
    assert rig.sink.stored_offsets(GROUP, UNIQUE) == {0: 2}


def test_a_failing_prepare_leaves_the_batch_to_be_written_unprepared(rig: Any, make_page: MakePage) -> None:
    def prepare(_batch: Any) -> Any:
        raise ValueError("a record the encoder cannot take")

    rig.sink.prepare = prepare
    fill(rig, make_page, 0, ["https://a.test/1", "https://a.test/2"])

    rig.worker.run(max_idle_s=5)

    assert sorted(rig.sink.pages) == ["https://a.test/1", "https://a.test/2"]
    assert [b.prepared for b in rig.sink.batches] == [None]


def test_a_huge_key_still_makes_a_dead_letter_that_fits(rig: Any) -> None:
    rig.consumer.append(0, b"[" * 100_000, key=b"k" * 2_000_000)  # deeply nested, and a 2 MB key

    rig.worker.run(max_idle_s=5)

    ((_, value, key),) = rig.producer.delivered
    letter = DeadLetter.model_validate_json(value)
    assert (letter.reason, letter.source_offset, letter.original_key_bytes) == ("invalid_json", 0, 2_000_000)
    assert key is not None
    assert len(key) <= 1024
    assert len(value) + len(key) <= rig.settings.kafka.max_message_bytes
    assert rig.sink.stored_offsets(GROUP, UNIQUE) == {0: 1}


def test_statement_errors_of_every_record_are_retried_then_dead_lettered(
    rig: Any, make_page: MakePage
) -> None:
    fill(rig, make_page, 0, ["https://a.test/1", "https://a.test/2"])
    rig.sink.fail_statements = 10**9  # e.g. a migration that never runs
    write = rig.sink.write

    def write_as_time_passes(batch: Any) -> int:
        rig.clock.now += 100.0
        return write(batch)

    rig.sink.write = write_as_time_passes

    rig.worker.run(max_idle_s=5)

    budget = rig.settings.sink.statement_retry_s
    attempts = rig.metric("sink_statement_errors_total", sqlstate="42601")
    assert attempts == budget // 100 + 1  # retried for the whole budget, then given up
    letters = dead_letters(rig)
    assert [(d.reason, d.source_offset) for d in letters] == [("sqlstate_42601", 0), ("sqlstate_42601", 1)]
    assert rig.sink.pages == {}
    assert rig.sink.stored_offsets(GROUP, UNIQUE) == {0: 2}  # the partition moves on


def test_statement_errors_that_heal_within_the_budget_lose_nothing(rig: Any, make_page: MakePage) -> None:
    fill(rig, make_page, 0, ["https://a.test/1", "https://a.test/2"])
    rig.sink.fail_statements = 2  # a deploy finishes its migration meanwhile

    rig.worker.run(max_idle_s=5)

    assert rig.producer.delivered == []
    assert sorted(rig.sink.pages) == ["https://a.test/1", "https://a.test/2"]
    assert rig.metric("sink_statement_errors_total", sqlstate="42601") == 2


def test_statement_errors_outside_records_are_retried_loudly(rig: Any, make_page: MakePage) -> None:
    fill(rig, make_page, 0, ["https://a.test/1"])
    write = rig.sink.write
    failures = [SinkUnavailable("cannot store offsets: sqlstate_42P01", sqlstate="42P01", statement=True)]

    def write_once_failing(batch: Any) -> int:
        if failures:
            raise failures.pop()
        return write(batch)

    rig.sink.write = write_once_failing

    rig.worker.run(max_idle_s=5)

    assert list(rig.sink.pages) == ["https://a.test/1"]
    assert rig.metric("sink_db_retries_total") == 1
    assert rig.metric("sink_statement_errors_total", sqlstate="42P01") == 1


def test_a_failing_offset_read_in_the_assign_callback_is_retried(rig: Any, make_page: MakePage) -> None:
    fill(rig, make_page, 0, [f"https://a.test/{i}" for i in range(4)])
    rig.sink.offsets[(GROUP, UNIQUE, 0)] = 2
    failures = [
        SinkUnavailable("PostgreSQL unavailable: connection refused"),
        SinkUnavailable("cannot read the stored offsets: sqlstate_42501", sqlstate="42501", statement=True),
    ]
    stored_offsets = rig.sink.stored_offsets

    def flaky_stored_offsets(group: str, topic: str) -> dict[int, int]:
        if failures:
            raise failures.pop()
        return dict(stored_offsets(group, topic))

    rig.sink.stored_offsets = flaky_stored_offsets

    rig.worker.run(max_idle_s=5)

    assert rig.consumer.assigned_offsets == [(UNIQUE, 0, 2)]  # the stored offset, after two retries
    assert sorted(rig.sink.pages) == ["https://a.test/2", "https://a.test/3"]
    assert rig.metric("sink_db_retries_total") == 2
    assert rig.metric("sink_statement_errors_total", sqlstate="42501") == 1


class FatalEvent:
    """What consume() returns when librdkafka ends a consumer: an error event with code _FATAL
    (its own fatal flag unset), here the fencing of a static member after a coordinator moved."""

    def error(self) -> KafkaError:
        return KafkaError(KafkaError._FATAL, "Broker: Static consumer fenced by other consumer")


def fenced_on_second_consume(consumer: Any) -> None:
    calls = 0

    def after(out: list[Any]) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # one message collected for the next batch, then the consumer is ended
            out.append(FatalEvent())

    consumer.after_consume = after


def test_a_consumer_ended_by_a_fatal_error_is_replaced_and_every_record_is_stored_once(
    make_rig: Any, make_page: MakePage
) -> None:
    rig = make_rig(batch_size=3)
    urls = [f"https://a.test/{i}" for i in range(7)]
    fill(rig, make_page, 0, urls)
    fenced_on_second_consume(rig.consumer)
    replacement = FakeConsumer(rig.clock)
    replacement.log = rig.consumer.log  # the same partition, read by the new group member
    worker = SinkWorker(
        rig.settings,
        FAMILIES["pages"],
        rig.sink,
        rig.consumer,
        rig.producer,
        rig.worker.metrics,
        clock=rig.clock,
        new_consumer=lambda: replacement,
    )

    worker.run(max_idle_s=5)

    assert rig.consumer.closed
    assert replacement.closed
    # The replacement starts where the store says: after the first batch, not from the start.
    assert replacement.assigned_offsets == [(UNIQUE, 0, 3)]
    written = [r.value.page.url for b in rig.sink.batches for r in b.records]
    assert sorted(written) == sorted(urls)  # each once: the dropped message was read again
    assert rig.sink.stored_offsets(GROUP, UNIQUE) == {0: 7}
    assert rig.metric("sink_consumers_replaced_total") == 1


def test_a_fatal_consumer_error_without_a_way_to_replace_the_consumer_stops_the_worker(
    rig: Any, make_page: MakePage
) -> None:
    fill(rig, make_page, 0, [f"https://a.test/{i}" for i in range(7)])
    fenced_on_second_consume(rig.consumer)

    with pytest.raises(SinkError, match=r"fatal Kafka consumer error.*fenced"):
        rig.worker.run(max_idle_s=5)

    assert [len(b.records) for b in rig.sink.batches] == [3]  # the write in flight was finished
    assert rig.sink.stored_offsets(GROUP, UNIQUE) == {0: 3}
    assert rig.consumer.closed
