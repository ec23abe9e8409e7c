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
import threading
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
    Offsets,
    PipelineLag,
    isolated,
    sink_worker,
    stage_written,
    topic_bytes,
    worker,
)
from control.demosite import generate_demo_site
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


STAGES = ("streams", "sink", "cdc")


def serve(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Serve ``root`` from its own process (``python -m control.demosite serve``): in this
    one its threads would share the GIL with the lag sampler's decoding, and serve slower."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "control.demosite", "serve", "--dir", str(root)],
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    base_url = proc.stdout.readline().decode().strip()  # its first line: where it listens
    if not base_url.startswith("http://"):
        proc.kill()
        raise SystemExit(f"the site server did not start: {base_url!r}")
    return proc, base_url


class StageSampler:
    """Samples :class:`PipelineLag` (every stage's lag) and the topics' on-disk sizes about every
    ``interval_s`` from a background thread; ``t`` is seconds since the recorder started."""

    def __init__(self, lag: PipelineLag, settings: Settings, interval_s: float = 1.0) -> None:
        self.lag, self.settings, self.interval_s = lag, settings, interval_s
        self.samples: list[dict[str, float]] = []
        self.sizes: dict[str, int] = {}
        self.latest: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.monotonic()

    def __enter__(self) -> StageSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            at = time.monotonic() - self.started
            try:
                sample = {"t": round(at, 2), **self.lag.sample()}
                self.samples.append(sample)
                self.latest = sample
                for topic, size in topic_bytes(self.settings).items():
                    self.sizes[topic] = max(self.sizes.get(topic, 0), size)
            except Exception as exc:  # a topic created meanwhile, a slow answer: next time
                print(f"lag sample skipped: {exc}", file=sys.stderr)
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - self.started - at)))


