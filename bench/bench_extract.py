"""Main-text extraction: ours (:func:`streams.enrich.main_text`, selectolax) against trafilatura.

Runs both extractors over every page of the Python documentation (/usr/share/doc/python3.11/html)
and, when installed (Debian's ``postgresql-doc-15``), of the PostgreSQL documentation, on one
core. Reports, per corpus:

- agreement: for each page, the F1 of the two texts' word multisets (1.0: the same words, in any
  order), its median and the share of pages agreeing at >= 0.8;
- speed: pages per CPU second of each (alternating which runs first, medians of the runs).

Neither text is ground truth: the agreement says how often the cheaper extractor gives what the
library readers trust gives; the pages where they disagree most are printed to be read by eye.
Writes ``bench/results/extract.json`` through bench/results.py. Needs the ``bench`` extra
(trafilatura).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import trafilatura
from selectolax.lexbor import LexborHTMLParser

from streams.enrich import main_text

CORPORA = {
    "python-docs": (Path("/usr/share/doc/python3.11/html"), "https://docs.python.org/3/"),
    "postgresql-docs": (Path("/usr/share/doc/postgresql-doc-15/html"), "https://www.postgresql.org/docs/15/"),
}
RUNS = 3
AGREE = 0.8


def pages(root: Path, site: str) -> list[tuple[str, str]]:
    return [
        (site + str(f.relative_to(root)), f.read_text(encoding="utf-8", errors="replace"))
        for f in sorted(root.rglob("*.html"))
    ]


def ours(html: str, _url: str) -> str:
    return main_text(LexborHTMLParser(html))


def theirs(html: str, url: str) -> str:
    return trafilatura.extract(html, url=url, include_comments=False, include_tables=True) or ""


def f1(a: str, b: str) -> float:
    """F1 of the word multisets of ``a`` and ``b`` (1.0 for two empty texts)."""
    wa, wb = Counter(a.split()), Counter(b.split())
    if not wa and not wb:
        return 1.0
    common = sum((wa & wb).values())
    if not common:
        return 0.0
    precision, recall = common / sum(wa.values()), common / sum(wb.values())
    return 2 * precision * recall / (precision + recall)


def rate(work: list[tuple[str, str]], fn: Callable[[str, str], str]) -> float:
    cpu = time.process_time()
    for url, html in work:
        fn(html, url)
    return len(work) / (time.process_time() - cpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=RUNS, help="timed passes of each extractor")
    parser.add_argument("--quick", action="store_true", help="one timed pass")
    args = parser.parse_args()
    runs_wanted = 1 if args.quick else args.runs
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.results import median_row, with_ratios, write_result

    rows, params, notes = [], {"runs": runs_wanted}, []
    for corpus, (root, site) in CORPORA.items():
        work = pages(root, site) if root.is_dir() else []
        if not work:
            print(f"{corpus}: no pages under {root}; skipped")
            notes.append(f"{corpus}: not installed here ({root}), skipped")
            continue
        scores = [(f1(ours(h, u), theirs(h, u)), u) for u, h in work]
        agreement = [s for s, _ in scores]
        ours_runs, theirs_runs = [], []
        for run in range(runs_wanted):
            order = [(ours_runs, ours), (theirs_runs, theirs)]
            for runs, fn in order if run % 2 == 0 else reversed(order):
                runs.append(rate(work, fn))
        share = sum(s >= AGREE for s in agreement) / len(agreement)
        print(f"{corpus}: {len(work)} pages, median of {runs_wanted} runs, one core")
        print(f"  agreement (word F1): median {statistics.median(agreement):.3f}, >= {AGREE}: {share:.1%}")
        print(f"  ours (selectolax main_text): {statistics.median(ours_runs):7.0f} pages/s per core")
        print(f"  trafilatura.extract:         {statistics.median(theirs_runs):7.0f} pages/s per core")
        for score, url in sorted(scores)[:5]:
            print(f"  least agreement {score:.2f}: {url}")
        group = corpus
        rows += with_ratios(
            [
                median_row("main_text", ours_runs, "pages/s per core", "ours", group),
                median_row("trafilatura", theirs_runs, "pages/s per core", "peer", group),
            ],
            "trafilatura",
        )
        rows.append(median_row("word F1 agreement", agreement, "F1", "baseline", f"{corpus} agreement"))
        params[f"{corpus}_pages"] = len(work)
        params[f"{corpus}_agree_share"] = round(share, 4)
        params[f"{corpus}_least_agreeing"] = [url for _, url in sorted(scores)[:5]]
    if not rows:
        return 1
    write_result(
        "extract",
        "Main-text extraction: ours (selectolax) against trafilatura, agreement and speed",
        rows,
        params=params,
        notes=[*notes, "agreement is word-multiset F1 between the two texts; neither is ground truth"],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
