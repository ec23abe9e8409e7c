"""What the stream stage accepts of the URLs and fetch times in its records.

The crawlers only produce http(s) URLs no longer than ``crawl.max_url_length``, fetched now; a
record on a stage topic that breaks this was not written by them (or by a broken one), and is
refused before it reaches a table or an output. The agent taking pages (:mod:`streams.changes`;
:mod:`streams.stats` checks fetch times with the same bound) dead-letters such a record
(:func:`check_page`, raising RecordError); the frontier (:mod:`streams.frontier`) refuses a link
whose URL breaks it and counts the refusal by reason (:func:`url_refusal`).

The URL shape (scheme, host, port) is the address policy's own parsing
(:func:`crawlstream.addresses.host_and_port`); this module adds what only a record can get wrong:
length, control characters and whitespace (which ``urlsplit`` silently drops, so the URL stored
would not be the URL fetched), hosts longer than DNS allows, fetch times in the future, and
numbers the stage could not write out as it read them (an infinite latency).
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime

from crawlstream.addresses import AddressRefused, host_and_port
from crawlstream.errors import RecordError
from crawlstream.records import PageRecord, PageTouch

MAX_HOST_CHARS = 253  # DNS: a name is at most 253 characters
# A fetch time later than this after "now" is garbage (or a crawler clock far off). It also keeps
# the stats samples' message timestamps inside Kafka 4's default
# log.message.timestamp.after.max.ms (1 hour): a later one is refused by the broker.
MAX_FUTURE_S = 3600.0
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")
# What nearly every URL looks like: http(s), a DNS name (or IPv4), an optional port, then no
# control character or whitespace. Such a URL needs no parsing (urlsplit costs several us, and
# every hop checks its page's URLs); anything else takes the full path below.
_PLAIN = re.compile(r"https?://[A-Za-z0-9.-]{1,253}+(?::(\d{1,5}))?(?:[/?#][^\x00-\x20\x7f]*+)?")


def url_refusal(url: str, max_length: int) -> tuple[str, str] | None:
    """``(reason, detail)`` when the stage must not take ``url``, else None.

    Reasons: ``url_too_long`` (``max_length`` 0: no limit), ``invalid_url`` (control character,
    whitespace, unparseable, host too long), ``scheme`` (not http/https), ``no_host``.
    """
    if max_length and len(url) > max_length:
        return "url_too_long", f"URL of {len(url)} characters exceeds crawl.max_url_length={max_length}"
    plain = _PLAIN.fullmatch(url)
    if plain is not None and int(plain[1] or 0) <= 65535:
        return None
    shown = url[:200]
    if _UNSAFE.search(url):
        return "invalid_url", f"control character or whitespace in {shown!r}"
    try:
        _scheme, host, _port = host_and_port(url)
    except AddressRefused as refused:
        return refused.reason, refused.detail
    if len(host) > MAX_HOST_CHARS:
        return "invalid_url", f"host of {len(host)} characters in {shown!r}"
    return None


def check_url(url: str, max_length: int, field: str) -> None:
    refusal = url_refusal(url, max_length)
    if refusal is not None:
        raise RecordError(refusal[0], f"{field}: {refusal[1]}")


def check_fetch_time(fetched_at: datetime, now: datetime | None = None) -> float:
    """The fetch time as epoch seconds; RecordError ``invalid_time`` if not after 1970 and not
    before ``now + MAX_FUTURE_S`` (naive times are UTC, as everywhere in the stage)."""
    aware = fetched_at if fetched_at.tzinfo else fetched_at.replace(tzinfo=UTC)
    at = aware.timestamp()
    limit = (time.time() if now is None else now.timestamp()) + MAX_FUTURE_S
    if not 0 < at <= limit:
        raise RecordError(
            "invalid_time", f"fetched_at {fetched_at.isoformat()} is before 1970 or in the future"
        )
    return at


def check_latency(seconds: float) -> None:
    """RecordError unless finite: pydantic takes ``Infinity`` in but writes it out as ``null``, which
    the next hop would refuse after this one had written its table."""
    if not math.isfinite(seconds):
        raise RecordError("invalid_record", f"fetch_latency_s must be a finite number, not {seconds}")


def check_page(page: PageRecord, max_url_length: int) -> None:
    """RecordError unless the page's URLs, fetch time and latency are what a crawler produces."""
    check_url(page.canonical_url, max_url_length, "canonical_url")
    if page.url != page.canonical_url:
        check_url(page.url, max_url_length, "url")
    if page.final_url not in (page.url, page.canonical_url):
        check_url(page.final_url, max_url_length, "final_url")
    check_fetch_time(page.fetched_at)
    check_latency(page.fetch_latency_s)


def check_touch(touch: PageTouch, max_url_length: int) -> None:
    check_url(touch.canonical_url, max_url_length, "canonical_url")
    check_fetch_time(touch.fetched_at)
    check_latency(touch.fetch_latency_s)
