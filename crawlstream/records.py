"""Every record that crosses a Kafka topic, defined once for producers and consumers.

Records are JSON (UTF-8) with an explicit ``schema_version``; producers build them with the
models here and every consumer (stream agents, sinks, the follower) decodes a record value with
the one helper :func:`decode_record` (:func:`decode_json` for values that are not a model), which
returns the typed record or raises :class:`RecordError` (the reason a dead letter carries),
never anything else, so a malformed record is dead-lettered instead of crashing its stage.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from crawlstream.errors import RecordError

PAGE_SCHEMA_VERSION = 1
_M = TypeVar("_M", bound=BaseModel)


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode("utf-8")


class PageRecord(_Record):
    """One fetched HTML page, as produced by the crawl stage (topic ``<prefix>.pages.raw``)."""

    schema_version: Literal[1] = 1
    url: str = Field(min_length=1, description="URL as requested")
    canonical_url: str = Field(min_length=1, description="record key; see crawlstream.urls")
    final_url: str = Field(min_length=1, description="URL after redirects")
    status: int = Field(ge=100, le=599)
    content_type: str = ""
    encoding: str = ""
    title: str = ""
    body: str = Field(default="", description="decoded HTML, capped at crawl.max_body_bytes")
    body_truncated: bool = False
    body_bytes: int = Field(default=0, ge=0, description="size of the full response body")
    fetched_at: datetime
    fetch_latency_s: float = Field(default=0.0, ge=0)
    depth: int = Field(default=0, ge=0)
    referrer: str | None = None
    job_id: str = ""
    run_id: str = ""
    # "metadata": a non-HTML response, recorded without its body.
    kind: Literal["html", "metadata"] = "html"
    redirect_chain: list[str] = Field(default_factory=list, description="URLs before final_url, in order")
    headers: dict[str, str] = Field(default_factory=dict, description="selected response headers")
    canonical_link: str | None = Field(default=None, description='<link rel="canonical"> of the page')


class DeadLetter(_Record):
    """A record a stage could not handle, with its reason and origin (topic ``<prefix>.deadletter``)."""

    schema_version: Literal[1] = 1
    stage: str = Field(description="crawl | streams | sink")
    reason: str = Field(description="short machine-readable reason, e.g. invalid_json")
    error: str = Field(description="human-readable detail")
    error_class: str | None = Field(default=None, description="exception class, e.g. ValueError")
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    key_b64: str | None = None
    value_b64: str | None = None
    truncated: bool = Field(default=False, description="key/value cut to fit the dead-letter topic")
    original_key_bytes: int | None = Field(default=None, ge=0)
    original_value_bytes: int | None = Field(default=None, ge=0)
    failed_at: datetime = Field(default_factory=utcnow)

    @classmethod
    def for_message(
        cls,
        *,
        stage: str,
        error: RecordError,
        topic: str | None,
        partition: int | None,
        offset: int | None,
        key: bytes | None,
        value: bytes | None,
    ) -> DeadLetter:
        return cls(
            stage=stage,
            reason=error.reason,
            error=error.detail,
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            key_b64=_b64(key),
            value_b64=_b64(value),
        )

    def original_value(self) -> bytes | None:
        return None if self.value_b64 is None else base64.b64decode(self.value_b64)

    def original_key(self) -> bytes | None:
        return None if self.key_b64 is None else base64.b64decode(self.key_b64)


def _b64(raw: bytes | None) -> str | None:
    return None if raw is None else base64.b64encode(raw).decode("ascii")


def decode_page(raw: bytes | None) -> PageRecord:
    """Decode a page record from Kafka bytes, or raise RecordError with a short reason."""
    return decode_record(PageRecord, raw)


def decode_record(model: type[_M], raw: bytes | None, *, reason: str | None = None) -> _M:
    """Decode a record of ``model`` from Kafka bytes, or raise RecordError: ``null_value``,
    ``invalid_json`` (not JSON, or nested deeper than the parser's recursion limit) or
    ``invalid_record`` (JSON of the wrong shape). Never anything else.

    ``reason``: the one reason for any value that is not a record of ``model`` (a stage whose
    dead letters name what it expected, e.g. ``invalid_link``); ``null_value`` stays itself.
    """
    if raw is None:
        raise RecordError("null_value", "message has no value")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid_record(exc, reason) from None


def invalid_record(exc: ValidationError, reason: str | None = None) -> RecordError:
    """The RecordError for a value pydantic refused: ``reason`` if given, else ``invalid_json``
    or ``invalid_record``; the detail names the first fields at fault."""
    errors = exc.errors()
    if errors[0]["type"] == "json_invalid":
        return RecordError(reason or "invalid_json", str(errors[0]["msg"]))
    fields = ", ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in errors[:5])
    return RecordError(reason or "invalid_record", fields)


def decode_json(raw: bytes | None) -> Any:
    """A JSON value from Kafka bytes (for values no model describes), or RecordError
    ``null_value`` / ``invalid_json``. pydantic's parser, as :func:`decode_record`'s: nesting is
    capped (``invalid_json``), never a RecursionError."""
    if raw is None:
        raise RecordError("null_value", "message has no value")
    try:
        return pydantic_core.from_json(raw)
    except ValueError as exc:
        raise RecordError("invalid_json", str(exc)) from None


class Enrichment(_Record):
    """What the stream stage extracts from an HTML page."""

    text: str = Field(default="", description="main text, boilerplate removed")
    title: str = ""
    meta_description: str = ""
    language: str | None = None
    word_count: int = Field(default=0, ge=0)
    outlinks: list[str] = Field(default_factory=list)
    outlinks_count: int = Field(default=0, ge=0)
    canonical_link: str | None = None
    jsonld: list[dict[str, Any]] = Field(default_factory=list)
    content_hash: str = Field(default="", description="hex digest of the normalised main text")
    simhash: int = Field(default=0, ge=0, lt=2**64, description="64-bit SimHash of text shingles")


class PageEvent(_Record):
    """A new page or a new content version of a known page (topic ``<prefix>.pages.unique``).

    Written by the stream stage, stored by the page sink. ``page`` is the crawled record as is.
    """

    schema_version: Literal[1] = 1
    change: Literal["new", "changed"]
    page: PageRecord
    enrichment: Enrichment | None = None  # None for metadata-only records
    duplicate_of: str | None = Field(default=None, description="first URL with the same content hash")
    near_duplicate_of: str | None = Field(
        default=None, description="an earlier URL within the SimHash distance"
    )
    near_distance: int | None = Field(default=None, ge=0, le=64)


class DedupProbe(_Record):
    """A page's fingerprints on their way through the stream stage's dedup tables, and back.

    Internal to the stream stage (``streams.changes`` -> ``streams.dedup`` -> ``streams.verdicts``):
    the stage keeps the page itself in memory and sends only this through the hops (topic
    ``<prefix>.streams.pages-by-band``, key: the LSH band key of the hop); each hop fills in
    what its tables say. After the last hop it is the page's verdict, sent back to the page's raw
    partition (topic ``<prefix>.streams.dedup-verdicts``, key: canonical URL). Its JSON uses
    one-letter names (``v``, ``u``, ``p``, ...): it is written several times per page, and the
    names would be most of its bytes.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )

    schema_version: Literal[1] = Field(default=1, alias="v")
    url: str = Field(min_length=1, alias="u", description="canonical URL of the page")
    partition: int = Field(ge=0, alias="p", description="raw-topic partition of the page's event")
    offset: int = Field(ge=0, alias="o", description="raw-topic offset of the page's event")
    content_hash: str | None = Field(
        default=None, min_length=1, alias="c", description="only until the first hop has used it"
    )
    simhash: int | None = Field(default=None, ge=0, lt=2**64, alias="s", description="not in verdicts")
    duplicate_of: str | None = Field(default=None, alias="d")
    near_duplicate_of: str | None = Field(default=None, alias="n")
    near_distance: int | None = Field(default=None, ge=0, le=64, alias="k")

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode("utf-8")


