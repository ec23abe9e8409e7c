"""How records read from Kafka become rows of :mod:`sinks.tables`, and the decoders of each topic.

The page topic carries :class:`~crawlstream.records.PageEvent` JSON; during the switch-over from
the first stream stage it may still carry a bare :class:`~crawlstream.records.PageRecord`, which
is read as ``PageEvent(change="new", enrichment=None)``. Whether a page *changed* is decided here
by the sink, from the sha256 of the stored body, so both shapes agree on it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from json.encoder import encode_basestring_ascii
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from crawlstream.errors import RecordError
from crawlstream.records import (
    DomainStats,
    Enrichment,
    PageEvent,
    PageRecord,
    PageTouch,
    RunEvent,
    decode_record,
    invalid_record,
)

M = TypeVar("M", bound=BaseModel)
TWO_64 = 2**64


def simhash_to_db(value: int | None) -> int | None:
    """An unsigned 64-bit SimHash as the signed bigint Postgres stores (same bits)."""
    if value is None:
        return None
    if not 0 <= value < TWO_64:
        raise ValueError(f"simhash {value} is not an unsigned 64-bit value")
    return value - TWO_64 if value >= 2**63 else value


def simhash_from_db(value: int | None) -> int | None:
    return None if value is None else value % TWO_64


def body_hash(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()


def url_hash(url: str) -> bytes:
    """The key of a URL's rows (``url_hash``, as sinks.tables.url_hash_sql computes it in SQL);
    its hex is the key of the URL's change events on ``cdc.public.pages``."""
    return hashlib.sha256(url.encode("utf-8")).digest()


# Columns of ``pages`` the page sink writes (the rest come from the server or the upsert).
PAGE_COLUMNS: tuple[str, ...] = (
    *("url", "final_url", "status", "content_type", "encoding", "title", "body", "body_truncated"),
    *("body_bytes", "fetched_at", "fetch_latency_s", "depth", "referrer", "job_id", "run_id", "kind"),
    *("body_hash", "content_hash", "simhash", "text", "language", "word_count", "canonical_link"),
    *("duplicate_of", "near_duplicate_of", "near_distance"),
)
# What the page sink stages per page, in COPY order: the key, the columns (but body_hash, which
# the server computes: it has a core to spare while the worker's decoding holds this process's
# GIL, bench/bench_sink.py), and the two parts of the page event that need no database.
EVENT_COLUMNS: tuple[str, ...] = ("event_key", "event_tail")
STAGED_PAGE_COLUMNS: tuple[str, ...] = tuple(c for c in PAGE_COLUMNS if c != "body_hash")
STAGE_COLUMNS: tuple[str, ...] = ("url_hash", *STAGED_PAGE_COLUMNS, *EVENT_COLUMNS)
_JSON = encode_basestring_ascii  # a JSON string literal, ASCII only (see event_parts)


def event_parts(url: str, page: PageRecord, found: Enrichment | None) -> tuple[str, str]:
    """``event_key`` and ``event_tail`` of a page's event: the URL as a JSON string, and the
    payload fields the sink knows before storing the page (sinks/pages.py adds type, version,
    fetched_at, body_hash and the event id around them).

    The event is a logical decoding message whose content Debezium's
    DecodeLogicalDecodingMessageContent SMT parses with ``new String(bytes)``, i.e. the Connect
    JVM's default charset (not UTF-8 before Java 18 under a POSIX locale): ASCII-only JSON (non-
    ASCII characters as \\u escapes) reads the same under any charset. The payload holds what
    :class:`crawlstream.records.PageChangeEvent` reads; null fields are left out, as before.
    """
    if found is None:
        return _JSON(url), f'"status":{page.status},"content_hash":"","run_id":{_JSON(page.run_id)}'
    return _JSON(url), (
        f'"status":{page.status},"content_hash":{_JSON(found.content_hash)},'
        f'"simhash":"{found.simhash:016x}","run_id":{_JSON(page.run_id)}'
    )


