"""Acking and replay rules of the stream stage that test_outputs.py and test_agent.py leave open
(found by `make mutate`): a table entry written inside ``acking`` is a changelog record the event
waits for, the delivered changelog offsets are persisted (where a restore resumes), the producer
is polled so acks arrive while the input is idle, and a dead letter for state outside any event
(a window's close) carries the key, value and reason but no origin.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import weakref
from collections.abc import Iterator
from typing import Any
from unittest.mock import MagicMock

from faust import streams as faust_streams
from faust.types import TP

from crawlstream.errors import RecordError
from streams import outputs
from streams.agent import Boundary
from streams.outputs import Effects
from tests.unit.streams.harness import sample
from tests.unit.streams.test_agent import DEAD, SETTINGS, SIZE, UNIQUE, FakeEvent, boundary, in_loop
from tests.unit.streams.test_outputs import LateProducer, stage_outputs


class KeyedLateProducer(LateProducer):
    """LateProducer that also keeps each record's key and value."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[str, bytes | None, bytes | None]] = []

    def produce(
        self, topic: str, *, value: bytes | None, key: bytes | None, on_delivery: Any, **kw: Any
    ) -> None:
        self.records.append((topic, key, value))
        super().produce(topic, value=value, key=key, on_delivery=on_delivery, **kw)


def table_of(app: Any, out: outputs.Outputs, name: str = "unit_table") -> Any:
    table = outputs.delivered_table(app, out, name, default=None)
    app.finalize()
    return table


def test_a_table_entry_written_for_an_event_is_a_changelog_record_the_event_waits_for() -> None:
    async def main() -> None:
        app, out, _late = stage_outputs()
        producer = KeyedLateProducer()
        out._producer = producer  # type: ignore[assignment]
        table = table_of(app, out)
        event = FakeEvent()
        event.message.partition = 2

        with out.acking("unit", event) as pending:
            with current_event(event):
                table["k"] = {"a": 1}
            assert pending.count == 1

        ((_callback, msg),) = producer.waiting
        assert msg.topic() == table.changelog_topic.get_topic_name()
        assert msg.partition() == 2  # the event's partition, as faust's changelog
        # What a restore replays: the entry as faust encodes it (JSON key and value).
        ((topic, key, value),) = producer.records
        assert (topic, key, value) == (msg.topic(), b'"k"', b'{"a":1}')
        assert table.data["k"] == {"a": 1}  # stored at once
        assert event.acks == 0
        producer.deliver()
        assert event.acks == 1

    asyncio.run(main())


def test_a_table_entry_written_outside_acking_takes_fausts_path() -> None:
    async def main() -> None:
        app, out, producer = stage_outputs()
        table = table_of(app, out)
        table.changelog_topic.send_soon = MagicMock()
        event = FakeEvent()

        with current_event(event):
            table["k"] = {"b": 2}  # an event, but no acking block: nothing to wait for

        assert producer.waiting == []  # not through Outputs
        (call,) = table.changelog_topic.send_soon.call_args_list
        assert (call.kwargs["key"], call.kwargs["value"]) == ("k", {"b": 2})
        assert table.data["k"] == {"b": 2}

    asyncio.run(main())


def test_the_highest_delivered_changelog_offset_is_persisted_once_per_poll() -> None:
    async def main() -> None:
        app, out, _producer = stage_outputs()
        table = table_of(app, out)
        persisted: list[tuple[TP, int]] = []
        table.data.set_persisted_offset = lambda tp, offset: persisted.append((tp, offset))
        changelog = table.changelog_topic.get_topic_name()

        for partition, offset in ((0, 5), (0, 9), (0, 7), (1, 3)):
            table._persisted(FakeMsg(changelog, partition, offset))
        await out._poll()
        await out._poll()  # nothing new delivered: nothing written again

        assert sorted(persisted) == [(TP(changelog, 0), 9), (TP(changelog, 1), 3)]

    asyncio.run(main())