class PageTouch(_Record):
    """A recrawl of a known URL whose content did not change (topic ``<prefix>.pages.touches``)."""

    schema_version: Literal[1] = 1
    canonical_url: str = Field(min_length=1)
    fetched_at: datetime
    status: int = Field(ge=100, le=599)
    content_hash: str = ""
    job_id: str = ""
    run_id: str = ""
    body_bytes: int = Field(default=0, ge=0)
    fetch_latency_s: float = Field(default=0.0, ge=0)


class Scope(_Record):
    """What a frontier job may follow, carried by every request and link of its run.

    ``follow``: a link is in scope when its host (``same-host``) or registrable domain
    (``same-domain``, by the public suffix list) is the page's it was found on, or always
    (``any``); seeds are always in scope. ``max_depth``: link hops from the seeds (0: no limit).
    ``allow``/``deny``: URL regexes (a link must match one allow pattern, if any, and no deny
    pattern). Judged by :func:`crawlstream.scope.link_refusal`, in the crawler and the frontier.
    """

    follow: Literal["same-host", "same-domain", "any"] = "same-domain"
    max_depth: int = Field(default=16, ge=0)
    allow: list[str] = Field(default_factory=list)
    deny: list[str] = Field(default_factory=list)


class LinkRecord(_Record):
    """A link discovered by a crawler (topic ``<prefix>.links``, key: canonical URL).

    Links of a frontier job carry its ``scope``; a seed is a link of depth 0 without a source.
    """

    schema_version: Literal[1] = 1
    type: Literal["link"] = "link"
    url: str = Field(min_length=1)
    canonical_url: str = Field(min_length=1)
    host: str
    source_url: str
    depth: int = Field(ge=0)
    job_id: str = ""
    run_id: str = ""
    discovered_at: datetime = Field(default_factory=utcnow)
    scope: Scope | None = None


