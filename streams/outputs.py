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
``outputs.acking(event)`` (:mod:`streams.agent` does, for every agent); the event is acked (its
offset may be committed) only when every record produced for it, outputs and changelog records
alike, is delivered. A failed delivery leaves the event unacked and stops the worker, so the event
is replayed; the agents' tables make replays harmless (see :mod:`streams.changes`). Delivery
callbacks run on the event loop, from ``poll()`` every ``POLL_INTERVAL_S`` (a timer), so acks
arrive while the input is idle too.

Nothing oversized is produced: :meth:`Outputs.apply` checks every record of an event's
:class:`Effects` against its topic's ``max.message.bytes`` (the catalog's; faust's own changelog
and internal topics take the broker default) before any of them is produced or written, and raises
RecordError ``too_large``. A record the broker still refuses for what it is (size, timestamp: see
:data:`REFUSALS`), synchronously from ``produce()`` or in its delivery report, is the record's
fault, not the infrastructure's: it is handed to the event's ``on_refused`` (the agent boundary
dead-letters the event) instead of stopping the worker, which would only replay it into the same
refusal. Every other delivery failure (broker unreachable, timeouts) still stops the worker.
The producer keeps librdkafka's default partitioner, like every producer of the project (crawlers,
seeders): a host's crawl requests land in one partition whoever sends them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from typing import Any

import faust
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from faust.streams import current_event
from faust.types import TP

from crawlstream.deadletters import check_fits
from crawlstream.errors import CrawlstreamError, RecordError
from crawlstream.kafka import producer_config
from crawlstream.settings import Settings
from crawlstream.topics import BROKER_DEFAULT_MAX_MESSAGE_BYTES, catalog
from streams import metrics

log = logging.getLogger(__name__)
POLL_INTERVAL_S = 0.02
# Broker and client errors that refuse one record for what it is: retrying, or replaying the
# event that made it, can only fail the same way. Values are dead-letter reasons.
REFUSALS = {
    KafkaError.MSG_SIZE_TOO_LARGE: "too_large",  # also raised by produce() over message.max.bytes
    KafkaError.RECORD_LIST_TOO_LARGE: "too_large",
    KafkaError.INVALID_MSG_SIZE: "too_large",
    KafkaError.INVALID_TIMESTAMP: "invalid_timestamp",  # e.g. past log.message.timestamp.after.max.ms
    KafkaError.INVALID_RECORD: "refused_record",
}


def refusal_reason(err: KafkaError) -> str | None:
    """The dead-letter reason when ``err`` refuses a record for what it is, else None."""
    return REFUSALS.get(err.code())


class StoreError(CrawlstreamError):
    """A table's store failed (disk full, I/O error): infrastructure, the worker stops."""


class Pending:
    """The deliveries an event still waits for; the event is acked when none is left and every
    earlier event of its agent and partition is acked (see :class:`AckOrder`).

    ``on_refused(pending, reason, err, msg)`` is called when the broker refuses one of them for
    what it is (:data:`REFUSALS`); it returns False when it cannot handle it (the worker stops).
    """

    __slots__ = (
        "abandoned",
        "agent",
        "bare_letter",
        "closed",
        "count",
        "dead_lettered",
        "done",
        "event",
        "on_refused",
        "order",
    )

    def __init__(
        self, agent: str, event: Any, on_refused: OnRefused | None, order: deque[Pending] | None = None
    ) -> None:
        self.agent, self.event, self.count, self.closed = agent, event, 0, False
        self.on_refused, self.order = on_refused, order
        self.dead_lettered = self.bare_letter = self.done = self.abandoned = False

    def delivered(self) -> None:
        self.count -= 1
        if self.closed and self.count == 0:
            self.finish()

    def hold(self) -> Pending:
        """Keep the event unacked until :meth:`release` (its work goes on after its handler)."""
        self.count += 1
        return self

    release = delivered

    def finish(self) -> None:
        """Everything of this event is delivered: ack it, and the finished events after it, once
        every event before it is acked (``order``: its agent's unacked events of its partition)."""
        self.done = True
        order = self.order
        if order is None:
            if not self.abandoned:
                self.event.ack()
            return
        while order and order[0].done:
            head = order.popleft()
            if not head.abandoned:
                head.event.ack()


