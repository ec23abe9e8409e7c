"""Exact and near-duplicate detection: the dedup hops, on ``<prefix>.streams.pages-by-band``.

Reads  ``<prefix>.streams.pages-by-band`` (key: an LSH band key ``"<index>:<hex>"``, value:
       :class:`~crawlstream.records.DedupProbe`: URL, content hash, SimHash, the page's raw
       partition and offset, the marks found so far). Pages are never sent here: the page waits
       in memory where it was read (:mod:`streams.verdicts`).
Writes the probe's next hop to ``pages-by-band``, or after its last hop the verdict to
       ``<prefix>.streams.dedup-verdicts`` (key: URL, partition: the page's raw partition, where
       its page waits); ``<prefix>.deadletter`` for records it cannot handle (through the
       boundary of :mod:`streams.agent`).
Table  ``dedup_index`` (bytes): ``c|<content hash>`` -> URL of the first page with that content;
       ``b|<band key>|<URL>`` -> SimHash (16 hex digits) of a page with that band, at most
       ``BUCKET_LIMIT`` pages per band key (a full band keeps its earliest pages:
       "near-duplicate of" means earlier). Each write is one small changelog record: an entry,
       never a whole bucket.

A page's SimHash is cut into ``band_count(streams.near_duplicate_distance)`` bands
(:mod:`streams.fingerprints`); the entries of a band key live in partition ``crc32(key) mod
partitions`` (:func:`hop_plan`), so one hop handles every band of the page that lives in its
partition: a page makes as many hops as its bands have distinct partitions (4 bands over 3
partitions: 2.4 on average), not one per band. The first hop is band 0's partition, which also
holds the exact-content entries: copies of one content have the same SimHash, so the same band 0,
so the same partition. An exact copy goes straight to its verdict (it is not entered in the
bands); any other page is compared with the pages of each of its bands and entered there.

Of two near-duplicates in flight at once exactly one is marked: both pass the shared band's
partition in some order, and the second finds the first. Replays find their own URL and skip it
(and write nothing: the entry is there).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from crawlstream.errors import RecordError
from crawlstream.records import DedupProbe
from crawlstream.settings import Settings
from streams import metrics
from streams import outputs as streams_outputs
from streams.agent import Boundary
from streams.fingerprints import band_count, band_keys, hamming
from streams.topology import StageTopics, decode_probe

AGENT = "find_duplicates"
BUCKET_LIMIT = 32


@dataclass(frozen=True)
class Hop:
    partition: int
    bands: tuple[int, ...]  # the band indices whose entries live in this partition, ascending


def band_partition(band_key: str, partitions: int) -> int:
    """The partition holding a band key's entries (CRC-32: the same in every process and version)."""
    return zlib.crc32(band_key.encode("ascii")) % partitions


def hop_plan(keys: list[str], partitions: int) -> list[Hop]:
    """The hops of a page with these band keys: one per distinct partition, band 0's first, then
    in the order of each partition's first band."""
    bands: dict[int, list[int]] = {}
    for index, key in enumerate(keys):
        bands.setdefault(band_partition(key, partitions), []).append(index)
    return [Hop(partition, tuple(indices)) for partition, indices in bands.items()]


def content_key(content_hash: str) -> bytes:
    return b"c|" + content_hash.encode("ascii")


def band_prefix(band_key: str) -> bytes:
    return b"b|" + band_key.encode("ascii") + b"|"


Mark = tuple[str | None, int | None]  # (near_duplicate_of, near_distance)


def closest(url: str, simhash: int, mark: Mark, candidates: list[tuple[str, int]], max_distance: int) -> Mark:
    """The near-duplicate mark of page ``url`` after comparing it with ``candidates`` (URL,
    SimHash): the closest other URL within ``max_distance``, if it beats ``mark``."""
    best_url, best = mark
    for other_url, other in candidates:
        distance = hamming(simhash, other)
        if other_url != url and distance <= max_distance and (best is None or distance < best):
            best_url, best = other_url, distance
    return best_url, best