class CrawlRequest(_Record):
    """A URL to fetch, for distributed crawlers (topic ``<prefix>.requests``, key: host).

    Requests of a frontier job carry its ``scope`` and, for a URL fetched before, the validators
    of that response (sent as If-None-Match / If-Modified-Since: a 304 is recorded as such).
    """

    schema_version: Literal[1] = 1
    url: str = Field(min_length=1)
    canonical_url: str = Field(min_length=1)
    host: str
    depth: int = Field(default=0, ge=0)
    job_id: str = ""
    run_id: str = ""
    reason: Literal["seed", "link", "recrawl"] = "link"
    not_before: datetime | None = None
    scope: Scope | None = None
    etag: str | None = Field(default=None, max_length=1024)
    last_modified: str | None = Field(default=None, max_length=128)


class FetchOutcome(_Record):
    """How a crawler finished a frontier request (topic ``<prefix>.links``, key: canonical URL).

    Produced once the request's page and links are delivered, so ``links_through`` (the highest
    offset per links partition this crawler process had delivered, and what it found at its last
    assignment) bounds every link the request produced: the run's completion check waits until
    the frontier has consumed past them. ``refused`` counts the links the crawler left out (scope,
    links per page), by reason.
    """

    schema_version: Literal[1] = 1
    type: Literal["outcome"] = "outcome"
    url: str = Field(min_length=1)
    canonical_url: str = Field(min_length=1)
    host: str
    depth: int = Field(default=0, ge=0)
    job_id: str = ""
    run_id: str = Field(min_length=1)
    outcome: Literal["fetched", "not_modified", "failed", "refused", "skipped"]
    status: int | None = None
    reason: str = ""
    etag: str | None = Field(default=None, max_length=1024)
    last_modified: str | None = Field(default=None, max_length=128)
    links: int = Field(default=0, ge=0)
    refused: dict[str, int] = Field(default_factory=dict)
    links_through: dict[int, int] = Field(default_factory=dict)
    fetched_at: datetime = Field(default_factory=utcnow)


