"""The demo site: a deterministic static site to crawl locally, and a server for it.

Used by ``crawlstream run --demo``, the tests and the benchmarks. The site is built to exercise
every stage: tracking-parameter links (fetched twice by Scrapy, one canonical URL, deduped by
the stream stage), fragment links (not refetched: Scrapy's request fingerprint drops
fragments), identical bodies under different URLs (``/mirror/``), a robots.txt-disallowed
``/private/`` area, non-HTML files and one dead link. :class:`DemoSiteManifest` gives what a
full crawl from ``/index.html`` must see, computed by simulating Scrapy's rules on the link graph.
"""

from __future__ import annotations

import argparse
import functools
import html
import json
import random
import sys
import threading
from dataclasses import asdict, dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from w3lib.url import canonicalize_url

START_PATH = "/index.html"
DISALLOWED_PREFIX = "/private/"
UTM = "?utm_source=newsletter&utm_medium=email"
NOT_FOUND_PATH = "/missing.html"
# Scrapy's LinkExtractor skips these extensions (scrapy.linkextractors.IGNORED_EXTENSIONS).
SKIPPED_FILES = ("/files/logo.png", "/files/report.pdf")
FETCHED_FILES = ("/files/readme.txt", "/files/data.csv")
MIN_PAGES = 20


@dataclass
class DemoSiteManifest:
    """Expected figures for a full crawl from ``/index.html`` (paths are site-absolute)."""

    pages: int  # public HTML files
    seed: int
    start_path: str
    expected_html_responses: int  # HTML page records: distinct request URLs, utm variants included
    expected_distinct_canonical_urls: int
    expected_non_html_responses: int
    expected_not_found: int
    expected_robots_denied: int  # distinct /private/ request URLs refused
    expected_responses_total: int  # all of the above plus robots.txt
    disallowed_paths: list[str]
    private_pages: list[str]  # exist on disk, linked, never fetched
    tracking_variants: list[str]
    duplicate_body_paths: dict[str, str]  # mirror path -> original path (identical bytes)
    canonical_paths: list[str] = field(default_factory=list)

    def expected_canonical_urls(self, base_url: str) -> list[str]:
        from crawlstream.urls import canonical_url

        return sorted(canonical_url(base_url.rstrip("/") + path) for path in self.canonical_paths)


@dataclass
class _Page:
    path: str
    title: str
    links: list[str] = field(default_factory=list)
    mirror_of: str | None = None


def _article(i: int) -> str:
    return f"/articles/article-{i:04d}.html"


def _render(page: _Page, rng: random.Random) -> str:
    paragraphs = "\n".join(
        f"<p>{html.escape(' '.join(rng.choice(_WORDS) for _ in range(40)))}</p>" for _ in range(3)
    )
    links = "\n".join(
        f'<li><a href="{html.escape(href)}">{html.escape(href)}</a></li>' for href in page.links
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(page.title)}</title></head>\n"
        f'<body><h1 id="top">{html.escape(page.title)}</h1>\n{paragraphs}\n'
        f"<ul>\n{links}\n</ul></body></html>\n"
    )


_WORDS = (
    "stream",
    "kafka",
    "record",
    "offset",
    "partition",
    "crawler",
    "spider",
    "page",
    "link",
    "topic",
    "broker",
    "sink",
    "table",
    "commit",
    "canonical",
    "duplicate",
    "window",
    "agent",
    "replica",
    "schema",
)


