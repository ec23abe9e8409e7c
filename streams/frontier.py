"""The frontier: links found by the crawlers become crawl requests, once, or again when due.

Reads  ``<prefix>.links``     (key: canonical URL): LinkRecords, the crawlers' FetchOutcomes and
       FrontierCommands (:func:`crawlstream.records.decode_links_record`).
Writes ``<prefix>.requests``  (key: host, CrawlRequest JSON) for a link without a scope (a
       distributed crawl fed by hand): a link never requested (reason ``link``) or a fetched page
       whose adaptive recrawl interval has passed since it was last seen (reason ``recrawl``);
       ``<prefix>.frontier.ledger`` (key: run id, LedgerEntry) for the links of a frontier job
       (they carry its :class:`~crawlstream.records.Scope`): a URL first reached in the run becomes
       a ``candidate`` that the run's ledger (:mod:`streams.ledger`) admits within the run's
       budgets and turns into a request; a FetchOutcome becomes ``closed``; ``<prefix>.deadletter``
       for records it cannot handle (undecodable, key or host not the URL's, ...; :mod:`streams.agent`).
Refuses (no request; counted in ``streams_frontier_refused_total{reason}``) links deeper than
       ``crawl.max_depth`` (``too_deep``; 0: no limit) and URLs the crawlers would not fetch
       (:func:`streams.checks.url_refusal`: ``url_too_long`` over ``crawl.max_url_length``,
       ``scheme`` other than http/https, ``no_host``, ``invalid_url``); a frontier job's links
       out of its scope (:func:`crawlstream.scope.link_refusal`: ``offsite_host``,
       ``offsite_domain``, ``filtered``, ``too_deep``), also reported to the run's ledger.
Tables ``frontier_seen`` (links without a scope): canonical URL -> {t: when it was last requested
       (ISO time), o: offset of the link record that requested it}, and reads
       :mod:`streams.changes`' ``urls`` (last seen, recrawl interval): both are keyed by canonical
       URL on topics with the same partition count, which faust assigns to the same worker.
       ``frontier_urls`` (frontier jobs): ``<job>|<canonical URL>`` -> {r: run that last reached
       it, d: depth, c: offset of the record that made it a candidate in that run, e/m: ETag and
       Last-Modified of its last response, s: its status, t: when it was last reached or fetched,
       o: offset of the last write}. It outlives runs: the next run of the job generates its
       known URLs (a ``generate`` command per partition, :func:`generate`) and requests them with
       their validators, so a recrawl continues past pages that answer 304. Expiry: an entry
       whose URL answered 404/410, or that no run of the job reached for ``forget_after_s``, is
       deleted when the next run generates.

At-least-once (:mod:`streams.outputs`): a record's offset is committed once its outputs and table
records are delivered. ``frontier_seen`` is written at once, so a replayed link finds its own
offset (or a later one) there and decides again as if never requested: a request lost in a crash
is sent again. A URL can so be requested twice, which the crawlers' own dedup (Scrapy's
dupefilter) absorbs. For frontier jobs a replayed record re-sends its ledger entries; the ledger
counts each URL once per run (:mod:`streams.ledger`), so duplicates change nothing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from crawlstream.errors import RecordError
from crawlstream.records import (
    CrawlRequest,
    FetchOutcome,
    FrontierCommand,
    LedgerEntry,
    LinkRecord,
    decode_record,
    links_record_type,
)
from crawlstream.scope import link_refusal
from crawlstream.settings import Settings
from crawlstream.topics import catalog
from crawlstream.urls import host_of
from streams import keyscan, metrics
from streams import outputs as streams_outputs
from streams.agent import Boundary
from streams.checks import url_refusal
from streams.topology import RAW, StageTopics

AGENT = "plan_requests"
GENERATE_CHUNK = 500  # known URLs turned into candidates per generate record
GONE = frozenset({404, 410})


def decode_link(key: bytes | None, raw: bytes | None) -> LinkRecord:
    link = decode_record(LinkRecord, raw, reason="invalid_link")
    if key is None or key != link.canonical_url.encode("utf-8"):
        raise RecordError("key_mismatch", f"key {key!r:.200} != canonical_url {link.canonical_url[:200]!r}")
    return link


def decode_outcome(key: bytes | None, raw: bytes | None) -> FetchOutcome:
    outcome = decode_record(FetchOutcome, raw, reason="invalid_outcome")
    if key is None or key != outcome.canonical_url.encode("utf-8"):
        raise RecordError(
            "key_mismatch", f"key {key!r:.200} != canonical_url {outcome.canonical_url[:200]!r}"
        )
    return outcome


def url_key(job_id: str, canonical: str) -> str:
    """The ``frontier_urls`` key of a job's URL."""
    return f"{job_id}|{canonical}"


