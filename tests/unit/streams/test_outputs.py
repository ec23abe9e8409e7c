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
    def __init__(self) -> None:
        self.acks = 0
        self.message = SimpleNamespace(topic="unit.pages.raw", partition=0, offset=41)

    def ack(self) -> bool:
        self.acks += 1
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
