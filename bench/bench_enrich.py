"""Enrichment throughput on the Python documentation pages (target >= 300 pages/s per core).

Runs :func:`streams.enrich.enrich_html` over every page of /usr/share/doc/python3.11/html on one
core, next to a baseline measured in the same run: lxml parsing each page and taking its whole
text (a parse-and-text floor, no extraction). Prints medians of several runs and the ratio.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import lxml.html

from streams.enrich import enrich_html

DOCS = Path("/usr/share/doc/python3.11/html")
RUNS = 5


def pages() -> list[tuple[str, str]]:
    files = sorted(DOCS.rglob("*.html"))
    return [
        (f"https://docs.python.org/3/{f.relative_to(DOCS)}", f.read_text(encoding="utf-8", errors="replace"))
        for f in files
    ]


def rate(work: list[tuple[str, str]], fn: object) -> float:
    started = time.perf_counter()
    for url, html in work:
        fn(html, url)  # type: ignore[operator]
    return len(work) / (time.perf_counter() - started)


def lxml_text(html: str, _url: str) -> str:
    return str(lxml.html.fromstring(html).text_content())


def main() -> int:
    work = pages()
    if not work:
        print(f"no pages under {DOCS}", file=sys.stderr)
        return 1
    size = sum(len(html) for _, html in work) / len(work)
    rate(work[:50], enrich_html)  # warm caches and the language model
    ours = statistics.median(rate(work, enrich_html) for _ in range(RUNS))
    base = statistics.median(rate(work, lxml_text) for _ in range(RUNS))
    print(f"pages: {len(work)} (mean {size / 1024:.0f} KiB of HTML), median of {RUNS} runs, one core")
    print(f"enrich_html:          {ours:8.0f} pages/s  (target >= 300)")
    print(f"lxml parse+text only: {base:8.0f} pages/s  (baseline)")
    print(f"ratio enrich/baseline: {ours / base:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