def candidate_for(
    link: LinkRecord, entry: dict[str, Any] | None, origin: tuple[int, int], reason: str = "link"
) -> LedgerEntry:
    """The ledger's candidate for a URL reached in a run, with the validators known for it."""
    entry = entry or {}
    return LedgerEntry(
        type="candidate",
        run_id=link.run_id,
        job_id=link.job_id,
        url=link.url,
        canonical_url=link.canonical_url,
        host=link.host,
        depth=link.depth,
        reason="seed" if not link.source_url and link.depth == 0 and reason == "link" else reason,
        etag=entry.get("e"),
        last_modified=entry.get("m"),
        origin=origin,
    )


def reached(entry: dict[str, Any] | None, link: LinkRecord, offset: int, now: datetime) -> dict[str, Any]:
    """The URL's entry once the run of ``link`` has reached it (validators and status kept)."""
    return {
        **(entry or {}),
        "r": link.run_id,
        "d": link.depth,
        "c": offset,
        "o": offset,
        "t": now.isoformat(),
    }


def fetched(entry: dict[str, Any] | None, outcome: FetchOutcome, offset: int) -> dict[str, Any]:
    """The URL's entry once a request of it finished: its validators and status."""
    updated = {**(entry or {}), "o": offset}
    updated.setdefault("r", outcome.run_id)
    updated.setdefault("d", outcome.depth)
    if outcome.outcome in ("fetched", "not_modified"):
        updated["t"] = outcome.fetched_at.isoformat()
        if outcome.etag is not None or outcome.outcome == "fetched":
            updated["e"] = outcome.etag
        if outcome.last_modified is not None or outcome.outcome == "fetched":
            updated["m"] = outcome.last_modified
    if outcome.status is not None:
        updated["s"] = outcome.status
    return {k: v for k, v in updated.items() if v is not None}


def expired(entry: dict[str, Any], now: datetime, forget_after_s: float) -> bool:
    """Whether a job's known URL is forgotten instead of generated: it is gone (404/410) or no
    run of the job reached it for ``forget_after_s``."""
    if int(entry.get("s") or 0) in GONE:
        return True
    last = entry.get("t")
    return last is None or _aware(datetime.fromisoformat(str(last))) < now - timedelta(seconds=forget_after_s)


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
    urls: Any = None


