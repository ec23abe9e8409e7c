"""`crawlstream follow`: the per-record boundary, notifications, dead letters and commits, with
fake messages, producer and webhook clients (no services)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from crawlstream.deadletters import Origin, build_dead_letter
from crawlstream.errors import ConfigError
from crawlstream.records import DeadLetter
from crawlstream.settings import FollowSettings, Settings
from follow.follow import (
    MAX_URL_BYTES,
    DeadLetterProducer,
    Follower,
    FollowMetrics,
    PendingOffsets,
    printable,
)
from follow.webhooks import SIGNATURE_HEADER, verify
from follow.webhooks.delivery import Stopping
from follow.webhooks.transport import Answer

FETCHED = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
URL = "https://a.test/x"


class Msg:
    def __init__(
        self, key: bytes | None, value: bytes | None, headers: Any = (), offset: int = 7, partition: int = 0
    ) -> None:
        self._k, self._v, self._h, self._o, self._p = key, value, headers, offset, partition

    def key(self) -> bytes | None:
        return self._k

    def value(self) -> bytes | None:
        return self._v

    def headers(self) -> Any:
        if isinstance(self._h, Exception):
            raise self._h
        return list(self._h)

    def topic(self) -> str:
        return "outbox.event.page"

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o


class FakeProducer:
    """produce/poll with delivery reports; ``failures`` are reported before the first success."""

    def __init__(self, failures: int = 0) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self.failures = failures
        self._pending: list[Any] = []

    def produce(
        self, topic: str, key: bytes | None = None, value: bytes = b"", on_delivery: Any = None
    ) -> None:
        self.sent.append((topic, key, value))
        self._pending.append(on_delivery)

    def poll(self, timeout: float = 0) -> int:
        served, self._pending = self._pending, []
        for report in served:
            if self.failures:
                self.failures -= 1
                report("_MSG_TIMED_OUT", None)
            else:
                report(None, None)
        return len(served)

    def letters(self) -> list[DeadLetter]:
        return [DeadLetter.model_validate_json(v) for _t, _k, v in self.sent]


class FakeClient:
    def __init__(self) -> None:
        self.calls: list[tuple[bytes, dict[str, str]]] = []
        self.got = threading.Semaphore(0)

    def post(self, body: bytes, headers: list[tuple[str, str]], deadline_at: float) -> Answer:
        self.calls.append((body, dict(headers)))
        self.got.release()
        return Answer(204, None, 0, False)

    def close(self) -> None:
        pass


def make(webhooks: int = 1, **follow: Any) -> tuple[Follower, FakeClient, FakeProducer, CollectorRegistry]:
    config = FollowSettings(
        webhook_urls=[f"https://hook{i}.example.com/in" for i in range(webhooks)],
        webhook_secret=SecretStr("k"),
        **follow,
    )
    settings = Settings(_env_file=None, follow=config)  # type: ignore[call-arg]
    producer, registry, client = FakeProducer(), CollectorRegistry(), FakeClient()
    follower = Follower(
        settings,
        producer,
        metrics=FollowMetrics(registry),
        clock=lambda: FETCHED.timestamp() + 2,
        resolver=lambda host, port: ["93.184.215.14"],  # public: passes the start-up check
    )
    for receiver in follower.dispatcher.receivers:
        receiver.client = client  # type: ignore[assignment]
    return follower, client, producer, registry


def payload(**changes: Any) -> dict[str, Any]:
    values = {
        "url": URL,
        "version": 2,
        "status": 200,
        "fetched_at": FETCHED.isoformat(),
        "body_hash": "ab" * 32,
        "content_hash": "cd" * 16,
        "simhash": "00ff00ff00ff00ff",
        "run_id": "r1",
        "type": "changed",
    }
    return values | changes


def event(offset: int = 7, **changes: Any) -> Msg:
    body = payload(**changes)
    headers = [("id", b"0b9e5f4c-4b8e-4a59-9d61-2c1f4e0a7d11"), ("eventType", body["type"].encode())]
    return Msg(body["url"].encode(), json.dumps(body).encode(), headers, offset)


def test_an_event_records_latency_and_posts_a_signed_notification() -> None:
    follower, client, producer, registry = make()
    follower.start()
    try:
        follower.handle(event())  # type: ignore[arg-type]
        assert client.got.acquire(timeout=10)
    finally:
        follower.stop()
    ((body, headers),) = client.calls
    assert verify("k", headers[SIGNATURE_HEADER], body)
    assert (headers["X-Crawlstream-Event"], headers["X-Crawlstream-Delivery"]) == (
        "changed",
        "0b9e5f4c-4b8e-4a59-9d61-2c1f4e0a7d11",
    )
    sent = json.loads(body)
    assert (sent["type"], sent["url"], sent["payload"]["version"], sent["payload"]["simhash"]) == (
        "changed",
        URL,
        2,
        "00ff00ff00ff00ff",
    )
    assert registry.get_sample_value("follow_end_to_end_latency_seconds_sum") == pytest.approx(2.0)
    assert registry.get_sample_value("follow_events_total", {"type": "changed"}) == 1
    assert producer.sent == []


def test_tombstones_are_counted_and_notified_as_deletions() -> None:
    follower, client, _producer, registry = make()
    follower.start()
    try:
        follower.handle(Msg(URL.encode(), None, offset=3))  # type: ignore[arg-type]
        assert client.got.acquire(timeout=10)
    finally:
        follower.stop()
    assert registry.get_sample_value("follow_tombstones_total") == 1
    assert client.calls[0][1]["X-Crawlstream-Event"] == "deleted"
    assert client.calls[0][1]["X-Crawlstream-Delivery"] == "outbox.event.page:0:3"  # no id header


NESTED = b"[" * 100_000 + b"]" * 100_000
HOSTILE = {
    "not_json": (Msg(b"k", b"{oops \xff"), "invalid_json"),
    "json_null": (Msg(URL.encode(), b"null"), "invalid_record"),
    "json_array": (Msg(URL.encode(), b"[1, 2]"), "invalid_record"),
    "wrong_shape": (Msg(URL.encode(), json.dumps({"url": URL, "version": "two"}).encode()), "invalid_record"),
    "bad_simhash": (Msg(URL.encode(), json.dumps(payload(simhash="xyz")).encode()), "invalid_record"),
    "deeply_nested": (Msg(URL.encode(), NESTED), "invalid_json"),
    "nested_in_a_field": (Msg(URL.encode(), b'{"url": ' + NESTED + b"}"), "invalid_json"),
    "crlf_event_type": (
        Msg(URL.encode(), json.dumps(payload()).encode(), [("eventType", b"changed\r\nX-Evil: 1")]),
        "invalid_header",
    ),
    "crlf_id": (
        Msg(URL.encode(), json.dumps(payload()).encode(), [("id", b"a\r\n\r\nGET / HTTP/1.1")]),
        "invalid_header",
    ),
    "non_utf8_header": (
        Msg(URL.encode(), json.dumps(payload()).encode(), [("eventType", b"\xff\xfe")]),
        "invalid_header",
    ),
    "undecodable_headers": (
        Msg(URL.encode(), json.dumps(payload()).encode(), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad")),
        "unprocessable",
    ),
    "event_type_mismatch": (
        Msg(URL.encode(), json.dumps(payload()).encode(), [("eventType", b"created")]),
        "event_type_mismatch",
    ),
    "unknown_event_type": (
        Msg(URL.encode(), json.dumps(payload(type="exploded")).encode()),
        "invalid_record",
    ),
    "key_over_the_limit": (Msg(b"h" * (MAX_URL_BYTES + 1), json.dumps(payload()).encode()), "key_too_large"),
    "non_utf8_key": (Msg(b"\xff\xfe", json.dumps(payload()).encode()), "invalid_key"),
    "key_mismatch": (Msg(b"https://other.test/", json.dumps(payload()).encode()), "key_mismatch"),
    "url_too_long": (
        Msg(None, json.dumps(payload(url="https://a.test/" + "a" * MAX_URL_BYTES)).encode()),
        "url_too_long",
    ),
    "keyless_tombstone": (Msg(None, None), "null_value"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_record_is_one_dead_letter_and_the_follower_moves_on(case: str) -> None:
    msg, reason = HOSTILE[case]
    follower, client, producer, registry = make()
    follower.start()
    try:
        follower.handle(msg)  # type: ignore[arg-type]
        follower.handle(event(offset=8))  # type: ignore[arg-type]  # the next one is handled as usual
        assert client.got.acquire(timeout=10)
    finally:
        follower.stop()
    (letter,) = producer.letters()
    assert (letter.stage, letter.reason) == ("follow", reason)
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("outbox.event.page", 0, 7)
    assert letter.error_class
    assert registry.get_sample_value("follow_dead_letters_total", {"reason": reason}) == 1
    assert len(client.calls) == 1  # only the good event was notified
    assert follower.offsets.take() == {("outbox.event.page", 0): 9}  # both finished: committable


def test_a_huge_key_gives_a_dead_letter_that_fits_its_topic() -> None:
    follower, _client, producer, _registry = make(webhooks=0)
    follower.dead_letter_max_bytes = 1024 * 1024
    follower.handle(Msg(b"k" * 900_000, b"v" * 900_000))  # type: ignore[arg-type]
    ((_topic, key, value),) = producer.sent
    assert len(key or b"") + len(value) <= 1024 * 1024
    assert DeadLetter.model_validate_json(value).truncated


def test_printed_lines_cannot_drive_the_terminal() -> None:
    shown = printable("https://a.test/\x1b[2J\x1b]0;owned\x07\r\nnext \u00e9")
    assert shown.isprintable()
    assert shown.isascii()
    assert "\x1b" not in shown
    assert "\\x1b" in shown


def test_the_echo_line_is_sanitised() -> None:
    lines: list[str] = []
    follower, _client, _producer, _registry = make(webhooks=0)
    follower.echo = lines.append
    url = "https://a.test/\x1b[31mred"
    follower.handle(Msg(url.encode(), json.dumps(payload(url=url)).encode()))  # type: ignore[arg-type]
    assert "\x1b" not in lines[0]
    assert "changed" in lines[0]


def test_offsets_are_committed_only_past_events_every_receiver_finished() -> None:
    pending = PendingOffsets()
    first = pending.add(Origin("t", 0, 10), waits=2)
    second = pending.add(Origin("t", 0, 11), waits=2)
    pending.add(Origin("t", 1, 5), waits=0)
    assert pending.take() == {("t", 1): 6}
    pending.done(second)
    pending.done(second)  # the later one is finished, the earlier is not: nothing to commit
    assert pending.take() == {}
    pending.done(first)
    assert pending.take() == {}
    pending.done(first)
    assert pending.take() == {("t", 0): 12}
    assert pending.pending() == 0


def test_a_revoked_partition_is_forgotten_and_late_completions_are_ignored() -> None:
    pending = PendingOffsets()
    old = pending.add(Origin("t", 0, 10), waits=1)
    pending.forget({("t", 0)})
    fresh = pending.add(Origin("t", 0, 30), waits=1)
    pending.done(old)
    assert pending.take() == {}
    pending.done(fresh)
    assert pending.take() == {("t", 0): 31}


def test_a_failed_commit_is_given_back() -> None:
    pending = PendingOffsets()
    pending.add(Origin("t", 0, 1), waits=0)
    taken = pending.take()
    pending.give_back(taken)
    assert pending.take() == {("t", 0): 2}


def test_dead_letters_are_written_again_until_the_broker_has_them() -> None:
    producer = FakeProducer(failures=2)
    registry = CollectorRegistry()
    writer = DeadLetterProducer(producer, "dlq", FollowMetrics(registry), threading.Event())
    writer.stopping.wait = lambda timeout=None: False  # type: ignore[method-assign]  # no real backoff
    message = build_dead_letter(
        stage="follow", reason="x", detail="d", key=b"k", value=b"v", max_bytes=1 << 20
    )
    writer.write(message)
    assert len(producer.sent) == 3
    assert registry.get_sample_value("follow_dead_letters_total", {"reason": "x"}) == 1


def test_a_dead_letter_that_cannot_be_stored_at_stop_is_not_committed() -> None:
    producer = FakeProducer(failures=1)
    stopping = threading.Event()
    stopping.set()
    writer = DeadLetterProducer(producer, "dlq", FollowMetrics(CollectorRegistry()), stopping)
    message = build_dead_letter(
        stage="follow", reason="x", detail="d", key=b"k", value=b"v", max_bytes=1 << 20
    )
    with pytest.raises(Stopping):
        writer.write(message)


def test_webhooks_without_a_secret_fail_at_start_naming_the_field() -> None:
    settings = Settings(_env_file=None, follow=FollowSettings(webhook_urls=["https://h.example.com/"]))  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="CRAWLSTREAM_FOLLOW__WEBHOOK_SECRET"):
        Follower(settings, FakeProducer(), resolver=lambda h, p: ["93.184.215.14"])


def test_a_private_receiver_fails_at_start() -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        follow=FollowSettings(webhook_urls=["http://127.0.0.1:9/x"], webhook_secret=SecretStr("k")),
    )
    with pytest.raises(ConfigError, match=r"follow.webhook_urls\[0\].*loopback"):
        Follower(settings, FakeProducer())


def test_a_page_event_as_postgres_writes_it_decodes() -> None:
    """jsonb renders timestamptz with microseconds and an offset; a page without text has a null
    simhash; fields added to the payload later are ignored."""
    raw = json.dumps(
        payload(fetched_at="2026-11-25T10:00:00.123456+00:00", simhash=None, content_hash="", added=1)
    ).encode()
    follower, _client, producer, registry = make(webhooks=0)
    follower.handle(Msg(URL.encode(), raw))  # type: ignore[arg-type]
    assert producer.sent == []
    assert registry.get_sample_value("follow_events_total", {"type": "changed"}) == 1
