"""URL change detection: the first agent of the stage, on ``<prefix>.pages.raw``.

Reads  ``<prefix>.pages.raw``            (key: canonical URL, value: PageRecord JSON).
Writes ``<prefix>.pages.touches``        (key: canonical URL, PageTouch) for unchanged recrawls,
       ``<prefix>.streams.pages-by-content`` (key: content hash, PageEvent) for new/changed HTML
       with text, to :mod:`streams.content`,
       ``<prefix>.pages.unique``         (key: canonical URL, PageEvent) for new/changed pages
       without text (metadata records, empty pages): nothing to deduplicate on,
       ``<prefix>.deadletter``           (undecodable records, wrong keys).
Table  ``urls``: canonical URL -> {h: fingerprint, f: first seen, l: last seen, i: recrawl
       interval s}; changelog ``<app_id>-urls-changelog``, co-partitioned with the raw topic.

At-least-once: the output is acknowledged by the broker BEFORE the table records the URL, so a
crash can replay an event (downstream tables and the sink are idempotent on URL) but never
record a fingerprint whose event was not sent.
"""

from __future__ import annotations

import enum
import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from crawlstream.errors import RecordError
from crawlstream.records import Enrichment, PageEvent, PageRecord, PageTouch, decode_page
from crawlstream.settings import Settings
from streams import metrics
from streams.deadletters import send_dead_letter
from streams.enrich import enrich_html
from streams.recrawl import RecrawlPolicy, next_interval
from streams.topology import StageTopics

AGENT = "detect_changes"


class Change(enum.StrEnum):
    NEW = "new"
    CHANGED = "changed"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class Classified:
    change: Change
    entry: dict[str, Any]  # the table value after this event


def decode_keyed_page(key: bytes | None, value: bytes | None) -> PageRecord:
    """Decode a raw page and check its key; raise RecordError (dead-letter reason) if unusable.

    The key must equal ``canonical_url``: the table is partitioned like the raw topic, so a
    record keyed otherwise could land beside another partition's state and escape detection.
    """
    record = decode_page(value)
    if key is None or key != record.canonical_url.encode("utf-8"):
        shown = None if key is None else key[:200].decode("utf-8", "replace")
        raise RecordError("key_mismatch", f"key {shown!r} != canonical_url {record.canonical_url[:200]!r}")
    return record


def enrich(record: PageRecord) -> Enrichment | None:
    """The enrichment of an HTML record; None for metadata-only records."""
    if record.kind != "html":
        return None
    started = time.perf_counter()
    try:
        return enrich_html(record.body, record.final_url)
    finally:
        metrics.ENRICHMENT.observe(time.perf_counter() - started)


def fingerprint(record: PageRecord, enrichment: Enrichment | None) -> str:
    """What "same content" means: the main-text hash, else status and validators of the response."""
    if enrichment is not None and enrichment.content_hash:
        return enrichment.content_hash
    parts = [str(record.status), record.content_type, str(record.body_bytes), record.body]
    parts += [record.headers.get(h, "") for h in ("ETag", "Last-Modified", "Location")]
    return "m:" + hashlib.blake2b("\x00".join(parts).encode(), digest_size=12).hexdigest()


def classify(
    entry: dict[str, Any] | None, print_: str, fetched_at: datetime, policy: RecrawlPolicy
) -> Classified:
    """New, changed or unchanged given the URL's table entry (None: never seen)."""
    seen = fetched_at.isoformat()
    if entry is None:
        return Classified(Change.NEW, {"h": print_, "f": seen, "l": seen, "i": policy.initial_s})
    changed = entry.get("h") != print_
    interval = next_interval(policy, float(entry.get("i", policy.initial_s)), changed)
    last = max(str(entry.get("l", "")), seen)
    updated = {"h": print_, "f": entry.get("f", seen), "l": last, "i": interval}
    return Classified(Change.CHANGED if changed else Change.UNCHANGED, updated)


def touch_for(record: PageRecord, print_: str) -> PageTouch:
    return PageTouch(
        canonical_url=record.canonical_url,
        fetched_at=record.fetched_at,
        status=record.status,
        content_hash=print_,
        job_id=record.job_id,
        run_id=record.run_id,
        body_bytes=record.body_bytes,
        fetch_latency_s=record.fetch_latency_s,
    )


def event_lag_seconds(record: PageRecord, now: datetime) -> float:
    fetched = record.fetched_at if record.fetched_at.tzinfo else record.fetched_at.replace(tzinfo=UTC)
    return max((now - fetched).total_seconds(), 0.0)


def page_event(change: Change, record: PageRecord, enrichment: Enrichment | None) -> PageEvent:
    return PageEvent(change=change.value, page=record, enrichment=enrichment)


@dataclass(frozen=True)
class ChangesAgent:
    agent: Any
    urls: Any


def register(app: Any, settings: Settings, topics: StageTopics, policy: RecrawlPolicy) -> ChangesAgent:
    """Declare the ``urls`` table and the change-detection agent on ``app``."""
    urls = app.Table(
        "urls",
        partitions=topics.raw.partitions,
        key_type=str,
        help="canonical URL -> {h: fingerprint, f: first seen, l: last seen, i: recrawl interval s}",
    )
    max_bytes = settings.kafka.max_message_bytes

    async def detect_changes(stream: Any) -> None:
        async for event in stream.events():
            started = time.perf_counter()
            metrics.EVENTS.labels(AGENT).inc()
            try:
                record = decode_keyed_page(event.key, event.value)
            except RecordError as exc:
                await send_dead_letter(topics.dead_letter, AGENT, event, exc, max_bytes)
                continue
            metrics.EVENT_LAG.labels(AGENT).observe(event_lag_seconds(record, datetime.now(UTC)))
            enrichment = enrich(record)
            print_ = fingerprint(record, enrichment)
            result = classify(urls.get(record.canonical_url), print_, record.fetched_at, policy)
            if result.change is Change.UNCHANGED:
                out, key, value = topics.touches, event.key, touch_for(record, print_).to_bytes()
                metrics.DUPLICATES.labels("url").inc()
            else:
                update = page_event(result.change, record, enrichment)
                if enrichment is not None and enrichment.content_hash:
                    out, key = topics.by_content, enrichment.content_hash.encode("ascii")
                    value = update.to_bytes()
                else:
                    out, key, value = topics.unique, event.key, update.to_bytes()
            # force=True sends now so the table records the URL only after the broker's ack.
            await (await out.send(key=key, value=value, force=True))
            urls[record.canonical_url] = result.entry
            metrics.CHANGES.labels(result.change.value).inc()
            metrics.TABLE_KEYS.labels("urls").set(len(urls))
            metrics.PROCESSING.labels(AGENT).observe(time.perf_counter() - started)

    return ChangesAgent(app.agent(topics.raw, name=AGENT)(detect_changes), urls)
