"""Acks follow deliveries: an event's offset becomes committable only once all its records are stored."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError

from crawlstream.settings import KafkaSettings, Settings, StreamsSettings
from streams import outputs
from streams.app import new_app
from tests.unit.streams.harness import FakeMessage, sample


class FakeEvent:
    def __init__(self, offset: int = 41, partition: int = 0, acked: list[int] | None = None) -> None:
        self.acks = 0
        self.acked = acked if acked is not None else []
        self.message = SimpleNamespace(topic="unit.pages.raw", partition=partition, offset=offset)

    def ack(self) -> bool:
        self.acks += 1
        self.acked.append(self.message.offset)
        return True


class LateProducer:
    """Holds delivery reports until ``deliver`` (librdkafka reports them from ``poll``)."""

    def __init__(self) -> None:
        self.waiting: list[tuple[Any, FakeMessage]] = []

    def produce(
        self, topic: str, *, value: bytes | None, key: bytes | None, on_delivery: Any, **kw: Any
    ) -> None:
        self.waiting.append((on_delivery, FakeMessage(topic, kw.get("partition", 0), len(self.waiting))))

    def poll(self, timeout: float = 0) -> int:
        return 0

    def deliver(self, error: KafkaError | None = None) -> None:
        for callback, msg in self.waiting:
            callback(error, msg)
        self.waiting.clear()


def stage_outputs() -> tuple[Any, outputs.Outputs, LateProducer]:
    app = new_app(
        Settings(
            _env_file=None,
            kafka=KafkaSettings(topic_prefix="unit"),
            streams=StreamsSettings(store="memory://"),
        )
    )
    out = outputs.of(app)
    producer = LateProducer()
    out._producer = producer  # type: ignore[assignment]
    crashes: list[BaseException] = []

    async def crash(reason: BaseException) -> None:
        crashes.append(reason)

    app.crash = crash
    app.crashes = crashes
    return app, out, producer


def test_event_is_acked_only_when_every_record_produced_for_it_is_delivered() -> None:
    _, out, producer = stage_outputs()
    event = FakeEvent()
    with out.acking("unit", event):
        out.send("unit.pages.unique", b"k", b"v")
        out.send("unit-urls-changelog", b"k", b"{}", partition=0)
    assert event.acks == 0  # in flight: not committable
    producer.deliver()
    assert event.acks == 1
    bare = FakeEvent()
    with out.acking("unit", bare):
        pass  # nothing produced (a dropped repeat, a dead letter attached to the offset)
    assert bare.acks == 1


def test_an_exception_leaves_the_event_unacked() -> None:
    _, out, _ = stage_outputs()
    event = FakeEvent()
    with pytest.raises(RuntimeError, match="agent bug"), out.acking("unit", event):
        raise RuntimeError("agent bug")
    assert event.acks == 0


def test_failed_delivery_leaves_the_event_unacked_and_stops_the_worker() -> None:
    before = sample("streams_delivery_failures_total", agent="unit")

    async def main() -> Any:
        app, out, producer = stage_outputs()
        event = FakeEvent()
        with out.acking("unit", event):
            out.send("unit.pages.unique", b"k", b"v")
        producer.deliver(KafkaError(KafkaError._MSG_TIMED_OUT))
        for _ in range(3):
            await asyncio.sleep(0)
        assert event.acks == 0  # replayed after the restart
        return app

    app = asyncio.run(main())
    assert len(app.crashes) == 1
    assert sample("streams_delivery_failures_total", agent="unit") - before == 1


def test_events_of_a_partition_are_acked_in_their_order_whatever_order_they_finish_in() -> None:
    """faust-streaming commits past an unacked event when the one after it is acked first
    (issue 606): an event that finishes early waits for the ones before it."""
    _, out, producer = stage_outputs()
    acked: list[int] = []
    first, second, third = (FakeEvent(offset, acked=acked) for offset in (10, 11, 12))
    other = FakeEvent(10, partition=1, acked=acked)
    with out.acking("unit", first) as pending:
        held = pending.hold()  # its work goes on after the handler (a dedup verdict, a sample)
    with out.acking("unit", second):
        out.send("unit.pages.unique", b"k", b"v")
    with out.acking("unit", third):
        pass
    with out.acking("unit", other):
        pass
    assert acked == [10]  # the other partition does not wait
    producer.deliver()
    assert acked == [10]  # 11 and 12 are done, but 10 (partition 0) is not
    held.release()
    assert acked == [10, 10, 11, 12]


def test_abandoned_events_of_revoked_partitions_are_never_acked() -> None:
    _, out, producer = stage_outputs()
    acked: list[int] = []
    first, second = FakeEvent(5, acked=acked), FakeEvent(6, acked=acked)
    with out.acking("unit", first) as pending:
        held = pending.hold()
    with out.acking("unit", second):
        out.send("unit.pages.unique", b"k", b"v")
    assert out.order.abandon({("unit.pages.raw", 0)}) == 2
    held.release()
    producer.deliver()
    assert acked == []  # the partition's next owner replays them
    after = FakeEvent(5, acked=acked)  # the partition came back: replayed from its committed offset
    with out.acking("unit", after):
        pass
    assert acked == [5]


def test_records_sent_on_behalf_of_a_held_event_count_for_it() -> None:
    _, out, producer = stage_outputs()
    acked: list[int] = []
    raw, verdict = FakeEvent(3, acked=acked), FakeEvent(7, partition=2, acked=acked)
    holds: list[outputs.Pending] = []
    with out.acking("raw", raw):
        out.apply(outputs.Effects().hold(holds.append))
    [held] = holds
    with out.acking("verdicts", verdict):
        out.apply(outputs.Effects(behalf=held).send("unit.pages.unique", b"k", b"v").release(held))
    assert acked == [7]  # the verdict event itself has nothing to wait for
    producer.deliver()
    assert acked == [7, 3]
