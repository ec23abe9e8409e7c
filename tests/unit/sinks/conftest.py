"""Fakes of the confluent-kafka interface bits the sink worker uses, and record helpers."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry

from crawlstream.records import PageEvent, PageRecord
from crawlstream.settings import KafkaSettings, Settings, SinkSettings
from sinks.base import InMemorySink
from sinks.families import FAMILIES
from sinks.metrics import SinkMetrics
from sinks.worker import SinkWorker

PREFIX = "t"
UNIQUE = f"{PREFIX}.pages.unique"
DEAD = f"{PREFIX}.deadletter"
GROUP = "sink-test"


def page(url: str, **fields: Any) -> PageRecord:
    values: dict[str, Any] = {
        "url": url,
        "canonical_url": url,
        "final_url": url,
        "status": 200,
        "fetched_at": datetime(2026, 11, 25, 10, 0, tzinfo=UTC),
        "body": f"<html>{url}</html>",
    }
    values.update(fields)
    return PageRecord(**values)


class InMemoryPageSink(InMemorySink[PageEvent]):
    """The in-memory sink keyed like ``pages``; ``reject`` looks at the crawled page."""

    def __init__(self, reject: Callable[[PageRecord], str | None] | None = None) -> None:
        super().__init__(
            key=lambda e: e.page.canonical_url,
            reject=None if reject is None else (lambda e: reject(e.page)),
        )

    @property
    def pages(self) -> dict[str, PageRecord]:
        return {str(url): event.page for url, event in self.rows.items()}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeMessage:
    def __init__(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> None:
        self._t, self._p, self._o, self._k, self._v = topic, partition, offset, key, value

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def key(self) -> bytes | None:
        return self._k

    def value(self) -> bytes | None:
        return self._v

    def error(self) -> None:
        return None


class FakeConsumer:
    """A group of one: assigns every partition of the subscribed topic on the first consume().

    consume() returns what is available at once; when nothing is, it advances the fake clock by
    the timeout instead of blocking. ``after_consume`` lets a test act between calls.
    """

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.log: dict[tuple[str, int], list[FakeMessage]] = {}
        self.position: dict[tuple[str, int], int] = {}
        self.committed: dict[tuple[str, int], int] = {}
        self.commits: list[list[tuple[str, int, int]]] = []
        self.assigned_offsets: list[tuple[str, int, int]] = []
        self.closed = False
        self.after_consume: Callable[[list[FakeMessage]], None] | None = None
        self._on_assign: Any = None
        self._on_revoke: Any = None
        self._assigned = False

    def append(
        self, partition: int, value: bytes | None, key: bytes | None = None, topic: str = UNIQUE
    ) -> None:
        messages = self.log.setdefault((topic, partition), [])
        messages.append(FakeMessage(topic, partition, len(messages), key, value))

    def subscribe(self, topics: list[str], on_assign: Any = None, on_revoke: Any = None) -> None:
        self.topics = topics
        self._on_assign, self._on_revoke = on_assign, on_revoke

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        if not self._assigned:
            self._assigned = True
            self._on_assign(self, [TopicPartition(t, p) for (t, p) in sorted(self.log) if t in self.topics])
        out: list[FakeMessage] = []
        for tp in sorted(self.position):
            start = self.position[tp]
            taken = self.log[tp][start : start + num_messages - len(out)]
            self.position[tp] = start + len(taken)
            out.extend(taken)
        if not out:
            self.clock.now += max(timeout, 0)
        if self.after_consume is not None:
            self.after_consume(out)
        return out

    def assign(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self.position[key] = tp.offset if tp.offset >= 0 else self.committed.get(key, 0)
            self.assigned_offsets.append((tp.topic, tp.partition, self.position[key]))

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition]:
        assert asynchronous is False
        self.commits.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])
        for tp in offsets:
            self.committed[(tp.topic, tp.partition)] = tp.offset
        return offsets

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    """Delivers on flush(), as librdkafka reports deliveries. ``fail_flushes``: the next N flushes
    report a transport error for every message (a broker outage); ``max_bytes``: the broker's
    limit (larger key + value report MSG_SIZE_TOO_LARGE); ``local_max_bytes``: produce() itself
    refuses larger messages (librdkafka's message.max.bytes)."""

    def __init__(self) -> None:
        self.queued: list[tuple[str, bytes | None, bytes | None, Any]] = []
        self.delivered: list[tuple[str, bytes | None, bytes | None]] = []
        self.fail_flushes = 0
        self.max_bytes: int | None = None
        self.local_max_bytes: int | None = None
        self.flushes = 0

    def produce(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, *, on_delivery: Any = None
    ) -> None:
        size = len(value or b"") + len(key or b"")
        if self.local_max_bytes is not None and size > self.local_max_bytes:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        self.queued.append((topic, value, key, on_delivery))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        self.flushes += 1
        failing = self.fail_flushes > 0
        self.fail_flushes -= 1 if failing else 0
        for topic, value, key, callback in self.queued:
            if failing:
                callback(KafkaError(KafkaError._TRANSPORT, "broker down"), None)
            elif self.max_bytes is not None and len(value or b"") + len(key or b"") > self.max_bytes:
                callback(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), None)
            else:
                self.delivered.append((topic, value, key))
                callback(None, None)
        self.queued.clear()
        return 0


class Rig:
    """A worker wired to fakes and an in-memory sink."""

    def __init__(self, batch_size: int = 3, reject: Callable[[PageRecord], str | None] | None = None) -> None:
        self.settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            kafka=KafkaSettings(topic_prefix=PREFIX),
            sink=SinkSettings(
                group_id=GROUP,
                batch_size=batch_size,
                batch_max_latency_s=0.5,
                retry_backoff_initial_s=0.001,
                retry_backoff_max_s=0.002,
            ),
        )
        self.clock = FakeClock()
        self.consumer = FakeConsumer(self.clock)
        self.producer = FakeProducer()
        self.sink = InMemoryPageSink(reject=reject)
        self.registry = CollectorRegistry()
        self.worker = SinkWorker(
            self.settings,
            FAMILIES["pages"],
            self.sink,
            self.consumer,
            self.producer,
            SinkMetrics(self.registry),
            clock=self.clock,
        )

    def metric(self, name: str, **labels: str) -> float:
        labels = {"family": "pages", **labels}
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@pytest.fixture
def rig() -> Rig:
    return Rig()


@pytest.fixture
def make_rig() -> type[Rig]:
    return Rig


@pytest.fixture
def make_page() -> Callable[..., PageRecord]:
    return page


@pytest.fixture
def make_producer() -> type[FakeProducer]:
    return FakeProducer
