"""Near-duplicate detection: SimHash + LSH bands, one hop per band.

Reads and writes ``<prefix>.streams.pages-by-band`` (key ``"<band index>:<band hex>"``, value:
PageEvent JSON): hop ``i`` looks up band ``i`` in the table, keeps the closest earlier page within
``streams.near_duplicate_distance`` and re-keys the event by band ``i + 1``; after the last band the
event goes to ``<prefix>.pages.unique`` (key: canonical URL). Each band key's state lives in one
partition, so the state scales with partitions and no hop reads another worker's table.
Table  ``near_bands``: band key -> ``[[canonical URL, simhash], ...]`` (at most ``BUCKET_LIMIT``).

Of two near-duplicates in flight at once exactly one is marked: both pass the shared band's
partition in some order, and the second finds the first. Replays find their own URL and skip it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from crawlstream.errors import RecordError
from crawlstream.records import PageEvent
from crawlstream.settings import Settings
from streams import metrics
from streams import outputs as streams_outputs
from streams.deadletters import send_dead_letter
from streams.fingerprints import band_count, band_keys, hamming
from streams.topology import StageTopics, decode_event

AGENT = "find_near_duplicates"
BUCKET_LIMIT = 32


def band_index(key: bytes | None, bands: int) -> int:
    """The band a routing key names; RecordError if it is not ``"<0..bands-1>:<hex>"``."""
    try:
        index_text, _, value = (key or b"").decode("ascii").partition(":")
        index = int(index_text)
        int(value, 16)
    except (UnicodeDecodeError, ValueError):
        raise RecordError("bad_band_key", f"routing key {key!r} is not <index>:<hex>") from None
    if not 0 <= index < bands:
        raise RecordError("bad_band_key", f"band {index} outside 0..{bands - 1}")
    return index


def closest(event: PageEvent, bucket: list[Any], max_distance: int) -> PageEvent:
    """The event marked near-duplicate of the closest other URL in ``bucket`` if it beats its mark."""
    assert event.enrichment is not None
    simhash, own_url = event.enrichment.simhash, event.page.canonical_url
    best_url, best = event.near_duplicate_of, event.near_distance
    for url, other in bucket:
        distance = hamming(simhash, int(other))
        if url != own_url and distance <= max_distance and (best is None or distance < best):
            best_url, best = url, distance
    if best_url == event.near_duplicate_of:
        return event
    return event.model_copy(update={"near_duplicate_of": best_url, "near_distance": best})


def remember(bucket: list[Any] | None, url: str, simhash: int) -> list[Any]:
    """The bucket with ``url``'s current fingerprint (replacing an older one), oldest first."""
    kept = [entry for entry in (bucket or []) if entry[0] != url]
    if len(kept) >= BUCKET_LIMIT:
        return kept  # a full bucket keeps its earliest pages: "near-duplicate of" means earlier
    return [*kept, [url, simhash]]


def route_key(event: PageEvent, index: int, bands: int) -> bytes:
    assert event.enrichment is not None
    return band_keys(event.enrichment.simhash, bands)[index].encode("ascii")


@dataclass(frozen=True)
class NearAgent:
    agent: Any
    near_bands: Any


def register(app: Any, settings: Settings, topics: StageTopics) -> NearAgent:
    outputs = streams_outputs.of(app)
    near_bands = streams_outputs.delivered_table(
        app,
        outputs,
        "near_bands",
        partitions=topics.by_band.partitions,
        key_type=str,
        help="LSH band key -> [[canonical URL, simhash], ...] of pages with that band",
    )
    metrics.watch_table(app, "near_bands", near_bands)
    max_bytes = settings.kafka.max_message_bytes
    distance = settings.streams.near_duplicate_distance
    bands = band_count(distance)

    async def find_near_duplicates(stream: Any) -> None:
        async for event in stream.noack().events():
            started = time.perf_counter()
            metrics.EVENTS.labels(AGENT).inc()
            with outputs.acking(AGENT, event):
                try:
                    index = band_index(event.key, bands)
                    page = decode_event(event.value)
                    if page.enrichment is None or route_key(page, index, bands) != event.key:
                        raise RecordError("key_mismatch", f"key {event.key!r} is not a band of the event")
                except RecordError as exc:
                    await send_dead_letter(topics.dead_letter, AGENT, event, exc, max_bytes)
                    continue
                band = event.key.decode("ascii")
                bucket = near_bands.get(band)
                page = closest(page, bucket or [], distance)
                if index + 1 < bands:
                    out, key = topics.by_band, route_key(page, index + 1, bands)
                else:
                    out, key = topics.unique, page.page.canonical_url.encode("utf-8")
                    if page.near_duplicate_of is not None:
                        metrics.DUPLICATES.labels("near").inc()
                outputs.send(out.get_topic_name(), key, page.to_bytes())
                assert page.enrichment is not None
                near_bands[band] = remember(bucket, page.page.canonical_url, page.enrichment.simhash)
            metrics.PROCESSING.labels(AGENT).observe(time.perf_counter() - started)

    return NearAgent(app.agent(topics.by_band, name=AGENT)(find_near_duplicates), near_bands)