class FrontierCommand(_Record):
    """A command to the frontier's partition it is sent to (topic ``<prefix>.links``, explicit
    partition): ``generate`` turns the job's known URLs (from earlier runs) into candidates of
    this run, a chunk at a time after ``after`` (the key where the last chunk stopped)."""

    schema_version: Literal[1] = 1
    type: Literal["generate"] = "generate"
    job_id: str = Field(min_length=1)
    run_id: str = Field(min_length=1)
    scope: Scope
    after: str | None = None
    forget_after_s: float = Field(default=30 * 86400.0, gt=0)


class Budgets(_Record):
    """A frontier run's budgets, enforced by its ledger (0: no limit)."""

    max_pages: int = Field(default=0, ge=0, description="requests issued")
    max_pages_per_host: int = Field(default=0, ge=0)
    max_hosts: int = Field(default=0, ge=0)


class LedgerEntry(_Record):
    """One record of a frontier run's ledger (topic ``<prefix>.frontier.ledger``, key: run id).

    ``start`` (budgets and scope; sent before the seeds), ``candidate`` (a URL first reached in
    the run), ``closed`` (a request finished: its outcome), ``refused`` (links the frontier
    refused), ``generated`` (a frontier partition finished turning known URLs into candidates),
    ``stop`` (the run ends: nothing more is admitted). ``origin`` is the links record that caused
    it (partition, offset) and ``index`` its position among that record's entries.
    """

    schema_version: Literal[1] = 1
    type: Literal["start", "candidate", "closed", "refused", "generated", "stop"]
    run_id: str = Field(min_length=1)
    job_id: str = ""
    url: str = ""
    canonical_url: str = ""
    host: str = ""
    depth: int = Field(default=0, ge=0)
    reason: str = ""
    outcome: str = ""
    status: int | None = None
    etag: str | None = Field(default=None, max_length=1024)
    last_modified: str | None = Field(default=None, max_length=128)
    count: int = Field(default=1, ge=0)
    refused: dict[str, int] = Field(default_factory=dict)
    links_through: dict[int, int] = Field(default_factory=dict)
    scope: Scope | None = None
    budgets: Budgets | None = None
    partitions: int = Field(default=0, ge=0, description="start: links partitions to generate from")
    partition: int = Field(default=-1)
    origin: tuple[int, int] | None = None
    index: int = Field(default=0, ge=0)


class RunProgress(_Record):
    """A frontier run's state as its ledger sees it (topic ``<prefix>.frontier.progress``,
    compacted, key: run id), written on every change; ``version`` counts the changes."""

    schema_version: Literal[1] = 1
    run_id: str = Field(min_length=1)
    job_id: str = ""
    version: int = Field(default=0, ge=0)
    state: Literal["running", "stopped"] = "running"
    admitted: int = Field(default=0, ge=0)
    closed: int = Field(default=0, ge=0)
    fetched: int = Field(default=0, ge=0)
    not_modified: int = Field(default=0, ge=0)
    failed: int = Field(default=0, ge=0)
    hosts: int = Field(default=0, ge=0)
    links: int = Field(default=0, ge=0)
    refused: dict[str, int] = Field(default_factory=dict)
    generating: int = Field(default=0, ge=0, description="frontier partitions still generating")
    links_through: dict[int, int] = Field(default_factory=dict)
    updated_at: datetime = Field(default_factory=utcnow)

    @property
    def in_flight(self) -> int:
        return self.admitted - self.closed

    @property
    def quiet(self) -> bool:
        """Nothing admitted is still open and no partition is still generating."""
        return self.admitted == self.closed and self.generating == 0


class HostState(_Record):
    """A host's politeness state, shared by the crawler processes of every job (topic
    ``<prefix>.hosts``, compacted, key: host; partitioned like the requests topic, so the crawler
    that owns a host's requests owns its state): robots.txt as fetched, ``Crawl-delay``, the end
    of a cooldown (Retry-After, 429/503) and of an error backoff."""

    schema_version: Literal[1] = 1
    host: str = Field(min_length=1)
    robots_netloc: str | None = Field(default=None, description="host:port whose robots.txt this is")
    robots_fetched_at: datetime | None = None
    robots_status: int | None = None
    robots_body: str | None = Field(default=None, max_length=512 * 1024)
    crawl_delay_s: float = Field(default=0.0, ge=0)
    cooldown_until: datetime | None = None
    errors: int = Field(default=0, ge=0, description="consecutive failed fetches")
    backoff_until: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)


