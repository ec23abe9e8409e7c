"""Exact and near-duplicate detection: the dedup hops, on ``<prefix>.streams.pages-by-band``.

Reads  ``<prefix>.streams.pages-by-band`` (key: an LSH band key ``"<index>:<hex>"``, value:
       :class:`~crawlstream.records.DedupProbe`: URL, content hash, SimHash, the page's raw
       partition and offset, the marks found so far). Pages are never sent here: the page waits
       in memory where it was read (:mod:`streams.verdicts`).
Writes the probe's next hop to ``pages-by-band``, or after its last hop the verdict to
       ``<prefix>.streams.dedup-verdicts`` (key: URL, partition: the page's raw partition, where
       its page waits); ``<prefix>.deadletter`` for records it cannot handle (through the
       boundary of :mod:`streams.agent`).
Table  ``dedup_index`` (:class:`DedupIndex`, bytes): ``c|<content hash>`` -> URL of the first page
       with that content; ``b|<band key>|<URL>`` -> SimHash (16 hex digits) of a page with that
       band, at most ``BUCKET_LIMIT`` pages per band key (a full band keeps its earliest pages:
       "near-duplicate of" means earlier). Those entries are derived from one changelog record
       per page and hop, ``p|<URL>`` -> what the hop entered (SimHash, bands, new content), and
       derived again from it when the table is restored: one small record per hop, never a
       whole bucket, nor a record per band.

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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from crawlstream.errors import RecordError
from crawlstream.records import DedupProbe
from crawlstream.settings import Settings
from streams import metrics
from streams import outputs as streams_outputs
from streams.agent import Boundary
from streams.fingerprints import band_count, band_keys, hamming
from streams.outputs import DeliveredTable
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


def hop_key(url: str) -> bytes:
    return b"p|" + url.encode("utf-8", "surrogatepass")


def hop_value(simhash: int, bands: int, entered: list[int], content_hash: str | None) -> bytes:
    """What a hop entered for a page: ``<SimHash hex>|<band count>:<band indices, hex>|<content
    hash if it was the first copy>``."""
    indices = "".join(f"{band:x}" for band in entered)
    return f"{simhash:016x}|{bands}:{indices}|{content_hash or ''}".encode("ascii")


class DedupIndex(DeliveredTable):
    """The dedup hops' table: a changelog record per page and hop (``p|<URL>``), and the entries
    the lookups read (``c|...``, ``b|...``) derived from it in the local store, when it is
    written and when it is restored (faust's recovery and standbys call
    :meth:`apply_changelog_batch`), so the two never differ."""

    def write_encoded(self, key: Any, value: Any, raw_key: bytes, raw_value: bytes) -> None:
        super().write_encoded(key, value, raw_key, raw_value)
        self.derive(self._event_partition(), raw_key, raw_value)

    def apply_changelog_batch(self, batch: Iterable[Any]) -> None:
        events = list(batch)
        super().apply_changelog_batch(events)
        for event in events:
            message = event.message
            if message.value is not None:
                self.derive(message.partition, message.key, message.value)

    def derive(self, partition: int | None, raw_key: bytes, raw_value: bytes) -> None:
        if not raw_key.startswith(b"p|"):
            return
        url = raw_key[2:]
        simhash_hex, bands, content = raw_value.split(b"|", 2)
        count, _, indices = bands.partition(b":")
        keys = band_keys(int(simhash_hex, 16), int(count))
        for index in indices.decode("ascii"):
            self.put_local(partition, band_prefix(keys[int(index, 16)]) + url, simhash_hex)
        if content:
            self.put_local(partition, b"c|" + content, url)


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
        DedupIndex,
        partitions=partitions,
        key_type=bytes,
        value_type=bytes,
        help="p|<URL> -> what a hop entered; derived: c|<content hash> -> first URL, "
        "b|<band key>|<URL> -> SimHash of a page with that band",
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
        simhash = probe.simhash
        if simhash is None:
            raise RecordError("invalid_probe", "a probe needs its SimHash")
        keys = band_keys(simhash, bands)
        plan = hop_plan(keys, partitions)
        position = next((n for n, hop in enumerate(plan) if hop.partition == event.message.partition), None)
        if position is None or event.key != keys[plan[position].bands[0]].encode("ascii"):
            raise RecordError("key_mismatch", f"key {event.key!r:.200} is not a band of this partition")
        effects = streams_outputs.Effects()
        new_content = None
        if position == 0:
            if probe.content_hash is None:
                raise RecordError("invalid_probe", "a probe's first hop needs its content hash")
            first = index.get(content_key(probe.content_hash))
            if first is None:
                new_content = probe.content_hash
            elif first.decode("utf-8", "surrogatepass") != probe.url:
                effects.after(metrics.DUPLICATES.labels("content").inc)
                copy_of = first.decode("utf-8", "surrogatepass")
                return verdict_to(effects, probe.model_copy(update={"duplicate_of": copy_of}))
            probe = probe.model_copy(update={"content_hash": None})  # later hops do not need it
        mark: Mark = (probe.near_duplicate_of, probe.near_distance)
        entered = []
        for band in plan[position].bands:
            prefix = band_prefix(keys[band])
            entries = bucket(index.scan(prefix, BUCKET_LIMIT), prefix)
            mark = closest(probe.url, simhash, mark, entries, distance)
            stored = dict(entries).get(probe.url)
            # A replay finds its own entry and enters nothing; a full band takes no newcomer.
            if stored != simhash and (stored is not None or len(entries) < BUCKET_LIMIT):
                entered.append(band)
        if entered or new_content:
            effects.write(index, hop_key(probe.url), hop_value(simhash, bands, entered, new_content))
        probe = probe.model_copy(update={"near_duplicate_of": mark[0], "near_distance": mark[1]})
        if position + 1 < len(plan):
            after = plan[position + 1]
            key = keys[after.bands[0]].encode("ascii")
            return effects.send(by_band, key, probe.to_bytes(), partition=after.partition)
        if probe.near_duplicate_of is not None:
            effects.after(metrics.DUPLICATES.labels("near").inc)
        return verdict_to(effects, probe)

    def verdict_to(effects: streams_outputs.Effects, probe: DedupProbe) -> streams_outputs.Effects:
        # Back to the page's raw partition: the worker holding it holds that partition of the
        # verdicts topic too (faust assigns partition p of equally partitioned topics together).
        # The page's fingerprints stay behind: a verdict is the URL, where it waits, and marks.
        verdict = probe.model_copy(update={"content_hash": None, "simhash": None})
        key = verdict.url.encode("utf-8")
        return effects.send(verdicts, key, verdict.to_bytes(), partition=verdict.partition)

    boundary = Boundary(app, settings, AGENT)
    return DedupAgent(app.agent(topics.by_band, name=AGENT)(boundary.agent(find)), index)
