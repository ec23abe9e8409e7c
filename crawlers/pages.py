"""Building the records a crawl produces from Scrapy responses and failures.

Used by every spider (``crawlers.spiders.*``): :func:`page_record` for HTML pages and
:func:`metadata_record` for non-HTML responses (``kind="metadata"``, no body), both destined for
``<prefix>.pages.raw``; :func:`fetch_dead_letter` for fetches that failed after Scrapy's retries,
destined for ``<prefix>.deadletter`` (stage ``crawl``, built by :mod:`crawlstream.deadletters`).
Settings used: none (callers pass caps).

The body is capped twice: its raw bytes at ``max_body_bytes`` before anything decodes them
(:class:`crawlers.limits.BodyCapMiddleware` already did in a crawl; :func:`page_record` does it
for a response that did not pass there), then the decoded text at ``max_body_bytes`` of UTF-8.
Text is decoded by Scrapy (w3lib: HTTP header, BOM, ``<meta charset>``, then detection) with
replacement characters for undecodable bytes, so a bad encoding never raises. The title is kept to
:data:`MAX_TITLE_CHARS` and a ``<link rel=canonical>`` longer than the URL cap is dropped.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from scrapy.http import Response, TextResponse
from twisted.python.failure import Failure

from crawlers.limits import full_body_size
from crawlstream.deadletters import DeadLetterMessage, build_dead_letter, error_class
from crawlstream.records import PageRecord
from crawlstream.urls import canonical_url

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
# Response headers worth keeping: caching/revalidation, language, and what shaped the body.
SELECTED_HEADERS = (
    "Content-Type",
    "Content-Length",
    "Content-Language",
    "Last-Modified",
    "ETag",
    "Cache-Control",
    "Expires",
    "Server",
    "X-Robots-Tag",
    "Link",
)
# Each selected header's key as Scrapy's Headers stores it (title-cased bytes) and as records name it.
_HEADER_KEYS = tuple((name.title().encode("latin-1"), name.lower()) for name in SELECTED_HEADERS)
MAX_HEADER_CHARS = 1024
MAX_TITLE_CHARS = 1024
MAX_CANONICAL_LINK_CHARS = 2048
_CANONICAL = re.compile(rb"canonical", re.IGNORECASE)
_CANONICAL_XPATH = (
    "//head/link[contains(concat(' ', normalize-space(translate(@rel, 'CANONIL', 'canonil')), ' '),"
    " ' canonical ')]/@href"
)


def media_type(response: Response) -> str:
    raw = response.headers.get(b"Content-Type") or b""
    return raw.decode("latin-1").split(";", 1)[0].strip().lower()


def is_html(response: Response) -> bool:
    return (
        200 <= response.status < 300
        and isinstance(response, TextResponse)
        and (media_type(response) in HTML_TYPES)
    )


def cap_utf8(text: str, max_bytes: int) -> tuple[str, bool]:
    """Cap ``text`` at ``max_bytes`` of UTF-8, cutting at a character boundary."""
    if len(text) * 4 <= max_bytes:
        return text, False  # no character takes more than 4 bytes in UTF-8: nothing to cut
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text, False
    # The prefix is valid UTF-8 except possibly a split last character, which "ignore" drops.
    return encoded[:max_bytes].decode("utf-8", errors="ignore"), True


def selected_headers(response: Response) -> dict[str, str]:
    out: dict[str, str] = {}
    # Scrapy's Headers is a dict of normalised keys to lists of values: look the stored keys up
    # directly (getlist normalises the name again for each of the ten, on every page).
    headers = response.headers
    for key, name in _HEADER_KEYS:
        values = dict.get(headers, key)
        if values:
            joined = ", ".join(v.decode("latin-1") for v in values)
            out[name] = joined[:MAX_HEADER_CHARS]
    return out


def _xpath_first(response: TextResponse, query: str) -> str | None:
    """What ``response.xpath(query).get()`` returns for a query selecting strings.

    Evaluated on the lxml root of the response's cached selector (the DOM is parsed once per
    response and shared with link extraction), without wrapping every result in a parsel Selector.
    """
    found = response.selector.root.xpath(query, smart_strings=False)
    return str(found[0]) if found else None


def page_title(response: TextResponse) -> str:
    """The first ``<title>`` text, whitespace collapsed, at most MAX_TITLE_CHARS ("" when none)."""
    return " ".join((_xpath_first(response, "//title/text()") or "").split())[:MAX_TITLE_CHARS]


def canonical_link(response: TextResponse, max_chars: int = MAX_CANONICAL_LINK_CHARS) -> str | None:
    if not _CANONICAL.search(response.body):
        return None  # cheap test first: most pages have none
    href = _xpath_first(response, _CANONICAL_XPATH)
    if not href or not href.strip() or len(href) > max_chars:
        return None
    link = response.urljoin(href.strip())
    return link if len(link) <= max_chars else None


def capped_response(response: TextResponse, max_body_bytes: int) -> tuple[TextResponse, bool]:
    """The response with at most ``max_body_bytes`` of raw body (nothing decoded yet)."""
    if len(response.body) <= max_body_bytes:
        return response, False
    capped = response.replace(body=response.body[:max_body_bytes])
    assert isinstance(capped, TextResponse)
    return capped, True


def _common(response: Response, job_id: str, run_id: str, fetched_at: datetime | None) -> dict[str, Any]:
    request = response.request
    meta: dict[str, Any] = request.meta if request is not None else {}
    redirects: list[str] = list(meta.get("redirect_urls") or [])
    referer = request.headers.get(b"Referer") if request is not None else None
    return {
        "url": redirects[0] if redirects else response.url,
        "canonical_url": canonical_url(response.url),
        "final_url": response.url,
        "redirect_chain": redirects,
        "status": response.status,
        "content_type": media_type(response),
        "headers": selected_headers(response),
        "body_bytes": full_body_size(response),
        "fetched_at": fetched_at or datetime.now(UTC),
        "fetch_latency_s": max(0.0, float(meta.get("download_latency", 0.0))),
        "depth": int(meta.get("depth", 0)),
        "referrer": referer.decode("utf-8", errors="replace") if referer else None,
        "job_id": job_id,
        "run_id": run_id,
    }


def page_record(
    response: TextResponse,
    *,
    max_body_bytes: int,
    job_id: str,
    run_id: str,
    fetched_at: datetime | None = None,
) -> PageRecord:
    """The PageRecord of one HTML response; the key is the canonical form of the final URL."""
    common = _common(response, job_id, run_id, fetched_at)
    response, cut = capped_response(response, max_body_bytes)
    body, truncated = cap_utf8(response.text, max_body_bytes)
    title = page_title(response)
    return PageRecord(
        **common,
        encoding=response.encoding,
        title=title,
        body=body,
        body_truncated=truncated or cut or common["body_bytes"] > len(response.body),
        canonical_link=canonical_link(response),
    )


def metadata_record(
    response: Response, *, job_id: str, run_id: str, fetched_at: datetime | None = None
) -> PageRecord:
    """A non-HTML response recorded without its body (binary bodies are never shipped)."""
    return PageRecord(
        **_common(response, job_id, run_id, fetched_at),
        kind="metadata",
        body_truncated=len(response.body) > 0,
    )


def failure_reason(failure: Failure) -> str:
    """A short machine-readable reason for a failed fetch."""
    from scrapy.spidermiddlewares.httperror import HttpError

    if isinstance(failure.value, HttpError):
        return f"http_{int(failure.value.response.status)}"
    name = type(failure.value).__name__
    return "fetch_" + "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def fetch_dead_letter(
    failure: Failure, url: str, *, job_id: str, run_id: str, max_bytes: int
) -> DeadLetterMessage:
    """The dead letter of a fetch that failed after retries; the key is the canonical URL.

    ``max_bytes`` is the dead-letter topic's limit (``TopicSpec.max_message_bytes``).
    """
    detail = f"{url} (job {job_id or '-'}, run {run_id or '-'}): {failure.getErrorMessage()}"
    try:
        key = canonical_url(url)
    except ValueError:
        key = url
    return build_dead_letter(
        stage="crawl",
        reason=failure_reason(failure),
        detail=detail,
        key=key.encode("utf-8", errors="replace"),
        value=url.encode("utf-8", errors="replace"),
        max_bytes=max_bytes,
        error_class_name=error_class(failure.value) if failure.value is not None else None,
    )
