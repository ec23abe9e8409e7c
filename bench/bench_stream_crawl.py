"""The stream stage on a real crawl: bytes it writes per raw byte, and whether it keeps up.

Needs the embedded stack (``crawlstream stack up``). For each site, an isolated run (its own topic
prefix, app id, one ``python -m streams worker`` with stats on) crawls the site with
``python -m crawlers crawl`` as ``crawlstream demo`` does, while a thread samples every second the
raw topic's end offset, the stream group's committed offset on it and the lag over every topic
the stage reads, and the on-disk size of each topic of the run (the broker's log segments, i.e.
compressed bytes as stored, the largest seen: windowed changelogs are deleted as their windows
expire). Sites: ``demo`` (``crawlstream demo``'s generated site, ``--pages`` pages) and ``docs``
(the Python documentation, /usr/share/doc/python3.11/html, 530 pages), both served on 127.0.0.1.

Figures per site, medians of ``--runs``:
  write amplification  bytes of every topic the stage writes (outputs, changelogs, internal
                       topics) / bytes of pages.raw; next to it the floor: pages.unique alone,
                       the one output the sink needs (target <= 2.5)
  caught up after end  seconds from the crawl process's exit until the stage has committed every
                       raw record and has no lag on any topic it reads (target <= 5 s)
Everything goes through bench/results.py to bench/results/stream_crawl.json: the medians and
runs, the targets, the stage's lag curve of every run (``Series`` of kind ``lag``, drawn by
bench/report.py into curves-lag.png) and, in ``extra``, every topic's bytes per run.
``--worker-repo DIR`` runs the worker of another checkout (e.g. main before a change) for a
before/after in the same session (``--label before`` names its result file apart).
``--quick``: a 2,000-page demo site and one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results import Headline, Row, Series, Target, median_row, with_ratios, write_result
from bench.stream_support import (
    DOCS,
    REPO,
    LagRecorder,
    Offsets,
    isolated,
    stage_written,
    topic_bytes,
    worker,
)
from crawlstream.demosite import generate_demo_site, serve_directory
from crawlstream.settings import Settings
from crawlstream.topics import catalog

BENCH = "stream_crawl"


def crawl(
    settings: Settings, env: dict[str, str], start_url: str, base_url: str, log: Path
) -> dict[str, Any]:
    """Run the crawler to completion; its report."""
    report = log.with_suffix(".json")
    argv = [sys.executable, "-m", "crawlers", "crawl", "--start-url", start_url, "--report", str(report)]
    argv += ["--allow-private-host", base_url, "--job-id", "bench", "--run-id", uuid.uuid4().hex]
    argv += ["--metrics-port", "-1"]
    with log.open("wb") as out:
        code = subprocess.run(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if not report.exists():
        raise SystemExit(f"crawl exited {code.returncode} without a report:\n{log.read_text()[-3000:]}")
    result: dict[str, Any] = json.loads(report.read_text())
    return result


def one_run(site: str, pages: int, worker_repo: Path, timeout_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-crawl-") as tmp:
        if site == "demo":
            root = Path(tmp) / "site"
            generate_demo_site(root, pages=pages)
            start = "index.html"
        else:
            root, start = DOCS, "index.html"
        server, base_url = serve_directory(root)
        try:
            with isolated(f"crawl-{site}") as (settings, env), worker(env, repo=worker_repo) as running:
                with LagRecorder(settings, interval_s=1.0, sizes=True) as lag:
                    started = time.monotonic()
                    report = crawl(settings, env, base_url + start, base_url, Path(tmp) / "crawl.log")
                    crawl_end = time.monotonic()
                    offsets = Offsets(settings, settings.streams.app_id)
                    raw = catalog(settings).raw_pages.name
                    deadline = crawl_end + timeout_s
                    while True:
                        inputs = offsets.stage_inputs()
                        if offsets.committed(raw) >= offsets.end(raw) and offsets.lag(inputs) == 0:
                            break
                        if running.proc.poll() is not None or time.monotonic() > deadline:
                            raise SystemExit(f"the stage did not catch up:\n{running.tail()}")
                        time.sleep(0.1)  # poll interval
                    caught_up = time.monotonic()
                    offsets.close()
                    time.sleep(1.5)  # one more lag sample after the catch-up, for the curve
                sizes = {t: max(lag.sizes.get(t, 0), n) for t, n in topic_bytes(settings).items()}
                written = stage_written(settings, sizes)
                raw_bytes = sizes.get(raw, 0)
                unique = sizes.get(catalog(settings).unique_pages.name, 0)
                return {
                    "site": site,
                    "pages_fetched": report.get("pages_fetched"),
                    "raw_records": offsets_end(settings),
                    "crawl_s": round(crawl_end - started, 2),
                    "caught_up_after_end_s": round(caught_up - crawl_end, 2),
                    "raw_bytes": raw_bytes,
                    "stage_bytes": sum(written.values()),
                    "write_amplification": sum(written.values()) / raw_bytes,
                    "unique_amplification": unique / raw_bytes,
                    "bytes_by_topic": written,
                    "lag_curve": lag.samples,
                }
        finally:
            server.shutdown()
            server.server_close()


def short(topic: str, result: dict[str, Any]) -> str:
    """A topic's name without its run's prefix."""
    return topic.split(".", 1)[1] if topic.startswith("bench-") and "." in topic else topic.split("-", 4)[-1]


def offsets_end(settings: Settings) -> int:
    offsets = Offsets(settings, settings.streams.app_id)
    try:
        return offsets.end(catalog(settings).raw_pages.name)
    finally:
        offsets.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", choices=["demo", "docs", "both"], default="both")
    parser.add_argument("--pages", type=int, default=20_000, help="pages of the demo site")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds the stage may take after the crawl"
    )
    parser.add_argument("--worker-repo", type=Path, default=REPO, help="checkout whose stream worker runs")
    parser.add_argument("--label", default="", help="a name for this run in the results (e.g. before)")
    parser.add_argument("--quick", action="store_true", help="a 2,000-page demo site, one run")
    args = parser.parse_args()
    if args.quick:
        args.pages, args.runs = min(args.pages, 2000), 1
    sites = ["demo", "docs"] if args.site == "both" else [args.site]
    runs: dict[str, list[dict[str, Any]]] = {site: [] for site in sites}
    for _ in range(args.runs):
        for site in sites:
            result = one_run(site, args.pages, args.worker_repo.resolve(), args.timeout)
            runs[site].append(result)
            print(
                f"{site}: {result['pages_fetched']} pages in {result['crawl_s']}s, caught up "
                f"{result['caught_up_after_end_s']}s after, "
                f"amplification {result['write_amplification']:.2f}",
                file=sys.stderr,
            )

    table = Table(title=f"stream stage on a real crawl, one worker, median of {args.runs} {args.label}")
    for column in ("site", "figure", "value", "floor / peer", "ratio", "target"):
        table.add_column(column, justify="left" if column in ("site", "figure", "floor / peer") else "right")
    summary: dict[str, Any] = {}
    for site, results in runs.items():
        amp = statistics.median(r["write_amplification"] for r in results)
        unique = statistics.median(r["unique_amplification"] for r in results)
        after = statistics.median(r["caught_up_after_end_s"] for r in results)
        crawl_s = statistics.median(r["crawl_s"] for r in results)
        pages = statistics.median(r["pages_fetched"] for r in results)
        table.add_row(
            site,
            "bytes written / raw byte",
            f"{amp:.2f}",
            f"pages.unique alone {unique:.2f}",
            f"{amp / unique:.2f}x",
            "<= 2.5",
        )
        table.add_row(
            site,
            "caught up after crawl end",
            f"{after:.1f} s",
            f"crawl {crawl_s:.0f} s, {pages:.0f} pages",
            f"{pages / crawl_s:.0f} pages/s",
            "<= 5 s",
        )
        top = [(short(t, results[0]), n) for t, n in results[0]["bytes_by_topic"].items()][:6]
        table.add_row(
            site,
            "largest writes (run 1)",
            ", ".join(f"{t.rsplit('.', 1)[-1].split('-', 1)[-1]} {n / 1e6:.1f} MB" for t, n in top),
            "",
            "",
            "",
        )
        summary[site] = {
            "write_amplification": amp,
            "unique_amplification": unique,
            "caught_up_after_end_s": after,
            "crawl_s": crawl_s,
            "pages": pages,
        }
    Console(width=160).print(table)
    rows: list[Row] = []
    targets: list[Target] = []
    headline: list[Headline] = []
    series: list[Series] = []
    for site, results in runs.items():
        amp, after = summary[site]["write_amplification"], summary[site]["caught_up_after_end_s"]
        group = f"{site}: bytes written per raw byte"
        rows += with_ratios(
            [
                median_row(
                    f"{site}: stream stage", [r["write_amplification"] for r in results], "B/B", "ours", group
                ),
                median_row(
                    f"{site}: pages.unique alone",
                    [r["unique_amplification"] for r in results],
                    "B/B",
                    "floor",
                    group,
                ),
            ],
            f"{site}: pages.unique alone",
        )
        group = f"{site}: seconds"
        rows += [
            median_row(
                f"{site}: caught up after the crawl's end",
                [r["caught_up_after_end_s"] for r in results],
                "s",
                "ours",
                group,
            ),
            median_row(f"{site}: crawl", [r["crawl_s"] for r in results], "s", "baseline", group),
        ]
        targets += [
            Target(f"{site}: stream stage bytes per raw byte (issue 13)", amp, "<=", 2.5, "B/B"),
            Target(f"{site}: caught up after the crawl's end (issue 13)", after, "<=", 5.0, "s"),
        ]
        # The floor of a write amplification is the raw topic itself: 1 byte per raw byte.
        headline.append(
            Headline(
                f"stream writes ({site})", amp, 1.0, "B per raw B", "stream stage", "pages.raw", "lower", 2.5
            )
        )
        for n, result in enumerate(results, 1):
            curve = result["lag_curve"]
            series.append(
                Series(
                    f"{site} run {n}: stream stage lag (crawl ended at {result['crawl_s']:.0f} s)",
                    "lag",
                    [float(s["t"]) for s in curve],
                    [float(s["stage_lag"]) for s in curve],
                    "seconds since the crawl started",
                    "records behind",
                )
            )
    write_result(
        BENCH + (f"-{args.label}" if args.label else ""),
        f"Stream stage on a real crawl, one worker: bytes per raw byte, catch-up {args.label}".strip(),
        rows,
        targets=targets,
        headline=headline,
        series=series,
        params={
            "sites": sites,
            "demo_pages": args.pages,
            "runs": args.runs,
            "worker_repo": str(args.worker_repo),
        },
        notes=[
            "Bytes are the broker's log segments per topic (compressed, as stored; the largest seen "
            "during the run, windowed changelogs shrink as windows expire).",
            "Caught up: the stage has committed every raw record and has no lag on any topic it reads.",
        ],
        extra={"summary": summary, "runs": runs},
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
