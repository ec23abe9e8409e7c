"""URL change detection: the first agent of the stage, on ``<prefix>.pages.raw``.

Reads  ``<prefix>.pages.raw``            (key: canonical URL, value: PageRecord JSON).
Writes ``<prefix>.pages.touches``        (key: canonical URL, PageTouch) for unchanged recrawls,
       ``<prefix>.streams.pages-by-band`` (key: band 0's LSH key, DedupProbe) for new/changed
       HTML with text: only its fingerprints go through the dedup hops (:mod:`streams.dedup`);
       the page waits here, its raw event held unacked (:mod:`streams.verdicts`), until its
       verdict comes back and it goes to ``<prefix>.pages.unique`` with its marks,
       ``<prefix>.pages.unique``         (key: canonical URL, PageEvent) for new/changed pages
       without text (metadata records, empty pages): nothing to deduplicate on,
       ``<prefix>.deadletter``           (any record it cannot handle: undecodable, wrong key,
       URLs or fetch time no crawler produces (:mod:`streams.checks`), an output too large for
       its topic, ...; :mod:`streams.agent`).
Samples each touch and page event is a stats sample (:mod:`streams.stats`), which holds its
       event until the sample is sent.
A 304 (Not Modified, from a conditional recrawl of a frontier job) of a known URL keeps its
fingerprint (and the digest of the body last classified): an unchanged recrawl, a touch (no new
version, no change event).
Table  ``urls``: canonical URL -> {h: fingerprint, f: first seen, l: last seen, i: recrawl
       interval s, o: offset of the raw record that last updated the entry, c: its change
       (n/c/u), b: digest of the HTML body classified}; changelog ``<app_id>-urls-changelog``,
       co-partitioned with the raw topic. A recrawl whose body is byte for byte the one last
       classified is unchanged without being parsed again (enrichment is most of a page's cost).

At-least-once (:mod:`streams.outputs`): an event is acknowledged when the broker has its outputs
(for a page with text: its page event, after the verdict) and its changelog record, so its offset
is committed only then. :func:`register`'s handler
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
from functools import partial
from typing import Any

from crawlstream.deadletters import check_fits
from crawlstream.errors import RecordError
from crawlstream.records import DedupProbe, Enrichment, PageEvent, PageRecord, PageTouch, decode_page
from crawlstream.settings import Settings
from streams import aggregate, metrics
from streams import outputs as streams_outputs
from streams.agent import Boundary
from streams.checks import check_page
from streams.dedup import hop_plan
from streams.enrich import enrich_html
from streams.fingerprints import band_count, band_keys
from streams.recrawl import RecrawlPolicy, next_interval
from streams.topology import StageTopics
from streams.verdicts import AwaitingPages, Sampler, page_output

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


def body_digest(record: PageRecord) -> str | None:
    """A digest of an HTML page's body (8 bytes of BLAKE2b: the same URL's bodies are compared,
    so a collision is a 2**-64 chance per recrawl); None for metadata records."""
    if record.kind != "html":
        return None
    return hashlib.blake2b(record.body.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


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


def marks_room(max_url_length: int) -> int:
    """Bytes a page event may grow by when its verdict marks it: two URLs (4 bytes a character at
    most in JSON, as UTF-8) and a distance, with their names."""
    return 2 * (4 * max_url_length + 32) + 32


@dataclass(frozen=True)
class ChangesAgent:
    agent: Any
    urls: Any


def register(
    app: Any,
    settings: Settings,
    topics: StageTopics,
    policy: RecrawlPolicy,
    awaiting: AwaitingPages,
    sampler: Sampler | None,
) -> ChangesAgent:
    """Declare the ``urls`` table and the change-detection agent on ``app``."""
    outputs = streams_outputs.of(app)
    touches, by_band = topics.touches.get_topic_name(), topics.by_band.get_topic_name()
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
    bands, partitions = band_count(settings.streams.near_duplicate_distance), topics.by_band.partitions
    room = marks_room(max_url_length)
    boundary = Boundary(app, settings, AGENT)

    def sample_of(event: Any, make: Any, effects: streams_outputs.Effects) -> dict[str, Any] | None:
        """The event's stats sample; one it cannot make (a run id too long for the stats) is a
        dead letter of its own, and the page or touch goes on."""
        if sampler is None:
            return None
        try:
            sample: dict[str, Any] = make()
        except RecordError as exc:
            effects.after(partial(boundary.dead_letter, event, exc))
            return None
        return sample

    def detect(event: Any) -> streams_outputs.Effects:
        record = decode_keyed_page(event.key, event.value, max_url_length)
        event_lag.observe(event_lag_seconds(record, datetime.now(UTC)))
        offset = event.message.offset
        entry = urls.get(record.canonical_url)
        change = replayed(entry, offset)
        digest = body_digest(record)
        if record.status == 304 and entry is not None and "h" in entry:
            # Not Modified (a conditional recrawl): the page is what it was, a touch; the body
            # last classified is still the one the entry's digest names.
            enrichment, print_ = None, str(entry["h"])
            digest = entry.get("b")
            effects = streams_outputs.Effects()
        elif (
            digest is not None
            and entry is not None
            and entry.get("b") == digest
            and "h" in entry
            and (change in (None, Change.UNCHANGED))
        ):
            # The bytes last classified: unchanged, and no need to parse them again.
            enrichment, print_ = None, str(entry["h"])
            effects = streams_outputs.Effects().after(metrics.SAME_BODY.inc)
        else:
            enrichment = enrich(record)
            print_ = fingerprint(record, enrichment)
            effects = streams_outputs.Effects()
        if change is None:
            result = classify(entry, print_, record.fetched_at, policy)
            change = result.change
            written = stamped(result.entry, offset, change)
            if digest is not None:
                written["b"] = str(digest)
            effects.write(urls, record.canonical_url, written)
            effects.after(metrics.CHANGES.labels(change.value).inc)
        else:
            effects.after(metrics.REPLAYS.labels(AGENT).inc)
        if change is Change.UNCHANGED:
            effects.after(metrics.DUPLICATES.labels("url").inc)
            touch = touch_for(record, print_)
            effects.send(touches, event.key, touch.to_bytes())
            sample = sample_of(event, lambda: aggregate.sample_of_touch(touch), effects)
            if sample is not None and sampler is not None:
                effects.hold(sampler(sample))
            return effects
        page = page_event(change, record, enrichment)
        value = page.to_bytes()
        sample = sample_of(event, lambda: aggregate.sample_of_event(page), effects)
        if enrichment is None or not enrichment.content_hash:
            return page_output(effects, unique, page, value, sample, sampler)
        # The page waits here for its verdict, with room left for the marks it may get.
        check_fits(event.key, value, outputs.limit(unique) - room, unique)
        partition = event.message.partition
        probe = DedupProbe(
            url=record.canonical_url,
            partition=partition,
            offset=offset,
            content_hash=enrichment.content_hash,
            simhash=enrichment.simhash,
        )
        keys = band_keys(enrichment.simhash, bands)
        first = hop_plan(keys, partitions)[0]
        effects.send(by_band, keys[0].encode("ascii"), probe.to_bytes(), partition=first.partition)
        return effects.hold(awaiting.hold(partition, offset, page, value, sample))

    return ChangesAgent(app.agent(topics.raw, name=AGENT)(boundary.agent(detect)), urls)
