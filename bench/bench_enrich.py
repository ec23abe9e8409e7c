"""Enrichment throughput on the Python documentation pages (target >= 300 pages/s per core).

Runs :func:`streams.enrich.enrich_html` over every page of /usr/share/doc/python3.11/html on one
core (one process, one thread), next to a baseline measured in the same run: lxml parsing each
page and taking its whole text (a parse-and-text floor, no extraction). Each run times both, one
right after the other (alternating which goes first), so a noisy neighbour slows both alike.
Pages/s per core is pages over the process's CPU time (what a core spent, whatever else the shared
machine runs); wall-clock figures are printed next to it. Every run starts with the enrichment's
caches cleared (links resolved per directory), as a fresh worker would. Prints medians of the runs
and the median of the per-run ratios.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import lxml.html

from streams.enrich import clear_caches, enrich_html

DOCS = Path("/usr/share/doc/python3.11/html")
RUNS = 7


def pages() -> list[tuple[str, str]]:
    files = sorted(DOCS.rglob("*.html"))
    return [
        (f"https://docs.python.org/3/{f.relative_to(DOCS)}", f.read_text(encoding="utf-8", errors="replace"))
        for f in files
    ]


def rate(work: list[tuple[str, str]], fn: Callable[[str, str], object]) -> tuple[float, float]:
    """(pages per CPU second, pages per wall-clock second) of ``fn`` over ``work``."""
    clear_caches()  # each run starts cold: no links resolved by an earlier run
    cpu, wall = time.process_time(), time.perf_counter()
    for url, html in work:
        fn(html, url)
    return len(work) / (time.process_time() - cpu), len(work) / (time.perf_counter() - wall)


def lxml_text(html: str, _url: str) -> str:
    return str(lxml.html.fromstring(html).text_content())


def main() -> int:
    work = pages()
    if not work:
        print(f"no pages under {DOCS}", file=sys.stderr)
        return 1
    size = sum(len(html) for _, html in work) / len(work)
    rate(work[:50], enrich_html)  # warm caches and the language model
    rate(work[:50], lxml_text)
    ours: list[tuple[float, float]] = []
    base: list[tuple[float, float]] = []
    for run in range(RUNS):
        if run % 2:
            base.append(rate(work, lxml_text))
            ours.append(rate(work, enrich_html))
        else:
            ours.append(rate(work, enrich_html))
            base.append(rate(work, lxml_text))
    cpu = statistics.median(o[0] for o in ours)
    print(f"pages: {len(work)} (mean {size / 1024:.0f} KiB of HTML), median of {RUNS} runs, one core")
    print(f"enrich_html:           {cpu:6.0f} pages/s per core (CPU time)  (target >= 300)")
    print(f"                       {statistics.median(o[1] for o in ours):6.0f} pages/s wall clock")
    print(f"lxml parse+text only:  {statistics.median(b[0] for b in base):6.0f} pages/s per core (baseline)")
    print(f"                       {statistics.median(b[1] for b in base):6.0f} pages/s wall clock")
    ratio = statistics.median(o[0] / b[0] for o, b in zip(ours, base, strict=True))
    print(f"ratio enrich/baseline: {ratio:.2f} (median of per-run ratios, CPU time)")
    print(f"enrich_html per run:   {' '.join(f'{o[0]:.0f}' for o in ours)} pages/s per core")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.results import Headline, Target, median_row, with_ratios, write_result

    base_cpu = statistics.median(b[0] for b in base)
    write_result(
        "enrich",
        f"Enrichment: {len(work)} Python docs pages on one core, next to an lxml parse+text",
        with_ratios(
            [
                median_row("enrich_html", [o[0] for o in ours], "pages/s per core", "ours", "CPU time"),
                median_row("lxml parse+text", [b[0] for b in base], "pages/s per core", "floor", "CPU time"),
                median_row("enrich_html", [o[1] for o in ours], "pages/s", "ours", "wall clock"),
                median_row("lxml parse+text", [b[1] for b in base], "pages/s", "floor", "wall clock"),
            ],
            "lxml parse+text",
        ),
        targets=[Target("enrich_html pages/s per core", cpu, ">=", 300, "pages/s")],
        headline=[
            Headline(
                "enrich", cpu, base_cpu, "pages/s per core", "enrich_html", "lxml parse+text", ratio=ratio
            )
        ],
        params={"pages": len(work), "runs": RUNS},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