def _build_graph(pages: int, seed: int) -> dict[str, _Page]:
    rng = random.Random(seed)
    n_sections = max(2, pages // 40)
    n_mirrors = min(5, max(1, pages // 60))
    n_articles = pages - 1 - n_sections - n_mirrors
    sections = [f"/sections/section-{s:02d}.html" for s in range(n_sections)]
    articles = [_article(i) for i in range(n_articles)]
    graph: dict[str, _Page] = {}
    graph[START_PATH] = _Page(
        START_PATH, "Demo site", [*sections, FETCHED_FILES[0], "/private/admin.html", START_PATH + "#top"]
    )
    for s, path in enumerate(sections):
        own = articles[s::n_sections]
        nxt = sections[(s + 1) % n_sections]
        graph[path] = _Page(path, f"Section {s}", [START_PATH, *own, nxt, own[0] + "#top", nxt])
    for i, path in enumerate(articles):
        others = rng.sample([a for a in articles if a != path], 4)
        links = [START_PATH, sections[i % n_sections], *others, others[0]]  # one repeated on purpose
        if i % 7 == 0:
            links.append(rng.choice(others) + UTM)
        if i % 5 == 0:
            links.append(rng.choice(others) + "#top")
        if i % 50 == 3:
            links.append(f"/private/draft-{i:04d}.html")
        if i % 40 == 1:
            links.extend([FETCHED_FILES[1], *SKIPPED_FILES])
        if i == 2:
            links.append(NOT_FOUND_PATH)
        graph[path] = _Page(path, f"Article {i}: {' '.join(rng.choice(_WORDS) for _ in range(4))}", links)
    for k in range(n_mirrors):
        original = articles[(k * 37 + 11) % n_articles]
        mirror = original.replace("/articles/", "/mirror/")
        graph[original].links.append(mirror)
        graph[mirror] = _Page(mirror, graph[original].title, graph[original].links, mirror_of=original)
    return graph


def _request_id(path: str) -> str:
    # What Scrapy's fingerprint keys on: the canonicalized URL without its fragment.
    return canonicalize_url("http://site" + path, keep_fragments=False)


def _simulate(graph: dict[str, _Page], pages: int, seed: int) -> DemoSiteManifest:
    from crawlstream.urls import canonical_url

    seen = {_request_id(START_PATH)}
    queue = [START_PATH]
    html_fetched: list[str] = []
    non_html = not_found = robots_denied = 0
    private: set[str] = set()
    tracking: set[str] = set()
    while queue:
        href = queue.pop(0)
        path = urlsplit(href).path
        if path.startswith(DISALLOWED_PREFIX):
            robots_denied += 1
            private.add(path)
            continue
        if path in FETCHED_FILES:
            non_html += 1
            continue
        if path not in graph:
            not_found += 1
            continue
        html_fetched.append(href)
        if urlsplit(href).query:
            tracking.add(href)
        for link in graph[path].links:
            if link.split("?")[0].split("#")[0] in SKIPPED_FILES:
                continue
            rid = _request_id(link)
            if rid not in seen:
                seen.add(rid)
                queue.append(link.split("#")[0])
    canonical = sorted({urlsplit(canonical_url("http://site" + h)).path for h in html_fetched})
    return DemoSiteManifest(
        pages=pages,
        seed=seed,
        start_path=START_PATH,
        expected_html_responses=len(html_fetched),
        expected_distinct_canonical_urls=len(canonical),
        expected_non_html_responses=non_html,
        expected_not_found=not_found,
        expected_robots_denied=robots_denied,
        expected_responses_total=len(html_fetched) + non_html + not_found + 1,
        disallowed_paths=[DISALLOWED_PREFIX],
        private_pages=sorted(private),
        tracking_variants=sorted(tracking),
        duplicate_body_paths={p.path: p.mirror_of for p in graph.values() if p.mirror_of},
        canonical_paths=canonical,
    )


def generate_demo_site(root: Path, pages: int = 300, seed: int = 7) -> DemoSiteManifest:
    """Write the site under ``root`` (``pages`` public HTML files) and return its manifest.

    The same ``pages`` and ``seed`` always give byte-identical files. ``manifest.json`` is written
    beside them (nothing links to it, so a crawl never fetches it).
    """
    if pages < MIN_PAGES:
        raise ValueError(f"pages must be at least {MIN_PAGES}, got {pages}")
    graph = _build_graph(pages, seed)
    rendered: dict[str, str] = {}
    text_rng = random.Random(seed * 1000 + 1)
    for path in sorted(p for p in graph if graph[p].mirror_of is None):
        rendered[path] = _render(graph[path], text_rng)
    for page in graph.values():
        if page.mirror_of is not None:
            rendered[page.path] = rendered[page.mirror_of]
    for path in {p for page in graph.values() for p in page.links if p.startswith(DISALLOWED_PREFIX)}:
        rendered[path] = _render(_Page(path, "Private", ["/private/deeper.html"]), text_rng)
    for path, text in rendered.items():
        _write(root, path, text.encode("utf-8"))
    _write(root, "/robots.txt", f"User-agent: *\nDisallow: {DISALLOWED_PREFIX}\n".encode())
    _write(root, FETCHED_FILES[0], b"crawlstream demo site: plain text, not a page record\n")
    _write(root, FETCHED_FILES[1], b"id,value\n1,kafka\n2,postgres\n")
    # A 1x1 PNG and a minimal PDF: linked, but Scrapy's LinkExtractor never requests them.
    _write(
        root,
        SKIPPED_FILES[0],
        bytes.fromhex(
            "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
            "1f15c4890000000d49444154789c6300010000050001"
            "0d0a2db40000000049454e44ae426082"
        ),
    )
    _write(root, SKIPPED_FILES[1], b"%PDF-1.1\n%%EOF\n")
    manifest = _simulate(graph, pages, seed)
    (root / "manifest.json").write_text(json.dumps(asdict(manifest), indent=2) + "\n", encoding="utf-8")
    return manifest


def _write(root: Path, path: str, data: bytes) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_directory(root: Path, host: str = "127.0.0.1", port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Serve ``root`` statically from a daemon thread; returns the server and ``http://host:port/``.

    Call ``server.shutdown()`` then ``server.server_close()`` to stop it.
    """
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="demosite", daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}/"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m control.demosite")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write the demo site and print its manifest")
    gen.add_argument("--dir", type=Path, required=True)
    gen.add_argument("--pages", type=int, default=300)
    gen.add_argument("--seed", type=int, default=7)
    serve = sub.add_parser("serve", help="serve a directory until interrupted")
    serve.add_argument("--dir", type=Path, required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "generate":
        print(json.dumps(asdict(generate_demo_site(args.dir, args.pages, args.seed)), indent=2))
        return 0
    server, base_url = serve_directory(args.dir, args.host, args.port)
    print(base_url, flush=True)  # first stdout line: where it listens (port 0 picks one)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
