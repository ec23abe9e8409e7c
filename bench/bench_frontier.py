"""Broad-crawl speed: a frontier job with 1 and 2 crawler processes next to plain Scrapy, same web.

The web is the simulated broad web of the tests (tests/support/broadweb.py): ``--hosts`` hosts
(>= 200) on loopback addresses, ``--pages`` pages each, a think time of ``--latency`` s per
request, links within and across hosts; all pages are reachable from host 0's first page. Each
round crawls it three times, in an order that rotates between rounds:

- baseline: plain Scrapy in a fresh process, with the settings of Scrapy's "Broad Crawls" page
  (DownloaderAwarePriorityQueue, breadth-first order, no cookies, retries and redirects off, a
  15 s timeout, REACTOR_THREADPOOL_MAXSIZE 20), the same concurrency as the frontier job
  (``--concurrency`` in all, ``--per-host`` per host), robots.txt obeyed, every link followed
  within the web's hosts; items are discarded;
- frontier x1, frontier x2: a frontier job (crawlers.frontierrun) with 1 and 2 crawler processes:
  seeds to the stream stage, the frontier and ledger agents plan, the crawlers fetch and produce
  every page and link to Kafka, until the run is complete by itself. Needs the embedded stack and
  its workers (``crawlstream stack up && crawlstream workers up``).

Each frontier crawl serves the web on a fresh port (new URLs for the pipeline). Two rates:

- crawl pages/s (the issue's figure): pages fetched over the crawl, baseline: from the spider's
  start to its close (in its process); frontier: from the seeds (crawler processes started and in
  their group) until the run is found complete;
- whole-run pages/s: baseline: the Scrapy process from launch (interpreter and imports) to exit;
  frontier: the whole ``FrontierRun.run``: starting the crawler processes, their group join,
  the crawl, stopping them (their flush and group leave). Where the difference goes is printed
  (``FrontierRun.marks``).

CPU ms per page per stage: the crawler processes (their reports), the stream worker, the sink
worker, Kafka, PostgreSQL and Kafka Connect (their /proc times over the run; the stream and sink
workers keep working on the run's pages after it ends, which is not counted; Kafka and Connect
also count what they do for nobody in particular, e.g. polling). Their sum is the CPU a page
costs the machine: 2,000 ms of CPU per second on 2 cores over it is the CPU-bound ceiling, the
rate the job could reach on this machine with nothing else running (a figure that carries to
other machines: ceiling = cores x 1000 / total). The baseline's ceiling is one core's (one
Scrapy process). x2: how the pages split between the two crawlers (each owns the hosts of its
``requests`` partitions).

Targets (issue 12): frontier x1 >= 1.0x the baseline, frontier x2 >= 1.3x frontier x1, judged on
the median of the per-round ratios (each ratio from one round: same machine load). Prints each
round and the medians; writes ``bench/results/frontier.json`` (bench/results.py).

``.venv/bin/python bench/bench_frontier.py [--rounds 3] [--hosts 200] [--pages 10] [--quick]``
(``--profile DIR``: py-spy records the stream worker and the crawlers during round 1's x1 run.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.results import Headline, Row, Target, median_row, write_result  # noqa: E402
from crawlers.frontierrun import FrontierRun  # noqa: E402
from crawlers.jobs import JobSpec  # noqa: E402
from crawlstream.settings import Settings, load_settings  # noqa: E402
from tests.support.broadweb import BroadWeb  # noqa: E402

BASELINE = """
import json, sys, time, resource
from scrapy import Spider, Request
from scrapy.crawler import CrawlerProcess
from scrapy.linkextractors import LinkExtractor

seed, hosts, report = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
concurrency, per_host = int(sys.argv[4]), int(sys.argv[5])

class BroadSpider(Spider):
    name = "broad"
    allowed_domains = hosts
    start_urls = [seed]
    links = LinkExtractor()

    def parse(self, response):
        response.xpath("//title/text()").get()
        for link in self.links.extract_links(response):
            yield Request(link.url, callback=self.parse)

