"""Per-receiver queues and workers: how `crawlstream follow` delivers its notifications.

Each URL of ``follow.webhook_urls`` is a :class:`Receiver`: a bounded queue
(``follow.webhook_queue_size``) and one worker thread with its own connection, so a dead or slow
receiver delays nobody else. A notification ends in exactly one of two ways per receiver:
delivered (a 2xx answer), or a dead letter on ``<prefix>.deadletter`` with the reason
(``webhook_redirect``, ``webhook_rejected``, ``webhook_refused_address``, ``webhook_failed``,
``webhook_queue_full``), the receiver's ``scheme://host:port`` and the origin event's
topic/partition/offset. Only then is its ``done`` callback called: the follower commits an
offset only past events every receiver has finished with (at-least-once).

Attempts: 408, 429, 5xx, connection, timeout and protocol errors (a receiver answering garbage)
are retried up to ``webhook_max_attempts`` with exponential backoff and jitter, waiting at least
the receiver's ``Retry-After`` (capped at ``webhook_retry_after_max_s``); every attempt ends by
``webhook_timeout_s`` and the whole delivery by ``webhook_deadline_s``. A 3xx is never followed;
other 4xx and a refused address are not retried. Each attempt is signed anew (fresh ``t=``).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import httpcore
from prometheus_client import Counter, Gauge, Histogram

from crawlstream.addresses import AddressPolicy, AddressRefused, Resolver, resolve
from crawlstream.deadletters import DeadLetterMessage, Origin, build_dead_letter, error_class
from crawlstream.errors import ConfigError
from crawlstream.retrying import equal_jitter
from crawlstream.settings import FollowSettings
from follow.webhooks.signature import SIGNATURE_HEADER, sign_header
from follow.webhooks.transport import WebhookClient, redact

log = logging.getLogger(__name__)
RETRYABLE_STATUS = frozenset({408, 425, 429})  # and every 5xx
USER_AGENT = "crawlstream-follow/0.1"


class Stopping(Exception):
    """follow is stopping: this notification is neither delivered nor dead-lettered, so its
    event is not committed and comes again after a restart."""


@dataclass(frozen=True)
class Notification:
    key: bytes | None  # the event's key (its URL), for the dead letter
    body: bytes
    event_type: str  # created | changed | gone | deleted
    delivery_id: str  # X-Crawlstream-Delivery: receivers drop repeats by it
    origin: Origin
    token: object  # handed back to ``done``


@dataclass(frozen=True)
class Failure:
    reason: str
    detail: str
    error_class: str | None = None


class WebhookMetrics(Protocol):
    webhooks: Counter  # labels: outcome, receiver
    webhook_retries: Counter  # labels: receiver
    webhook_queue_depth: Gauge  # labels: receiver
    webhook_delivery_seconds: Histogram  # labels: receiver


DeadLetterWriter = Callable[[DeadLetterMessage], None]  # blocks until stored; may raise Stopping


def webhook_policy(config: FollowSettings) -> AddressPolicy:
    """Public addresses only, unless ``allow_private_webhooks``: then the receivers' own hosts
    (on their own ports), whatever they resolve to."""
    return AddressPolicy.allowing(config.webhook_urls) if config.allow_private_webhooks else AddressPolicy()


def check_receivers(config: FollowSettings, resolver: Resolver = resolve) -> None:
    """At start: every receiver must pass the address policy, else ConfigError naming the field.
    A lookup that fails now is only a warning: every delivery checks again and fails closed."""
    policy = webhook_policy(config)
    for index, url in enumerate(config.webhook_urls):
        try:
            policy.check_url(url, resolver)
        except AddressRefused as exc:
            where = f"follow.webhook_urls[{index}] (CRAWLSTREAM_FOLLOW__WEBHOOK_URLS): {redact(url)}"
            if exc.reason == "unresolvable":
                log.warning("%s cannot be resolved now (%s); deliveries will retry", where, exc.detail)
                continue
            raise ConfigError(
                f"{where} is refused: {exc.detail}. Webhooks reach only public addresses unless "
                "follow.allow_private_webhooks (CRAWLSTREAM_FOLLOW__ALLOW_PRIVATE_WEBHOOKS) is true"
            ) from None


class Receiver:
    """One receiver: its queue, its worker thread, its connection."""

    def __init__(
        self,
        index: int,
        url: str,
        config: FollowSettings,
        *,
        dead_letters: DeadLetterWriter,
        dead_letter_max_bytes: int,
        done: Callable[[object], None],
        metrics: WebhookMetrics,
        stopping: threading.Event,
        resolver: Resolver = resolve,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        wait: Callable[[float], bool] | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.index, self.label, self.config = index, str(index), config
        self.name = f"receiver {index} ({redact(url)})"
        self.secrets = [
            s.get_secret_value()
            for s in (config.webhook_secret, config.webhook_previous_secret)
            if s.get_secret_value()
        ]
        self.client = WebhookClient(
            url,
            webhook_policy(config),
            max_response_bytes=config.webhook_max_response_bytes,
            resolver=resolver,
            ssl_context=ssl_context,
            clock=clock,
        )
        self.queue: queue.Queue[Notification | None] = queue.Queue(config.webhook_queue_size)
        self.dead_letters, self.dead_letter_max_bytes = dead_letters, dead_letter_max_bytes
        self.done, self.metrics, self.stopping = done, metrics, stopping
        self.clock, self.wall_clock, self.jitter = clock, wall_clock, jitter
        self.wait = wait or stopping.wait
        self.thread = threading.Thread(target=self._run, name=f"webhook-{index}", daemon=True)

    def offer(self, notification: Notification) -> bool:
        """Queue a notification without blocking; False when the queue is full."""
        try:
            self.queue.put_nowait(notification)
        except queue.Full:
            return False
        self.metrics.webhook_queue_depth.labels(self.label).set(self.queue.qsize())
        return True

    def _run(self) -> None:
        while not self.stopping.is_set():
            item = self.queue.get()
            self.metrics.webhook_queue_depth.labels(self.label).set(self.queue.qsize())
            if item is None:
                break
            try:
                self.handle(item)
            except Stopping:
                break
        self.client.close()

    def handle(self, notification: Notification) -> None:
        """Deliver or dead-letter one notification, then report it done. Never raises but Stopping."""
        started = self.clock()
        try:
            failure = self.deliver(notification)
        except Stopping:
            raise
        except Exception as exc:  # a bug or a library surprise must not end this worker
            log.exception("%s: delivery raised", self.name)
            failure = Failure("webhook_failed", f"{type(exc).__name__}: {exc}", error_class(exc))
        self.metrics.webhook_delivery_seconds.labels(self.label).observe(self.clock() - started)
        if failure is None:
            self.metrics.webhooks.labels("delivered", self.label).inc()
        else:
            self.metrics.webhooks.labels("dead_lettered", self.label).inc()
            log.warning("%s: %s: %s", self.name, failure.reason, failure.detail)
            self.dead_letter(notification, failure)
        self.done(notification.token)

    def dead_letter(self, notification: Notification, failure: Failure) -> None:
        self.dead_letters(
            build_dead_letter(
                stage="follow",
                reason=failure.reason,
                detail=f"{self.name}: {failure.detail}",
                key=notification.key,
                value=notification.body,
                max_bytes=self.dead_letter_max_bytes,
                origin=notification.origin,
                error_class_name=failure.error_class,
            )
        )

    def headers(self, notification: Notification) -> list[tuple[str, str]]:
        return [
            ("Content-Type", "application/json"),
            ("User-Agent", USER_AGENT),
            (SIGNATURE_HEADER, sign_header(self.secrets, notification.body, int(self.wall_clock()))),
            ("X-Crawlstream-Event", notification.event_type),
            ("X-Crawlstream-Delivery", notification.delivery_id),
        ]

    def deliver(self, notification: Notification) -> Failure | None:
        """Attempts until a 2xx (None), a final answer, or the attempts or deadline run out."""
        config = self.config
        started = self.clock()
        delivery_deadline = started + config.webhook_deadline_s
        backoff = equal_jitter(config.webhook_backoff_initial_s, config.webhook_backoff_max_s, self.jitter)
        last, last_class, attempt = "", None, 0
        for attempt in range(1, config.webhook_max_attempts + 1):
            retry_after = None
            attempt_deadline = min(self.clock() + config.webhook_timeout_s, delivery_deadline)
            try:
                answer = self.client.post(notification.body, self.headers(notification), attempt_deadline)
            except AddressRefused as exc:
                if exc.reason != "unresolvable":  # the policy said no: asking again changes nothing
                    return Failure("webhook_refused_address", str(exc), error_class(exc))
                last, last_class = f"lookup failed: {exc.detail}", error_class(exc)
            except (httpcore.LocalProtocolError, httpcore.UnsupportedProtocol) as exc:
                return Failure("webhook_failed", f"{type(exc).__name__}: {exc}", error_class(exc))
            except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as exc:
                last, last_class = f"{type(exc).__name__}: {str(exc)[:300]}", error_class(exc)
            else:
                status = answer.status
                if 200 <= status < 300:
                    return None
                if 300 <= status < 400:
                    return Failure("webhook_redirect", f"HTTP {status}: webhooks never follow redirects")
                if status < 500 and status not in RETRYABLE_STATUS:
                    return Failure("webhook_rejected", f"HTTP {status}")
                last, last_class, retry_after = f"HTTP {status}", None, answer.retry_after_s
            if attempt == config.webhook_max_attempts:
                break
            delay = backoff.delay(attempt)  # equal jitter: receivers are not hit in step
            if retry_after is not None:
                delay = max(delay, min(retry_after, config.webhook_retry_after_max_s))
            if self.clock() + delay >= delivery_deadline:
                last += f"; a retry in {delay:.1f}s would pass the {config.webhook_deadline_s}s deadline"
                break
            self.metrics.webhook_retries.labels(self.label).inc()
            if self.wait(delay):
                raise Stopping
        elapsed = self.clock() - started
        return Failure("webhook_failed", f"{attempt} attempt(s) in {elapsed:.1f}s, last: {last}", last_class)


class Dispatcher:
    """Every receiver of ``follow.webhook_urls``; the follower submits each event's notification."""

    def __init__(
        self,
        config: FollowSettings,
        *,
        dead_letters: DeadLetterWriter,
        dead_letter_max_bytes: int,
        done: Callable[[object], None],
        metrics: WebhookMetrics,
        resolver: Resolver = resolve,
        ssl_context: ssl.SSLContext | None = None,
        **receiver_options: object,
    ) -> None:
        self.stopping = threading.Event()
        self.done = done
        self.receivers = [
            Receiver(
                index,
                url,
                config,
                dead_letters=dead_letters,
                dead_letter_max_bytes=dead_letter_max_bytes,
                done=done,
                metrics=metrics,
                stopping=self.stopping,
                resolver=resolver,
                ssl_context=ssl_context,
                **receiver_options,  # type: ignore[arg-type]  # test seams: clock, wait, jitter
            )
            for index, url in enumerate(config.webhook_urls)
        ]
        self.started = False

    def __len__(self) -> int:
        return len(self.receivers)

    def start(self) -> None:
        for receiver in self.receivers:
            log.info("webhook %s", receiver.name)
            receiver.thread.start()
        self.started = True

    def submit(
        self, key: bytes | None, body: bytes, event_type: str, delivery_id: str, origin: Origin, token: object
    ) -> None:
        """Queue the notification for every receiver; a full queue makes it a dead letter there
        and then (blocking until stored). Raises Stopping when follow is stopping."""
        notification = Notification(key, body, event_type, delivery_id, origin, token)
        for receiver in self.receivers:
            if self.stopping.is_set():
                raise Stopping
            if not receiver.offer(notification):
                receiver.metrics.webhooks.labels("dead_lettered", receiver.label).inc()
                detail = f"queue full ({receiver.config.webhook_queue_size} notifications waiting)"
                log.warning("%s: webhook_queue_full: %s", receiver.name, detail)
                receiver.dead_letter(notification, Failure("webhook_queue_full", detail))
                self.done(token)

    def stop(self, join_s: float = 5.0) -> None:
        """Stop every worker: waits between attempts end now, an attempt in flight by its deadline."""
        self.stopping.set()
        for receiver in self.receivers:
            with contextlib.suppress(queue.Full):  # then the worker sees ``stopping`` after its item
                receiver.queue.put_nowait(None)
        deadline = time.monotonic() + join_s
        for receiver in self.receivers:
            if self.started:
                receiver.thread.join(max(0.0, deadline - time.monotonic()))