def bucket(entries: list[tuple[bytes, bytes]], prefix: bytes) -> list[tuple[str, int]]:
    """(URL, SimHash) of a band's entries read from the table."""
    return [(key[len(prefix) :].decode("utf-8", "surrogatepass"), int(value, 16)) for key, value in entries]


@dataclass(frozen=True)
class DedupAgent:
    agent: Any
    index: Any


def register(app: Any, settings: Settings, topics: StageTopics) -> DedupAgent:
    outputs = streams_outputs.of(app)
    partitions = topics.by_band.partitions
    index = streams_outputs.delivered_table(
        app,
        outputs,
        "dedup_index",
        partitions=partitions,
        key_type=bytes,
        value_type=bytes,
        help="c|<content hash> -> first URL; b|<band key>|<URL> -> SimHash of a page with that band",
    )
    metrics.watch_table(app, "dedup_index", index)
    max_url_length = settings.crawl.max_url_length
    distance = settings.streams.near_duplicate_distance
    bands = band_count(distance)
    by_band, verdicts = topics.by_band.get_topic_name(), topics.verdicts.get_topic_name()

    def find(event: Any) -> streams_outputs.Effects:
        probe = decode_probe(event.value, max_url_length)
        if probe.partition >= partitions:  # its verdict would have no partition to go to
            raise RecordError("invalid_probe", f"raw partition {probe.partition} of {partitions}")
        keys = band_keys(probe.simhash, bands)
        plan = hop_plan(keys, partitions)
        position = next((n for n, hop in enumerate(plan) if hop.partition == event.message.partition), None)
        if position is None or event.key != keys[plan[position].bands[0]].encode("ascii"):
            raise RecordError("key_mismatch", f"key {event.key!r:.200} is not a band of this partition")
        effects = streams_outputs.Effects()
        if position == 0:
            if probe.content_hash is None:
                raise RecordError("invalid_probe", "a probe's first hop needs its content hash")
            first = index.get(content_key(probe.content_hash))
            if first is None:
                effects.write(index, content_key(probe.content_hash), probe.url.encode("utf-8"))
            elif first.decode("utf-8", "surrogatepass") != probe.url:
                effects.after(metrics.DUPLICATES.labels("content").inc)
                copy_of = first.decode("utf-8", "surrogatepass")
                verdict = probe.model_copy(update={"duplicate_of": copy_of, "content_hash": None})
                return verdict_to(effects, verdict)
            probe = probe.model_copy(update={"content_hash": None})  # later hops do not need it
        own = probe.url.encode("utf-8", "surrogatepass")
        mark: Mark = (probe.near_duplicate_of, probe.near_distance)
        for band in plan[position].bands:
            prefix = band_prefix(keys[band])
            entries = bucket(index.scan(prefix, BUCKET_LIMIT), prefix)
            mark = closest(probe.url, probe.simhash, mark, entries, distance)
            stored = dict(entries).get(probe.url)
            # A replay finds its own entry and writes nothing; a full band takes no newcomer.
            if stored != probe.simhash and (stored is not None or len(entries) < BUCKET_LIMIT):
                effects.write(index, prefix + own, f"{probe.simhash:016x}".encode("ascii"))
        probe = probe.model_copy(update={"near_duplicate_of": mark[0], "near_distance": mark[1]})
        if position + 1 < len(plan):
            after = plan[position + 1]
            key = keys[after.bands[0]].encode("ascii")
            return effects.send(by_band, key, probe.to_bytes(), partition=after.partition)
        if probe.near_duplicate_of is not None:
            effects.after(metrics.DUPLICATES.labels("near").inc)
        return verdict_to(effects, probe)

    def verdict_to(effects: streams_outputs.Effects, verdict: DedupProbe) -> streams_outputs.Effects:
        # Back to the page's raw partition: the worker holding it holds that partition of the
        # verdicts topic too (faust assigns partition p of equally partitioned topics together).
        return effects.send(
            verdicts, verdict.url.encode("utf-8"), verdict.to_bytes(), partition=verdict.partition
        )

    boundary = Boundary(app, settings, AGENT)
    return DedupAgent(app.agent(topics.by_band, name=AGENT)(boundary.agent(find)), index)
