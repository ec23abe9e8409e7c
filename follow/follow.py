"""``crawlstream follow``: the reference downstream consumer of the page events topic.

Reads ``outbox.event.page`` (catalog: page_events; Debezium's outbox EventRouter: key = URL,
header ``eventType``, JSON payload :class:`~crawlstream.records.PageChangeEvent`) as group
``follow.group_id``; prints one line per event, records the end-to-end latency (the page's
``fetched_at`` to the event's arrival) in ``follow_end_to_end_latency_seconds``, accepts
tombstones (null values: the aggregate was deleted) and hands a signed notification per event to
every receiver of ``follow.webhook_urls`` (:mod:`follow.webhooks.delivery`).

No record can stop it: each record is handled inside one boundary (:meth:`Follower.handle`);
whatever it raises (not JSON, the wrong shape, nesting past the parser's limit, a header with
CR/LF or bytes that are not UTF-8, a key over :data:`MAX_URL_BYTES`, a keyless tombstone...) makes
it a dead letter on ``<prefix>.deadletter`` (stage ``follow``, kernel builder and size rule) and
the consumer moves on. Writing a dead letter is retried until it is stored (only the broker can
fail it). Offsets are committed from the consuming thread, only past events that every receiver
has delivered or dead-lettered (:class:`PendingOffsets`): at-least-once. Metrics on
``follow.metrics_port``.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import tenacity
import typer
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from crawlstream.addresses import Resolver, resolve
from crawlstream.deadletters import DeadLetterMessage, Origin, dead_letter_for_exception
from crawlstream.errors import ConfigError, CrawlstreamError, RecordError
from crawlstream.kafka import consumer_config, producer_config
from crawlstream.logs import setup_logging
from crawlstream.metrics import serve_metrics
from crawlstream.records import PageChangeEvent, decode_record
from crawlstream.retrying import Stopped, retrying
from crawlstream.settings import Settings, load_settings
from crawlstream.topics import catalog
from follow.probe import EVENT_ID_HEADER, EVENT_TYPE_HEADER
from follow.webhooks.delivery import Dispatcher, Stopping, check_receivers

log = logging.getLogger(__name__)
# First and longest wait between attempts to store a dead letter while the broker does not take it.
DEAD_LETTER_BACKOFF_S = (0.5, 30.0)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
DELIVERY_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)
EVENT_TYPES = ("created", "changed", "gone", "deleted")
# The longest URL any crawl may accept (crawl.max_url_length's upper bound); a longer key or url
# is not a page of ours.
MAX_URL_BYTES = 65536
COMMIT_INTERVAL_S = 1.0
# Header values we forward (eventType, id) must be plain tokens: no CR/LF, no spaces.
_TOKEN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_USED_HEADERS = (EVENT_TYPE_HEADER, EVENT_ID_HEADER)
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]}
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
            "Webhook notifications finished, by outcome (delivered, dead_lettered) and receiver index",
            ["outcome", "receiver"],
            registry=registry,
        )
        self.webhook_retries = Counter(
            "follow_webhook_retries_total",
            "Webhook attempts retried, by receiver index",
            ["receiver"],
            registry=registry,
        )
        self.webhook_queue_depth = Gauge(
            "follow_webhook_queue_depth",
            "Notifications waiting in a receiver's queue, by receiver index",
            ["receiver"],
            registry=registry,
        )
        self.webhook_delivery_seconds = Histogram(
            "follow_webhook_delivery_seconds",
            "Time from a notification's first attempt to its delivery or dead letter",
            ["receiver"],
            buckets=DELIVERY_BUCKETS,
            registry=registry,
        )
        self.dead_letters = Counter(
            "follow_dead_letters_total",
            "Events and notifications sent to the dead-letter topic, by reason",
            ["reason"],
            registry=registry,
        )
        self.uncommitted = Gauge(
            "follow_uncommitted_events",
            "Events consumed whose notifications are not all delivered or dead-lettered yet",
            registry=registry,
        )


@dataclass
class _Entry:
    topic: str
    partition: int
    offset: int
    waits: int  # receivers that have not finished with this event
    forgotten: bool = False  # its partition was revoked


class PendingOffsets:
    """The offsets that may be committed: each partition's next offset after the longest run of
    events that every receiver has finished with. Workers call :meth:`done`; the consuming
    thread adds events (in their order) and takes what is ready."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, int], deque[_Entry]] = {}
        self._ready: dict[tuple[str, int], int] = {}

    def add(self, origin: Origin, waits: int) -> _Entry:
        entry = _Entry(origin.topic or "", origin.partition or 0, origin.offset or 0, waits)
        with self._lock:
            self._entries.setdefault((entry.topic, entry.partition), deque()).append(entry)
            self._advance((entry.topic, entry.partition))
        return entry

    def done(self, token: object) -> None:
        assert isinstance(token, _Entry)
        with self._lock:
            token.waits -= 1
            if token.waits <= 0 and not token.forgotten:
                self._advance((token.topic, token.partition))

    def _advance(self, tp: tuple[str, int]) -> None:
        queue = self._entries.get(tp)
        while queue and queue[0].waits <= 0:
            self._ready[tp] = queue.popleft().offset + 1

    def take(self, only: set[tuple[str, int]] | None = None) -> dict[tuple[str, int], int]:
        """Offsets ready to commit (and not handed out before)."""
        with self._lock:
            taken = {tp: o for tp, o in self._ready.items() if only is None or tp in only}
            for tp in taken:
                del self._ready[tp]
            return taken

    def give_back(self, offsets: dict[tuple[str, int], int]) -> None:
        """Offsets whose commit failed: ready again, unless a later one is."""
        with self._lock:
            for tp, offset in offsets.items():
                if tp in self._entries:
                    self._ready[tp] = max(self._ready.get(tp, offset), offset)

    def forget(self, partitions: set[tuple[str, int]]) -> None:
        with self._lock:
            for tp in partitions:
                for entry in self._entries.pop(tp, ()):
                    entry.forgotten = True
                self._ready.pop(tp, None)

    def pending(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._entries.values())


