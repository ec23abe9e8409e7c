"""Agent outputs and table changelog records through librdkafka, acked when all are delivered.

faust sends through aiokafka: every record costs a FutureMessage, a PendingMessage, a Python
record-batch append and sender bookkeeping on the event loop (bench/bench_dedup.py measures a
faust agent that forwards each event at about a quarter of the rate of one that does nothing).
The stage's hot agents send instead through one confluent-kafka producer per worker
(:class:`Outputs`): ``produce()`` hands the record to librdkafka's C threads, which batch,
compress and retry. Their tables are :class:`DeliveredTable`, whose changelog records take the
same path and keep faust's changelog format, partitioning (the event's partition) and
persisted-offset bookkeeping.

At-least-once: an agent processes each event of a ``noack`` stream inside
``outputs.acking(event)``; the event is acked (its offset may be committed) only when every
record produced for it, outputs and changelog records alike, is delivered. A failed delivery
leaves the event unacked and stops the worker, so the event is replayed; the agents' tables make
replays harmless (see :mod:`streams.changes`). Delivery callbacks run on the event loop, from
``poll()`` every ``POLL_INTERVAL_S`` (a timer), so acks arrive while the input is idle too.
The producer keeps librdkafka's default partitioner, like every producer of the project (crawlers,
seeders): a host's crawl requests land in one partition whoever sends them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from typing import Any

import faust
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from faust.streams import current_event
from faust.types import TP

from crawlstream.settings import Settings
from streams import metrics

log = logging.getLogger(__name__)
POLL_INTERVAL_S = 0.02


class _Pending:
    """The deliveries an event still waits for; the event is acked when none is left."""

    __slots__ = ("agent", "closed", "count", "event")

    def __init__(self, agent: str, event: Any) -> None:
        self.agent, self.event, self.count, self.closed = agent, event, 0, False

    def delivered(self) -> None:
        self.count -= 1
        if self.closed and self.count == 0:
            self.event.ack()


_current: ContextVar[_Pending | None] = ContextVar("streams_outputs_pending", default=None)


class Outputs:
    """One librdkafka producer for a worker's agent outputs and DeliveredTable changelogs."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self._config = settings.kafka.librdkafka(
            **{
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": max(1, round(settings.streams.producer_linger_s * 1000)),
                "compression.type": "zstd",
                "message.max.bytes": settings.kafka.max_message_bytes,
            }
        )
        self._producer: Producer | None = None
        self._crashing: set[asyncio.Future[None]] = set()
        self.tables: list[DeliveredTable] = []
        app.timer(POLL_INTERVAL_S, name="streams.outputs.poll")(self._poll)

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(self._config)
        return self._producer

    async def _poll(self) -> None:
        if self._producer is not None:
            self._producer.poll(0)
        for table in self.tables:
            table.persist_offsets()

    @contextmanager
    def acking(self, agent: str, event: Any) -> Iterator[None]:
        """Collect what is produced for ``event`` in this block; ack it once all is delivered.

        An exception leaves the event unacked (the worker stops and it is replayed).
        """
        pending = _Pending(agent, event)
        token = _current.set(pending)
        try:
            yield
        finally:
            _current.reset(token)
        pending.closed = True
        if pending.count == 0:
            event.ack()

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        on_delivered: Callable[[Message], None] | None = None,
    ) -> None:
        """Produce a record for the event of the enclosing :meth:`acking` block."""
        pending = _current.get()
        if pending is not None:
            pending.count += 1
        callback = partial(self._delivered, pending, on_delivered)
        extra: dict[str, Any] = {} if partition is None else {"partition": partition}
        producer = self.producer
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=callback, **extra)
                break
            except BufferError:  # librdkafka's queue is full: serve deliveries, then retry
                producer.poll(0.05)

    def _delivered(
        self,
        pending: _Pending | None,
        on_delivered: Callable[[Message], None] | None,
        err: KafkaError | None,
        msg: Message,
    ) -> None:
        if err is not None:
            agent = pending.agent if pending is not None else "table"
            metrics.DELIVERY_FAILURES.labels(agent).inc()
            log.error(
                "%s: record for %s not delivered (%s); stopping, its event will be replayed",
                agent,
                msg.topic(),
                err,
            )
            crash = asyncio.ensure_future(self.app.crash(KafkaException(err)))
            self._crashing.add(crash)
            crash.add_done_callback(self._crashing.discard)
            return
        if on_delivered is not None:
            on_delivered(msg)
        if pending is not None:
            pending.delivered()