class AckOrder:
    """Acks in offset order, per agent and partition.

    faust-streaming 0.15 commits past an unacked event when the events after it are acked first
    (``Consumer._new_offset`` takes a single missing offset at the head for a compacted-topic gap:
    faust-streaming issue 606), and here an event's ack waits for its own deliveries, which may
    come after a later event's, or for a dedup verdict (streams.verdicts). Acking each partition's
    events in the order they came keeps every committed offset behind the first event not done.
    """

    def __init__(self) -> None:
        self._queues: dict[tuple[str, str, int], deque[Pending]] = {}

    def queue(self, agent: str, event: Any) -> deque[Pending]:
        message = event.message
        key = (agent, message.topic, message.partition)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        return queue

    def abandon(self, partitions: set[tuple[str, int]]) -> int:
        """Forget the unacked events of revoked (topic, partition)s: they are never acked (their
        partition's next owner replays them). Returns how many were abandoned."""
        abandoned = 0
        for key in [k for k in self._queues if (k[1], k[2]) in partitions]:
            for pending in self._queues.pop(key):
                pending.abandoned = True
                abandoned += 1
        return abandoned


OnRefused = Callable[[Pending, str, KafkaError, Message], bool]


_current: ContextVar[Pending | None] = ContextVar("streams_outputs_pending", default=None)