class DeadLetterProducer:
    """Writes dead letters and waits until the broker has them; retries (with backoff) while it
    does not: only the infrastructure fails here, the letters fit by construction."""

    def __init__(self, producer: Any, topic: str, metrics: FollowMetrics, stopping: threading.Event) -> None:
        self.producer, self.topic, self.metrics, self.stopping = producer, topic, metrics, stopping

    def write(self, message: DeadLetterMessage) -> None:
        def not_stored(state: tenacity.RetryCallState) -> None:
            error, delay = state.outcome.exception() if state.outcome else None, state.upcoming_sleep
            log.error("dead letter to %s not stored (%s); again in %.1fs", self.topic, error, delay)

        retry = retrying(
            retry_on=_NotStored,
            stop=self.stopping,
            initial_s=DEAD_LETTER_BACKOFF_S[0],
            max_s=DEAD_LETTER_BACKOFF_S[1],
            before_sleep=not_stored,
        )
        try:
            retry(self._produce_and_confirm, message)
        except Stopped:
            raise Stopping from None
        self.metrics.dead_letters.labels(message.letter.reason).inc()

    def _produce_and_confirm(self, message: DeadLetterMessage) -> None:
        """One attempt: produce and wait for the delivery report; _NotStored if it failed."""
        while True:
            report = _Report()
            try:
                self.producer.produce(self.topic, key=message.key, value=message.value, on_delivery=report)
                # The report comes within message.timeout.ms; polling serves every thread's.
                while not report.arrived.is_set():
                    self.producer.poll(0.1)
            except BufferError:  # local queue full: serve reports, then produce again
                self.producer.poll(0.5)
                continue
            except KafkaException as exc:
                report.error = exc
            if report.arrived.is_set() and report.error is None:
                return
            raise _NotStored(str(report.error))


class _NotStored(CrawlstreamError):
    """The broker did not take a dead letter (an outage: retried)."""