def one_run(site: str, pages: int, worker_repo: Path, timeout_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-crawl-") as tmp:
        if site == "demo":
            root = Path(tmp) / "site"
            generate_demo_site(root, pages=pages)
            start = "index.html"
        else:
            root, start = DOCS, "index.html"
        server, base_url = serve(root)
        try:
            with (
                isolated(f"crawl-{site}") as (settings, env),
                worker(env, repo=worker_repo) as running,
                sink_worker(env) as (sink, sink_port),
            ):
                lag = PipelineLag(settings, env["CRAWLSTREAM_STREAMS__APP_ID"] + "-sink", sink_port, base_url)
                try:
                    with StageSampler(lag, settings, interval_s=1.0) as sampler:
                        started = time.monotonic()
                        report = crawl(settings, env, base_url + start, base_url, Path(tmp) / "crawl.log")
                        crawl_end = time.monotonic()
                        raw = catalog(settings).raw_pages.name
                        deadline = crawl_end + timeout_s
                        caught: dict[str, float] = {}
                        # A stage has caught up once it has no lag and every stage before it has
                        # too (a stage with nothing left upstream): the first such moment per stage.
                        while len(caught) < len(STAGES):
                            now = lag.sample()
                            upstream_done = lag.offsets.committed(raw) >= lag.offsets.end(raw)
                            for stage in STAGES:
                                upstream_done = upstream_done and now[stage] == 0
                                if upstream_done and stage not in caught:
                                    caught[stage] = time.monotonic() - crawl_end
                            for name, proc in (("stream", running), ("sink", sink)):
                                if proc.proc.poll() is not None:
                                    raise SystemExit(f"the {name} worker exited:\n{proc.tail()}")
                            if time.monotonic() > deadline:
                                raise SystemExit(
                                    f"not caught up {timeout_s:.0f}s after the crawl: {now}\n"
                                    f"{running.tail()}\n{sink.tail()}"
                                )
                            time.sleep(0.1)  # poll interval
                        time.sleep(1.5)  # one more lag sample after the catch-up, for the curve
                    crawl_s = crawl_end - started
                    shift = started - sampler.started  # t from the crawl's start
                    samples = [{**s, "t": round(s["t"] - shift, 2)} for s in sampler.samples]
                finally:
                    lag.close()
                sizes = {t: max(sampler.sizes.get(t, 0), n) for t, n in topic_bytes(settings).items()}
                written = stage_written(settings, sizes)
                raw_bytes = sizes.get(raw, 0)
                unique = sizes.get(catalog(settings).unique_pages.name, 0)
                return {
                    "site": site,
                    "pages_fetched": report.get("pages_fetched"),
                    "raw_records": offsets_end(settings),
                    "rows_changed": samples[-1].get("rows_changed") if samples else None,
                    "crawl_s": round(crawl_s, 2),
                    "caught_up_after_end_s": {stage: round(caught[stage], 2) for stage in STAGES},
                    "raw_bytes": raw_bytes,
                    "stage_bytes": sum(written.values()),
                    "write_amplification": sum(written.values()) / raw_bytes,
                    "unique_amplification": unique / raw_bytes,
                    "bytes_by_topic": written,
                    "lag_curve": samples,
                }
        finally:
            server.terminate()
            server.wait(30)


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
    # The Python docs first: their runs are short, so a session cut short still has their median.
    sites = ["docs", "demo"] if args.site == "both" else [args.site]
    runs: dict[str, list[dict[str, Any]]] = {site: [] for site in sites}
    for site in sites:
        for _ in range(args.runs):
            result = one_run(site, args.pages, args.worker_repo.resolve(), args.timeout)
            runs[site].append(result)
            caught = ", ".join(f"{k} {v}s" for k, v in result["caught_up_after_end_s"].items())
            print(
                f"{site}: {result['pages_fetched']} pages in {result['crawl_s']}s, caught up after "
                f"the end: {caught}; amplification {result['write_amplification']:.2f}",
                file=sys.stderr,
            )
            # The record so far after every run: a long session stopped early keeps what it measured.
            record(args, {k: v for k, v in runs.items() if v})
    return 0


def record(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]]) -> None:
    """Print the table and write the result of the runs so far."""
    sites = list(runs)
    counts = ", ".join(f"{site} {len(results)}" for site, results in runs.items())
    title = f"the pipeline on a real crawl, one stream and one sink worker, median of runs ({counts})"
    table = Table(title=title)
    for column in ("site", "figure", "value", "floor / peer", "ratio", "target"):
        table.add_column(column, justify="left" if column in ("site", "figure", "floor / peer") else "right")
    summary: dict[str, Any] = {}
    for site, results in runs.items():
        amp = statistics.median(r["write_amplification"] for r in results)
        unique = statistics.median(r["unique_amplification"] for r in results)
        after = {s: statistics.median(r["caught_up_after_end_s"][s] for r in results) for s in STAGES}
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
        for stage in STAGES:
            table.add_row(
                site,
                f"{stage} caught up after crawl end",
                f"{after[stage]:.1f} s",
                f"crawl {crawl_s:.0f} s, {pages:.0f} pages",
                f"{pages / crawl_s:.0f} pages/s",
                "<= 5 s",
            )
        top = list(results[0]["bytes_by_topic"].items())[:6]
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
                f"{site}: {stage} caught up after the crawl's end",
                [r["caught_up_after_end_s"][stage] for r in results],
                "s",
                "ours",
                group,
            )
            for stage in STAGES
        ]
        rows.append(median_row(f"{site}: crawl", [r["crawl_s"] for r in results], "s", "baseline", group))
        targets.append(Target(f"{site}: stream stage bytes per raw byte (issue 13)", amp, "<=", 2.5, "B/B"))
        targets += [
            Target(f"{site}: {stage} caught up after the crawl's end (issue 13)", t, "<=", 5.0, "s")
            for stage, t in after.items()
        ]
        # The floor of a write amplification is the raw topic itself: 1 byte per raw byte.
        headline.append(
            Headline(
                f"stream writes ({site}{', ' + args.label if args.label else ''})",
                amp,
                1.0,
                "B per raw B",
                "stream stage",
                "pages.raw",
                "lower",
                2.5,
            )
        )
        # The curves of the median run (by the last stage's catch-up), one per stage.
        ordered = sorted(results, key=lambda r: r["caught_up_after_end_s"]["cdc"])
        result = ordered[len(ordered) // 2]
        curve = result["lag_curve"]
        for stage in STAGES:
            series.append(
                Series(
                    f"{site}: {stage} lag (crawl ended at {result['crawl_s']:.0f} s)",
                    "lag",
                    [float(s["t"]) for s in curve],
                    [float(s[stage]) for s in curve],
                    "seconds since the crawl started",
                    "records behind",
                )
            )
    write_result(
        BENCH + (f"-{args.label}" if args.label else ""),
        f"The pipeline on a real crawl, one stream and one sink worker: bytes per raw byte, "
        f"catch-up per stage {args.label}".strip(),
        rows,
        targets=targets,
        headline=headline,
        series=series,
        params={
            "sites": sites,
            "demo_pages": args.pages,
            "runs": args.runs,
            "runs_done": {site: len(results) for site, results in runs.items()},
            "worker_repo": str(args.worker_repo),
        },
        notes=[
            "Bytes are the broker's log segments per topic (compressed, as stored; the largest seen "
            "during the run, windowed changelogs shrink as windows expire).",
            "Caught up after the end, per stage: seconds from the crawl process's exit until the "
            "stage and every stage before it have no lag: streams (stream group on every topic it "
            "reads), sink (offsets the sink stored in Postgres on pages.unique, pages.touches, stats, "
            "runs), cdc (pages rows the sink changed, per its sink_rows_changed_total, each with its "
            "URL on cdc.public.pages and on outbox.event.page; only the run's URLs are counted).",
            "One stream worker and one sink worker of the run's own (isolated topics and groups); "
            "the stack's Debezium connectors.",
        ],
        extra={"summary": summary, "runs": runs},
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