class Outputs:
    """One librdkafka producer for a worker's agent outputs and DeliveredTable changelogs."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self._config = producer_config(
            settings,
            "streams",
            **{
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": max(1, round(settings.streams.producer_linger_s * 1000)),
                "compression.type": "zstd",
                "message.max.bytes": settings.kafka.max_message_bytes,
            },
        )
        self._producer: Producer | None = None
        self._crashing: set[asyncio.Future[None]] = set()
        # What each topic takes: the catalog's limit; faust's changelog and internal topics (not in
        # the catalog) the broker default, the most a broker we did not configure is sure to take.
        self._producer_max = settings.kafka.max_message_bytes
        self._limits = {spec.name: spec.max_message_bytes for spec in catalog(settings).all()}
        self.tables: list[DeliveredTable] = []
        self.order = AckOrder()
        app.timer(POLL_INTERVAL_S, name="streams.outputs.poll")(self._poll)
        app.on_partitions_revoked.connect(self._on_revoked)

    async def _on_revoked(self, sender: Any, revoked: Any, **_kwargs: Any) -> None:
        abandoned = self.order.abandon({(tp.topic, tp.partition) for tp in revoked})
        if abandoned:
            log.info(
                "%d unacked events of revoked partitions abandoned (their next owner replays them)", abandoned
            )

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

    def limit(self, topic: str) -> int:
        """The largest record (key + value + overhead) ``topic`` takes from this producer."""
        return min(self._limits.get(topic, BROKER_DEFAULT_MAX_MESSAGE_BYTES), self._producer_max)

    @contextmanager
    def acking(self, agent: str, event: Any, on_refused: OnRefused | None = None) -> Iterator[Pending]:
        """Collect what is produced for ``event`` in this block; ack it once all is delivered.

        An exception leaves the event unacked (the worker stops and it is replayed).
        """
        order = self.order.queue(agent, event)
        pending = Pending(agent, event, on_refused, order)
        order.append(pending)
        token = _current.set(pending)
        try:
            yield pending
        finally:
            _current.reset(token)
        pending.closed = True
        if pending.count == 0:
            pending.finish()

    def apply(self, effects: Effects) -> None:
        """Check every record of ``effects`` against its topic's limit, then write the tables and
        produce: a record that does not fit raises RecordError ``too_large`` before anything
        happened. What can still fail afterwards is the infrastructure (store, broker), or a
        broker refusing a record the check let through (a topic configured below the catalog):
        see the module docstring.

        The records count for ``effects.behalf`` if set (an event held earlier, whose work this
        event completes), else for the event of the enclosing :meth:`acking` block. Then each
        ``hold`` receives that event's pending deliveries, held (it is not acked before the
        callee releases them), ``then`` runs, and ``release`` releases earlier holds."""
        for send in effects.sends:
            check_fits(send.key, send.value, self.limit(send.topic), send.topic)
        for write in effects.writes:
            check_fits(write.raw_key, write.raw_value, self.limit(write.changelog), write.changelog)
        for write in effects.writes:
            write.table.write_encoded(write.key, write.value, write.raw_key, write.raw_value)
        owner = effects.behalf if effects.behalf is not None else _current.get()
        for send in effects.sends:
            self.send(
                send.topic,
                send.key,
                send.value,
                send.partition,
                timestamp_ms=send.timestamp_ms,
                pending=owner,
            )
        if effects.holds:
            assert owner is not None, "Effects.hold outside an acking block"
            for hold in effects.holds:
                hold(owner.hold())
        for then in effects.then:
            then()
        for held in effects.releases:
            held.release()

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        on_delivered: Callable[[Message], None] | None = None,
        *,
        timestamp_ms: int | None = None,
        pending: Pending | None = None,
    ) -> None:
        """Produce a record for the event of the enclosing :meth:`acking` block (or ``pending``).

        A record librdkafka refuses at once for what it is raises RecordError (its reason from
        :data:`REFUSALS`); other errors raise KafkaException.
        """
        pending = pending if pending is not None else _current.get()
        if pending is not None:
            pending.count += 1
        callback = partial(self._delivered, pending, on_delivered)
        extra: dict[str, Any] = {} if partition is None else {"partition": partition}
        if timestamp_ms is not None:
            extra["timestamp"] = timestamp_ms
        producer = self.producer
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=callback, **extra)
                break
            except BufferError:  # librdkafka's queue is full: serve deliveries, then retry
                producer.poll(0.05)
            except KafkaException as exc:  # no delivery report will come for this record
                if pending is not None:
                    pending.count -= 1
                err: KafkaError = exc.args[0]
                reason = refusal_reason(err)
                if reason is None:
                    raise
                size = len(key or b"") + len(value or b"")
                raise RecordError(reason, f"{topic} refused a record of {size} bytes: {err.str()}") from exc

    def _delivered(
        self,
        pending: Pending | None,
        on_delivered: Callable[[Message], None] | None,
        err: KafkaError | None,
        msg: Message,
    ) -> None:
        if err is not None:
            reason = refusal_reason(err)
            if reason is not None and pending is not None and pending.on_refused is not None:
                try:
                    handled = pending.on_refused(pending, reason, err, msg)
                except Exception:  # the dead letter could not even be produced: stop, as below
                    log.exception("%s: could not dead-letter a refused record", pending.agent)
                    handled = False
                if handled:
                    pending.delivered()  # the refused record is done with; its dead letter is pending
                    return
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
        """The value of ``key``, or ``default``; no default factory.

        The key is encoded first (an odd key is the record's fault); a failing store read is
        :class:`StoreError` (infrastructure).
        """
        partition = self._event_partition()
        db = None if partition is None else self._rocksdb(partition)
        if db is None:
            value = self.data.get(key)
            return default if value is None else value
        store: Any = self.data
        raw_key = store._encode_key(key)
        try:
            raw = db.get(raw_key)
        except Exception as exc:  # rocksdict raises plain Exception ("IO error: ...")
            raise StoreError(f"table {self.name}: read failed: {exc}") from exc
        if raw is None:
            return default
        return raw if self.value_serializer == "raw" else json.loads(raw)

    def scan(self, prefix: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` entries whose key starts with ``prefix``, in key order, from the event's
        partition (a table of ``bytes`` keys and values: ``key_type=bytes, value_type=bytes``).

        RocksDB seeks to the prefix and reads on; a memory store (unit tests) filters its keys.
        """
        partition = self._event_partition()
        db = None if partition is None else self._rocksdb(partition)
        if db is None:
            found = sorted((k, v) for k, v in self.data.items() if k.startswith(prefix))
            return found[:limit]
        out: list[tuple[bytes, bytes]] = []
        try:
            it = db.iter()
            it.seek(prefix)
            while it.valid() and len(out) < limit:
                key = it.key()
                if not key.startswith(prefix):
                    break
                out.append((key, it.value()))
                it.next()
        except Exception as exc:
            raise StoreError(f"table {self.name}: scan failed: {exc}") from exc
        return out

    def encode(self, key: Any, value: Any) -> tuple[bytes, bytes]:
        """The changelog (and store) bytes of ``key`` and ``value``."""
        store: Any = self.data
        if self.value_serializer == "raw":
            return store._encode_key(key), bytes(value)
        return store._encode_key(key), json.dumps(value, separators=(",", ":")).encode()

    def __setitem__(self, key: Any, value: Any) -> None:
        if self._event_partition() is None:
            super().__setitem__(key, value)
            return
        self.write_encoded(key, value, *self.encode(key, value))

    def write_encoded(self, key: Any, value: Any, raw_key: bytes, raw_value: bytes) -> None:
        """Write ``key`` (encoded as given by :meth:`encode`) inside ``acking``: changelog record
        through :class:`Outputs`, then the store."""
        partition = self._event_partition()
        assert partition is not None, "DeliveredTable.write_encoded outside acking"
        changelog = self.changelog_topic.get_topic_name()
        self.outputs.send(changelog, raw_key, raw_value, partition, self._persisted)
        db = self._rocksdb(partition)
        if db is None:
            self.data[key] = value
        else:
            try:
                db.put(raw_key, raw_value)
            except Exception as exc:
                raise StoreError(f"table {self.name}: write failed: {exc}") from exc
        self._maybe_set_key_ttl(key, partition)

    def put_local(self, partition: int | None, raw_key: bytes, raw_value: bytes) -> None:
        """Store an entry in ``partition``'s store only, with no changelog record: for entries a
        table derives from its changelog records, at once and again when it restores them."""
        db = None if partition is None else self._rocksdb(partition)
        if db is None:
            self.data[raw_key] = raw_value  # a memory store (unit tests): bytes keys and values
            return
        try:
            db.put(raw_key, raw_value)
        except Exception as exc:
            raise StoreError(f"table {self.name}: write failed: {exc}") from exc

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


@dataclass(frozen=True)
class Send:
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None
    timestamp_ms: int | None = None


@dataclass(frozen=True)
class Write:
    table: DeliveredTable
    key: Any
    value: Any
    raw_key: bytes
    raw_value: bytes
    changelog: str


class Effects:
    """What handling one event does, computed before any of it happens (see :meth:`Outputs.apply`).

    ``send``: an output record; ``write``: a :class:`DeliveredTable` entry (encoded now, so its
    changelog record is checked with the outputs); ``hold``: work that goes on after the handler
    (the event stays unacked until it releases what it was given); ``then``: what runs once the
    records are handed over (metrics, faust's own tables), in order; ``release``: an earlier
    hold this event completes. ``behalf``: the held event the records count for, if not the
    event being handled.
    """

    __slots__ = ("behalf", "holds", "releases", "sends", "then", "writes")

    def __init__(self, behalf: Pending | None = None) -> None:
        self.behalf = behalf
        self.sends: list[Send] = []
        self.writes: list[Write] = []
        self.holds: list[Callable[[Pending], object]] = []
        self.then: list[Callable[[], object]] = []
        self.releases: list[Pending] = []

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> Effects:
        self.sends.append(Send(topic, key, value, partition, timestamp_ms))
        return self

    def write(self, table: DeliveredTable, key: Any, value: Any) -> Effects:
        raw_key, raw_value = table.encode(key, value)
        changelog = table.changelog_topic.get_topic_name()
        self.writes.append(Write(table, key, value, raw_key, raw_value, changelog))
        return self

    def hold(self, hold: Callable[[Pending], object]) -> Effects:
        self.holds.append(hold)
        return self

    def after(self, then: Callable[[], object]) -> Effects:
        self.then.append(then)
        return self

    def release(self, held: Pending) -> Effects:
        self.releases.append(held)
        return self


def delivered_table(
    app: Any, outputs: Outputs, name: str, table_class: type[DeliveredTable] | None = None, **kwargs: Any
) -> Any:
    """``app.Table(name, **kwargs)``, as a :class:`DeliveredTable` (or ``table_class``) writing
    through ``outputs``."""
    table = (table_class or DeliveredTable)(app, name=name, beacon=app.tables.beacon, **kwargs)
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
