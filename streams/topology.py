"""The topics every agent of the stage shares, declared once on the faust app.

All are catalog topics (:mod:`crawlstream.topics`), created by ``ensure_topics`` (``python -m
streams worker`` calls it at start); keys and values are raw bytes, encoded by the agents with
the records of :mod:`crawlstream.records`. Settings used: ``kafka.topic_prefix|partitions``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust

from crawlstream.records import DedupProbe, decode_record
from crawlstream.settings import Settings
from crawlstream.topics import TopicSpec, catalog
from streams.checks import check_url

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
    by_band: Any
    verdicts: Any
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
        by_band=topic(specs.pages_by_band),
        verdicts=topic(specs.dedup_verdicts),
        links=topic(specs.links),
        requests=topic(specs.requests),
        stats=topic(specs.stats),
    )


def decode_probe(raw: bytes | None, max_url_length: int) -> DedupProbe:
    """A DedupProbe of the dedup hops or verdicts, its URLs checked (:func:`streams.checks.url_refusal`),
    or RecordError with a short reason."""
    probe = decode_record(DedupProbe, raw, reason="invalid_probe")
    check_url(probe.url, max_url_length, "url")
    for field, url in (("duplicate_of", probe.duplicate_of), ("near_duplicate_of", probe.near_duplicate_of)):
        if url is not None:
            check_url(url, max_url_length, field)
    return probe


def internal_inputs(app: faust.App) -> list[TopicSpec]:
    """The app's own topics its agents read (``internal=True``, not in the catalog: the stats
    samples of :mod:`streams.stats`), as specs for ``ensure_topics``.

    faust creates them at start, but after its consumer fetched the cluster's metadata: the group
    leader then ignores them as missing ("Ignoring missing topic") until the consumer's next
    metadata refresh (``metadata.max.age.ms``, 5 minutes), so a new stage aggregated nothing for
    its first minutes. A worker creates them before faust starts, with faust's partition count.
    """
    specs: dict[str, TopicSpec] = {}
    for agent in app.agents.values():
        channel = agent.channel
        if not getattr(channel, "internal", False):
            continue
        partitions = channel.partitions or app.conf.topic_partitions
        for name in channel.topics:
            specs[name] = TopicSpec(name, partitions, "json", "an internal topic of the stream stage")
    return sorted(specs.values(), key=lambda spec: spec.name)
