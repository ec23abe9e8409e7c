"""Rules of the stage's outputs (streams.outputs, streams.agent) that test_outputs.py,
test_agent.py and test_acking_rules.py leave open (found by `make mutate`): the producer's
at-least-once configuration, an event never acked before its dead letter or a record it waits
for, one dead letter per event, every record's key, value and topic limit checked, tables read
and written in the event partition's RocksDB, delivered changelog offsets persisted, failures
stopping the worker with their error, and the agent's per-event metrics.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka import Producer as ConfluentProducer
from faust.types import TP

from crawlstream.errors import RecordError
from crawlstream.settings import KafkaSettings, Settings, StreamsSettings
from crawlstream.topics import BROKER_DEFAULT_MAX_MESSAGE_BYTES
from streams import agent as streams_agent
from streams import outputs
from streams.app import new_app
from streams.outputs import Effects, StoreError
from tests.unit.streams.harness import sample
from tests.unit.streams.test_acking_rules import current_event, table_of
from tests.unit.streams.test_agent import (
    DEAD,
    SIZE,
    TOUCHES,
    UNIQUE,
    FakeEvent,
    boundary,
    in_loop,
    two_outputs,
)
from tests.unit.streams.test_outputs import FakeEvent as OrderedEvent
from tests.unit.streams.test_outputs import LateProducer, stage_outputs

# --- the producer: at-least-once without duplicates ---------------------------------------------


class ConfiguredProducer(LateProducer):
    """confluent_kafka.Producer as Outputs makes it: keeps the configuration it was given."""

    made: list[dict[str, Any]] = []

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        ConfiguredProducer.made.append(config)


def made_producer_config(monkeypatch: pytest.MonkeyPatch, linger_s: float = 0.05) -> dict[str, Any]:
    """The configuration of the producer a new stage app makes for its first record."""
    ConfiguredProducer.made = []
    monkeypatch.setattr(outputs, "Producer", ConfiguredProducer)
    settings = Settings(
        _env_file=None,
        kafka=KafkaSettings(topic_prefix="unit"),
        streams=StreamsSettings(store="memory://", producer_linger_s=linger_s),
    )
    out = outputs.of(new_app(settings))
    assert ConfiguredProducer.made == []  # none before the first record
    out.send(UNIQUE, b"k", b"v")
    out.send(UNIQUE, b"k2", b"v2")
    (config,) = ConfiguredProducer.made  # one producer per worker, made once
    assert isinstance(out.producer, ConfiguredProducer)
    assert len(out.producer.waiting) == 2
    return config


def test_the_producer_waits_for_every_replica_and_never_duplicates_a_retried_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = made_producer_config(monkeypatch)
    assert config["acks"] == "all"  # a delivered record survives a broker's loss: acks follow it
    assert config["enable.idempotence"] is True  # librdkafka's retries write each record once
    assert config["compression.type"] == "zstd"
    # librdkafka refuses at produce() what the catalog's largest topic would refuse.
    assert config["message.max.bytes"] == Settings(_env_file=None).kafka.max_message_bytes
    assert config["bootstrap.servers"]


@pytest.mark.parametrize(("linger_s", "linger_ms"), [(0, 1), (0.05, 50), (1.0, 1000)])
def test_the_producer_lingers_as_configured_and_at_least_a_millisecond(
    monkeypatch: pytest.MonkeyPatch, linger_s: float, linger_ms: int
) -> None:
    assert made_producer_config(monkeypatch, linger_s)["linger.ms"] == linger_ms


def test_the_producer_is_polled_by_an_app_timer_of_a_short_interval() -> None:
    """Acks arrive while the input is idle: a timer of the app polls the producer."""

    async def main() -> None:
        app, out, _late = stage_outputs()
        producer = CountingPolls()
        out._producer = producer  # type: ignore[assignment]
        intervals: list[float] = []

        async def one_tick(interval: float, **_kw: Any) -> AsyncIterator[float]:
            intervals.append(interval)
            yield interval

        app.itertimer = one_tick
        for task in app._app_tasks:
            await task()
        assert producer.polls == [0]
        (interval,) = intervals
        assert 0 < interval <= 0.1

    asyncio.run(main())


class CountingPolls(LateProducer):
    def __init__(self, full: int = 0) -> None:
        super().__init__()
        self.polls: list[float] = []
        self.full = full  # produce() calls refused with BufferError (librdkafka's queue full)

    def produce(
        self, topic: str, *, value: bytes | None, key: bytes | None, on_delivery: Any, **kw: Any
    ) -> None:
        if self.full:
            self.full -= 1
            raise BufferError("Local: Queue full")
        super().produce(topic, value=value, key=key, on_delivery=on_delivery, **kw)

    def poll(self, timeout: float = 0) -> int:
        self.polls.append(timeout)
        return 0


def test_a_full_producer_queue_is_served_briefly_then_the_record_is_produced() -> None:
    _app, out, _late = stage_outputs()
    producer = CountingPolls(full=2)
    out._producer = producer  # type: ignore[assignment]
    event = OrderedEvent()
    with out.acking("unit", event):
        out.send(UNIQUE, b"k", b"v")
    assert len(producer.waiting) == 1  # produced once, after the queue drained
    assert len(producer.polls) == 2
    assert all(0 < timeout <= 0.1 for timeout in producer.polls)  # never blocks the loop for long
    assert event.acks == 0
    producer.deliver()
    assert event.acks == 1


# --- acks: never before what the event waits for -------------------------------------------------


def test_an_event_whose_record_is_refused_at_produce_time_is_acked_only_after_its_dead_letter() -> None:
    b, producer, crashes = boundary(sync={TOUCHES})
    event = FakeEvent()
    in_loop(lambda: b.process(event, lambda e: Effects().send(TOUCHES, b"b", b"2")))  # refused at once
    assert producer.topics() == [DEAD]
    assert event.acks == 0  # its dead letter is in flight
    producer.deliver()
    assert (event.acks, crashes) == (1, [])


def test_an_event_with_an_output_and_a_record_refused_at_once_waits_for_both_deliveries() -> None:
    b, producer, crashes = boundary(sync={TOUCHES})
    event = FakeEvent()
    in_loop(lambda: b.process(event, two_outputs))  # UNIQUE produced, TOUCHES refused at once
    assert producer.topics() == [UNIQUE, DEAD]
    waiting, producer.waiting = producer.waiting, []
    for callback, msg in waiting:
        assert event.acks == 0  # the output, then its dead letter, are in flight
        callback(None, msg)
    assert (event.acks, crashes) == (1, [])


def test_an_event_gets_one_dead_letter_when_one_record_is_refused_at_once_and_another_later() -> None:
    b, producer, crashes = boundary(sync={TOUCHES})
    event = FakeEvent()

    def main() -> None:
        b.process(event, two_outputs)  # TOUCHES refused by produce(): dead letter
        producer.deliver_each({UNIQUE: SIZE})  # then the broker refuses UNIQUE too

    in_loop(main)
    assert len(producer.letters()) == 1
    producer.deliver()
    assert (event.acks, crashes) == (1, [])


def test_a_dead_letter_for_a_held_event_is_waited_for_by_that_event() -> None:
    b, producer, _crashes = boundary()
    event = FakeEvent()
    with b.outputs.acking("unit", event) as pending:
        held = pending.hold()  # its work goes on after the handler

    b.dead_letter(event, RecordError("invalid_json", "late"), held)  # outside its acking block
    held.release()
    assert producer.topics() == [DEAD]
    assert event.acks == 0
    producer.deliver()
    assert event.acks == 1


def test_a_failing_dead_letter_handler_stops_the_worker_with_the_event_unacked() -> None:
    b, producer, _ = boundary()
    out = b.outputs
    crashes: list[BaseException] = []

    async def crash(reason: BaseException) -> None:
        crashes.append(reason)

    b.app.crash = crash

    def on_refused(pending: Any, reason: str, err: KafkaError, msg: Message) -> bool:
        raise KafkaException(KafkaError(KafkaError._ALL_BROKERS_DOWN))

    event = FakeEvent()
    with out.acking("unit", event, on_refused):
        out.send(UNIQUE, b"a", b"1")
    in_loop(lambda: producer.deliver_each({UNIQUE: SIZE}))
    assert event.acks == 0  # replayed after the restart
    assert len(crashes) == 1


def test_only_a_refusal_is_handed_to_the_refused_record_handler() -> None:
    b, producer, crashes = boundary()
    out = b.outputs
    seen: list[str] = []

    def on_refused(pending: Any, reason: str, err: KafkaError, msg: Message) -> bool:
        seen.append(reason)
        return True

    event = FakeEvent()
    with out.acking("unit", event, on_refused):
        out.send(UNIQUE, b"a", b"1")
    in_loop(lambda: producer.deliver_each({UNIQUE: KafkaError._MSG_TIMED_OUT}))
    assert seen == []  # a timeout is the infrastructure's: no dead letter, the worker stops
    assert event.acks == 0
    assert len(crashes) == 1


# --- failures stop the worker with their error, counted ------------------------------------------


def test_a_failed_delivery_stops_the_worker_with_its_kafka_error_counted_for_the_agent() -> None:
    b, producer, crashes = boundary()
    before = sample("streams_delivery_failures_total", agent="unit")
    loop_errors: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: loop_errors.append(context))
        b.process(FakeEvent(), two_outputs)
        producer.deliver_each({UNIQUE: KafkaError._MSG_TIMED_OUT})
        for _ in range(3):
            await asyncio.sleep(0)

    asyncio.run(main())
    (crash,) = crashes
    assert isinstance(crash, KafkaException)
    assert crash.args[0].code() == KafkaError._MSG_TIMED_OUT
    assert sample("streams_delivery_failures_total", agent="unit") - before == 1
    assert loop_errors == []  # the stop ran to its end and left nothing behind


def test_the_producer_configuration_is_one_librdkafka_accepts() -> None:
    """The producer is made for real (librdkafka checks every property; nothing is sent, and its
    bootstrap address is a closed port, not the dev stack's broker)."""
    settings = Settings(
        _env_file=None,
        kafka=KafkaSettings(topic_prefix="unit", bootstrap_servers="127.0.0.1:1"),
        streams=StreamsSettings(store="memory://"),
    )
    out = outputs.of(new_app(settings))
    assert isinstance(out.producer, ConfluentProducer)
    out._producer = None  # librdkafka's handle is destroyed with it


def test_a_refused_record_outside_any_event_stops_the_worker_and_is_counted() -> None:
    """A record sent for no event (a window's dead letter) has nobody to dead-letter it."""
    _app, out, producer = stage_outputs()
    app = _app
    before = sample("streams_delivery_failures_total", agent="table")

    def main() -> None:
        out.send(DEAD, b"k", b"v")
        producer.deliver(KafkaError(SIZE))

    in_loop(main)
    (crash,) = app.crashes
    assert isinstance(crash, KafkaException)
    assert crash.args[0].code() == SIZE
    assert sample("streams_delivery_failures_total", agent="table") - before == 1


def test_the_worker_stop_is_not_lost_to_the_garbage_collector() -> None:
    """The crash runs as a task; one nothing else references would be collected mid-way."""

    async def main() -> None:
        app, out, producer = stage_outputs()
        tasks: list[weakref.ref[asyncio.Task[Any]]] = []

        async def crash(reason: BaseException) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.append(weakref.ref(task))
            await asyncio.get_running_loop().create_future()  # stopping the app takes a while

        app.crash = crash
        out.send(UNIQUE, b"k", b"v")
        producer.deliver(KafkaError(KafkaError._MSG_TIMED_OUT))
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()
        (task,) = tasks
        alive = task()
        assert alive is not None
        assert not alive.done()
        alive.cancel()
        with pytest.raises(asyncio.CancelledError):
            await alive

    asyncio.run(main())


# --- every record is checked before anything happens ---------------------------------------------


class TimedProducer(LateProducer):
    def __init__(self) -> None:
        super().__init__()
        self.produced: list[tuple[str, bytes | None, bytes | None, dict[str, Any]]] = []

    def produce(
        self, topic: str, *, value: bytes | None, key: bytes | None, on_delivery: Any, **kw: Any
    ) -> None:
        self.produced.append((topic, key, value, kw))
        super().produce(topic, value=value, key=key, on_delivery=on_delivery, **kw)


def test_an_output_keeps_the_timestamp_its_effects_give_it() -> None:
    _app, out, _late = stage_outputs()
    producer = TimedProducer()
    out._producer = producer  # type: ignore[assignment]
    with out.acking("unit", OrderedEvent()):
        out.apply(
            Effects().send(UNIQUE, b"k", b"v", timestamp_ms=1_764_000_000_000).send(TOUCHES, b"t", b"1")
        )
    assert [(topic, kw.get("timestamp")) for topic, _k, _v, kw in producer.produced] == [
        (UNIQUE, 1_764_000_000_000),
        (TOUCHES, None),
    ]


def test_an_output_is_checked_against_its_own_topics_limit() -> None:
    """A catalog topic takes records up to the catalog's limit, above the broker default."""
    _app, out, producer = stage_outputs()
    value = b"x" * (2 * BROKER_DEFAULT_MAX_MESSAGE_BYTES)
    assert out.limit(UNIQUE) > len(value)
    with out.acking("unit", OrderedEvent()):
        out.apply(Effects().send(UNIQUE, b"k", value))
    assert len(producer.waiting) == 1


def test_an_output_whose_key_makes_it_too_large_is_refused_naming_its_topic() -> None:
    _app, out, producer = stage_outputs()
    key = b"k" * out.limit(UNIQUE)
    with pytest.raises(RecordError, match=UNIQUE) as raised, out.acking("unit", OrderedEvent()):
        out.apply(Effects().send(UNIQUE, key, b"v"))
    assert raised.value.reason == "too_large"
    assert producer.waiting == []


@pytest.mark.parametrize("big", ["key", "value"])
def test_a_table_entry_too_large_for_its_changelog_is_refused_before_anything_is_written(big: str) -> None:
    async def main() -> None:
        app, out, producer = stage_outputs()
        table = table_of(app, out)
        changelog = table.changelog_topic.get_topic_name()
        huge = "x" * out.limit(changelog)
        key, value = (huge, 1) if big == "key" else ("k", huge)
        event = OrderedEvent()
        with pytest.raises(RecordError, match=changelog), out.acking("unit", event), current_event(event):
            out.apply(Effects().send(UNIQUE, b"k", b"v").write(table, key, value))
        assert producer.waiting == []
        assert dict(table.data.items()) == {}

    asyncio.run(main())


# --- tables: the event partition's RocksDB, changelog offsets persisted ---------------------------


class FakeRdictIter:
    """rocksdict's RdictIter: seek, valid, key, value, next."""

    def __init__(self, items: list[tuple[bytes, bytes]]) -> None:
        self._items, self._at = items, len(items)

    def seek(self, prefix: bytes) -> None:
        self._at = next((i for i, (k, _) in enumerate(self._items) if k >= prefix), len(self._items))

    def valid(self) -> bool:
        return self._at < len(self._items)

    def key(self) -> bytes:
        return self._items[self._at][0]

    def value(self) -> bytes:
        return self._items[self._at][1]

    def next(self) -> None:
        self._at += 1


class FakeRdict:
    """rocksdict.Rdict's get/put/iter over bytes; ``fail`` raises as rocksdict does on I/O errors."""

    def __init__(self, fail: bool = False) -> None:
        self.entries: dict[bytes, bytes] = {}
        self.fail = fail

    def _check(self) -> None:
        if self.fail:
            raise Exception("IO error: No space left on device")

    def get(self, key: bytes) -> bytes | None:
        self._check()
        return self.entries.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self._check()
        self.entries[key] = value

    def iter(self) -> FakeRdictIter:
        self._check()
        return FakeRdictIter(sorted(self.entries.items()))


def rocksdb_table(
    fail: bool = False, **kwargs: Any
) -> tuple[Any, outputs.Outputs, LateProducer, dict[int, FakeRdict]]:
    """A DeliveredTable whose store opens one FakeRdict per partition (as faust's RocksDB store)."""
    app, out, producer = stage_outputs()
    table = outputs.delivered_table(app, out, "unit_table", **kwargs)
    app.finalize()
    dbs = {partition: FakeRdict(fail) for partition in range(4)}
    table.data._db_for_partition = dbs.__getitem__
    return table, out, producer, dbs


def in_event(out: outputs.Outputs, partition: int) -> Any:
    event = OrderedEvent(partition=partition)
    return event, out.acking("unit", event), current_event(event)


def test_a_table_entry_is_written_to_and_read_from_the_event_partitions_store() -> None:
    async def main() -> None:
        table, out, producer, dbs = rocksdb_table(default=None)
        _event, acking, current = in_event(out, 2)
        with acking, current:
            table["k"] = {"a": 1, "b": [1, 2]}
            assert table.get("k") == {"a": 1, "b": [1, 2]}
            assert table.get("absent", "none") == "none"
        assert dbs[2].entries == {b'"k"': b'{"a":1,"b":[1,2]}'}  # the bytes faust's restore writes
        assert all(dbs[p].entries == {} for p in (0, 1, 3))
        assert dict(table.data.items()) == {}  # not the memory store
        ((_cb, msg),) = producer.waiting
        assert msg.partition() == 2

        _other, acking, current = in_event(out, 1)
        with acking, current:
            assert table.get("k", "none") == "none"  # another partition's store

    asyncio.run(main())


def test_a_raw_table_reads_back_the_bytes_it_stored() -> None:
    async def main() -> None:
        table, out, _producer, dbs = rocksdb_table(key_type=bytes, value_type=bytes)
        _event, acking, current = in_event(out, 0)
        with acking, current:
            table.put_local(0, b"p:a", b"1")
            assert table.get(b"p:a") == b"1"
        assert dbs[0].entries == {b"p:a": b"1"}

    asyncio.run(main())


def test_a_scan_reads_the_event_partitions_prefix_in_key_order_up_to_its_limit() -> None:
    async def main() -> None:
        table, out, _producer, dbs = rocksdb_table(key_type=bytes, value_type=bytes)
        for key in (b"p:c", b"p:a", b"q:a", b"p:b", b"o:z"):
            dbs[3].put(key, key.upper())
        _event, acking, current = in_event(out, 3)
        with acking, current:
            assert table.scan(b"p:", 2) == [(b"p:a", b"P:A"), (b"p:b", b"P:B")]
            assert table.scan(b"p:", 10) == [(b"p:a", b"P:A"), (b"p:b", b"P:B"), (b"p:c", b"P:C")]

    asyncio.run(main())


STORE_OPERATIONS: dict[str, Any] = {
    "get": lambda table: table.get("k"),
    "set": lambda table: table.__setitem__("k", 1),
    "scan": lambda table: table.scan(b"k", 1),
    "put_local": lambda table: table.put_local(1, b"k", b"v"),
}


@pytest.mark.parametrize("operation", sorted(STORE_OPERATIONS))
def test_a_failing_store_is_a_store_error_naming_the_table(operation: str) -> None:
    async def main() -> None:
        table, out, _producer, _dbs = rocksdb_table(fail=True, default=None)
        _event, acking, current = in_event(out, 1)
        with acking, current, pytest.raises(StoreError, match=r"table unit_table: .* failed: IO error"):
            STORE_OPERATIONS[operation](table)

    asyncio.run(main())


def test_the_offset_of_a_delivered_table_entry_is_persisted_for_the_restore() -> None:
    async def main() -> None:
        table, out, producer, _dbs = rocksdb_table(default=None)
        persisted: list[tuple[TP, int]] = []
        table.data.set_persisted_offset = lambda tp, offset: persisted.append((tp, offset))
        event, acking, current = in_event(out, 2)
        with acking, current:
            table["k"] = 1  # the changelog's first record: offset 0
        await out._poll()
        assert persisted == []  # not delivered yet
        producer.deliver()
        await out._poll()
        assert persisted == [(TP(table.changelog_topic.get_topic_name(), 2), 0)]
        assert event.acks == 1

    asyncio.run(main())


# --- the agent: each event counted and timed for its agent ---------------------------------------


class FakeStream:
    """faust's stream as an agent sees it: ``noack().events()``."""

    def __init__(self, events: list[Any]) -> None:
        self._events = events

    def noack(self) -> FakeStream:
        return self

    async def events(self) -> AsyncIterator[Any]:
        for event in self._events:
            yield event


def test_the_agent_counts_and_times_each_event_for_its_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([100.0, 100.25])
    monkeypatch.setattr(streams_agent.time, "perf_counter", lambda: next(clock))
    b, producer, _crashes = boundary()
    events_before = sample("streams_events_total", agent="unit")
    count_before = sample("streams_processing_seconds_count", agent="unit")
    sum_before = sample("streams_processing_seconds_sum", agent="unit")
    event = FakeEvent()

    asyncio.run(b.agent(lambda e: Effects().send(UNIQUE, b"k", b"v"))(FakeStream([event])))

    assert sample("streams_events_total", agent="unit") - events_before == 1
    assert sample("streams_processing_seconds_count", agent="unit") - count_before == 1
    assert sample("streams_processing_seconds_sum", agent="unit") - sum_before == pytest.approx(0.25)
    assert producer.topics() == [UNIQUE]


def test_a_delivery_failure_of_an_agents_event_counts_for_that_agent() -> None:
    b, producer, crashes = boundary()
    before = sample("streams_delivery_failures_total", agent="unit")
    in_loop(
        lambda: (
            b.process(FakeEvent(), two_outputs),
            producer.deliver_each({TOUCHES: KafkaError._MSG_TIMED_OUT}),
        )
    )
    assert len(crashes) == 1
    assert sample("streams_delivery_failures_total", agent="unit") - before == 1


# --- revoked partitions: their unacked events are never acked here -------------------------------


def test_unacked_events_of_partitions_the_app_revokes_are_never_acked() -> None:
    async def main() -> None:
        app, out, producer = stage_outputs()
        acked: list[int] = []
        revoked, kept = OrderedEvent(5, partition=0, acked=acked), OrderedEvent(6, partition=1, acked=acked)
        for event in (revoked, kept):
            with out.acking("unit", event):
                out.send(UNIQUE, b"k", b"v")
        await app.on_partitions_revoked.send({TP("unit.pages.raw", 0)})
        producer.deliver()
        assert acked == [6]  # partition 0's next owner replays offset 5

    asyncio.run(main())
