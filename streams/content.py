"""Exact content dedup: the second hop for pages with text.

Reads  ``<prefix>.streams.pages-by-content`` (key: content hash, value: PageEvent JSON), so every
       copy of one content lands in one partition, beside its table entry.
Writes ``<prefix>.streams.pages-by-band`` (key: first LSH band, PageEvent) when near-duplicate
       detection is on and the page is not an exact copy, else ``<prefix>.pages.unique``
       (key: canonical URL) with ``duplicate_of`` set for copies; ``<prefix>.deadletter``.
Table  ``content_first``: content hash -> canonical URL of its first copy.

Replays are harmless: a URL finds itself as the first copy and is not marked a duplicate.
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
    max_bytes = settings.kafka.max_message_bytes
    bands = band_count(settings.streams.near_duplicate_distance)

    async def dedup_content(stream: Any) -> None:
        async for event in stream.noack().events():
            started = time.perf_counter()
            metrics.EVENTS.labels(AGENT).inc()
            with outputs.acking(AGENT, event):
                try:
                    page = decode_event(event.value)
                    if page.enrichment is None or event.key != page.enrichment.content_hash.encode("ascii"):
                        raise RecordError(
                            "key_mismatch", f"key {event.key!r} is not the event's content hash"
                        )
                except RecordError as exc:
                    await send_dead_letter(topics.dead_letter, AGENT, event, exc, max_bytes)
                    continue
                content = page.enrichment.content_hash
                first = content_first.get(content)
                page = mark_duplicate(page, first)
                if page.duplicate_of is not None:
                    metrics.DUPLICATES.labels("content").inc()
                    out, key = topics.unique, page.page.canonical_url.encode("utf-8")
                else:
                    out, key = topics.by_band, route_key(page, 0, bands)
                outputs.send(out.get_topic_name(), key, page.to_bytes())
                if first is None:
                    content_first[content] = page.page.canonical_url
            metrics.PROCESSING.labels(AGENT).observe(time.perf_counter() - started)

    return ContentAgent(app.agent(topics.by_content, name=AGENT)(dedup_content), content_first)