def storable_text(value: str) -> str:
    """Page content as PostgreSQL ``text`` can hold it: NUL characters (real pages have them, e.g.
    UTF-16 served as UTF-8) become U+FFFD. Only content columns are mapped; a NUL in a URL is the
    record's fault and is dead-lettered."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def page_row(event: PageEvent) -> tuple[Any, ...]:
    """The values the page sink stages for one page, in :data:`STAGE_COLUMNS` order; content
    columns pass through :func:`storable_text`."""
    page, found = event.page, event.enrichment
    url = page.canonical_url
    return (
        hashlib.sha256(url.encode("utf-8", "surrogatepass")).digest(),
        *(url, page.final_url, page.status, page.content_type, page.encoding),
        storable_text(found.title or page.title if found else page.title),
        *(
            storable_text(page.body),
            page.body_truncated,
            page.body_bytes,
            page.fetched_at,
            page.fetch_latency_s,
        ),
        *(page.depth, page.referrer, page.job_id, page.run_id, page.kind),
        found.content_hash if found else "",
        simhash_to_db(found.simhash) if found else None,
        storable_text(found.text) if found else "",
        found.language if found else None,
        found.word_count if found else 0,
        (found.canonical_link if found else None) or page.canonical_link,
        *(event.duplicate_of, event.near_duplicate_of, event.near_distance),
        *event_parts(url, page, found),
    )


def _e(value: str) -> str:
    """A text value escaped for COPY (as :func:`_escape`, inlined for the hot path)."""
    if "\\" in value:
        value = value.replace("\\", "\\\\")
    return value.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def _n(value: str | None) -> str:
    return _NULL if value is None else _e(value)


def page_copy_line(event: PageEvent) -> str:
    """``copy_text([page_row(event)])``, written directly: the page sink's hot path (each field's
    type is known, so no per-value dispatch and no intermediate tuple; bench/bench_sink.py)."""
    page, found = event.page, event.enrichment
    url = page.canonical_url
    key = hashlib.sha256(url.encode("utf-8", "surrogatepass")).digest()
    if found is None:
        title, content_hash, simhash, text, language, words = page.title, "", _NULL, "", _NULL, 0
        canonical = page.canonical_link
    else:
        title, content_hash, text = found.title or page.title, found.content_hash, found.text
        words = found.word_count
        simhash = str(simhash_to_db(found.simhash))
        language = _n(found.language)
        canonical = found.canonical_link or page.canonical_link
    title, body, text = storable_text(title), storable_text(page.body), storable_text(text)
    event_key, event_tail = event_parts(url, page, found)
    distance = _NULL if event.near_distance is None else event.near_distance
    # The event parts are ASCII JSON: only their backslashes need escaping.
    return (
        f"{_BYTEA_HEX}{key.hex()}\t{_e(url)}\t{_e(page.final_url)}\t{page.status}\t{_e(page.content_type)}\t"
        f"{_e(page.encoding)}\t{_e(title)}\t{_e(body)}\t{'t' if page.body_truncated else 'f'}\t"
        f"{page.body_bytes}\t{page.fetched_at.isoformat()}\t{page.fetch_latency_s!r}\t{page.depth}\t"
        f"{_n(page.referrer)}\t{_e(page.job_id)}\t{_e(page.run_id)}\t{page.kind}\t{_e(content_hash)}\t"
        f"{simhash}\t{_e(text)}\t{language}\t{words}\t{_n(canonical)}\t{_n(event.duplicate_of)}\t"
        f"{_n(event.near_duplicate_of)}\t{distance}\t"
        f"{event_key.replace(_BACKSLASH, _TWO)}\t{event_tail.replace(_BACKSLASH, _TWO)}\n"
    )


_NULL, _BACKSLASH, _TWO = "\\N", "\\", "\\\\"
_BYTEA_HEX = "\\\\x"  # bytea's hex input, its backslash escaped for COPY


def decode_page_event(raw: bytes | None) -> PageEvent:
    """A PageEvent, or a bare PageRecord (the stream stage's older output) wrapped as a new page."""
    if raw is None:
        raise RecordError("null_value", "message has no value")
    try:
        return PageEvent.model_validate_json(raw)
    except ValidationError as exc:
        # Neither ``change`` nor ``page``: a PageRecord rather than a broken PageEvent.
        missing = {e["loc"][0] for e in exc.errors() if e["type"] == "missing" and e["loc"]}
        if not {"change", "page"} <= missing:
            raise invalid_record(exc) from None
    return PageEvent(change="new", page=decode_record(PageRecord, raw))


def decoder(model: type[M]) -> Callable[[bytes | None], M]:
    def decode(raw: bytes | None) -> M:
        return decode_record(model, raw)

    decode.__name__ = f"decode_{model.__name__}"
    return decode


decode_touch = decoder(PageTouch)
decode_stats = decoder(DomainStats)
decode_run = decoder(RunEvent)


def _escape(value: str) -> str:
    # Chained replace() is ~35x faster than str.translate() on page-sized strings.
    if "\\" in value:
        value = value.replace("\\", "\\\\")
    return value.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def copy_text(rows: Iterable[Sequence[Any]]) -> str:
    """Rows in COPY's text format (tab-separated, ``\\N`` for NULL, backslash escapes)."""
    lines = []
    for row in rows:
        fields = []
        for value in row:
            kind = type(value)
            if kind is str:
                fields.append(_escape(value))
            elif value is None:
                fields.append("\\N")
            elif kind is bool:
                fields.append("t" if value else "f")
            elif isinstance(value, datetime):
                fields.append(value.isoformat())
            elif kind is bytes:
                fields.append(_BYTEA_HEX + value.hex())
            elif isinstance(value, str):
                fields.append(_escape(value))
            else:
                fields.append(str(value))
        lines.append("\t".join(fields))
    return "\n".join(lines) + "\n" if lines else ""
