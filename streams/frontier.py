"""The frontier: links found by the crawlers become crawl requests, once, or again when due.

Reads  ``<prefix>.links``     (key: canonical URL, LinkRecord JSON).
Writes ``<prefix>.requests``  (key: host, CrawlRequest JSON) for a link never requested (reason
       ``link``) or for a fetched page whose adaptive recrawl interval has passed since it was
       last seen (reason ``recrawl``); ``<prefix>.deadletter`` for undecodable links.
Tables ``frontier_seen``: canonical URL -> {t: when it was last requested (ISO time), o: offset
       of the link record that requested it}, and reads
       :mod:`streams.changes`' ``urls`` (last seen, recrawl interval): both are keyed by canonical
       URL on topics with the same partition count, which faust assigns to the same worker.

At-least-once (:mod:`streams.outputs`): a link's offset is committed once its request and
``frontier_seen`` record are delivered. ``frontier_seen`` is written at once, so a replayed link
finds its own offset (or a later one) there and decides again as if never requested: a request
lost in a crash is sent again. A URL can so be requested twice, which the crawlers' own dedup
(Scrapy's dupefilter) absorbs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from crawlstream.errors import RecordError
from crawlstream.records import CrawlRequest, LinkRecord
from streams import metrics
from streams import outputs as streams_outputs
from streams.deadletters import send_dead_letter
from streams.topology import StageTopics

AGENT = "plan_requests"


def decode_link(key: bytes | None, raw: bytes | None) -> LinkRecord:
    if raw is None:
        raise RecordError("null_value", "message has no value")
    try:
        link = LinkRecord.model_validate_json(raw)
    except ValidationError as exc:
        raise RecordError("invalid_link", str(exc.errors()[0]["msg"])[:500]) from None
    if key is None or key != link.canonical_url.encode("utf-8"):
        raise RecordError("key_mismatch", f"key {key!r:.200} != canonical_url {link.canonical_url[:200]!r}")
    return link


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def decide(
    link: LinkRecord, fetched: dict[str, Any] | None, requested_at: str | None, now: datetime
) -> CrawlRequest | None:
    """The request a link calls for, if any.

    ``fetched`` is the URL's ``urls`` entry (``l``: last seen, ``i``: recrawl interval s) and
    ``requested_at`` when the frontier last requested it. A URL never fetched is requested once;
    a fetched URL again when its interval has passed and it was not requested since it fell due.
    """
    fields = {
        "url": link.url,
        "canonical_url": link.canonical_url,
        "host": link.host,
        "depth": link.depth,
        "job_id": link.job_id,
        "run_id": link.run_id,
    }
    if fetched is None:
        return None if requested_at is not None else CrawlRequest(reason="link", **fields)
    due = _aware(datetime.fromisoformat(str(fetched["l"]))) + timedelta(seconds=float(fetched["i"]))
    if _aware(now) < due:
        return None
    if requested_at is not None and _aware(datetime.fromisoformat(requested_at)) >= due:
        return None
    return CrawlRequest(reason="recrawl", **fields)


def requested(value: Any) -> tuple[str | None, int]:
    """(when requested, offset of the link that requested it) from a ``frontier_seen`` value."""
    if value is None:
        return None, -1
    if isinstance(value, str):  # an entry written before offsets were kept
        return value, -1
    return str(value["t"]), int(value["o"])


@dataclass(frozen=True)
class FrontierAgent:
    agent: Any
    seen: Any


def register(app: Any, topics: StageTopics, urls: Any, max_bytes: int) -> FrontierAgent:
    """Declare ``frontier_seen`` and the agent; ``urls`` is :mod:`streams.changes`' table."""
    outputs = streams_outputs.of(app)
    seen = streams_outputs.delivered_table(
        app,
        outputs,
        "frontier_seen",
        partitions=topics.links.partitions,
        key_type=str,
        help="canonical URL -> {t: when the frontier last requested it, o: offset of that link}",
    )
    metrics.watch_table(app, "frontier_seen", seen)
    requests = topics.requests.get_topic_name()

    async def plan_requests(stream: Any) -> None:
        async for event in stream.noack().events():
            started = time.perf_counter()
            metrics.EVENTS.labels(AGENT).inc()
            with outputs.acking(AGENT, event):
                try:
                    link = decode_link(event.key, event.value)
                except RecordError as exc:
                    await send_dead_letter(topics.dead_letter, AGENT, event, exc, max_bytes)
                    continue
                now = datetime.now(UTC)
                offset = event.message.offset
                requested_at, requested_by = requested(seen.get(link.canonical_url))
                replay = offset <= requested_by  # this link's request may be lost: decide afresh
                request = decide(link, urls.get(link.canonical_url), None if replay else requested_at, now)
                if request is not None:
                    if replay:
                        metrics.REPLAYS.labels(AGENT).inc()
                    else:
                        seen[link.canonical_url] = {"t": now.isoformat(), "o": offset}
                    outputs.send(requests, request.host.encode("utf-8"), request.to_bytes())
                    metrics.REQUESTS.labels(request.reason).inc()
            metrics.PROCESSING.labels(AGENT).observe(time.perf_counter() - started)

    return FrontierAgent(app.agent(topics.links, name=AGENT)(plan_requests), seen)
