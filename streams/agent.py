"""The per-record boundary every agent of the stage runs in: decode, decide, effects, dead letters.

An agent module holds only its decision logic: a handler ``handle(event) -> Effects`` that decodes
the event, reads its tables and returns what the event does (outputs, table entries, metrics;
:class:`streams.outputs.Effects`) without doing any of it. :meth:`Boundary.agent` turns it into
the faust agent, which for each event of a ``noack`` stream:

1. calls the handler and :meth:`streams.outputs.Outputs.apply` inside ``outputs.acking`` (the
   event is acked once everything produced for it is delivered);
2. if anything raised that comes from the record (any exception but the infrastructure's, see
   :func:`is_infrastructure`: RecordError, ValueError from a URL, RecursionError from nested
   JSON, a record too large for its topic, ...), produces the event's dead letter instead, on
   ``<prefix>.deadletter``, built by the one builder (:mod:`crawlstream.deadletters`: reason,
   error class, origin topic/partition/offset, payloads cut to fit, key included), counts it in
   ``streams_dead_letters_total{agent, reason}``, and acks the event once the letter is delivered;
3. if the broker later refuses one of the event's records for what it is (size, timestamp), the
   event is dead-lettered then (once; :meth:`Boundary._refused`);
4. an infrastructure failure (store I/O, a Kafka error other than a refusal) stops the worker
   with the event unacked, so it is replayed after the restart.

No partial effects: the handler computes everything and ``apply`` checks every record's size
before it writes a table entry or produces anything, so an event that raises leaves no trace but
its dead letter, and a replayed event finds the tables as they were. What can fail after the
first write is the infrastructure (the worker stops, and the replay rule of each table, an entry
stamped with the offset that wrote it, makes the second pass harmless), or a broker refusing a
record the size check let through (a topic configured below the catalog's limit): then the
records already handed over stay, and the dead letter names the refused output.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message
from rocksdict import DbClosedError

from crawlstream.deadletters import Origin, build_dead_letter, dead_letter_for_exception
from crawlstream.errors import RecordError
from crawlstream.records import DeadLetter
from crawlstream.settings import Settings
from crawlstream.topics import catalog
from streams import metrics
from streams import outputs as streams_outputs
from streams.outputs import Effects, StoreError, refusal_reason

log = logging.getLogger(__name__)
STAGE = "streams"
Handler = Callable[[Any], Effects]
# OSErrors of the machine, not of a record (a record can make e.g. datetime raise OSError EOVERFLOW).
_INFRA_ERRNOS = frozenset({errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS, errno.EMFILE, errno.ENFILE})
# RocksDB reports failures as plain Exception("<status>: ...") through rocksdict.
_ROCKSDB_STATUSES = ("IO error", "Corruption", "Resource busy", "Aborted", "Busy", "TimedOut")


def is_infrastructure(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure of the services the worker runs on (it must stop and replay)
    rather than of the record being handled (it must be dead-lettered)."""
    if isinstance(exc, RecordError):
        return False
    if isinstance(exc, (StoreError, DbClosedError)):
        return True
    if isinstance(exc, KafkaException):
        err = exc.args[0] if exc.args else None
        return not (isinstance(err, KafkaError) and refusal_reason(err) is not None)
    if isinstance(exc, OSError):
        return exc.errno in _INFRA_ERRNOS
    return type(exc) is Exception and str(exc).startswith(_ROCKSDB_STATUSES)


def origin_of(event: Any) -> Origin:
    message = event.message
    return Origin(message.topic, message.partition, message.offset)