class RunEvent(_Record):
    """A crawl run's start or end (topic ``<prefix>.runs``, key: run id)."""

    schema_version: Literal[1] = 1
    run_id: str = Field(min_length=1)
    job_id: str = Field(min_length=1)
    event: Literal["started", "finished"]
    started_at: datetime
    finished_at: datetime | None = None
    pages: int = Field(default=0, ge=0)
    errors: int = Field(default=0, ge=0)
    delivery_failures: int = Field(default=0, ge=0)
    outcome: Literal["running", "succeeded", "failed", "stopped"] = "running"
    detail: str = ""


class DomainStats(_Record):
    """One closed window of per-domain aggregates (topic ``<prefix>.stats``, key: domain)."""

    schema_version: Literal[1] = 1
    domain: str
    window: Literal["tumbling_1m", "hopping_5m_1m"]
    window_start: datetime
    window_end: datetime
    pages: int = Field(default=0, ge=0)
    bytes: int = Field(default=0, ge=0)
    status_2xx: int = Field(default=0, ge=0)
    status_3xx: int = Field(default=0, ge=0)
    status_4xx: int = Field(default=0, ge=0)
    status_5xx: int = Field(default=0, ge=0)
    duplicates: int = Field(default=0, ge=0)
    near_duplicates: int = Field(default=0, ge=0)
    new: int = Field(default=0, ge=0)
    changed: int = Field(default=0, ge=0)
    unchanged: int = Field(default=0, ge=0)
    latency_mean_s: float = Field(default=0.0, ge=0)
    latency_p95_s: float = Field(default=0.0, ge=0)


class PageChangeEvent(BaseModel):
    """A page event as Debezium's outbox EventRouter publishes it (topic ``outbox.event.page``,
    key: the URL, headers ``eventType`` and ``id``): the JSON payload of the logical decoding
    message the page sink emits (``sinks/pages.py`` event_content). Read by ``crawlstream follow``
    and downstream services.

    Fields unknown to this version are ignored (a tolerant reader: the payload may grow without
    breaking subscribers); the known ones are validated.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    url: str = Field(min_length=1)
    version: int = Field(ge=1)
    status: int = Field(ge=100, le=599)
    fetched_at: datetime
    body_hash: str | None = None
    content_hash: str | None = None
    simhash: str | None = Field(default=None, pattern=r"^[0-9a-f]{16}$", description="64 bits, 16 hex digits")
    run_id: str | None = None
    type: Literal["created", "changed", "gone"]


LinksTopicRecord = LinkRecord | FetchOutcome | FrontierCommand
_LINKS_TOPIC: dict[str, type[LinkRecord] | type[FetchOutcome] | type[FrontierCommand]] = {
    "link": LinkRecord,
    "outcome": FetchOutcome,
    "generate": FrontierCommand,
}


def links_record_type(raw: bytes) -> str:
    """The ``type`` of a links-topic record from its bytes (records without one are links).

    The JSON is not parsed for this: the writers here put ``type`` first after
    ``schema_version`` (field order of the models), so a prefix look-up finds it; anything
    else is parsed as a link, which refuses it if it is not one.
    """
    head = raw[:64]
    for name in ("outcome", "generate"):
        if b'"type":"' + name.encode() + b'"' in head:
            return name
    return "link"


def decode_links_record(raw: bytes | None) -> LinksTopicRecord:
    """A record of ``<prefix>.links``: a link, a fetch outcome or a frontier command, or
    RecordError (as :func:`decode_record`)."""
    if raw is None:
        raise RecordError("null_value", "message has no value")
    return decode_record(_LINKS_TOPIC[links_record_type(raw)], raw)
