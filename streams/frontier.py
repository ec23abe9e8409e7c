"""The frontier: links found by the crawlers become crawl requests, once, or again when due.

Reads  ``<prefix>.links``     (key: canonical URL, LinkRecord JSON).
Writes ``<prefix>.requests``  (key: host, CrawlRequest JSON) for a link never requested (reason
       ``link``) or for a fetched page whose adaptive recrawl interval has passed since it was
       last seen (reason ``recrawl``); ``<prefix>.deadletter`` for links it cannot handle
       (undecodable, key or host not the URL's, ...; :mod:`streams.agent`).
Refuses (no request; counted in ``streams_frontier_refused_total{reason}``) links deeper than
       ``crawl.max_depth`` (``too_deep``; 0: no limit) and URLs the crawlers would not fetch
       (:func:`streams.checks.url_refusal`: ``url_too_long`` over ``crawl.max_url_length``,
       ``scheme`` other than http/https, ``no_host``, ``invalid_url``). A full frontier with
       scopes and budgets is a later issue; the crawlers apply their job's own limits as well.
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

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from crawlstream.errors import RecordError
from crawlstream.records import CrawlRequest, LinkRecord
from crawlstream.settings import Settings
from crawlstream.urls import host_of
from streams import metrics
from streams import outputs as streams_outputs
from streams.agent import Boundary
from streams.checks import url_refusal
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


def refusal(link: LinkRecord, max_depth: int, max_url_length: int) -> str | None:
    """Why the frontier must not request ``link`` (a metric label), or None.

    Its depth must be within the limit, its URL as linked and its canonical URL both fetchable
    URLs (:func:`url_refusal`).
    """
    if max_depth and link.depth > max_depth:
        return "too_deep"
    for url in (link.url, link.canonical_url):
        refused = url_refusal(url, max_url_length)
        if refused is not None:
            return refused[0]
    return None


def check_host(link: LinkRecord) -> None:
    """RecordError unless ``link.host`` is its URL's host: requests are keyed (and so partitioned,
    one host per crawler) by it."""
    if link.host != host_of(link.url):
        raise RecordError("host_mismatch", f"host {link.host[:200]!r} is not the host of {link.url[:200]!r}")


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


def register(app: Any, settings: Settings, topics: StageTopics, urls: Any) -> FrontierAgent:
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
    max_depth, max_url_length = settings.crawl.max_depth, settings.crawl.max_url_length

    def plan(event: Any) -> streams_outputs.Effects:
        link = decode_link(event.key, event.value)
        effects = streams_outputs.Effects()
        refused = refusal(link, max_depth, max_url_length)
        if refused is not None:
            return effects.after(metrics.FRONTIER_REFUSED.labels(refused).inc)
        check_host(link)
        now = datetime.now(UTC)
        offset = event.message.offset
        requested_at, requested_by = requested(seen.get(link.canonical_url))
        replay = offset <= requested_by  # this link's request may be lost: decide afresh
        request = decide(link, urls.get(link.canonical_url), None if replay else requested_at, now)
        if request is None:
            return effects
        if replay:
            effects.after(metrics.REPLAYS.labels(AGENT).inc)
        else:
            effects.write(seen, link.canonical_url, {"t": now.isoformat(), "o": offset})
        effects.after(metrics.REQUESTS.labels(request.reason).inc)
        return effects.send(requests, request.host.encode("utf-8"), request.to_bytes())

    boundary = Boundary(app, settings, AGENT)
    return FrontierAgent(app.agent(topics.links, name=AGENT)(boundary.agent(plan)), seen)