class CountingPolls(LateProducer):
    def __init__(self) -> None:
        super().__init__()
        self.polls: list[float] = []

    def poll(self, timeout: float = 0) -> int:
        self.polls.append(timeout)
        return 0


def test_the_poll_timer_serves_delivery_reports_without_blocking() -> None:
    async def main() -> None:
        _app, out, _producer = stage_outputs()
        producer = CountingPolls()
        out._producer = producer  # type: ignore[assignment]
        await out._poll()
        assert producer.polls == [0]  # never blocks the event loop
        out._producer = None
        await out._poll()  # before the first record: no producer is made just to poll it
        assert out._producer is None

    asyncio.run(main())


def test_a_dead_letter_outside_any_event_has_its_payload_and_reason_but_no_origin() -> None:
    unit, producer, _crashes = boundary()
    before = sample("streams_dead_letters_total", agent="unit", reason="window_too_large")

    unit.dead_letter_without_event(RecordError("window_too_large", "1000 domains"), b"example.org", b"{}")

    ((topic, key, _value),) = producer.records
    assert topic == DEAD
    assert key == b"example.org"
    (letter,) = producer.letters()
    assert (letter.stage, letter.reason, letter.error_class) == (
        "streams",
        "window_too_large",
        "crawlstream.errors.RecordError",
    )
    assert "1000 domains" in letter.error
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (None, None, None)
    assert letter.key_b64 == base64.b64encode(b"example.org").decode()
    assert letter.value_b64 == base64.b64encode(b"{}").decode()
    assert sample("streams_dead_letters_total", agent="unit", reason="window_too_large") - before == 1


def test_a_dead_letter_outside_any_event_fits_the_dead_letter_topic() -> None:
    unit, producer, _crashes = boundary()
    assert isinstance(unit, Boundary)
    huge = b"x" * (SETTINGS.kafka.max_message_bytes * 2)

    unit.dead_letter_without_event(RecordError("too_large", "window"), b"k", huge)

    ((_topic, key, value),) = producer.records
    assert len(key or b"") + len(value or b"") <= unit.dead_letter_bytes
    (letter,) = producer.letters()
    assert letter.truncated


class FakeMsg:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._t, self._p, self._o = topic, partition, offset

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o


@contextlib.contextmanager
def current_event(event: Any) -> Iterator[None]:
    """Make ``event`` faust's current event, as the agent's stream does while handling it."""
    token = faust_streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)


def test_a_bare_dead_letter_keeps_the_class_and_origin_of_the_refused_one() -> None:
    unit, producer, crashes = boundary()
    event = FakeEvent(key=b"event-key")

    def fail(event: Any) -> Effects:
        raise ValueError("Invalid IPv6 URL")

    def main() -> None:
        unit.process(event, fail)
        producer.deliver_each({DEAD: SIZE})  # the full letter is refused: sent again bare

    in_loop(main)
    first, bare = producer.letters()
    assert bare.error_class == first.error_class == "ValueError"
    assert (bare.source_topic, bare.source_partition, bare.source_offset) == ("unit.pages.raw", 2, 41)
    assert crashes == []


def test_the_dead_letter_of_a_refused_output_is_keyed_by_the_event_and_names_its_size() -> None:
    unit, producer, _crashes = boundary()
    event = FakeEvent(key=b"event-key", value=b"event-value")

    def main() -> None:
        unit.process(event, lambda e: Effects().send(UNIQUE, b"out-key", b"x" * 100))
        producer.deliver_each({UNIQUE: SIZE})

    in_loop(main)
    (topic, key, _value) = producer.records[-1]
    assert (topic, key) == (DEAD, b"event-key")  # the event's key: the letter sits with its origin
    (letter,) = producer.letters()
    assert f"{UNIQUE} refused an output of {len(b'out-key') + 100} bytes" in letter.error
