"""Dead letters of the sink stage, produced to ``<prefix>.deadletter`` (catalog(settings).dead_letter).

Delivery is confirmed (flushed) before the worker stores the batch's offsets, so a dead letter
is never lost; after a crash between the two it is sent again (at-least-once for dead letters).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from confluent_kafka import KafkaError, Message

from crawlstream.errors import RecordError
from crawlstream.records import DeadLetter
from sinks.base import SinkError

log = logging.getLogger(__name__)

STAGE = "sink"
FLUSH_TIMEOUT_S = 30.0


class Producer(Protocol):
    """The part of confluent_kafka.Producer used here (tests pass a fake)."""

    def produce(
        self,
        topic: str,
        value: str | bytes | None = None,
        key: str | bytes | None = None,
        *,
        on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
    ) -> None: ...
    def poll(self, timeout: float) -> int: ...
    def flush(self, timeout: float) -> int: ...


def dead_letter(
    error: RecordError,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    max_bytes: int,
) -> DeadLetter:
    """A DeadLetter for one message; omits the value when base64 would not fit in a message
    (the source offset still points at the original while the source topic retains it)."""
    if value is not None and len(value) * 4 // 3 + 4096 > max_bytes:
        error = RecordError(error.reason, f"{error.detail} (value of {len(value)} bytes omitted: too large)")
        value = None
    return DeadLetter.for_message(
        stage=STAGE, error=error, topic=topic, partition=partition, offset=offset, key=key, value=value
    )


class DeadLetterProducer:
    def __init__(self, producer: Producer, topic: str) -> None:
        self._producer = producer
        self.topic = topic

    def send(self, letters: list[tuple[bytes | None, DeadLetter]]) -> None:
        """Produce (key, letter) pairs and wait for every delivery; raise SinkError otherwise."""
        if not letters:
            return
        failures: list[str] = []

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failures.append(str(err))

        for key, letter in letters:
            log.warning(
                "dead letter %s from %s[%s]@%s: %s",
                letter.reason,
                letter.source_topic,
                letter.source_partition,
                letter.source_offset,
                letter.error,
            )
            while True:
                try:
                    value = letter.to_bytes()
                    self._producer.produce(self.topic, value=value, key=key, on_delivery=delivered)
                    break
                except BufferError:  # local queue full: let deliveries drain, then try again
                    self._producer.poll(1.0)
        undelivered = self._producer.flush(FLUSH_TIMEOUT_S)
        if undelivered or failures:
            # Stop here: the batch's offsets must not be stored, so a restart re-sends them.
            raise SinkError(
                f"{undelivered} dead letter(s) undelivered to {self.topic} after {FLUSH_TIMEOUT_S}s; "
                f"errors: {failures[:3]}"
            )