class Boundary:
    """The boundary of one agent: its name, the stage's Outputs and the dead-letter topic."""

    def __init__(self, app: Any, settings: Settings, agent: str) -> None:
        self.app, self.name = app, agent
        self.outputs = streams_outputs.of(app)
        spec = catalog(settings).dead_letter
        self.dead_letter_topic, self.dead_letter_bytes = spec.name, spec.max_message_bytes

    def agent(self, handle: Handler) -> Callable[[Any], Awaitable[None]]:
        """The faust agent function running ``handle`` on each event inside the boundary."""
        events, processing = metrics.EVENTS.labels(self.name), metrics.PROCESSING.labels(self.name)

        async def run(stream: Any) -> None:
            async for event in stream.noack().events():
                started = time.perf_counter()
                events.inc()
                try:
                    self.process(event, handle)
                except Exception as exc:
                    log.exception(
                        "%s: infrastructure failure at %s; stopping, the event will be replayed",
                        self.name,
                        origin_of(event),
                    )
                    await self.app.crash(exc)
                    raise
                processing.observe(time.perf_counter() - started)

        run.__name__ = run.__qualname__ = self.name
        return run

    def process(self, event: Any, handle: Handler) -> None:
        """Handle one event; raises only for infrastructure failures (the event stays unacked)."""
        with self.outputs.acking(self.name, event, self._refused) as pending:
            try:
                self.outputs.apply(handle(event))
            except Exception as exc:
                if is_infrastructure(exc):
                    raise
                pending.dead_lettered = True
                self.dead_letter(event, exc)

    def dead_letter(self, event: Any, exc: BaseException, pending: Any = None) -> None:
        """Produce ``event``'s dead letter for ``exc`` (inside its acking block, or for ``pending``)."""
        message = dead_letter_for_exception(
            exc,
            stage=STAGE,
            key=event.key,
            value=event.value,
            max_bytes=self.dead_letter_bytes,
            origin=origin_of(event),
        )
        self._send_letter(message.key, message.letter, message.value, pending)

    def dead_letter_without_event(self, exc: BaseException, key: bytes | None, value: bytes | None) -> None:
        """A dead letter for state that failed outside any event (a window's close): no origin."""
        message = dead_letter_for_exception(
            exc, stage=STAGE, key=key, value=value, max_bytes=self.dead_letter_bytes
        )
        self._send_letter(message.key, message.letter, message.value, None)

    def _send_letter(self, key: bytes | None, letter: DeadLetter, value: bytes, pending: Any) -> None:
        metrics.DEAD_LETTERS.labels(self.name, letter.reason).inc()
        log.warning(
            "%s: dead letter for %s[%s]@%s: %s: %s",
            self.name,
            letter.source_topic,
            letter.source_partition,
            letter.source_offset,
            letter.reason,
            letter.error[:300],
        )
        self.outputs.send(self.dead_letter_topic, key, value, pending=pending)

    def _refused(self, pending: Any, reason: str, err: KafkaError, msg: Message) -> bool:
        """The broker refused one of ``pending.event``'s records for what it is: dead-letter the
        event (once). A refused dead letter is sent again without its payloads; if that is refused
        too, give up (False: the worker stops)."""
        topic = msg.topic()
        if topic == self.dead_letter_topic:
            if pending.bare_letter:
                return False
            pending.bare_letter = True
            letter = DeadLetter.model_validate_json(msg.value() or b"")
            bare = build_dead_letter(
                stage=STAGE,
                reason=letter.reason,
                detail=f"{letter.error} (payload omitted: the dead-letter topic refused it: {err.str()})",
                key=None,
                value=None,
                max_bytes=self.dead_letter_bytes,
                origin=Origin(letter.source_topic, letter.source_partition, letter.source_offset),
                error_class_name=letter.error_class,
            )
            self._send_letter(None, bare.letter, bare.value, pending)
            return True
        if pending.dead_lettered:
            return True  # one dead letter per event, however many of its records were refused
        pending.dead_lettered = True
        size = len(msg.key() or b"") + len(msg.value() or b"")
        refusal = RecordError(reason, f"{topic} refused an output of {size} bytes: {err.str()}")
        event = pending.event
        message = build_dead_letter(
            stage=STAGE,
            reason=reason,
            detail=refusal.detail,
            key=event.key,
            value=event.value,
            max_bytes=self.dead_letter_bytes,
            origin=origin_of(event),
            error_class_name=f"confluent_kafka.KafkaError.{err.name()}",
        )
        self._send_letter(message.key, message.letter, message.value, pending)
        return True
