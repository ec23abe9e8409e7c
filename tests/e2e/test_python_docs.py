"""Crawl a real site nobody here wrote: the Python documentation (Debian's python3.11-doc)."""

from __future__ import annotations

import uuid
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from control.demosite import serve_directory
from control.run.pipeline import CrawlArgs, run_pipeline
from crawlstream.settings import Settings
from crawlstream.urls import canonical_url

pytestmark = pytest.mark.e2e

DOCS = Path("/usr/share/doc/python3.11/html")


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def _pages_linked_from_index(base_url: str) -> set[str]:
    parser = _Links()
    parser.feed((DOCS / "index.html").read_text(encoding="utf-8"))
    index = f"{base_url}/index.html"
    linked = set()
    for href in parser.hrefs:
        url = urljoin(index, href)
        path = urlsplit(url).path
        if url.startswith(base_url) and path.endswith(".html") and (DOCS / path.lstrip("/")).is_file():
            linked.add(canonical_url(url))
    return linked


def test_crawl_reaches_every_page_linked_from_the_index(stack_settings: Settings) -> None:
    assert DOCS.is_dir(), "python3.11-doc is installed by `make prereqs` / .ci/run"
    server, served = serve_directory(DOCS)
    base_url = served.rstrip("/")
    try:
        linked = _pages_linked_from_index(base_url)
        args = CrawlArgs(
            start_urls=[f"{base_url}/index.html"],
            allow_private_hosts=[base_url],  # that host, on its port only
            job_id="e2e-python-docs",
            run_id=uuid.uuid4().hex,
        )
        summary = run_pipeline(stack_settings, args, timeout_s=300)
    finally:
        server.shutdown()
        server.server_close()  # shutdown stops serving; this closes its socket
    crawled = set(summary.crawl["canonical_urls"])
    assert len(linked) > 20
    assert linked <= crawled, sorted(linked - crawled)[:10]
    assert summary.crawl["delivery_failures"] == 0
    assert summary.crawl["pages_fetched"] >= 500  # the package holds 530 HTML pages
    assert summary.ok, [c for c in summary.checks if not c.ok]
