"""The sink's dead-letter producer: letters fit their topic, and nothing it is refused raises."""

from __future__ import annotations

from typing import Any

from crawlstream.deadletters import MAX_KEY_BYTES, DeadLetterMessage, Origin, build_dead_letter
from crawlstream.records import DeadLetter
from sinks.deadletters import DeadLetterProducer

DEAD = "t.deadletter"
LIMIT = 1024 * 1024


def letter(key: bytes | None, value: bytes | None, offset: int = 7) -> DeadLetterMessage:
    return build_dead_letter(
        stage="sink",
        reason="sqlstate_54000",
        detail="index row size exceeds btree maximum",
        key=key,
        value=value,
        max_bytes=LIMIT,
        origin=Origin("t.pages.unique", 1, offset),
        error_class_name="psycopg2.errors.ProgramLimitExceeded",
    )


def produced(producer: Any) -> list[tuple[bytes | None, DeadLetter]]:
    return [(key, DeadLetter.model_validate_json(value)) for _, value, key in producer.delivered]


def test_letters_of_huge_keys_and_values_fit_the_topic_key_included(make_producer: Any) -> None:
    producer = make_producer()
    producer.max_bytes = LIMIT  # the broker refuses anything larger
    sender = DeadLetterProducer(producer, DEAD, LIMIT)

    outcome = sender.send([letter(b"k" * (LIMIT + 10), b"v" * (2 * LIMIT)), letter(b"k" * 1000, b"{x", 8)])

    assert len(outcome.delivered) == 2
    assert outcome.undelivered == outcome.unproducible == []
    (key, big), (small_key, small) = produced(producer)
    assert key is not None
    assert len(key) <= MAX_KEY_BYTES
    assert big.truncated
    assert big.original_key_bytes == LIMIT + 10
    assert big.original_value_bytes == 2 * LIMIT
    assert (big.source_topic, big.source_partition, big.source_offset) == ("t.pages.unique", 1, 7)
    assert big.error_class == "psycopg2.errors.ProgramLimitExceeded"
    assert (small_key, small.original_value(), small.truncated) == (b"k" * 1000, b"{x", False)


def test_a_letter_the_broker_refuses_for_its_size_is_sent_again_without_payload(make_producer: Any) -> None:
    producer = make_producer()
    producer.max_bytes = 64 * 1024  # the broker's real limit is lower than the catalog's
    sender = DeadLetterProducer(producer, DEAD, LIMIT)

    outcome = sender.send([letter(b"key", b"v" * 500_000)])

    assert outcome.undelivered == outcome.unproducible == []
    ((key, bare),) = produced(producer)
    assert key is None
    assert bare.key_b64 is None
    assert bare.value_b64 is None
    assert (bare.reason, bare.source_offset, bare.error_class) == (
        "sqlstate_54000",
        7,
        "psycopg2.errors.ProgramLimitExceeded",
    )
    assert "omitted" in bare.error
    assert "500000" in bare.error


def test_a_letter_refused_locally_for_its_size_is_sent_again_without_payload(make_producer: Any) -> None:
    producer = make_producer()
    producer.local_max_bytes = 64 * 1024  # produce() raises MSG_SIZE_TOO_LARGE itself

    outcome = DeadLetterProducer(producer, DEAD, LIMIT).send([letter(b"key", b"v" * 500_000)])

    assert [m.letter.value_b64 for m in outcome.delivered] == [None]
    assert outcome.undelivered == outcome.unproducible == []


def test_a_letter_refused_even_without_payload_is_reported_not_raised(make_producer: Any) -> None:
    producer = make_producer()
    producer.max_bytes = 10  # nothing fits

    outcome = DeadLetterProducer(producer, DEAD, LIMIT).send([letter(b"key", b"value")])

    assert outcome.delivered == outcome.undelivered == []
    assert [(m.letter.reason, m.letter.source_offset) for m in outcome.unproducible] == [
        ("sqlstate_54000", 7)
    ]


def test_a_broker_outage_leaves_letters_undelivered_for_a_retry(make_producer: Any) -> None:
    producer = make_producer()
    producer.fail_flushes = 1
    sender = DeadLetterProducer(producer, DEAD, LIMIT)
    letters = [letter(b"a", b"1", 1), letter(b"b", b"2", 2)]

    first = sender.send(letters)
    second = sender.send(first.undelivered)

    assert first.delivered == []
    assert first.undelivered == letters
    assert second.delivered == letters
    assert second.undelivered == []
    assert [d.source_offset for _, d in produced(producer)] == [1, 2]