settings = {
    # Scrapy's "Broad Crawls" page.
    "SCHEDULER_PRIORITY_QUEUE": "scrapy.pqueues.DownloaderAwarePriorityQueue",
    "CONCURRENT_REQUESTS": concurrency,
    "CONCURRENT_REQUESTS_PER_DOMAIN": per_host,
    "REACTOR_THREADPOOL_MAXSIZE": 20,
    "LOG_LEVEL": "INFO",
    "COOKIES_ENABLED": False,
    "RETRY_ENABLED": False,
    "DOWNLOAD_TIMEOUT": 15,
    "REDIRECT_ENABLED": False,
    "AJAXCRAWL_ENABLED": True,
    "DEPTH_PRIORITY": 1,
    "SCHEDULER_DISK_QUEUE": "scrapy.squeues.PickleFifoDiskQueue",
    "SCHEDULER_MEMORY_QUEUE": "scrapy.squeues.FifoMemoryQueue",
    "ROBOTSTXT_OBEY": True,
    "TELNETCONSOLE_ENABLED": False,
}
process = CrawlerProcess(settings)
crawler = process.create_crawler(BroadSpider)
started, cpu = time.monotonic(), time.process_time()
process.crawl(crawler)
process.start()
stats = crawler.stats.get_stats()
pages = stats.get("downloader/response_status_count/200", 0)
pages -= stats.get("robotstxt/response_status_count/200", 0)
result = {"pages": pages, "seconds": time.monotonic() - started, "cpu_s": time.process_time() - cpu}
json.dump(result, open(report, "w"))
"""

STAGES = ("streams-worker", "sink-worker", "kafka", "postgres", "connect")
KINDS = ("baseline", "frontier x1", "frontier x2")
CORES = 2  # the machine the targets are set for
X1_TARGET, X2_TARGET = 1.0, 1.3


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) of a process and its children that ended."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(f) for f in fields[11:15]) / ticks


def stage_pids(settings: Settings) -> dict[str, int]:
    run = Path(settings.stack.state_dir) / "run"
    pids = {}
    for stage in STAGES:
        with contextlib.suppress(OSError, ValueError, KeyError):
            pids[stage] = int(json.loads((run / f"{stage}.pid").read_text())["pid"])
    return pids


def baseline(web: BroadWeb, concurrency: int, per_host: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        script, report = Path(tmp) / "baseline.py", Path(tmp) / "report.json"
        script.write_text(BASELINE)
        hosts = ",".join(site.host for site in web.sites)
        argv = [
            sys.executable,
            str(script),
            web.url(0, 0),
            hosts,
            str(report),
            str(concurrency),
            str(per_host),
        ]
        launched = time.monotonic()
        subprocess.run(argv, check=True, capture_output=True, timeout=900)
        wall = time.monotonic() - launched
        result: dict[str, float] = json.loads(report.read_text())
    return {
        "pages": result["pages"],
        "seconds": result["seconds"],
        "wall_s": wall,
        "crawl_ms": 1000 * result["cpu_s"] / max(result["pages"], 1),
    }


def spy(pid: int, out: Path, subprocesses: bool = False) -> subprocess.Popen[bytes] | None:
    """py-spy recording ``pid`` (our own process or one of our stack's) into ``out``, if installed."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        print("--profile: py-spy is not installed (pip install py-spy)")
        return None
    argv = [exe, "record", "-r", "50", "-f", "raw", "-o", str(out), "-p", str(pid), "--nonblocking"]
    argv += ["--subprocesses"] if subprocesses else []
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def frontier(
    settings: Settings,
    web: BroadWeb,
    crawlers: int,
    concurrency: int,
    per_host: int,
    tmp: Path,
    profile: Path | None = None,
) -> dict[str, Any]:
    job = JobSpec.model_validate(
        {
            "name": f"bench-{uuid.uuid4().hex[:8]}",
            "source": "frontier",
            "start_urls": [web.url(0, 0)],
            "follow": "any",
            "allow_private_addresses": True,
            "concurrency_per_domain": per_host,
            "concurrency": concurrency,
            "max_depth": 0,
            "max_pages_per_host": 0,
            "retry_times": 0,
            "download_timeout_s": 15,
        }
    )
    pids = stage_pids(settings)
    spies = []
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
        if "streams-worker" in pids:
            spies.append(spy(pids["streams-worker"], profile / "streams-worker.txt"))
        spies.append(spy(os.getpid(), profile / "crawlers.txt", subprocesses=True))
    before = {stage: cpu_of(pid) for stage, pid in pids.items()}
    run = FrontierRun(settings, job, uuid.uuid4().hex, crawlers, tmp)
    started = time.monotonic()
    report = run.run(tmp / f"{job.name}.json")
    wall = time.monotonic() - started
    for each in spies:
        if each is not None:
            each.send_signal(signal.SIGINT)
            each.wait(timeout=60)
    pages = int(report["pages_fetched"])
    if report["finish_reason"] != "finished":
        raise RuntimeError(f"the frontier run ended with {report['finish_reason']}")
    marks = report["marks"]
    out: dict[str, Any] = {
        "pages": pages,
        "seconds": marks["complete"] - marks["seeded"],
        "wall_s": wall,
        "marks": marks,
        "pages_per_crawler": report["pages_per_crawler"],
        "crawl_ms": 1000 * float(report["cpu_s"]) / max(pages, 1),
    }
    for stage, pid in pids.items():
        out[f"{stage}_ms"] = 1000 * (cpu_of(pid) - before[stage]) / max(pages, 1)
    return out


def cpu_stages(result: dict[str, Any]) -> dict[str, float]:
    return {k[:-3]: float(v) for k, v in result.items() if k.endswith("_ms")}


def line(result: dict[str, Any]) -> str:
    stages = cpu_stages(result)
    total = sum(stages.values())
    text = ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
    out = f"crawl {result['pages'] / result['seconds']:6.1f} pages/s, whole run "
    out += f"{result['pages'] / result['wall_s']:6.1f}; CPU ms/page: {text} (total {total:.1f})"
    if "marks" in result:
        marks = result["marks"]
        out += (
            f"; s to join {marks['crawlers_joined']:.1f}, crawl {result['seconds']:.1f}, "
            f"stop {marks['stopped'] - marks['complete']:.1f}"
        )
        if len(result["pages_per_crawler"]) > 1:
            out += f"; pages per crawler {result['pages_per_crawler']}"
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--pages", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--per-host", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="1 round of 200 hosts x 5 pages")
    parser.add_argument("--profile", type=Path, help="py-spy round 1's x1 run into this directory")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.pages = 1, 5
    settings = load_settings()
    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    web_args = {
        "hosts": args.hosts,
        "pages_per_host": args.pages,
        "latency_s": args.latency,
        "private_links": False,
    }
    print(
        f"broad web: {args.hosts} hosts x {args.pages} pages, {args.latency * 1000:.0f} ms latency; "
        f"concurrency {args.concurrency}, {args.per_host} per host"
    )
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for n in range(args.rounds):
            order = list(KINDS[n % 3 :] + KINDS[: n % 3])
            for kind in order:
                with BroadWeb(**web_args) as web:
                    if kind == "baseline":
                        result = baseline(web, args.concurrency, args.per_host)
                    else:
                        profile = args.profile if (n == 0 and kind == "frontier x1") else None
                        result = frontier(
                            settings, web, int(kind[-1]), args.concurrency, args.per_host, tmp, profile
                        )
                results[kind].append(result)
                print(f"round {n + 1} {kind:12s} {result['pages']:6.0f} pages  {line(result)}", flush=True)
    return report(args, results)