class _Report:
    """A delivery report, set by whichever thread's poll serves it."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.error: object = None

    def __call__(self, err: KafkaError | None, _msg: Any) -> None:
        self.error = err
        self.arrived.set()


@dataclass(frozen=True)
class PageNotice:
    """An event read from the topic, checked: what is printed and sent on."""

    key: bytes | None
    url: str
    event_type: str
    delivery_id: str
    payload: dict[str, Any]
    event: PageChangeEvent | None  # None for a tombstone


def _headers(msg: Message) -> dict[str, str]:
    found: dict[str, str] = {}
    pairs: list[tuple[str, Any]] = list(msg.headers() or [])  # type: ignore[arg-type]  # loose stubs
    for name, value in pairs:
        if name not in _USED_HEADERS or value is None:
            continue
        try:
            text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        except UnicodeDecodeError:
            raise RecordError("invalid_header", f"header {name} is not UTF-8") from None
        if not _TOKEN.fullmatch(text):
            raise RecordError(
                "invalid_header",
                f"header {name} is not a plain token (CR/LF, spaces or other bytes): {text[:80]!r}",
            )
        if name in found:
            raise RecordError("invalid_header", f"header {name} appears twice")
        found[name] = text
    return found


def read_notice(msg: Message) -> PageNotice:
    """Check one record of the page events topic; RecordError (or any exception) when it is not
    a page event."""
    headers = _headers(msg)
    raw_key = msg.key()
    if raw_key is not None and len(raw_key) > MAX_URL_BYTES:
        raise RecordError("key_too_large", f"key of {len(raw_key)} bytes; a URL has at most {MAX_URL_BYTES}")
    try:
        key = None if raw_key is None else raw_key.decode("utf-8")
    except UnicodeDecodeError:
        raise RecordError("invalid_key", "key is not UTF-8") from None
    origin_id = f"{msg.topic()}:{msg.partition()}:{msg.offset()}"
    delivery_id = headers.get(EVENT_ID_HEADER, origin_id)
    value = msg.value()
    if value is None:
        if not key:
            raise RecordError("null_value", "tombstone without a key: it names no page")
        return PageNotice(raw_key, key, "deleted", delivery_id, {"url": key}, None)
    event = decode_record(PageChangeEvent, value)
    if len(event.url.encode("utf-8")) > MAX_URL_BYTES:
        raise RecordError("url_too_long", f"url of {len(event.url)} characters")
    if key is not None and key != event.url:
        raise RecordError("key_mismatch", "the key is not the payload's url")
    header_type = headers.get(EVENT_TYPE_HEADER)
    if header_type is not None and header_type != event.type:
        raise RecordError(
            "event_type_mismatch", f"header eventType {header_type!r}, payload type {event.type!r}"
        )
    return PageNotice(raw_key, event.url, event.type, delivery_id, event.model_dump(mode="json"), event)


def printable(text: str, limit: int = 300) -> str:
    """``text`` safe for a terminal: no control characters or escape sequences, ASCII only."""
    shown = text if len(text) <= limit else text[:limit] + "..."
    return shown.translate(_CONTROL).encode("ascii", "backslashreplace").decode("ascii")


class Follower:
    """Handles each record of the page events topic and feeds the webhook receivers."""

    def __init__(
        self,
        settings: Settings,
        producer: Any,
        *,
        metrics: FollowMetrics | None = None,
        clock: Callable[[], float] = time.time,
        echo: Callable[[str], None] | None = None,
        resolver: Resolver = resolve,
        **receiver_options: Any,  # ssl_context and test seams (clock, wait, jitter), per receiver
    ) -> None:
        config = settings.follow
        if config.webhook_urls and not config.webhook_secret.get_secret_value():
            raise ConfigError(
                "follow.webhook_secret (CRAWLSTREAM_FOLLOW__WEBHOOK_SECRET) is required "
                "with follow.webhook_urls"
            )
        check_receivers(config, resolver)
        dead_topic = catalog(settings).dead_letter
        self.dead_letter_max_bytes = dead_topic.max_message_bytes
        self.metrics = metrics or FollowMetrics()
        self.clock, self.echo = clock, echo
        self.offsets = PendingOffsets()
        self.dispatcher = Dispatcher(
            config,
            dead_letters=self._write_letter,
            dead_letter_max_bytes=self.dead_letter_max_bytes,
            done=self.offsets.done,
            metrics=self.metrics,
            resolver=resolver,
            **receiver_options,
        )
        self.letters = DeadLetterProducer(producer, dead_topic.name, self.metrics, self.dispatcher.stopping)

    def _write_letter(self, message: DeadLetterMessage) -> None:
        self.letters.write(message)

    def start(self) -> None:
        self.dispatcher.start()

    def stop(self, join_s: float = 5.0) -> None:
        self.dispatcher.stop(join_s)

    def handle(self, msg: Message) -> None:
        """The per-record boundary: the record is notified, or it is a dead letter. Raises only
        Stopping (follow is stopping; the record is then not committed)."""
        origin = Origin(msg.topic(), msg.partition(), msg.offset())
        try:
            notice = read_notice(msg)
            self._observe(notice)
        except Exception as exc:  # whatever the record caused: dead letter, then the next record
            letter = dead_letter_for_exception(
                exc,
                stage="follow",
                key=msg.key(),
                value=msg.value(),
                max_bytes=self.dead_letter_max_bytes,
                origin=origin,
            )
            log.warning(
                "dead letter %s (%s) from %s[%s]@%s: %s",
                letter.letter.reason,
                letter.letter.error_class,
                origin.topic,
                origin.partition,
                origin.offset,
                printable(letter.letter.error, 500),
            )
            self.letters.write(letter)
            self.offsets.add(origin, waits=0)
            return
        token = self.offsets.add(origin, waits=len(self.dispatcher))
        if len(self.dispatcher):
            body = json.dumps(
                {"type": notice.event_type, "url": notice.url, "payload": notice.payload}, sort_keys=True
            ).encode()
            self.dispatcher.submit(notice.key, body, notice.event_type, notice.delivery_id, origin, token)
        self.metrics.uncommitted.set(self.offsets.pending())

    def _observe(self, notice: PageNotice) -> None:
        self.metrics.events.labels(notice.event_type).inc()
        if notice.event is None:
            self.metrics.tombstones.inc()
            latency = None
        else:
            latency = max(0.0, self.clock() - notice.event.fetched_at.timestamp())
            self.metrics.latency.observe(latency)
        if self.echo is not None:
            shown = "?" if latency is None else f"{latency:.3f}s"
            version = "?" if notice.event is None else notice.event.version
            self.echo(f"{notice.event_type:8} v{version} {printable(notice.url)} (fetched {shown} ago)")

    def commit(self, consumer: Any, only: set[tuple[str, int]] | None = None) -> None:
        """Commit what every receiver has finished with; a failed commit is tried again later."""
        offsets = self.offsets.take(only)
        if not offsets:
            return
        try:
            consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False
            )
        except KafkaException as exc:
            log.warning("commit failed (%s); will try again", exc)
            self.offsets.give_back(offsets)
        self.metrics.uncommitted.set(self.offsets.pending())

    def drain(self, timeout_s: float) -> bool:
        """Wait until every consumed event is finished by every receiver (or the timeout)."""
        deadline = time.monotonic() + timeout_s
        while self.offsets.pending() and time.monotonic() < deadline:
            time.sleep(0.05)  # workers finish on their own threads; nothing to wait on but the count
        return not self.offsets.pending()


def dead_letter_producer(settings: Settings) -> Producer:
    """The follower's producer: idempotent, acks=all, and taking records as large as the
    dead-letter topic does (librdkafka's own default, 1 MB, is smaller: a letter the size rule
    lets through would be refused here)."""
    limit = catalog(settings).dead_letter.max_message_bytes
    return Producer(producer_config(settings, "follow", **{"message.max.bytes": limit}))


def run(
    settings: Settings,
    follower: Follower,
    *,
    from_beginning: bool = False,
    max_messages: int | None = None,
    max_idle_s: float | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> int:
    """Consume until ``stop()``, ``max_messages`` or ``max_idle_s``; then let the receivers
    finish for up to ``follow.shutdown_grace_s``, commit, and stop. Returns records handled."""
    consumer = Consumer(
        consumer_config(
            settings,
            "follow",
            settings.follow.group_id,
            **{
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest" if from_beginning else "latest",
            },
        )
    )

    def revoked(c: Any, partitions: list[TopicPartition]) -> None:
        # Commit what is finished before the partitions go; what is still queued will be
        # delivered by us anyway and, uncommitted, again by their next owner (at-least-once).
        tps = {(tp.topic, tp.partition) for tp in partitions}
        follower.commit(c, only=tps)
        follower.offsets.forget(tps)

    def lost(_c: Any, partitions: list[TopicPartition]) -> None:
        follower.offsets.forget({(tp.topic, tp.partition) for tp in partitions})

    consumer.subscribe([catalog(settings).page_events.name], on_revoke=revoked, on_lost=lost)
    follower.start()
    handled, idle_since, committed_at = 0, time.monotonic(), time.monotonic()
    try:
        while (max_messages is None or handled < max_messages) and not stop():
            msg = consumer.poll(0.2)
            if msg is None:
                if max_idle_s is not None and time.monotonic() - idle_since > max_idle_s:
                    break
            elif msg.error() is not None:
                # Broker and transport trouble: librdkafka reconnects and retries by itself.
                log.warning("consumer: %s", msg.error())
                if msg.error().fatal():  # type: ignore[union-attr]
                    raise KafkaException(msg.error())
            else:
                follower.handle(msg)
                handled, idle_since = handled + 1, time.monotonic()
            if time.monotonic() - committed_at >= COMMIT_INTERVAL_S:
                follower.commit(consumer)
                committed_at = time.monotonic()
        if not follower.drain(settings.follow.shutdown_grace_s):
            log.warning(
                "%d event(s) not finished by every receiver at stop: not committed, "
                "they are delivered again after a restart",
                follower.offsets.pending(),
            )
        follower.commit(consumer)
    except Stopping:
        pass
    finally:
        follower.stop()
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
    follower = Follower(settings, dead_letter_producer(settings), echo=None if quiet else typer.echo)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # finish what is in flight, commit, then exit
        signal.signal(sig, lambda *_: stopping.set())
    run(
        settings,
        follower,
        from_beginning=from_beginning,
        max_messages=max_messages,
        max_idle_s=max_idle_s,
        stop=stopping.is_set,
    )
