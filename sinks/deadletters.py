"""Dead letters of the sink stage, produced to ``<prefix>.deadletter`` (catalog(settings).dead_letter).

Letters are built by :mod:`crawlstream.deadletters` (the one builder, with its one size rule:
key included, payload cut to fit the topic). Delivery is confirmed (flushed) before the worker
stores the batch's offsets, so a dead letter is never lost; after a crash between the two it is
sent again (at-least-once for dead letters).

:meth:`DeadLetterProducer.send` reports what was not delivered instead of raising: a letter the
broker refuses for its size (it should not happen, but the broker's real limit may be lower than
the catalog's) is sent again without key and payload (reason, error class and origin kept); if
even that is refused, it is logged with its origin and returned as unproducible, and the worker
counts it and moves on: the origin still points at the record. Any other failure (the broker
unreachable, a delivery timeout) is returned as undelivered: the worker retries with backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from confluent_kafka import KafkaError, KafkaException, Message

from crawlstream.deadletters import DeadLetterMessage, Origin, build_dead_letter

log = logging.getLogger(__name__)

STAGE = "sink"
FLUSH_TIMEOUT_S = 30.0
# Refusals for size, from librdkafka (message.max.bytes) or the broker (the topic's limit).
SIZE_ERRORS = frozenset(
    {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_MSG_SIZE}
)


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


@dataclass
class SendOutcome:
    delivered: list[DeadLetterMessage] = field(default_factory=list)
    undelivered: list[DeadLetterMessage] = field(default_factory=list)  # retry them later
    unproducible: list[DeadLetterMessage] = field(default_factory=list)  # refused for size, even bare


def bare(message: DeadLetterMessage, max_bytes: int, why: str) -> DeadLetterMessage:
    """The letter without key and payload: reason, error class, origin and sizes in words."""
    letter = message.letter
    sizes = f"key {letter.original_key_bytes} B, value {letter.original_value_bytes} B"
    return build_dead_letter(
        stage=letter.stage,
        reason=letter.reason,
        detail=f"{letter.error} (key and value omitted: {why}; {sizes})",
        key=None,
        value=None,
        max_bytes=max_bytes,
        origin=Origin(letter.source_topic, letter.source_partition, letter.source_offset),
        error_class_name=letter.error_class,
    )


class DeadLetterProducer:
    def __init__(self, producer: Producer, topic: str, max_bytes: int) -> None:
        self._producer = producer
        self.topic = topic
        self.max_bytes = max_bytes

    def send(self, letters: Sequence[DeadLetterMessage]) -> SendOutcome:
        """Produce the letters and wait for every delivery; see the module doc for what is not."""
        outcome = SendOutcome()
        if not letters:
            return outcome
        for message in letters:
            letter = message.letter
            log.warning(
                "dead letter %s from %s[%s]@%s: %s",
                letter.reason,
                letter.source_topic,
                letter.source_partition,
                letter.source_offset,
                letter.error[:500],
            )
        too_large = self._deliver(letters, outcome)
        if too_large:
            retried = [
                bare(m, self.max_bytes, "the dead-letter topic refused the letter for its size")
                for m in too_large
            ]
            for message in self._deliver(retried, outcome):
                letter = message.letter
                log.error(
                    "dead letter %s from %s[%s]@%s refused for its size even without payload; "
                    "the record stays at its origin",
                    letter.reason,
                    letter.source_topic,
                    letter.source_partition,
                    letter.source_offset,
                )
                outcome.unproducible.append(message)
        return outcome

    def _deliver(self, letters: Sequence[DeadLetterMessage], outcome: SendOutcome) -> list[DeadLetterMessage]:
        """Produce and flush; fills ``outcome``; returns the letters refused for their size."""
        errors: dict[int, KafkaError | None] = {}

        def delivered(index: int, err: KafkaError | None, _msg: Message) -> None:
            errors[index] = err

        for index, message in enumerate(letters):
            while True:
                try:
                    self._producer.produce(
                        self.topic,
                        value=message.value,
                        key=message.key,
                        on_delivery=partial(delivered, index),
                    )
                    break
                except BufferError:  # local queue full: let deliveries drain, then try again
                    self._producer.poll(1.0)
                except KafkaException as exc:  # refused before sending (size, unknown topic, ...)
                    error = exc.args[0] if exc.args else None
                    errors[index] = (
                        error if isinstance(error, KafkaError) else KafkaError(KafkaError._FAIL, str(exc))
                    )
                    break
        self._producer.flush(FLUSH_TIMEOUT_S)
        too_large: list[DeadLetterMessage] = []
        for index, message in enumerate(letters):
            if index not in errors:  # no delivery report within the flush timeout
                outcome.undelivered.append(message)
                continue
            err = errors[index]
            if err is None:
                outcome.delivered.append(message)
            elif isinstance(err, KafkaError) and err.code() in SIZE_ERRORS:
                too_large.append(message)
            else:
                log.warning("dead letter undelivered to %s: %s", self.topic, err)
                outcome.undelivered.append(message)
        return too_large
