"""``crawlstream follow``: the reference downstream consumer of the page events topic.

Reads ``outbox.event.page`` (catalog: page_events; written by Debezium's outbox EventRouter) as
group ``follow.group_id``; prints one line per event, records the end-to-end latency (the page's
``fetched_at`` to the event's arrival) in ``follow_end_to_end_latency_seconds``, accepts
tombstones (null values: the aggregate was deleted), and POSTs signed change notifications to
``follow.webhook_urls`` (:mod:`crawlstream.webhooks`). A malformed event or a webhook that keeps
failing goes to ``<prefix>.deadletter`` (stage ``follow``). Offsets are committed after each
event is handled: at-least-once. Metrics on ``follow.metrics_port``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

import typer
from confluent_kafka import Consumer, Message, Producer
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from crawlstream.errors import ConfigError, RecordError
from crawlstream.logs import setup_logging
from crawlstream.metrics import serve_metrics
from crawlstream.records import DeadLetter
from crawlstream.settings import Settings, load_settings
from crawlstream.topics import catalog
from crawlstream.webhooks import Notifier, WebhookFailed

log = logging.getLogger(__name__)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
EVENT_TYPES = ("created", "changed", "gone")
follow_app = typer.Typer(help="Follow the page events topic (outbox.event.page).")


class FollowMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.events = Counter(
            "follow_events_total", "Page events received, by type", ["type"], registry=registry
        )
        self.tombstones = Counter("follow_tombstones_total", "Tombstones received", registry=registry)
        self.latency = Histogram(
            "follow_end_to_end_latency_seconds",
            "Page fetched_at to page event received",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.webhooks = Counter(
            "follow_webhook_deliveries_total",
            "Webhook deliveries, by outcome",
            ["outcome"],
            registry=registry,
        )
        self.webhook_retries = Counter(
            "follow_webhook_retries_total", "Webhook attempts retried", registry=registry
        )
        self.dead_letters = Counter(
            "follow_dead_letters_total",
            "Events sent to the dead-letter topic, by reason",
            ["reason"],
            registry=registry,
        )


class Follower:
    def __init__(
        self,
        settings: Settings,
        producer: Any,
        notifier: Notifier | None = None,
        metrics: FollowMetrics | None = None,
        clock: Callable[[], float] = time.time,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        if settings.follow.webhook_urls and not settings.follow.webhook_secret.get_secret_value():
            raise ConfigError(
                "follow.webhook_secret (CRAWLSTREAM_FOLLOW__WEBHOOK_SECRET) is required "
                "with follow.webhook_urls"
            )
        self.settings = settings
        self.dead_topic = catalog(settings).dead_letter.name
        self.producer = producer
        self.notifier = notifier or Notifier(settings.follow)
        self.metrics = metrics or FollowMetrics()
        self.clock = clock
        self.echo = echo

    def handle(self, msg: Message) -> None:
        key = (msg.key() or b"").decode("utf-8", "replace")
        value = msg.value()
        headers = {k: _text(v) for k, v in _header_pairs(msg)}
        if value is None:
            self.metrics.tombstones.inc()
            self._notify(key, "deleted", {"url": key}, headers.get("id", ""))
            return
        try:
            payload = json.loads(value)
            if not isinstance(payload, dict):
                raise ValueError("payload is not a JSON object")
        except ValueError as exc:
            self._dead_letter(msg, RecordError("invalid_json", str(exc)))
            return
        event_type = headers.get("eventType") or str(payload.get("type", ""))
        self.metrics.events.labels(event_type if event_type in EVENT_TYPES else "other").inc()
        latency = None
        if isinstance(payload.get("fetched_at"), str):
            try:
                latency = max(0.0, self.clock() - datetime.fromisoformat(payload["fetched_at"]).timestamp())
                self.metrics.latency.observe(latency)
            except ValueError:
                log.warning("event for %s has an unreadable fetched_at %r", key, payload["fetched_at"])
        if self.echo is not None:
            shown = "?" if latency is None else f"{latency:.3f}s"
            self.echo(f"{event_type:8} v{payload.get('version', '?')} {key} (fetched {shown} ago)")
        self._notify(key, event_type, payload, headers.get("id", ""))

    def _notify(self, key: str, event_type: str, payload: dict[str, Any], delivery_id: str) -> None:
        body = json.dumps({"type": event_type, "url": key, "payload": payload}, sort_keys=True).encode()
        for url in self.settings.follow.webhook_urls:
            try:
                self.notifier.notify(url, body, event_type, delivery_id)
                self.metrics.webhooks.labels("delivered").inc()
            except WebhookFailed as exc:
                self.metrics.webhooks.labels("failed").inc()
                self._produce_letter(key.encode(), body, RecordError("webhook_failed", str(exc)), None)
            finally:
                self.metrics.webhook_retries.inc(len(self.notifier.retries))
                self.notifier.retries.clear()

    def _dead_letter(self, msg: Message, error: RecordError) -> None:
        self._produce_letter(msg.key(), msg.value(), error, msg)

    def _produce_letter(
        self, key: bytes | None, value: bytes | None, error: RecordError, msg: Message | None
    ) -> None:
        letter = DeadLetter.for_message(
            stage="follow",
            error=error,
            topic=msg.topic() if msg is not None else None,
            partition=msg.partition() if msg is not None else None,
            offset=msg.offset() if msg is not None else None,
            key=key,
            value=value,
        )
        log.warning("dead letter %s: %s", error.reason, error.detail)
        self.producer.produce(self.dead_topic, key=key, value=letter.to_bytes())
        if self.producer.flush(30):
            raise RecordError("dead_letter_undelivered", f"could not deliver to {self.dead_topic}")
        self.metrics.dead_letters.labels(error.reason).inc()


def _header_pairs(msg: Message) -> list[tuple[str, Any]]:
    return list(msg.headers() or [])  # type: ignore[arg-type]  # confluent's stubs type it loosely


def _text(value: str | bytes | None) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else (value or "")


def run(
    settings: Settings,
    follower: Follower,
    *,
    from_beginning: bool = False,
    max_messages: int | None = None,
    max_idle_s: float | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> int:
    consumer = Consumer(
        settings.kafka.librdkafka(
            **{
                "group.id": settings.follow.group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest" if from_beginning else "latest",
            }
        )
    )
    consumer.subscribe([catalog(settings).page_events.name])
    handled, idle_since = 0, time.monotonic()
    try:
        while (max_messages is None or handled < max_messages) and not stop():
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                if max_idle_s is not None and time.monotonic() - idle_since > max_idle_s:
                    break
                continue
            follower.handle(msg)
            consumer.commit(message=msg, asynchronous=False)
            handled, idle_since = handled + 1, time.monotonic()
    finally:
        consumer.close()
    return handled


@follow_app.callback(invoke_without_command=True)
def follow(
    from_beginning: Annotated[bool, typer.Option(help="start at the oldest event (new group)")] = False,
    max_messages: Annotated[int | None, typer.Option(help="stop after this many events")] = None,
    max_idle_s: Annotated[float | None, typer.Option(help="stop after this long without events")] = None,
    quiet: Annotated[bool, typer.Option(help="no line per event")] = False,
) -> None:
    """Read page events, record end-to-end latency, notify webhooks."""
    settings = load_settings()
    setup_logging(settings.log_level, json_lines=settings.log_json)
    serve_metrics(settings.metrics.host, settings.follow.metrics_port)
    producer = Producer(settings.kafka.librdkafka(**{"enable.idempotence": True, "acks": "all"}))
    follower = Follower(settings, producer, echo=None if quiet else typer.echo)
    run(settings, follower, from_beginning=from_beginning, max_messages=max_messages, max_idle_s=max_idle_s)
