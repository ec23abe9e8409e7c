"""Enrichment of an HTML page: what the stream stage adds to a crawled PageRecord.

Plain functions, called by :mod:`streams.changes` for every ``kind == "html"`` record; unit-tested
on real HTML. Parsing is selectolax (the Lexbor engine: C, an HTML5 parser); language identification
is py3langid, whose model ships inside the package (nothing is fetched at run time).

Speed: every CSS query walks the whole tree, so :func:`enrich_html` makes two: one for all the
extractors and the main candidates, one for the boilerplate. The public extractors below (one
query each) give the same answers and are kept for direct use and tests.

Main text: the first of ``<main>``, ``[role=main]``, ``<article>`` (else ``<body>``) with scripts,
styles, navigation, headers, footers, asides, forms and hidden elements removed. Outlinks and
the canonical link are resolved against ``<base href>`` or the page URL and kept if http(s).

Hostile markup never raises: a ``<base href>`` that is not an http(s) URL (``javascript:``,
``data:``) or does not parse (``http://[::1``) is ignored, as is any resolved link that does not
parse or holds control characters; a JSON-LD block is read with pydantic's parser
(the parser that reads the PageEvent back on the next topic: what it refuses, lone surrogates or
nesting past its limit, is skipped here rather than produced) and kept only up to
``MAX_JSONLD_DEPTH`` levels of nesting.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import py3langid  # type: ignore[import-untyped]
import pydantic_core
from selectolax.lexbor import LexborHTMLParser, LexborNode

from crawlstream.records import Enrichment
from streams.fingerprints import content_hash, normalise_text, simhash64

BOILERPLATE = (
    "script, style, noscript, template, svg, iframe, nav, header, footer, aside, form, "
    "[role=navigation], [role=banner], [role=contentinfo], [role=search], [hidden], "
    "[aria-hidden=true], .sphinxsidebar, .related, .breadcrumb, .breadcrumbs, .cookie-banner"
)
MAIN_CANDIDATES = ("main", "[role=main]", "article")
_MAIN = ", ".join(MAIN_CANDIDATES)
_JSONLD_TYPE = "application/ld+json"
_JSONLD = f'script[type="{_JSONLD_TYPE}"]'
# Every extractor's selector (each names one tag) and the main candidates: one query, one walk.
_SCAN = f"a[href], base[href], title, meta[content], link[rel][href], {_JSONLD}, {_MAIN}"
# Language identification looks at the start of the normalised main text: enough for a stable
# answer (py3langid walks the sample byte by byte in Python, so its length is its cost).
LANGUAGE_SAMPLE_CHARS = 500
MIN_LANGUAGE_CHARS = 20
MAX_OUTLINKS = 1000
_NOT_LINKS = ("#", "javascript:", "mailto:", "tel:", "data:")
MAX_JSONLD_BLOCKS = 20
# Nesting kept of one JSON-LD item: real ones use a handful of levels; the PageEvent around it adds
# 4, and pydantic's parser stops at about 200 (the next hop would refuse the event).
MAX_JSONLD_DEPTH = 32
# Control characters: no URL a crawler fetches holds them, and PostgreSQL text cannot hold NUL.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@functools.lru_cache(maxsize=65536)
def _join(base_dir: str, href: str) -> str | None:
    try:
        return urljoin(base_dir, href)
    except ValueError:
        return None


# A relative path with no scheme, query, dot segment or backslash: resolving it against a
# directory is concatenation (RFC 3986 5.2: merge, and remove_dot_segments has nothing to do).
_PLAIN_PATH = re.compile(r"[A-Za-z0-9_][^:?\\\s]*")


def clear_caches() -> None:
    """Forget the resolved links (benchmarks start each run cold, as a new worker would)."""
    _absolute_in.cache_clear()
    _join.cache_clear()


def _directory(base: str) -> str:
    """What relative paths resolve against: the base URL up to its last ``/`` (query dropped)."""
    path = base.split("?", 1)[0]
    return path[: path.rfind("/") + 1] if path.count("/") > 2 else path


def _http(url: str | None) -> str | None:
    if url is None or not url.startswith(("http://", "https://")):
        return None
    url = url.split("#", 1)[0]
    if len(url) <= len("https://") or _CONTROL.search(url):
        return None
    if "[" in url or not url.isascii():  # the only URLs urlsplit refuses (IPv6 brackets, NFKC hosts)
        try:
            urlsplit(url)
        except ValueError:
            return None
    return url


@functools.lru_cache(maxsize=65536)
def _absolute_in(directory: str, href: str) -> str | None:
    """``href`` (fragment dropped, not a ``?query``) against ``directory``, if http(s).

    Cached by directory: the pages of one directory repeat the same navigation hrefs.
    """
    if href.startswith(("http://", "https://")):
        return _http(href)  # already absolute: the common case needs no urljoin
    if not href or href.startswith(_NOT_LINKS):
        return None
    if directory.endswith("/") and "/." not in href and _PLAIN_PATH.fullmatch(href):
        return _http(directory + href)
    return _http(_join(directory, href))


def _absolute(base: str, href: str, directory: str | None = None) -> str | None:
    """``href`` resolved against ``base`` (whose :func:`_directory` may be given), if http(s)."""
    href = href.split("#", 1)[0]  # fragments name places in one page: resolve the page once
    if href.startswith("?"):  # a query replaces the base's own: the only href needing all of it
        return _http(_join(base, href))
    return _absolute_in(_directory(base) if directory is None else directory, href)


def base_url_of(tree: LexborHTMLParser, page_url: str) -> str:
    base = tree.css_first("base[href]")
    return _base_url(page_url, base.attributes if base is not None else None)


def _base_url(page_url: str, base: dict[str, str | None] | None) -> str:
    """``<base href>`` resolved against the page URL if that gives an http(s) URL, else the page URL."""
    href = (base.get("href") or "").strip() if base is not None else ""
    if not href:
        return page_url
    return _http(_join(page_url, href)) or page_url


def outlinks(tree: LexborHTMLParser, base: str, limit: int = MAX_OUTLINKS) -> list[str]:
    """Absolute http(s) targets of ``<a href>``, fragments dropped, first occurrence order."""
    return _outlinks([anchor.attributes for anchor in tree.css("a[href]")], base, limit)


def _outlinks(anchors: list[dict[str, str | None]], base: str, limit: int = MAX_OUTLINKS) -> list[str]:
    # Each distinct href (fragment dropped) is resolved once: pages repeat their navigation links.
    hrefs: dict[str, None] = {}
    for attrs in anchors:
        rel, href = attrs.get("rel"), attrs.get("href")
        if not (rel and "nofollow" in rel.lower()):
            hrefs.setdefault(href.strip().split("#", 1)[0] if href else "", None)
    seen: dict[str, None] = {}
    directory = _directory(base)
    for href in hrefs:
        url = _http(_join(base, href)) if href.startswith("?") else _absolute_in(directory, href)
        if url is not None:
            seen.setdefault(url, None)
            if len(seen) >= limit:
                break
    return list(seen)


def canonical_link(tree: LexborHTMLParser, base: str) -> str | None:
    return _canonical_link([link.attributes for link in tree.css("link[rel][href]")], base)


def _canonical_link(links: list[dict[str, str | None]], base: str) -> str | None:
    for attrs in links:
        if "canonical" in (attrs.get("rel") or "").lower().split():
            return _absolute(base, (attrs.get("href") or "").strip())
    return None


def jsonld(tree: LexborHTMLParser) -> list[dict[str, Any]]:
    """Each JSON object in ``<script type="application/ld+json">`` (lists flattened; bad JSON skipped)."""
    return _jsonld(tree.css(_JSONLD))


def _jsonld(scripts: list[LexborNode]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for script in scripts[:MAX_JSONLD_BLOCKS]:
        try:
            data = pydantic_core.from_json(script.text(deep=True) or "")
        except ValueError:  # invalid JSON, lone surrogates, nesting past the parser's limit
            continue
        items = data if isinstance(data, list) else [data]
        found.extend(
            item for item in items if isinstance(item, dict) and _nested_within(item, MAX_JSONLD_DEPTH)
        )
    return found


def _nested_within(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists and objects at most ``limit`` levels deep (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return False
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return True


def meta_description(tree: LexborHTMLParser) -> str:
    return _meta_description([meta.attributes for meta in tree.css("meta[content]")])


def _meta_description(metas: list[dict[str, str | None]]) -> str:
    for attrs in metas:
        name = ((attrs.get("name") or "").strip() or (attrs.get("property") or "").strip()).lower()
        if name in ("description", "og:description"):
            return " ".join((attrs.get("content") or "").split())
    return ""


def page_title(tree: LexborHTMLParser) -> str:
    return _page_title(tree, tree.css_first("title"))


def _page_title(tree: LexborHTMLParser, node: LexborNode | None) -> str:
    if node is None:
        node = tree.css_first("h1")
    return " ".join(node.text(deep=True).split()) if node is not None else ""


def main_text(tree: LexborHTMLParser) -> str:
    """Visible text of the main content, boilerplate removed, whitespace collapsed.

    Mutates ``tree`` (removes boilerplate nodes): call after the other extractors.
    """
    return _main_text(tree, [(node, node.attributes.get("role") == "main") for node in tree.css(_MAIN)])


def _main_text(tree: LexborHTMLParser, candidates: list[tuple[LexborNode, bool]]) -> str:
    """``candidates``: the nodes matching ``MAIN_CANDIDATES`` in document order, each with
    whether it matches ``[role=main]``, found before the boilerplate is removed."""
    for node in tree.css(BOILERPLATE):
        if node.tag != "html":  # the root cannot be removed (an <html hidden> page keeps its text)
            node.decompose()
    # Removing a subtree detaches each of its nodes: candidates inside boilerplate lose their parent.
    alive = [(node, role_main) for node, role_main in candidates if node.parent is not None]
    root = (
        next((node for node, _ in alive if node.tag == "main"), None)
        or next((node for node, role_main in alive if role_main), None)
        or next((node for node, _ in alive if node.tag == "article"), None)
        or tree.body
    )
    if root is None:
        return ""
    return " ".join(root.text(deep=True, separator=" ").split())


@dataclass
class _Found:
    """What one walk of the tree collects (each CSS query walks the whole tree)."""

    anchors: list[dict[str, str | None]] = field(default_factory=list)
    base: dict[str, str | None] | None = None
    title: LexborNode | None = None
    metas: list[dict[str, str | None]] = field(default_factory=list)
    links: list[dict[str, str | None]] = field(default_factory=list)
    scripts: list[LexborNode] = field(default_factory=list)
    candidates: list[tuple[LexborNode, bool]] = field(default_factory=list)


def _scan(tree: LexborHTMLParser) -> _Found:
    """Nodes for every extractor but the boilerplate removal, in document order, from one query.

    A node is sorted by its tag, then checked against the rest of that tag's selector (it may have
    matched ``[role=main]`` only) the way Lexbor matches: ``type`` ignoring ASCII case, ``role``
    exactly (``Node.css_matches`` would search the node's whole subtree).
    """
    found = _Found()
    for node in tree.css(_SCAN):
        tag = node.tag
        attrs = node.attributes
        if tag == "a":
            if "href" in attrs:
                found.anchors.append(attrs)
        elif tag == "base":
            if "href" in attrs and found.base is None:
                found.base = attrs
        elif tag == "title":
            if found.title is None:
                found.title = node
        elif tag == "meta":
            if "content" in attrs:
                found.metas.append(attrs)
        elif tag == "link":
            if "rel" in attrs and "href" in attrs:
                found.links.append(attrs)
        elif tag == "script" and (attrs.get("type") or "").lower() == _JSONLD_TYPE:
            found.scripts.append(node)
        role_main = attrs.get("role") == "main"
        if role_main or tag in ("main", "article"):
            found.candidates.append((node, role_main))
    return found


def detect_language(normalised: str) -> str | None:
    """Language of normalised text (see :func:`normalise_text`), from its first words.

    Lower-case words without punctuation classify more reliably than the raw text's start, where
    headings and code (identifiers, symbols) sit: the Python docs pages come out English from 500
    characters of normalised text, against 528 of 530 from 1000 of the raw text.
    """
    sample = normalised[:LANGUAGE_SAMPLE_CHARS]
    if len(sample) < MIN_LANGUAGE_CHARS:
        return None
    language, _score = py3langid.classify(sample)
    return str(language)


def enrich_html(html: str, page_url: str) -> Enrichment:
    """Everything the stream stage extracts from one HTML page."""
    tree = LexborHTMLParser(html)
    found = _scan(tree)
    base = _base_url(page_url, found.base)
    links = _outlinks(found.anchors, base)
    title, description = _page_title(tree, found.title), _meta_description(found.metas)
    canonical, structured = _canonical_link(found.links, base), _jsonld(found.scripts)
    text = _main_text(tree, found.candidates)
    normalised = normalise_text(text)
    return Enrichment(
        text=text,
        title=title,
        meta_description=description,
        language=detect_language(normalised),
        word_count=normalised.count(" ") + 1 if normalised else 0,
        outlinks=links,
        outlinks_count=len(links),
        canonical_link=canonical,
        jsonld=structured,
        content_hash=content_hash(normalised),
        simhash=simhash64(normalised),
    )
