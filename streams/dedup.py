"""URL dedup: forward the first sighting of each canonical URL, drop the rest.

Reads  ``<prefix>.pages.raw``    (key: canonical URL, value: PageRecord JSON bytes).
Writes ``<prefix>.pages.unique`` (same key, the ORIGINAL value bytes, never re-encoded),
       ``<prefix>.deadletter``   (key: original key, value: DeadLetter JSON, stage "streams").
Table  ``seen_urls``: canonical URL -> first-seen ``fetched_at`` (ISO), changelog topic
       ``<app_id>-seen_urls-changelog`` with as many partitions as the raw topic.

Decisions are plain functions (:func:`decode_keyed_page`, :func:`dedup_decision`); the agent
only moves bytes and counts. At-least-once: a unique page is acknowledged by the broker
BEFORE its table entry is written, so a crash can replay a forward (the sink is idempotent on
URL) but can never record a URL as seen without having forwarded it.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import faust

from crawlstream.errors import RecordError
from crawlstream.records import DeadLetter, PageRecord, decode_page
from crawlstream.settings import Settings
from crawlstream.topics import catalog
from streams import metrics

AGENT = "dedup_pages"
STAGE = "streams"
# Room for DeadLetter's JSON fields around the base64 payload.
_DEAD_LETTER_OVERHEAD = 16 * 1024


class Outcome(enum.StrEnum):
    UNIQUE = "unique"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    first_seen_at: str  # the value seen_urls holds for the URL after this event


def decode_keyed_page(key: bytes | None, value: bytes | None) -> PageRecord:
    """Decode a raw page and check its key; raise RecordError (dead-letter reason) if unusable.

    The key must equal ``canonical_url``: the table is partitioned like the raw topic, so a
    record keyed otherwise could land beside another partition's state and escape dedup.
    """
    record = decode_page(value)
    if key is None or key != record.canonical_url.encode("utf-8"):
        shown = None if key is None else key[:200].decode("utf-8", "replace")
        raise RecordError("key_mismatch", f"key {shown!r} != canonical_url {record.canonical_url[:200]!r}")
    return record


def dedup_decision(seen_value: str | None, record: PageRecord) -> Decision:
    """First sighting of ``record.canonical_url`` (``seen_value is None``) or a duplicate."""
    if seen_value is None:
        return Decision(Outcome.UNIQUE, record.fetched_at.isoformat())
    return Decision(Outcome.DUPLICATE, seen_value)


def event_lag_seconds(record: PageRecord, now: datetime) -> float:
    fetched = record.fetched_at if record.fetched_at.tzinfo else record.fetched_at.replace(tzinfo=UTC)
    return max((now - fetched).total_seconds(), 0.0)


def dead_letter_for(event: Any, error: RecordError, max_message_bytes: int) -> DeadLetter:
    """A DeadLetter carrying the event's origin; drops the payload if it could not fit the topic."""
    key: bytes | None = event.key
    value: bytes | None = event.value
    size = len(key or b"") + len(value or b"")
    if size * 4 // 3 + _DEAD_LETTER_OVERHEAD > max_message_bytes:
        error = RecordError(error.reason, f"{error.detail} (payload of {size} bytes omitted: too large)")
        key = value = None
    msg = event.message
    return DeadLetter.for_message(
        stage=STAGE,
        error=error,
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        key=key,
        value=value,
    )


@dataclass(frozen=True)
class DedupStage:
    """What :func:`register` put on the app (tests reach the agent and topics through it)."""

    agent: Any
    seen_urls: Any
    raw_topic: Any
    unique_topic: Any
    dead_letter_topic: Any


def register(app: faust.App, settings: Settings) -> DedupStage:
    """Declare the dedup topics, table and agent on ``app``."""
    specs = catalog(settings)
    raw_opts: dict[str, Any] = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    raw_topic = app.topic(specs.raw_pages.name, partitions=specs.raw_pages.partitions, **raw_opts)
    unique_topic = app.topic(specs.unique_pages.name, partitions=specs.unique_pages.partitions, **raw_opts)
    dead_letter_topic = app.topic(specs.dead_letter.name, partitions=specs.dead_letter.partitions, **raw_opts)
    seen_urls = app.Table(
        "seen_urls",
        partitions=specs.raw_pages.partitions,
        # str types select the json codec, so keys recovered from the changelog are str again.
        key_type=str,
        value_type=str,
        help="canonical URL -> fetched_at of its first sighting",
    )
    max_bytes = settings.kafka.max_message_bytes

    async def dedup_pages(stream: Any) -> None:
        async for event in stream.events():
            started = time.perf_counter()
            metrics.EVENTS.labels(AGENT).inc()
            try:
                record = decode_keyed_page(event.key, event.value)
            except RecordError as exc:
                metrics.DEAD_LETTERS.labels(exc.reason).inc()
                # Attached to the event: published before its offset is committed.
                letter = dead_letter_for(event, exc, max_bytes)
                await dead_letter_topic.send(key=event.key, value=letter.to_bytes())
            else:
                metrics.EVENT_LAG.labels(AGENT).observe(event_lag_seconds(record, datetime.now(UTC)))
                decision = dedup_decision(seen_urls.get(record.canonical_url), record)
                if decision.outcome is Outcome.UNIQUE:
                    # force=True sends now (not at commit) so we can wait for the broker's ack
                    # before the changelog records the URL as seen.
                    delivery = await unique_topic.send(key=event.key, value=event.value, force=True)
                    await delivery
                    seen_urls[record.canonical_url] = decision.first_seen_at
                    metrics.UNIQUE.inc()
                else:
                    metrics.DUPLICATES.labels("url").inc()
            metrics.PROCESSING.labels(AGENT).observe(time.perf_counter() - started)

    agent = app.agent(raw_topic, name=AGENT)(dedup_pages)
    return DedupStage(agent, seen_urls, raw_topic, unique_topic, dead_letter_topic)
