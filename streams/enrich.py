"""Enrichment of an HTML page: what the stream stage adds to a crawled PageRecord.

Plain functions, called by :mod:`streams.pages` for every ``kind == "html"`` record; unit-tested on
real HTML. Parsing is selectolax (the Lexbor engine: C, an HTML5 parser); language identification
is py3langid, whose model ships inside the package (nothing is fetched at run time).

Main text: the first of ``<main>``, ``[role=main]``, ``<article>`` (else ``<body>``) with scripts,
styles, navigation, headers, footers, asides, forms and hidden elements removed. Outlinks and
the canonical link are resolved against ``<base href>`` or the page URL and kept if http(s).
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any
from urllib.parse import urljoin

import py3langid  # type: ignore[import-untyped]
from selectolax.lexbor import LexborHTMLParser, LexborNode

from crawlstream.records import Enrichment
from streams.fingerprints import content_hash, normalise_text, simhash64

BOILERPLATE = (
    "script, style, noscript, template, svg, iframe, nav, header, footer, aside, form, "
    "[role=navigation], [role=banner], [role=contentinfo], [role=search], [hidden], "
    "[aria-hidden=true], .sphinxsidebar, .related, .breadcrumb, .breadcrumbs, .cookie-banner"
)
MAIN_CANDIDATES = ("main", "[role=main]", "article")
# Language identification looks at the start of the main text: enough for a stable answer.
LANGUAGE_SAMPLE_CHARS = 1000
MIN_LANGUAGE_CHARS = 20
MAX_OUTLINKS = 1000
_NOT_LINKS = ("#", "javascript:", "mailto:", "tel:", "data:")
MAX_JSONLD_BLOCKS = 20


def _attr(node: LexborNode, name: str) -> str:
    return (node.attributes.get(name) or "").strip()


@functools.lru_cache(maxsize=65536)
def _join(base_dir: str, href: str) -> str | None:
    try:
        return urljoin(base_dir, href)
    except ValueError:
        return None


# A relative path with no scheme, query, dot segment or backslash: resolving it against a
# directory is concatenation (RFC 3986 5.2: merge, and remove_dot_segments has nothing to do).
_PLAIN_PATH = re.compile(r"[A-Za-z0-9_][^:?\\\s]*")


def _resolve(base: str, href: str) -> str | None:
    # Relative links resolve against the base's directory alone (except "?query" ones), so pages
    # of one directory share the cache: their navigation links are the same hrefs.
    if href.startswith("?"):
        return _join(base, href)
    path = base.split("?", 1)[0]
    directory = path[: path.rfind("/") + 1] if path.count("/") > 2 else path
    if directory.endswith("/") and "/." not in href and _PLAIN_PATH.fullmatch(href):
        return directory + href
    return _join(directory, href)


def _absolute(base: str, href: str) -> str | None:
    href = href.split("#", 1)[0]  # fragments name places in one page: resolve the page once
    if href.startswith(("http://", "https://")):
        url = href  # already absolute: the common case needs no urljoin
    elif not href or href.startswith(_NOT_LINKS):
        return None
    else:
        resolved = _resolve(base, href)
        if resolved is None or not resolved.startswith(("http://", "https://")):
            return None
        url = resolved
    url = url.split("#", 1)[0]
    return url if len(url) > len("https://") else None


def base_url_of(tree: LexborHTMLParser, page_url: str) -> str:
    base = tree.css_first("base[href]")
    return urljoin(page_url, _attr(base, "href")) if base is not None else page_url


def outlinks(tree: LexborHTMLParser, base: str, limit: int = MAX_OUTLINKS) -> list[str]:
    """Absolute http(s) targets of ``<a href>``, fragments dropped, first occurrence order."""
    hrefs: dict[str, None] = {}
    for anchor in tree.css("a[href]"):
        attrs = anchor.attributes
        if "nofollow" not in (attrs.get("rel") or "").lower():
            hrefs.setdefault((attrs.get("href") or "").strip(), None)
    # Resolve each distinct href once: pages repeat their navigation links.
    seen: dict[str, None] = {}
    for href in hrefs:
        url = _absolute(base, href)
        if url is not None:
            seen.setdefault(url, None)
            if len(seen) >= limit:
                break
    return list(seen)


def canonical_link(tree: LexborHTMLParser, base: str) -> str | None:
    for link in tree.css("link[rel][href]"):
        if "canonical" in _attr(link, "rel").lower().split():
            return _absolute(base, _attr(link, "href"))
    return None


def jsonld(tree: LexborHTMLParser) -> list[dict[str, Any]]:
    """Each JSON object in ``<script type="application/ld+json">`` (lists flattened; bad JSON skipped)."""
    found: list[dict[str, Any]] = []
    for script in tree.css('script[type="application/ld+json"]')[:MAX_JSONLD_BLOCKS]:
        try:
            data = json.loads(script.text(deep=True) or "")
        except ValueError:
            continue
        items = data if isinstance(data, list) else [data]
        found.extend(item for item in items if isinstance(item, dict))
    return found


def meta_description(tree: LexborHTMLParser) -> str:
    for meta in tree.css("meta[content]"):
        name = (_attr(meta, "name") or _attr(meta, "property")).lower()
        if name in ("description", "og:description"):
            return " ".join(_attr(meta, "content").split())
    return ""


def page_title(tree: LexborHTMLParser) -> str:
    node = tree.css_first("title")
    if node is None:
        node = tree.css_first("h1")
    return " ".join(node.text(deep=True).split()) if node is not None else ""


def main_text(tree: LexborHTMLParser) -> str:
    """Visible text of the main content, boilerplate removed, whitespace collapsed.

    Mutates ``tree`` (removes boilerplate nodes): call after the other extractors.
    """
    for node in tree.css(BOILERPLATE):
        node.decompose()
    root = None
    for selector in MAIN_CANDIDATES:
        root = tree.css_first(selector)
        if root is not None:
            break
    root = root or tree.body
    if root is None:
        return ""
    return " ".join(root.text(deep=True, separator=" ").split())


def detect_language(text: str) -> str | None:
    sample = text[:LANGUAGE_SAMPLE_CHARS]
    if len(sample) < MIN_LANGUAGE_CHARS:
        return None
    language, _score = py3langid.classify(sample)
    return str(language)


def enrich_html(html: str, page_url: str) -> Enrichment:
    """Everything the stream stage extracts from one HTML page."""
    tree = LexborHTMLParser(html)
    base = base_url_of(tree, page_url)
    links = outlinks(tree, base)
    title, description = page_title(tree), meta_description(tree)
    canonical, structured = canonical_link(tree, base), jsonld(tree)
    text = main_text(tree)
    normalised = normalise_text(text)
    return Enrichment(
        text=text,
        title=title,
        meta_description=description,
        language=detect_language(text),
        word_count=normalised.count(" ") + 1 if normalised else 0,
        outlinks=links,
        outlinks_count=len(links),
        canonical_link=canonical,
        jsonld=structured,
        content_hash=content_hash(normalised),
        simhash=simhash64(normalised),
    )
