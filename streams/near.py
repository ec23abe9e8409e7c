"""Near-duplicate detection: SimHash + LSH bands, one hop per band.

Reads and writes ``<prefix>.streams.pages-by-band`` (key ``"<band index>:<band hex>"``, value:
PageEvent JSON): hop ``i`` looks up band ``i`` in the table, keeps the closest earlier page within
``streams.near_duplicate_distance`` and re-keys the event by band ``i + 1``; after the last band the
event goes to ``<prefix>.pages.unique`` (key: canonical URL). Each band key's state lives in one
partition, so the state scales with partitions and no hop reads another worker's table.
Table  ``near_bands``: band key -> ``[[canonical URL, simhash], ...]`` (at most ``BUCKET_LIMIT``).

Of two near-duplicates in flight at once exactly one is marked: both pass the shared band's
partition in some order, and the second finds the first. Replays find their own URL and skip it.
Events it cannot handle go to ``<prefix>.deadletter`` through the boundary of :mod:`streams.agent`,
which writes the bucket and produces the next hop only once both are known to fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crawlstream.errors import RecordError
from crawlstream.records import PageEvent
from crawlstream.settings import Settings
from streams import metrics
from streams import outputs as streams_outputs
from streams.agent import Boundary
from streams.fingerprints import band_count, band_keys, hamming
from streams.topology import StageTopics, decode_event

AGENT = "find_near_duplicates"
BUCKET_LIMIT = 32
# A bucket also stops growing at this many bytes of URLs (long URLs would otherwise make a
# bucket's changelog record too large for its topic, and every later page of the band with it).
BUCKET_MAX_BYTES = 128 * 1024


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
    size = sum(len(entry[0]) for entry in kept) + len(url)
    if len(kept) >= BUCKET_LIMIT or size > BUCKET_MAX_BYTES:
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
    max_url_length = settings.crawl.max_url_length
    distance = settings.streams.near_duplicate_distance
    bands = band_count(distance)
    unique, by_band = topics.unique.get_topic_name(), topics.by_band.get_topic_name()

    def find(event: Any) -> streams_outputs.Effects:
        index = band_index(event.key, bands)
        page = decode_event(event.value, max_url_length)
        if page.enrichment is None or route_key(page, index, bands) != event.key:
            raise RecordError("key_mismatch", f"key {event.key!r:.200} is not a band of the event")
        band = event.key.decode("ascii")
        bucket = near_bands.get(band)
        page = closest(page, bucket or [], distance)
        simhash = page.enrichment.simhash if page.enrichment is not None else 0
        effects = streams_outputs.Effects()
        effects.write(near_bands, band, remember(bucket, page.page.canonical_url, simhash))
        if index + 1 < bands:
            return effects.send(by_band, route_key(page, index + 1, bands), page.to_bytes())
        if page.near_duplicate_of is not None:
            effects.after(metrics.DUPLICATES.labels("near").inc)
        return effects.send(unique, page.page.canonical_url.encode("utf-8"), page.to_bytes())

    boundary = Boundary(app, settings, AGENT)
    return NearAgent(app.agent(topics.by_band, name=AGENT)(boundary.agent(find)), near_bands)
