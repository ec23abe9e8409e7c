"""Building the records a crawl produces from Scrapy responses and failures.

Used by every spider (``crawlers.spiders.*``): :func:`page_record` for HTML pages and
:func:`metadata_record` for non-HTML responses (``kind="metadata"``, no body), both destined for
``<prefix>.pages.raw``; :func:`fetch_dead_letter` for fetches that failed after Scrapy's retries,
destined for ``<prefix>.deadletter`` (stage ``crawl``). Settings used: none (callers pass caps).

Text is decoded by Scrapy (w3lib: HTTP header, BOM, ``<meta charset>``, then detection) with
replacement characters for undecodable bytes, so a bad encoding never raises.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from scrapy.http import Response, TextResponse
from twisted.python.failure import Failure

from crawlstream.errors import RecordError
from crawlstream.records import DeadLetter, PageRecord
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
MAX_HEADER_CHARS = 1024
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
    for name in SELECTED_HEADERS:
        values = response.headers.getlist(name)
        if values:
            joined = ", ".join(v.decode("latin-1") for v in values)
            out[name.lower()] = joined[:MAX_HEADER_CHARS]
    return out


def _xpath_first(response: TextResponse, query: str) -> str | None:
    """What ``response.xpath(query).get()`` returns for a query selecting strings.

    Evaluated on the lxml root of the response's cached selector (the DOM is parsed once per
    response and shared with link extraction), without wrapping every result in a parsel Selector.
    """
    found = response.selector.root.xpath(query, smart_strings=False)
    return str(found[0]) if found else None


def page_title(response: TextResponse) -> str:
    """The first ``<title>`` text, whitespace collapsed ("" when there is none)."""
    return " ".join((_xpath_first(response, "//title/text()") or "").split())


def canonical_link(response: TextResponse) -> str | None:
    if not _CANONICAL.search(response.body):
        return None  # cheap test first: most pages have none
    href = _xpath_first(response, _CANONICAL_XPATH)
    if not href or not href.strip():
        return None
    return response.urljoin(href.strip())


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
        "body_bytes": len(response.body),
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
    body, truncated = cap_utf8(response.text, max_body_bytes)
    title = page_title(response)
    return PageRecord(
        **_common(response, job_id, run_id, fetched_at),
        encoding=response.encoding,
        title=title,
        body=body,
        body_truncated=truncated,
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


def fetch_dead_letter(failure: Failure, url: str, *, job_id: str, run_id: str) -> DeadLetter:
    """The dead letter of a fetch that failed after retries; the key is the canonical URL."""
    detail = f"{url} (job {job_id or '-'}, run {run_id or '-'}): {failure.getErrorMessage()}"
    return DeadLetter.for_message(
        stage="crawl",
        error=RecordError(failure_reason(failure), detail[:2000]),
        topic=None,
        partition=None,
        offset=None,
        key=canonical_url(url).encode("utf-8"),
        value=url.encode("utf-8"),
    )
