"""URL change detection: the first agent of the stage, on ``<prefix>.pages.raw``.

Reads  ``<prefix>.pages.raw``            (key: canonical URL, value: PageRecord JSON).
Writes ``<prefix>.pages.touches``        (key: canonical URL, PageTouch) for unchanged recrawls,
       ``<prefix>.streams.pages-by-content`` (key: content hash, PageEvent) for new/changed HTML
       with text, to :mod:`streams.content`,
       ``<prefix>.pages.unique``         (key: canonical URL, PageEvent) for new/changed pages
       without text (metadata records, empty pages): nothing to deduplicate on,
       ``<prefix>.deadletter``           (any record it cannot handle: undecodable, wrong key,
       URLs or fetch time no crawler produces (:mod:`streams.checks`), an output too large for
       its topic, ...; :mod:`streams.agent`).
A 304 (Not Modified, from a conditional recrawl of a frontier job) of a known URL keeps its
fingerprint: an unchanged recrawl, a touch (no new version, no change event).
Table  ``urls``: canonical URL -> {h: fingerprint, f: first seen, l: last seen, i: recrawl
       interval s, o: offset of the raw record that last updated the entry, c: its change
       (n/c/u)}; changelog ``<app_id>-urls-changelog``, co-partitioned with the raw topic.

At-least-once (:mod:`streams.outputs`): an event is acknowledged when the broker has its output
and its changelog record, so its offset is committed only then. :func:`register`'s handler
computes the entry and the output first (enrichment, classification, encoding) and the boundary
(:mod:`streams.agent`) checks both records' sizes before the table is written, so an event that
fails leaves the table as it was. The table is written before the output is delivered, so after a
crash it can hold the update of an event whose output was lost; that event is replayed
(its offset was not committed) and finds its own offset, or a later one, in ``o``:
:func:`replayed` re-sends its output instead of calling the page unchanged. Replays of pages are
absorbed downstream (the content and near-duplicate tables ignore the page's own URL; the sink
upserts by URL and adds no version for an unchanged body).
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
from streams import outputs as streams_outputs
from streams.agent import Boundary
from streams.checks import check_page
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


def decode_keyed_page(key: bytes | None, value: bytes | None, max_url_length: int = 0) -> PageRecord:
    """Decode a raw page and check its key, URLs and fetch time; raise RecordError (dead-letter
    reason) if unusable.

    The key must equal ``canonical_url``: the table is partitioned like the raw topic, so a
    record keyed otherwise could land beside another partition's state and escape detection.
    """
    record = decode_page(value)
    if key is None or key != record.canonical_url.encode("utf-8"):
        shown = None if key is None else key[:200].decode("utf-8", "replace")
        raise RecordError("key_mismatch", f"key {shown!r} != canonical_url {record.canonical_url[:200]!r}")
    check_page(record, max_url_length)
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


_CODES = {Change.NEW: "n", Change.CHANGED: "c", Change.UNCHANGED: "u"}
_CHANGES = {code: change for change, code in _CODES.items()}


def stamped(entry: dict[str, Any], offset: int, change: Change) -> dict[str, Any]:
    """The table entry with the offset and change of the event that wrote it (see replayed)."""
    return {**entry, "o": offset, "c": _CODES[change]}


def replayed(entry: dict[str, Any] | None, offset: int) -> Change | None:
    """The change an event at ``offset`` already applied to ``entry``, or None if it did not.

    Offsets grow along a partition and the table shares the raw topic's partitioning, so an
    entry written at offset ``o`` holds the effect of every event of its URL up to ``o``. An event
    at ``o`` itself is re-sent as what it was; an earlier one as CHANGED: its own classification
    is gone, and a page event is the output that loses nothing downstream.
    """
    if entry is None or "o" not in entry or offset > int(entry["o"]):
        return None
    if offset == int(entry["o"]):
        return _CHANGES.get(str(entry.get("c")), Change.CHANGED)
    return Change.CHANGED


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
    outputs = streams_outputs.of(app)
    touches, by_content = topics.touches.get_topic_name(), topics.by_content.get_topic_name()
    unique = topics.unique.get_topic_name()
    urls = streams_outputs.delivered_table(
        app,
        outputs,
        "urls",
        partitions=topics.raw.partitions,
        key_type=str,
        help="canonical URL -> {h: fingerprint, f: first seen, l: last seen, i: recrawl interval s, "
        "o: offset of the last update, c: its change}",
    )
    metrics.watch_table(app, "urls", urls)
    max_url_length = settings.crawl.max_url_length
    event_lag = metrics.EVENT_LAG.labels(AGENT)

    def detect(event: Any) -> streams_outputs.Effects:
        record = decode_keyed_page(event.key, event.value, max_url_length)
        event_lag.observe(event_lag_seconds(record, datetime.now(UTC)))
        offset = event.message.offset
        entry = urls.get(record.canonical_url)
        if record.status == 304 and entry is not None and "h" in entry:
            # Not Modified (a conditional recrawl): the page is what it was, a touch.
            enrichment, print_ = None, str(entry["h"])
        else:
            enrichment = enrich(record)
            print_ = fingerprint(record, enrichment)
        change = replayed(entry, offset)
        effects = streams_outputs.Effects()
        if change is None:
            result = classify(entry, print_, record.fetched_at, policy)
            change = result.change
            effects.write(urls, record.canonical_url, stamped(result.entry, offset, change))
            effects.after(metrics.CHANGES.labels(change.value).inc)
        else:
            effects.after(metrics.REPLAYS.labels(AGENT).inc)
        if change is Change.UNCHANGED:
            effects.after(metrics.DUPLICATES.labels("url").inc)
            return effects.send(touches, event.key, touch_for(record, print_).to_bytes())
        value = page_event(change, record, enrichment).to_bytes()
        if enrichment is not None and enrichment.content_hash:
            return effects.send(by_content, enrichment.content_hash.encode("utf-8"), value)
        return effects.send(unique, event.key, value)

    boundary = Boundary(app, settings, AGENT)
    return ChangesAgent(app.agent(topics.raw, name=AGENT)(boundary.agent(detect)), urls)