def register(app: Any, settings: Settings, topics: StageTopics, urls: Any) -> FrontierAgent:
    """Declare ``frontier_seen``, ``frontier_urls`` and the agent; ``urls`` is
    :mod:`streams.changes`' table."""
    outputs = streams_outputs.of(app)
    seen = streams_outputs.delivered_table(
        app,
        outputs,
        "frontier_seen",
        partitions=topics.links.partitions,
        key_type=str,
        help="canonical URL -> {t: when the frontier last requested it, o: offset of that link}",
    )
    known = streams_outputs.delivered_table(
        app,
        outputs,
        "frontier_urls",
        partitions=topics.links.partitions,
        key_type=str,
        help="<job>|<canonical URL> -> {r: run, d: depth, c: candidate offset, e: ETag, m: Last-Modified, "
        "s: status, t: last reached or fetched, o: offset of the last write}",
    )
    metrics.watch_table(app, "frontier_seen", seen)
    metrics.watch_table(app, "frontier_urls", known)
    requests = topics.requests.get_topic_name()
    links = topics.links.get_topic_name()
    ledger = catalog(settings).frontier_ledger.name
    app.topic(ledger, partitions=settings.kafka.partitions, **RAW)
    max_depth, max_url_length = settings.crawl.max_depth, settings.crawl.max_url_length

    def legacy(event: Any, link: LinkRecord) -> streams_outputs.Effects:
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

    def refuse(link: LinkRecord, reason: str, origin: tuple[int, int]) -> streams_outputs.Effects:
        entry = LedgerEntry(
            type="refused", run_id=link.run_id, job_id=link.job_id, reason=reason, origin=origin
        )
        effects = streams_outputs.Effects().after(metrics.FRONTIER_REFUSED.labels(reason).inc)
        return effects.send(ledger, link.run_id.encode(), entry.to_bytes())

    def scoped(event: Any, link: LinkRecord) -> streams_outputs.Effects:
        assert link.scope is not None
        if not link.run_id or not link.job_id:
            raise RecordError("invalid_link", "a link with a scope needs its job_id and run_id")
        origin = (event.message.partition, event.message.offset)
        refused = refusal(link, 0, max_url_length)  # depth: the scope's own limit
        if refused is None:
            check_host(link)
            refused = link_refusal(link.url, link.source_url, link.depth, link.scope)
        if refused is not None:
            return refuse(link, refused, origin)
        key = url_key(link.job_id, link.canonical_url)
        entry = known.get(key)
        effects = streams_outputs.Effects()
        if entry is not None and entry.get("r") == link.run_id:
            if entry.get("c") != origin[1]:
                return effects  # reached before in this run
            effects.after(metrics.REPLAYS.labels(AGENT).inc)  # this record made it a candidate
        else:
            effects.write(known, key, reached(entry, link, origin[1], datetime.now(UTC)))
        effects.after(metrics.REQUESTS.labels("candidate").inc)
        return effects.send(ledger, link.run_id.encode(), candidate_for(link, entry, origin).to_bytes())

    def closed(event: Any) -> streams_outputs.Effects:
        outcome = decode_outcome(event.key, event.value)
        origin = (event.message.partition, event.message.offset)
        key = url_key(outcome.job_id, outcome.canonical_url)
        effects = streams_outputs.Effects()
        if outcome.job_id:
            effects.write(known, key, fetched(known.get(key), outcome, origin[1]))
        entry = LedgerEntry(
            type="closed",
            run_id=outcome.run_id,
            job_id=outcome.job_id,
            url=outcome.url,
            canonical_url=outcome.canonical_url,
            host=outcome.host,
            outcome=outcome.outcome,
            status=outcome.status,
            reason=outcome.reason,
            count=outcome.links,
            refused=outcome.refused,
            links_through=outcome.links_through,
            origin=origin,
        )
        return effects.send(ledger, outcome.run_id.encode(), entry.to_bytes())

    def generate(event: Any) -> streams_outputs.Effects:
        command = decode_record(FrontierCommand, event.value, reason="invalid_command")
        partition, offset = event.message.partition, event.message.offset
        now = datetime.now(UTC)
        effects = streams_outputs.Effects()
        last: str | None = None
        index = scanned = 0
        gone: list[str] = []
        for last, entry in keyscan.scan(
            known, partition, f"{command.job_id}|", command.after, GENERATE_CHUNK
        ):
            scanned += 1
            if not isinstance(entry, dict):
                continue
            if expired(entry, now, command.forget_after_s):
                gone.append(last)
                continue
            mark = entry.get("c")
            if entry.get("r") == command.run_id and not (isinstance(mark, list) and mark[0] == offset):
                continue  # reached in this run already (a link came first)
            canonical = last.split("|", 1)[1]
            link = LinkRecord(
                url=canonical,
                canonical_url=canonical,
                host=host_of(canonical),
                source_url=canonical,
                depth=int(entry.get("d", 0)),
                job_id=command.job_id,
                run_id=command.run_id,
                scope=command.scope,
            )
            effects.write(known, last, {**reached(entry, link, offset, now), "c": [offset, index]})
            candidate = candidate_for(link, entry, (partition, offset), reason="recrawl")
            effects.send(
                ledger, command.run_id.encode(), candidate.model_copy(update={"index": index}).to_bytes()
            )
            index += 1
        for key in gone:
            effects.after(functools.partial(keyscan.delete, known, partition, key))
            effects.after(metrics.FRONTIER_REFUSED.labels("expired").inc)
        if scanned == GENERATE_CHUNK:  # maybe more: the next chunk is a record of its own
            more = command.model_copy(update={"after": last})
            effects.send(links, None, more.to_bytes(), partition=partition)
        else:
            done = LedgerEntry(
                type="generated", run_id=command.run_id, job_id=command.job_id, partition=partition
            )
            effects.send(ledger, command.run_id.encode(), done.to_bytes())
        return effects

    def plan(event: Any) -> streams_outputs.Effects:
        kind = links_record_type(event.value) if event.value is not None else "link"
        if kind == "outcome":
            return closed(event)
        if kind == "generate":
            return generate(event)
        link = decode_link(event.key, event.value)
        return legacy(event, link) if link.scope is None else scoped(event, link)

    boundary = Boundary(app, settings, AGENT)
    return FrontierAgent(app.agent(topics.links, name=AGENT)(boundary.agent(plan)), seen, known)