class DeliveredTable(faust.Table[Any, Any]):
    """A faust Table whose changelog records go through :class:`Outputs` inside ``acking``.

    Inside ``acking``, ``get`` makes one lookup in the event partition's RocksDB and ``[]=``
    JSON-encodes the value once, for the changelog record (same topic and partition as faust's
    own send) and for the store: the bytes faust's restore writes from that record. faust's path
    makes two lookups per get and two codec passes per set. The persisted offset (where a restore
    resumes) is recorded on delivery, as faust does. Other writes and deletes (none in this stage)
    and memory stores' reads keep faust's own path.
    """

    outputs: Outputs
    _delivered_offsets: dict[TP, int]

    def _event_partition(self) -> int | None:
        event = current_event()
        if event is None or _current.get() is None:
            return None
        partition: int = event.message.partition
        return partition

    def _rocksdb(self, partition: int) -> Any:
        opener = getattr(self.data, "_db_for_partition", None)  # RocksDB stores only
        return None if opener is None else opener(partition)

    def get(self, key: Any, default: Any = None) -> Any:
        """The value of ``key``, or ``default``; no default factory."""
        partition = self._event_partition()
        db = None if partition is None else self._rocksdb(partition)
        if db is None:
            value = self.data.get(key)
            return default if value is None else value
        store: Any = self.data
        raw = db.get(store._encode_key(key))
        return default if raw is None else json.loads(raw)

    def __setitem__(self, key: Any, value: Any) -> None:
        partition = self._event_partition()
        if partition is None:
            super().__setitem__(key, value)
            return
        store: Any = self.data
        raw_key = store._encode_key(key)
        raw_value = json.dumps(value, separators=(",", ":")).encode()
        changelog = self.changelog_topic.get_topic_name()
        self.outputs.send(changelog, raw_key, raw_value, partition, self._persisted)
        db = self._rocksdb(partition)
        if db is None:
            store[key] = value
        else:
            db.put(raw_key, raw_value)
        self._maybe_set_key_ttl(key, partition)

    def _persisted(self, msg: Message) -> None:
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        assert topic is not None
        assert partition is not None
        assert offset is not None
        tp = TP(topic, partition)
        if offset > self._delivered_offsets.get(tp, -1):
            self._delivered_offsets[tp] = offset

    def persist_offsets(self) -> None:
        """Record the highest delivered changelog offsets in the store (one write per partition per
        poll; a crash before it only makes the restore re-read a few records)."""
        delivered, self._delivered_offsets = self._delivered_offsets, {}
        for tp, offset in delivered.items():
            self.data.set_persisted_offset(tp, offset)


def delivered_table(app: Any, outputs: Outputs, name: str, **kwargs: Any) -> Any:
    """``app.Table(name, **kwargs)``, as a :class:`DeliveredTable` writing through ``outputs``."""
    table = DeliveredTable(app, name=name, beacon=app.tables.beacon, **kwargs)
    table.outputs = outputs
    table._delivered_offsets = {}
    outputs.tables.append(table)
    return app.tables.add(table)


def attach(app: Any, settings: Settings) -> Outputs:
    """Give ``app`` its :class:`Outputs` (:func:`streams.app.new_app` does, once per app)."""
    outputs = Outputs(app, settings)
    app.crawlstream_outputs = outputs
    return outputs


def of(app: Any) -> Outputs:
    """The :class:`Outputs` of an app made by :func:`streams.app.new_app`."""
    outputs: Outputs = app.crawlstream_outputs
    return outputs