def report(args: argparse.Namespace, results: dict[str, list[dict[str, Any]]]) -> int:
    med = statistics.median
    rates = {kind: [r["pages"] / r["seconds"] for r in results[kind]] for kind in KINDS}
    walls = {kind: [r["pages"] / r["wall_s"] for r in results[kind]] for kind in KINDS}
    # Ratios within each round (same load), then their median.
    x1 = [a / b for a, b in zip(rates["frontier x1"], rates["baseline"], strict=True)]
    x2 = [a / b for a, b in zip(rates["frontier x2"], rates["frontier x1"], strict=True)]
    x1_wall = [a / b for a, b in zip(walls["frontier x1"], walls["baseline"], strict=True)]
    x2_wall = [a / b for a, b in zip(walls["frontier x2"], walls["frontier x1"], strict=True)]
    print("medians:")
    rows: list[Row] = []
    totals: dict[str, float] = {}
    for kind in KINDS:
        stages = {k: [cpu_stages(r)[k] for r in results[kind]] for k in cpu_stages(results[kind][0])}
        total = [sum(cpu_stages(r).values()) for r in results[kind]]
        totals[kind] = med(total)
        cores = 1 if kind == "baseline" else CORES
        ceiling = cores * 1000 / totals[kind]
        text = ", ".join(f"{k} {med(v):.1f}" for k, v in stages.items())
        print(
            f"  {kind:12s} crawl {med(rates[kind]):6.1f} pages/s, whole run {med(walls[kind]):6.1f}; "
            f"CPU ms/page: {text}, total {totals[kind]:.1f}; CPU-bound ceiling {ceiling:.0f} pages/s "
            f"({cores} core{'s' if cores > 1 else ''})"
        )
        role = "floor" if kind == "baseline" else "ours"
        rows.append(median_row(kind, rates[kind], "pages/s", role, "crawl pages/s"))
        rows.append(median_row(kind, walls[kind], "pages/s", role, "whole-run pages/s"))
        for stage, values in stages.items():
            rows.append(median_row(f"{kind}: {stage}", values, "CPU ms/page", role, f"CPU ms/page, {kind}"))
        rows.append(median_row(f"{kind}: total", total, "CPU ms/page", role, "CPU ms/page, all stages"))
        rows.append(
            Row(f"{kind}: CPU-bound ceiling", ceiling, "pages/s", role, "CPU-bound ceiling",
                note=f"{cores} x 1000 ms / total CPU ms per page")
        )  # fmt: skip
    for row in rows:
        if row.group == "crawl pages/s" and row.name == "frontier x1":
            row.ratio = med(x1)
        if row.group == "crawl pages/s" and row.name == "frontier x2":
            row.ratio = med(x2)  # over x1
            row.note = "ratio: over frontier x1"
        if row.group == "whole-run pages/s" and row.name == "frontier x1":
            row.ratio = med(x1_wall)
        if row.group == "whole-run pages/s" and row.name == "frontier x2":
            row.ratio, row.note = med(x2_wall), "ratio: over frontier x1"
    one, two = med(x1), med(x2)
    for name, ratios, walled, target in (
        ("frontier x1 / baseline", x1, x1_wall, X1_TARGET),
        ("frontier x2 / frontier x1", x2, x2_wall, X2_TARGET),
    ):
        verdict = "met" if med(ratios) >= target else "not met"
        print(
            f"{name} (median of rounds {[round(r, 2) for r in ratios]}): {med(ratios):.2f} "
            f"(target >= {target}: {verdict}); whole run {med(walled):.2f}"
        )
    splits = [r["pages_per_crawler"] for r in results["frontier x2"]]
    write_result(
        "frontier",
        f"Broad crawl: frontier job x1/x2 vs plain Scrapy, {args.hosts} hosts x {args.pages} pages, "
        f"{args.latency * 1000:.0f} ms latency",
        rows,
        targets=[
            Target("frontier x1 / plain Scrapy, crawl pages/s (issue 12)", one, ">=", X1_TARGET, "x"),
            Target("frontier x2 / frontier x1, crawl pages/s (issue 12)", two, ">=", X2_TARGET, "x"),
        ],
        headline=[
            Headline(
                "broad crawl x1 (pages/s)",
                med(rates["frontier x1"]),
                med(rates["baseline"]),
                "pages/s",
                "frontier x1",
                "plain Scrapy",
                target=X1_TARGET,
                ratio=one,
            ),
            Headline(
                "broad crawl x2 over x1 (pages/s)",
                med(rates["frontier x2"]),
                med(rates["frontier x1"]),
                "pages/s",
                "frontier x2",
                "frontier x1",
                target=X2_TARGET,
                ratio=two,
            ),
        ],
        params={
            "rounds": args.rounds,
            "hosts": args.hosts,
            "pages_per_host": args.pages,
            "latency_s": args.latency,
            "concurrency": args.concurrency,
            "per_host": args.per_host,
        },
        notes=[
            "crawl pages/s: baseline from the spider's start to its close; frontier from the seeds "
            "(crawlers started and joined) until the run is found complete. Whole run: baseline "
            "process launch to exit; frontier FrontierRun.run (crawler start, join, crawl, stop).",
            "Ratios: the median of per-round ratios (each round's figures share the machine's load).",
            f"CPU-bound ceiling: cores x 1000 / total CPU ms per page over every stage "
            f"(frontier {CORES} cores, plain Scrapy 1: one process).",
            f"x2 pages per crawler, per round: {splits}.",
        ],
        extra={"runs": results},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
