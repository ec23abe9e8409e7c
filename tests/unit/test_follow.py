"""`crawlstream follow` and its webhooks with fake messages, producer and HTTP (no services)."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from crawlstream.errors import ConfigError
from crawlstream.follow import Follower, FollowMetrics
from crawlstream.records import DeadLetter
from crawlstream.settings import FollowSettings, Settings
from crawlstream.webhooks import Notifier, WebhookFailed, sign

FETCHED = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


class Msg:
    def __init__(self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        self._k, self._v, self._h = key, value, headers

    def key(self) -> bytes | None:
        return self._k

    def value(self) -> bytes | None:
        return self._v

    def headers(self) -> list[tuple[str, bytes]]:
        return self._h

    def topic(self) -> str:
        return "outbox.event.page"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 7


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    def produce(self, topic: str, key: bytes | None = None, value: bytes = b"") -> None:
        self.sent.append((topic, key, value))

    def flush(self, timeout: float) -> int:
        return 0


class FakeHttp:
    def __init__(self, answers: list[int | Exception]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, bytes, dict[str, str]]] = []

    def __call__(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
        self.calls.append((url, body, headers))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def make(answers: list[int | Exception], **follow: Any) -> tuple[Follower, FakeHttp, FakeProducer, Any]:
    config = FollowSettings(
        webhook_urls=["http://hook.test/in"], webhook_secret=SecretStr("k"), webhook_max_attempts=3, **follow
    )
    settings = Settings(_env_file=None, follow=config)  # type: ignore[call-arg]
    http, producer, registry, sleeps = FakeHttp(answers), FakeProducer(), CollectorRegistry(), []
    notifier = Notifier(config, post=http, sleep=sleeps.append)
    follower = Follower(
        settings, producer, notifier, FollowMetrics(registry), clock=lambda: FETCHED.timestamp() + 2
    )
    follower.sleeps = sleeps  # type: ignore[attr-defined]
    return follower, http, producer, registry


def event(kind: str = "changed") -> Msg:
    payload = {"url": "https://a.test/x", "version": 2, "type": kind, "fetched_at": FETCHED.isoformat()}
    return Msg(
        b"https://a.test/x", json.dumps(payload).encode(), [("id", b"ev-1"), ("eventType", kind.encode())]
    )


def test_an_event_records_latency_and_posts_a_signed_notification() -> None:
    follower, http, producer, registry = make([200])

    follower.handle(event())  # type: ignore[arg-type]

    ((url, body, headers),) = http.calls
    assert url == "http://hook.test/in"
    assert headers["X-Crawlstream-Signature"] == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert (headers["X-Crawlstream-Event"], headers["X-Crawlstream-Delivery"]) == ("changed", "ev-1")
    assert json.loads(body)["payload"]["version"] == 2
    assert registry.get_sample_value("follow_end_to_end_latency_seconds_sum") == pytest.approx(2.0)
    assert registry.get_sample_value("follow_events_total", {"type": "changed"}) == 1
    assert producer.sent == []


def test_server_errors_are_retried_with_backoff_then_dead_lettered() -> None:
    follower, http, producer, registry = make([503, OSError("refused"), 500])

    follower.handle(event())  # type: ignore[arg-type]

    assert len(http.calls) == 3
    assert follower.sleeps == [0.5, 1.0]  # type: ignore[attr-defined]
    ((topic, key, value),) = producer.sent
    letter = DeadLetter.model_validate_json(value)
    assert (topic, key, letter.stage, letter.reason) == (
        "crawlstream.deadletter",
        b"https://a.test/x",
        "follow",
        "webhook_failed",
    )
    assert "HTTP 500" in letter.error
    assert registry.get_sample_value("follow_webhook_retries_total") == 2
    assert registry.get_sample_value("follow_webhook_deliveries_total", {"outcome": "failed"}) == 1


def test_a_refusal_is_not_retried() -> None:
    notifier = Notifier(
        FollowSettings(webhook_secret=SecretStr("k")), post=FakeHttp([400]), sleep=lambda s: None
    )
    with pytest.raises(WebhookFailed, match="after 1 attempt"):
        notifier.notify("http://hook.test/in", b"{}", "created", "id")


def test_tombstones_are_counted_and_notified_as_deletions() -> None:
    follower, http, _producer, registry = make([200])

    follower.handle(Msg(b"https://a.test/x", None, []))  # type: ignore[arg-type]

    assert registry.get_sample_value("follow_tombstones_total") == 1
    assert http.calls[0][2]["X-Crawlstream-Event"] == "deleted"


def test_malformed_events_go_to_the_dead_letter_topic() -> None:
    follower, http, producer, _registry = make([])

    follower.handle(Msg(b"k", b"{oops", []))  # type: ignore[arg-type]

    letter = DeadLetter.model_validate_json(producer.sent[0][2])
    assert (letter.reason, letter.source_topic, letter.source_offset) == (
        "invalid_json",
        "outbox.event.page",
        7,
    )
    assert http.calls == []


def test_webhooks_without_a_secret_fail_at_start_naming_the_field() -> None:
    settings = Settings(_env_file=None, follow=FollowSettings(webhook_urls=["http://h.test/"]))  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="CRAWLSTREAM_FOLLOW__WEBHOOK_SECRET"):
        Follower(settings, FakeProducer())


def test_signature_is_hmac_sha256_hex() -> None:
    assert sign(b"k", b"x") == "sha256=" + hmac.new(b"k", b"x", hashlib.sha256).hexdigest()
