"""The per-record boundary (streams.agent): what comes from a record is a dead letter, once; what
comes from the infrastructure stops the worker; nothing is half done; acks follow deliveries."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Message
from rocksdict import DbClosedError

from crawlstream.errors import RecordError
from crawlstream.records import DeadLetter
from crawlstream.settings import KafkaSettings, Settings, StreamsSettings
from streams import outputs
from streams.agent import Boundary, is_infrastructure
from streams.app import new_app
from streams.outputs import Effects, StoreError
from tests.unit.streams.harness import Harness, page, run, sample
from tests.unit.streams.test_outputs import LateProducer

A = "https://example.org/a"
DEAD, UNIQUE, TOUCHES = "unit.deadletter", "unit.pages.unique", "unit.pages.touches"
SIZE = KafkaError.MSG_SIZE_TOO_LARGE
SETTINGS = Settings(
    _env_file=None, kafka=KafkaSettings(topic_prefix="unit"), streams=StreamsSettings(store="memory://")
)


class FakeEvent:
    def __init__(self, key: bytes | None = b"k", value: bytes | None = b"v") -> None:
        self.acks = 0
        self.key, self.value = key, value
        self.message = SimpleNamespace(topic="unit.pages.raw", partition=2, offset=41)

    def ack(self) -> bool:
        self.acks += 1
        return True


class Producer(LateProducer):
    """Holds delivery reports; refuses at once (as librdkafka over message.max.bytes) the records
    of the topics in ``sync``; keeps the key and value of each record."""

    def __init__(self, sync: set[str]) -> None:
        super().__init__()
        self.sync = sync
        self.records: list[tuple[str, bytes | None, bytes | None]] = []

    def produce(
        self, topic: str, *, value: bytes | None, key: bytes | None, on_delivery: Any, **kw: Any
    ) -> None:
        if topic in self.sync:
            raise KafkaException(KafkaError(SIZE))
        self.records.append((topic, key, value))
        msg = Record(topic, key, value)
        self.waiting.append((on_delivery, msg))  # type: ignore[arg-type]

    def topics(self) -> list[str]:
        return [msg.topic() for _, msg in self.waiting]

    def deliver_each(self, errors: dict[str, int]) -> None:
        """Deliver what waits; records of a topic in ``errors`` fail with that code."""
        waiting, self.waiting = self.waiting, []
        for callback, msg in waiting:
            code = errors.get(msg.topic())
            callback(None if code is None else KafkaError(code), msg)

    def letters(self) -> list[DeadLetter]:
        return [DeadLetter.model_validate_json(v or b"") for t, _, v in self.records if t == DEAD]


class Record:
    def __init__(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        self._topic, self._key, self._value = topic, key, value

    def topic(self) -> str:
        return self._topic

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 0


def boundary(sync: set[str] | None = None) -> tuple[Boundary, Producer, list[BaseException]]:
    app = new_app(SETTINGS)
    producer = Producer(sync or set())
    outputs.of(app)._producer = producer  # type: ignore[assignment]
    crashes: list[BaseException] = []

    async def crash(reason: BaseException) -> None:
        crashes.append(reason)

    app.crash = crash
    return Boundary(app, SETTINGS, "unit"), producer, crashes


def two_outputs(event: Any) -> Effects:
    return Effects().send(UNIQUE, b"a", b"1").send(TOUCHES, b"b", b"2")


def in_loop(body: Callable[[], Any]) -> Any:
    """Run ``body`` on an event loop (a crash is scheduled as a task) and let tasks run."""

    async def main() -> Any:
        result = body()
        for _ in range(3):
            await asyncio.sleep(0)
        return result

    return asyncio.run(main())


def test_any_exception_from_a_record_is_a_dead_letter_with_its_class_and_origin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streams.enrich import enrich_html

    def explode(html: str, url: str) -> Any:
        if "boom" in html:
            raise RuntimeError("parser bug on this page")
        return enrich_html(html, url)

    monkeypatch.setattr("streams.changes.enrich_html", explode)
    before = sample("streams_dead_letters_total", agent="detect_changes", reason="unprocessable")

    async def scenario(h: Harness, agent: Any) -> None:
        await agent.put(page(A, body="<p>boom</p>").to_bytes(), key=A.encode(), partition=2)
        await agent.put(page(A, body="<p>fine words</p>").to_bytes(), key=A.encode(), partition=2)

    h = run(lambda h: h.changes.agent, scenario)
    [(key, value)] = h.on("dead_letter")
    letter = DeadLetter.model_validate_json(value)
    assert (key, letter.reason, letter.error_class) == (A.encode(), "unprocessable", "RuntimeError")
    assert "parser bug on this page" in letter.error
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("unit.pages.raw", 2, 0)
    assert sample("streams_dead_letters_total", agent="detect_changes", reason="unprocessable") - before == 1
    assert h.changes.urls[A]["o"] == 1  # the failed event left no entry; the next one wrote its own
    assert len(h.probes()) == 1
    assert h.crashes == []


def test_an_event_is_acked_once_its_dead_letter_is_delivered() -> None:
    b, producer, _ = boundary()
    event = FakeEvent()

    def fail(event: Any) -> Effects:
        raise ValueError("bad")

    b.process(event, fail)
    assert producer.topics() == [DEAD]
    assert event.acks == 0
    producer.deliver()
    assert event.acks == 1


def test_nothing_is_produced_or_written_when_one_record_does_not_fit() -> None:
    h = Harness()
    urls = h.changes.urls
    b = Boundary(h.app, h.settings, "unit")
    event = FakeEvent(key=A.encode())
    event.message.partition = 0
    limit = outputs.of(h.app).limit(UNIQUE)

    def oversized(event: Any) -> Effects:
        effects = Effects().write(urls, A, {"h": "x", "o": 41})
        return effects.send(UNIQUE, b"a", b"1").send(TOUCHES, b"b", b"x" * limit)

    async def main() -> None:
        b.process(event, oversized)

    asyncio.run(main())
    assert [name for name, _, _ in h.sent] == ["dead_letter"]
    assert h.producer.changelog == []
    assert A not in urls
    assert DeadLetter.model_validate_json(h.sent[0][2]).reason == "too_large"
    assert event.acks == 1


def test_a_refused_delivery_dead_letters_the_event_once_and_acks_after_the_letter() -> None:
    b, producer, crashes = boundary()
    event = FakeEvent()
    before = sample("streams_dead_letters_total", agent="unit", reason="too_large")

    def main() -> None:
        b.process(event, two_outputs)
        producer.deliver_each({UNIQUE: SIZE, TOUCHES: KafkaError.RECORD_LIST_TOO_LARGE})  # both refused
        assert producer.topics() == [DEAD]  # one letter for the event, not one per refused record
        assert event.acks == 0
        producer.deliver()

    in_loop(main)
    assert event.acks == 1
    assert crashes == []
    [letter] = producer.letters()
    assert (letter.reason, letter.error_class) == (
        "too_large",
        "confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE",
    )
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("unit.pages.raw", 2, 41)
    assert (letter.original_key(), letter.original_value()) == (b"k", b"v")
    assert UNIQUE in letter.error
    assert sample("streams_dead_letters_total", agent="unit", reason="too_large") - before == 1


def test_a_record_refused_at_produce_time_is_a_dead_letter() -> None:
    b, producer, crashes = boundary(sync={TOUCHES})
    event = FakeEvent()
    in_loop(lambda: b.process(event, lambda e: Effects().send(TOUCHES, b"b", b"2")))
    [letter] = producer.letters()
    assert letter.reason == "too_large"
    assert "refused a record of 2 bytes" in letter.error
    producer.deliver()
    assert (event.acks, crashes) == (1, [])


def test_a_future_timestamp_refused_by_the_broker_is_a_dead_letter_too() -> None:
    b, producer, crashes = boundary()
    event = FakeEvent()
    in_loop(
        lambda: (b.process(event, two_outputs), producer.deliver_each({UNIQUE: KafkaError.INVALID_TIMESTAMP}))
    )
    assert [letter.reason for letter in producer.letters()] == ["invalid_timestamp"]
    producer.deliver()
    assert (event.acks, crashes) == (1, [])


def test_a_refused_dead_letter_is_sent_again_without_payloads_then_the_worker_stops() -> None:
    b, producer, crashes = boundary()
    event = FakeEvent()

    def fail(event: Any) -> Effects:
        raise RecordError("invalid_json", "nope")

    def main() -> None:
        b.process(event, fail)
        producer.deliver_each({DEAD: SIZE})
        bare = producer.letters()[-1]
        assert (bare.reason, bare.key_b64, bare.value_b64) == ("invalid_json", None, None)
        assert (bare.source_topic, bare.source_offset) == ("unit.pages.raw", 41)
        assert "payload omitted" in bare.error
        producer.deliver_each({DEAD: SIZE})  # the bare letter is refused too: give up

    in_loop(main)
    assert event.acks == 0  # replayed after the restart
    assert len(crashes) == 1


def test_an_infrastructure_failure_stops_the_worker_with_the_event_unacked() -> None:
    before = sample("streams_dead_letters_total", agent="detect_changes", reason="unprocessable")

    async def scenario(h: Harness, agent: Any) -> None:
        def broken(key: Any, default: Any = None) -> Any:
            raise StoreError("table urls: read failed: IO error: No space left on device")

        h.changes.urls.get = broken
        with pytest.raises(StoreError):
            await agent.put(page(A).to_bytes(), key=A.encode())

    h = run(lambda h: h.changes.agent, scenario)
    assert h.on("dead_letter") == []
    assert [type(exc) for exc in h.crashes] == [StoreError]
    assert sample("streams_dead_letters_total", agent="detect_changes", reason="unprocessable") == before


def test_other_delivery_failures_still_stop_the_worker() -> None:
    b, producer, crashes = boundary()
    event = FakeEvent()
    in_loop(
        lambda: (b.process(event, two_outputs), producer.deliver_each({UNIQUE: KafkaError._MSG_TIMED_OUT}))
    )
    assert producer.letters() == []
    assert event.acks == 0
    assert len(crashes) == 1


@pytest.mark.parametrize(
    ("exc", "infrastructure"),
    [
        (RecordError("invalid_json", "x"), False),
        (ValueError("Invalid IPv6 URL"), False),
        (RecursionError("maximum recursion depth exceeded"), False),
        (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), False),
        (OverflowError("date value out of range"), False),
        (OSError(errno.EOVERFLOW, "Value too large for defined data type"), False),
        (KafkaException(KafkaError(SIZE)), False),
        (KafkaException(KafkaError(KafkaError.INVALID_TIMESTAMP)), False),
        (KafkaException(KafkaError(KafkaError._TRANSPORT)), True),
        (KafkaException(KafkaError(KafkaError._ALL_BROKERS_DOWN)), True),
        (StoreError("table urls: write failed"), True),
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (Exception("IO error: No space left on device: While appending to file"), True),
        (Exception("Corruption: block checksum mismatch"), True),
        (DbClosedError("closed"), True),
        (Exception("something else"), False),
    ],
)
def test_what_counts_as_infrastructure(exc: BaseException, infrastructure: bool) -> None:
    assert is_infrastructure(exc) is infrastructure


def test_on_refused_sees_the_refused_record() -> None:
    seen: list[tuple[str, str | None]] = []
    b, producer, _ = boundary()
    out = b.outputs

    def on_refused(pending: Any, reason: str, err: KafkaError, msg: Message) -> bool:
        seen.append((reason, msg.topic()))
        return True

    event = FakeEvent()
    with out.acking("unit", event, on_refused):
        out.send(UNIQUE, b"a", b"1")
    in_loop(lambda: producer.deliver_each({UNIQUE: SIZE}))
    assert seen == [("too_large", UNIQUE)]
    assert event.acks == 1  # the handler took the refused record over (here: nothing to wait for)
