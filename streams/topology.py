"""The topics every agent of the stage shares, declared once on the faust app.

All are catalog topics (:mod:`crawlstream.topics`), created by ``ensure_topics`` (``python -m
streams worker`` calls it at start); keys and values are raw bytes, encoded by the agents with
the records of :mod:`crawlstream.records`. Settings used: ``kafka.topic_prefix|partitions``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust

from crawlstream.records import PageEvent, decode_record
from crawlstream.settings import Settings
from crawlstream.topics import TopicSpec, catalog
from streams.checks import check_page

RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}


@dataclass(frozen=True)
class StageTopics:
    raw: Any
    unique: Any
    touches: Any
    dead_letter: Any
    by_content: Any
    by_band: Any
    links: Any
    requests: Any
    stats: Any


def declare_topics(app: faust.App, settings: Settings) -> StageTopics:
    specs = catalog(settings)

    def topic(spec: TopicSpec) -> Any:
        return app.topic(spec.name, partitions=spec.partitions, **RAW)

    return StageTopics(
        raw=topic(specs.raw_pages),
        unique=topic(specs.unique_pages),
        touches=topic(specs.page_touches),
        dead_letter=topic(specs.dead_letter),
        by_content=topic(specs.pages_by_content),
        by_band=topic(specs.pages_by_band),
        links=topic(specs.links),
        requests=topic(specs.requests),
        stats=topic(specs.stats),
    )


def decode_event(raw: bytes | None, max_url_length: int) -> PageEvent:
    """A PageEvent of the stage's repartition topics or of ``pages.unique``, its page checked
    (:func:`streams.checks.check_page`), or RecordError with a short reason."""
    event = decode_record(PageEvent, raw, reason="invalid_event")
    check_page(event.page, max_url_length)
    return event
