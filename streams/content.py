"""Exact content dedup: the second hop for pages with text.

Reads  ``<prefix>.streams.pages-by-content`` (key: content hash, value: PageEvent JSON), so every
       copy of one content lands in one partition, beside its table entry.
Writes ``<prefix>.streams.pages-by-band`` (key: first LSH band, PageEvent) when near-duplicate
       detection is on and the page is not an exact copy, else ``<prefix>.pages.unique``
       (key: canonical URL) with ``duplicate_of`` set for copies; ``<prefix>.deadletter`` (any
       event it cannot handle, through the boundary of :mod:`streams.agent`).
Table  ``content_first``: content hash -> canonical URL of its first copy.

Replays are harmless: a URL finds itself as the first copy and is not marked a duplicate. The
handler decides first and the boundary writes the table and produces the output only once both
records are known to fit, so an event that fails leaves no entry behind.
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
from streams.fingerprints import band_count
from streams.near import route_key
from streams.topology import StageTopics, decode_event

AGENT = "dedup_content"


def mark_duplicate(event: PageEvent, first_url: str | None) -> PageEvent:
    """The event with ``duplicate_of`` = the first URL with this content, if that is another URL."""
    if first_url is None or first_url == event.page.canonical_url:
        return event
    return event.model_copy(update={"duplicate_of": first_url})


@dataclass(frozen=True)
class ContentAgent:
    agent: Any
    content_first: Any


def register(app: Any, settings: Settings, topics: StageTopics) -> ContentAgent:
    outputs = streams_outputs.of(app)
    content_first = streams_outputs.delivered_table(
        app,
        outputs,
        "content_first",
        partitions=topics.by_content.partitions,
        key_type=str,
        value_type=str,
        help="content hash -> canonical URL of its first copy",
    )
    metrics.watch_table(app, "content_first", content_first)
    max_url_length = settings.crawl.max_url_length
    bands = band_count(settings.streams.near_duplicate_distance)
    unique, by_band = topics.unique.get_topic_name(), topics.by_band.get_topic_name()

    def dedup(event: Any) -> streams_outputs.Effects:
        page = decode_event(event.value, max_url_length)
        if page.enrichment is None or event.key != page.enrichment.content_hash.encode("utf-8"):
            raise RecordError("key_mismatch", f"key {event.key!r:.200} is not the event's content hash")
        content = page.enrichment.content_hash
        first = content_first.get(content)
        page = mark_duplicate(page, first)
        effects = streams_outputs.Effects()
        if first is None:
            effects.write(content_first, content, page.page.canonical_url)
        if page.duplicate_of is not None:
            effects.after(metrics.DUPLICATES.labels("content").inc)
            return effects.send(unique, page.page.canonical_url.encode("utf-8"), page.to_bytes())
        return effects.send(by_band, route_key(page, 0, bands), page.to_bytes())

    boundary = Boundary(app, settings, AGENT)
    return ContentAgent(app.agent(topics.by_content, name=AGENT)(boundary.agent(dedup)), content_first)
