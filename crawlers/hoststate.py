"""Per-host politeness state shared by crawler processes: the ``<prefix>.hosts`` table.

Reads and writes ``<prefix>.hosts`` (compacted, key: host, HostState JSON), partitioned like
``<prefix>.requests``: the crawler that owns a requests partition owns the same hosts partition.
On assignment (:meth:`HostStates.restore`) it reads that partition to its end before it fetches
anything of it, then keeps reading it (:meth:`HostStates.poll`: other jobs' crawlers write it
too); it writes what it learns about a host (robots.txt as fetched, a Retry-After cooldown, an
error backoff). So a host's robots.txt is fetched once, and a cooldown or backoff set by one
process holds in the process that owns the host after a rebalance or a restart.

Used by :mod:`crawlers.spiders.distributed` (the dispatcher asks :meth:`HostStates.ready_at`) and
:mod:`crawlers.politeness` (robots.txt, Retry-After) through :func:`host_states_for`. Settings:
``frontier.backoff_*``, ``frontier.robots_max_age_s``, ``kafka.*``.
"""

from __future__ import annotations

import logging
import time
import weakref
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from scrapy.crawler import Crawler

from crawlstream.errors import RecordError
from crawlstream.kafka import consumer_config, producer_config
from crawlstream.records import HostState, decode_record
from crawlstream.settings import Settings
from crawlstream.topics import catalog

log = logging.getLogger(__name__)
RESTORE_TIMEOUT_S = 30.0
_STATES: weakref.WeakKeyDictionary[Crawler, HostStates] = weakref.WeakKeyDictionary()


def host_states_for(crawler: Crawler) -> HostStates | None:
    return _STATES.get(crawler)


def backoff_s(errors: int, after: int, initial_s: float, max_s: float) -> float:
    """Seconds to keep off a host after ``errors`` failures in a row (0 below ``after``)."""
    if errors < after:
        return 0.0
    return float(min(initial_s * 2 ** (errors - after), max_s))


def hosts_group(crawl_group: str) -> str:
    """The group id of a crawl group's host state reader."""
    return f"{crawl_group}-hosts"


class HostStates:
    def __init__(self, settings: Settings, group_id: str) -> None:
        self.settings = settings
        self.topic = catalog(settings).hosts.name
        self.states: dict[str, HostState] = {}
        self._consumer = Consumer(
            consumer_config(
                settings,
                "crawler",
                hosts_group(group_id),
                **{
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                },
            )
        )
        self._producer = Producer(producer_config(settings, "crawler", **{"linger.ms": 20}))
        self._assigned: set[int] = set()

    def register(self, crawler: Crawler) -> None:
        _STATES[crawler] = self

    def restore(self, partitions: list[int]) -> None:
        """Read these partitions to their end (the state as every earlier writer left it)."""
        new = [p for p in partitions if p not in self._assigned]
        if not new:
            return
        ends = {}
        for p in new:
            _low, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)
            ends[p] = high
        self._assigned |= set(new)
        self._consumer.assign([TopicPartition(self.topic, p, 0) for p in sorted(self._assigned)])
        deadline = time.monotonic() + RESTORE_TIMEOUT_S
        pending = {p for p, end in ends.items() if end > 0}
        while pending and time.monotonic() < deadline:
            for message in self._consumer.consume(500, timeout=0.2):
                self._apply(message)
                partition, offset = message.partition(), message.offset()
                if partition in pending and offset is not None and offset + 1 >= ends[partition]:
                    pending.discard(partition)
        if pending:
            log.warning(
                "host state of partitions %s not read to the end in %.0fs", sorted(pending), RESTORE_TIMEOUT_S
            )

    def revoke(self, partitions: list[int]) -> None:
        self._assigned -= set(partitions)
        self._consumer.assign([TopicPartition(self.topic, p) for p in sorted(self._assigned)])

    def poll(self) -> None:
        if self._assigned:
            for message in self._consumer.consume(500, timeout=0):
                self._apply(message)
        self._producer.poll(0)

    def _apply(self, message: Any) -> None:
        if message.error() is not None or message.value() is None:
            return
        try:
            state = decode_record(HostState, message.value())
        except RecordError:
            log.warning(
                "host state at %s[%s]@%s is not a HostState: ignored",
                self.topic,
                message.partition(),
                message.offset(),
            )
            return
        known = self.states.get(state.host)
        if known is None or state.updated_at >= known.updated_at:
            self.states[state.host] = state

    def get(self, host: str) -> HostState | None:
        return self.states.get(host)

    def update(self, host: str, **changes: Any) -> HostState:
        """Change and publish ``host``'s state."""
        known = self.states.get(host) or HostState(host=host)
        state = known.model_copy(update={**changes, "updated_at": datetime.now(UTC)})
        self.states[host] = state
        self._producer.produce(self.topic, state.to_bytes(), host.encode("utf-8"))
        self._producer.poll(0)
        return state

    def ready_at(self, host: str) -> float:
        """Epoch seconds before which nothing is fetched from ``host`` (cooldown, backoff)."""
        state = self.states.get(host)
        if state is None:
            return 0.0
        until = [t.timestamp() for t in (state.cooldown_until, state.backoff_until) if t is not None]
        return max(until, default=0.0)

    def robots_body(self, host: str, netloc: str) -> str | None:
        """robots.txt of ``netloc`` (``host`` and its port) as last fetched, while fresh (None:
        fetch it). One entry per host: a robots.txt of another port of the host is not it."""
        state = self.states.get(host)
        if state is None or state.robots_fetched_at is None or state.robots_body is None:
            return None
        if state.robots_netloc != netloc:
            return None
        age = datetime.now(UTC) - state.robots_fetched_at
        return state.robots_body if age < timedelta(seconds=self.settings.frontier.robots_max_age_s) else None

    def cooldown(self, host: str, seconds: float) -> None:
        until = datetime.now(UTC) + timedelta(seconds=seconds)
        state = self.states.get(host)
        if state is None or state.cooldown_until is None or state.cooldown_until < until:
            self.update(host, cooldown_until=until)

    def failed(self, host: str) -> None:
        """A fetch of ``host`` failed (after retries): count it, back off after several in a row."""
        state = self.states.get(host)
        errors = (state.errors if state else 0) + 1
        frontier = self.settings.frontier
        wait = backoff_s(
            errors, frontier.backoff_after_errors, frontier.backoff_initial_s, frontier.backoff_max_s
        )
        until = datetime.now(UTC) + timedelta(seconds=wait) if wait else None
        self.update(host, errors=errors, backoff_until=until)

    def succeeded(self, host: str) -> None:
        state = self.states.get(host)
        if state is not None and (state.errors or state.backoff_until is not None):
            self.update(host, errors=0, backoff_until=None)

    def close(self) -> None:
        self._producer.flush(10)
        self._consumer.close()
