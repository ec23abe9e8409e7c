"""SinkWorker: consumes one topic family (:mod:`sinks.families`) and writes batches to its Sink
exactly once.

Reads the family's topic as the family's group (``settings.sink.group_id`` for pages); writes
undecodable or rejected records to catalog(settings).dead_letter; batches by
``settings.sink.batch_size`` / ``batch_max_latency_s``; retries with ``settings.sink.retry_backoff_*``.

No record stops a partition. Each boundary handles whatever a record makes it raise: decoding
(any exception, not only RecordError: the record is dead-lettered with reason, error class and
origin), preparing (a failure leaves the batch unprepared: the write encodes it again and isolates
the record), writing (the sink names the records it cannot store, RowsRejected, and they are
dead-lettered while the rest is stored; see :mod:`sinks.postgres`). Only the infrastructure is
retried with backoff: the database (SinkUnavailable) and the broker when dead letters cannot be
delivered. When every record of a batch fails alike with an error of our own statements
(StatementFailed), the batch is retried loudly for ``settings.sink.statement_retry_s``, then
dead-lettered. Dead letters are built by :mod:`crawlstream.deadletters` to fit their topic, key
included; one refused for its size anyway is sent bare, or logged and counted (sinks.deadletters).

Exactly-once into the store: the sink commits each batch's rows together with the next offset
per partition, and on every assignment the worker seeks to those stored offsets. After that
commit the same offsets are committed to Kafka too, but only so that lag tools (kafka_exporter,
``kafka-consumer-groups``) see progress: when the two disagree, the offsets in the store count.

Pipelined: a writer thread stores batch N (sink write and retries) while the thread that runs the
worker consumes, decodes and prepares (:meth:`Sink.prepare`) batch N+1. At most one write is in
flight; the next write, the rebalance callbacks and stop wait for it first, then commit its offsets
to Kafka from the consuming thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from functools import partial
from typing import Any, Generic, Literal, Protocol, TypeVar

import tenacity
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka import Producer as KafkaProducer

from crawlstream.deadletters import DeadLetterMessage, Origin, build_dead_letter, dead_letter_for_exception
from crawlstream.kafka import consumer_config, producer_config
from crawlstream.retrying import Stopped, retrying
from crawlstream.settings import Settings
from crawlstream.topics import catalog
from sinks.base import (
    Rejection,
    RowsRejected,
    Sink,
    SinkBatch,
    SinkError,
    SinkRecord,
    SinkUnavailable,
    StatementFailed,
)
from sinks.deadletters import STAGE, DeadLetterProducer, Producer
from sinks.families import Family
from sinks.metrics import SinkMetrics

log = logging.getLogger(__name__)

IDLE_POLL_S = 1.0  # how long one consume() waits when no batch is open; bounds stop latency
# Decoding holds the GIL, which the writer thread needs back after each database round trip: left
# to the interpreter it waits out the switch interval (5 ms) every time, and the write runs at half
# pace. Offering the GIL every few records keeps it going (bench/bench_sink.py, worker path).
YIELD_EVERY = 32
Position = tuple[str, int, int]  # topic, partition, offset
NextOffsets = Mapping[tuple[str, int], int]  # (topic, partition): next offset to read
RebalanceCallback = Callable[[Any, list[TopicPartition]], None]
T = TypeVar("T")
R = TypeVar("R")


class Consumer(Protocol):
    """The part of confluent_kafka.Consumer the worker uses (tests pass a fake)."""

    def subscribe(
        self,
        topics: list[str],
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
    ) -> None: ...
    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]: ...
    def assign(self, partitions: list[TopicPartition]) -> None: ...
    def commit(
        self, *, offsets: list[TopicPartition], asynchronous: Literal[False]
    ) -> list[TopicPartition]: ...
    def close(self) -> None: ...


class SinkWorker(Generic[R]):
    def __init__(
        self,
        settings: Settings,
        family: Family[R],
        sink: Sink[R],
        consumer: Consumer,
        producer: Producer,
        metrics: SinkMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        new_consumer: Callable[[], Consumer] | None = None,
    ) -> None:
        topics = catalog(settings)
        self.family = family
        self.topic = family.topic(settings)
        self.group = family.group(settings)
        self._cfg = settings.sink
        self._sink = sink
        self._consumer = consumer
        # Makes a consumer like ``consumer`` to replace one that a fatal error has ended (a static
        # member fenced after a coordinator failover); without it such an error stops the worker.
        self._new_consumer = new_consumer
        self._dead_letters = DeadLetterProducer(
            producer, topics.dead_letter.name, topics.dead_letter.max_message_bytes
        )
        self.metrics = metrics if metrics is not None else SinkMetrics()
        self._clock = clock
        self._stop = threading.Event()
        self._pending: list[Message] = []
        self._writing: Future[NextOffsets | None] | None = None  # the write in flight (one at most)
        self._letters_lock = threading.Lock()  # one flush at a time sees its own deliveries

    @classmethod
    def from_settings(
        cls, settings: Settings, family: Family[R], metrics: SinkMetrics | None = None
    ) -> SinkWorker[R]:
        max_bytes = settings.kafka.max_message_bytes
        fetch_max = max(50 * 1024 * 1024, max_bytes)
        config = consumer_config(
            settings,
            "sinks",
            family.group(settings),
            **{
                "client.id": f"crawlstream-sink-{family.name}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": round(settings.kafka.consumer_session_timeout_s * 1000),
                "max.partition.fetch.bytes": max_bytes,
                "fetch.max.bytes": fetch_max,
                "receive.message.max.bytes": fetch_max + 1024 * 1024,  # librdkafka: >= fetch.max.bytes + 512
            },
        )

        def new_consumer() -> Consumer:
            return KafkaConsumer(config)

        producer = KafkaProducer(
            producer_config(
                settings,
                "sinks",
                **{
                    "client.id": "crawlstream-sink-deadletters",
                    "enable.idempotence": True,
                    "acks": "all",
                    "message.max.bytes": max_bytes,
                    "compression.type": "lz4",
                },
            )
        )
        sink = family.make_sink(settings)
        return cls(settings, family, sink, new_consumer(), producer, metrics, new_consumer=new_consumer)

    def request_stop(self) -> None:
        """Write the batch being collected and the one in flight, then return from run();
        safe from a signal handler."""
        self._stop.set()

    def run(self, max_idle_s: float | None = None) -> None:
        """Consume until request_stop() or, if given, max_idle_s without any message."""
        self._retry_while_unavailable("open the sink", self._sink.open)
        self._consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        log.info("sink worker consuming %s as group %s", self.topic, self.group)
        idle_since = self._clock()
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sink-writer-{self.family.name}")
        try:
            while not self._stop.is_set():
                try:
                    messages = self._collect()
                except ConsumerEnded as exc:
                    if self._new_consumer is None:
                        raise SinkError(f"fatal Kafka consumer error: {exc}") from None
                    self._replace_consumer(self._new_consumer, exc)
                    continue
                if messages:
                    decoded = self._decode(messages)
                    if decoded is None:  # stopping while its dead letters could not be delivered
                        break
                    batch, by_position = decoded
                    self._finish_write()
                    self._writing = writer.submit(self._write, batch, by_position)
                    idle_since = self._clock()
                    continue
                if self._writing is not None:  # nothing to decode meanwhile: see the write through
                    self._finish_write()
                    idle_since = self._clock()
                elif max_idle_s is not None and self._clock() - idle_since >= max_idle_s:
                    log.info("no message for %.1fs; stopping", max_idle_s)
                    break
            self._finish_write()
        finally:
            if self._writing is not None and (error := self._writing.exception()) is not None:
                log.error("the batch write in flight failed too: %r", error)  # run() is failing already
            writer.shutdown()
            self._consumer.close()
            self._sink.close()
        log.info("sink worker stopped")

    def _collect(self) -> list[Message]:
        """Up to batch_size messages, waiting at most batch_max_latency_s after the first one.
        While a write is in flight, only what is there already: with none, run() finishes the
        write, so that its Kafka commit follows the store's at once, before waiting for more."""
        self._pending = []
        deadline: float | None = None
        while len(self._pending) < self._cfg.batch_size and not self._stop.is_set():
            if deadline is not None:
                timeout = max(0.0, deadline - self._clock())
            else:
                timeout = 0.0 if self._writing is not None else IDLE_POLL_S
            wanted = self._cfg.batch_size - len(self._pending)
            got = self._consumer.consume(num_messages=wanted, timeout=timeout)
            for msg in got:
                error = msg.error()
                if error is None:
                    self._pending.append(msg)
                elif error.fatal() or error.code() == KafkaError._FATAL:
                    # librdkafka reports a fatal error as an event with code _FATAL, whose own
                    # fatal flag is not set: this consumer instance is finished either way.
                    raise ConsumerEnded(str(error))
                else:
                    log.warning("Kafka consumer error: %s", error)
            if deadline is None and self._pending:
                deadline = self._clock() + self._cfg.batch_max_latency_s
            if (deadline is None and not got) or (deadline is not None and self._clock() >= deadline):
                break
        batch, self._pending = self._pending, []
        return batch

    def _replace_consumer(self, new_consumer: Callable[[], Consumer], ended: ConsumerEnded) -> None:
        """Replace a consumer that a fatal error has ended (a static member fenced off when the
        group coordinator moved: librdkafka's consumer cannot rejoin after that) with a new one in
        the same group. The write in flight is seen through first (its rows and offsets are
        stored); the messages collected but not written are dropped, and the new consumer reads
        them again from the offsets in the store, as after any rebalance."""
        log.error("Kafka consumer ended by a fatal error (%s); replacing it", ended)
        self.metrics.consumers_replaced.labels(self.family.name).inc()
        self._finish_write()
        self._pending = []
        old, self._consumer = self._consumer, new_consumer()
        try:
            old.close()
        except (KafkaException, RuntimeError) as exc:  # closing a fenced consumer may fail: it is gone
            log.warning("closing the ended consumer failed: %s", exc)
        self._consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _decode(self, messages: list[Message]) -> tuple[SinkBatch[R], dict[Position, Message]] | None:
        """The batch to write, prepared, after dead-lettering the messages that cannot be decoded
        (for any reason); None if a stop came while those dead letters could not be delivered."""
        by_position: dict[Position, Message] = {}
        next_offsets: dict[tuple[str, int], int] = {}
        records: list[SinkRecord[R]] = []
        letters: list[DeadLetterMessage] = []
        for i, msg in enumerate(messages):
            if i % YIELD_EVERY == 0:
                time.sleep(0)  # see YIELD_EVERY
            topic, partition, offset = position = _position(msg)
            by_position[position] = msg
            next_offsets[(topic, partition)] = max(next_offsets.get((topic, partition), 0), offset + 1)
            try:
                value = self.family.decode(msg.value())
            except Exception as exc:  # RecordError, and anything else a record makes the decoder raise
                letters.append(self._letter_for_exception(exc, msg))
                continue
            records.append(SinkRecord(value, topic, partition, offset))
        if not self._send_dead_letters(letters):
            return None
        batch = SinkBatch(self.group, records, next_offsets)
        try:
            return self._sink.prepare(batch), by_position
        except Exception:
            # Preparing is an optimisation: the write encodes again and isolates what a record caused.
            log.exception("preparing a batch of %d failed; writing it unprepared", len(records))
            return batch, by_position

    def _finish_write(self) -> None:
        """Wait for the write in flight, if any; raise what it raised, else commit its offsets to
        Kafka. Only on the consuming thread: a commit from another thread blocks while that
        thread is inside a rebalance callback (librdkafka), which would wait for it in turn."""
        writing, self._writing = self._writing, None
        if writing is not None and (next_offsets := writing.result()) is not None:
            self._commit_to_kafka(next_offsets)

    def _finish_write_in_callback(self) -> None:
        """_finish_write(), but a failed write is left for run() to raise: an exception raised in a
        rebalance callback only comes out of a later consume()."""
        if self._writing is not None:
            wait([self._writing])
            if self._writing.exception() is None:
                self._finish_write()

    def _write(self, batch: SinkBatch[R], by_position: dict[Position, Message]) -> NextOffsets | None:
        """Store the batch (writer thread); its next offsets once stored, None if stopped before."""
        started = time.perf_counter()
        failing_since: float | None = None  # when StatementFailed first came for this batch
        delay = self._cfg.retry_backoff_initial_s
        while True:
            try:
                changed = self._retry_while_unavailable("write a batch", partial(self._sink.write, batch))
                break
            except RowsRejected as exc:
                rejected = exc.rejected
            except StatementFailed as exc:
                first = exc.rejected[0]
                self.metrics.statement_errors.labels(self.family.name, first.sqlstate or "none").inc()
                now = self._clock()
                failing_since = now if failing_since is None else failing_since
                if now - failing_since < self._cfg.statement_retry_s:
                    log.error(
                        "every record of a batch of %d fails with %s (%s): our SQL, schema or grants? "
                        "retrying in %.1fs; dead-lettering them %.0fs after the first failure",
                        len(exc.rejected),
                        first.reason,
                        first.detail,
                        delay,
                        self._cfg.statement_retry_s,
                    )
                    if self._stop.wait(delay):
                        return None
                    delay = min(delay * 2, self._cfg.retry_backoff_max_s)
                    continue
                log.error(
                    "every record of a batch of %d still fails with %s after %.0fs: dead-lettering them",
                    len(exc.rejected),
                    first.reason,
                    now - failing_since,
                )
                rejected = exc.rejected
            letters = [self._letter_for_rejection(r, by_position) for r in rejected]
            if not self._send_dead_letters(letters):
                log.warning("stopping while dead letters cannot be delivered: the batch stays unwritten")
                return None
            # A new batch, not replace(): what Sink.prepare made was for the old records.
            gone = {_record_position(r.record) for r in rejected}
            kept = [r for r in batch.records if _record_position(r) not in gone]
            batch = SinkBatch(batch.group, kept, batch.next_offsets)
        if changed is None:
            log.warning(
                "stopping while the sink is unavailable: %d messages left unwritten", len(by_position)
            )
            return None
        family = self.family.name
        self.metrics.records_written.labels(family).inc(len(batch.records))
        self.metrics.rows_changed.labels(family).inc(changed)
        self.metrics.batches.labels(family).inc()
        self.metrics.batch_seconds.labels(family).observe(time.perf_counter() - started)
        self.metrics.last_commit.labels(family).set_to_current_time()
        take_counts = getattr(self._sink, "take_counts", None)  # PostgresSink: events of its writes
        for event, n in (take_counts() if take_counts is not None else {}).items():
            if event.startswith("touches_"):
                self.metrics.touches_pending.labels(family, event.removeprefix("touches_")).inc(n)
        return batch.next_offsets

    def _letter_for_exception(self, exc: Exception, msg: Message) -> DeadLetterMessage:
        topic, partition, offset = _position(msg)
        return dead_letter_for_exception(
            exc,
            stage=STAGE,
            key=msg.key(),
            value=msg.value(),
            max_bytes=self._dead_letters.max_bytes,
            origin=Origin(topic, partition, offset),
        )

    def _letter_for_rejection(
        self, rejection: Rejection, by_position: dict[Position, Message]
    ) -> DeadLetterMessage:
        msg = by_position[_record_position(rejection.record)]
        topic, partition, offset = _position(msg)
        return build_dead_letter(
            stage=STAGE,
            reason=rejection.reason,
            detail=rejection.detail,
            key=msg.key(),
            value=msg.value(),
            max_bytes=self._dead_letters.max_bytes,
            origin=Origin(topic, partition, offset),
            error_class_name=rejection.error_class,
        )

    def _send_dead_letters(self, letters: list[DeadLetterMessage]) -> bool:
        """Produce the letters and confirm their delivery, retrying what the broker did not take
        with backoff (an outage); False if a stop was requested first (nothing may be stored then)."""
        delay = self._cfg.retry_backoff_initial_s
        family = self.family.name
        with self._letters_lock:  # decoding and writer threads both send; a flush serves any callback
            while letters:
                outcome = self._dead_letters.send(letters)
                for message in outcome.delivered:
                    self.metrics.dead_letters.labels(family=family, reason=message.letter.reason).inc()
                for message in outcome.unproducible:
                    self.metrics.dead_letters_unproducible.labels(
                        family=family, reason=message.letter.reason
                    ).inc()
                letters = outcome.undelivered
                if letters:
                    self.metrics.dead_letter_retries.labels(family).inc()
                    log.warning(
                        "%d dead letter(s) undelivered to %s; retrying in %.1fs",
                        len(letters),
                        self._dead_letters.topic,
                        delay,
                    )
                    if self._stop.wait(delay):
                        return False
                    delay = min(delay * 2, self._cfg.retry_backoff_max_s)
        return True

    def _commit_to_kafka(self, next_offsets: NextOffsets) -> None:
        offsets = [TopicPartition(t, p, o) for (t, p), o in sorted(next_offsets.items())]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Harmless: the store holds the offsets that count; lag tools catch up next batch.
            log.warning("Kafka offset commit failed (stored offsets still apply): %s", exc)

    def _retry_while_unavailable(self, what: str, action: Callable[[], T]) -> T | None:
        """Run action; while the sink is unavailable retry with capped exponential backoff and
        jitter (:mod:`crawlstream.retrying`). Returns None if a stop was requested while waiting."""

        def failed(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            assert isinstance(exc, SinkUnavailable)
            delay, attempt = state.upcoming_sleep, state.attempt_number
            self.metrics.db_retries.labels(self.family.name).inc()
            if exc.statement:  # our statements, not an outage: loud
                self.metrics.statement_errors.labels(self.family.name, exc.sqlstate or "none").inc()
                log.error("cannot %s (attempt %d, retrying in %.1fs): %s", what, attempt, delay, exc)
            else:
                log.warning("cannot %s (attempt %d, retrying in %.1fs): %s", what, attempt, delay, exc)

        retry = retrying(
            retry_on=SinkUnavailable,
            stop=self._stop,
            initial_s=self._cfg.retry_backoff_initial_s,
            max_s=self._cfg.retry_backoff_max_s,
            before_sleep=failed,
        )
        try:
            return retry(action)
        except Stopped:
            return None

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Seek each assigned partition to the offset stored with the rows (default when none)."""
        self._finish_write_in_callback()  # stored_offsets below uses the same sink connection
        stored: dict[str, dict[int, int]] = {}
        for topic in {tp.topic for tp in partitions}:
            read = partial(self._sink.stored_offsets, self.group, topic)
            stored[topic] = self._retry_while_unavailable("read stored offsets", read) or {}
        for tp in partitions:
            if tp.partition in stored[tp.topic]:
                tp.offset = stored[tp.topic][tp.partition]
        consumer.assign(partitions)
        log.info("assigned %s", ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in partitions))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The write in flight completes first: its offsets are stored before the partition moves.
        # Unwritten messages of revoked partitions are dropped: whoever gets the partition next
        # re-reads them from the stored offset. (No consume() runs between decoding a batch and
        # submitting its write, so every unwritten message is in _pending here.)
        self._finish_write_in_callback()
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        kept = [m for m in self._pending if (m.topic(), m.partition()) not in revoked]
        if len(kept) != len(self._pending):
            dropped = len(self._pending) - len(kept)
            log.info("revoked %d partition(s); dropped %d unwritten messages", len(revoked), dropped)
        self._pending = kept


class ConsumerEnded(Exception):
    """The Kafka consumer reported a fatal error: it must be replaced."""


def _record_position(record: SinkRecord[Any]) -> Position:
    return record.topic, record.partition, record.offset


def _position(msg: Message) -> Position:
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    # Only error events lack a position, and those never reach a batch.
    if topic is None or partition is None or offset is None:
        raise SinkError(f"message without a position: {msg.error()}")
    return topic, partition, offset
