"""The frontier: links found by the crawlers become crawl requests, once, or again when due.

Reads  ``<prefix>.links``     (key: canonical URL, LinkRecord JSON).
Writes ``<prefix>.requests``  (key: host, CrawlRequest JSON) for a link never requested (reason
       ``link``) or for a fetched page whose adaptive recrawl interval has passed since it was
       last seen (reason ``recrawl``); ``<prefix>.deadletter`` for undecodable links.
Tables ``frontier_seen``: canonical URL -> when it was last requested (ISO time), and reads
       :mod:`streams.changes`' ``urls`` (last seen, recrawl interval): both are keyed by canonical
       URL on topics with the same partition count, which faust assigns to the same worker.

At-least-once: the request is acknowledged before ``frontier_seen`` records it; a replay can
request a URL twice, which the crawlers' own dedup (Scrapy's dupefilter) absorbs.
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


@dataclass(frozen=True)
class FrontierAgent:
    agent: Any
    seen: Any


def register(app: Any, topics: StageTopics, urls: Any, max_bytes: int) -> FrontierAgent:
    """Declare ``frontier_seen`` and the agent; ``urls`` is :mod:`streams.changes`' table."""
    seen = app.Table(
        "frontier_seen",
        partitions=topics.links.partitions,
        key_type=str,
        value_type=str,
        help="canonical URL -> when the frontier last requested it",
    )

    async def plan_requests(stream: Any) -> None:
        async for event in stream.events():
            started = time.perf_counter()
            metrics.EVENTS.labels(AGENT).inc()
            try:
                link = decode_link(event.key, event.value)
            except RecordError as exc:
                await send_dead_letter(topics.dead_letter, AGENT, event, exc, max_bytes)
                continue
            now = datetime.now(UTC)
            request = decide(link, urls.get(link.canonical_url), seen.get(link.canonical_url), now)
            if request is not None:
                sent = await topics.requests.send(
                    key=request.host.encode("utf-8"), value=request.to_bytes(), force=True
                )
                await sent
                seen[link.canonical_url] = now.isoformat()
                metrics.REQUESTS.labels(request.reason).inc()
                metrics.TABLE_KEYS.labels("frontier_seen").set(len(seen))
            metrics.PROCESSING.labels(AGENT).observe(time.perf_counter() - started)

    return FrontierAgent(app.agent(topics.links, name=AGENT)(plan_requests), seen)
