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

Each frontier crawl serves the web on a fresh port (new URLs for the pipeline). pages/s is pages
fetched over the time from the start of the crawl (baseline: the spider's; frontier: seeding) to
its end (baseline: the spider closed; frontier: the run found complete). CPU ms per page per
stage: the crawler processes (their reports), the stream worker, the sink worker, Kafka,
PostgreSQL and Kafka Connect (their /proc times over the crawl; the stream and sink workers keep
working on the run's pages after it ends, which is not counted). Targets (issue 12): frontier x1 >=
1.0x the baseline, frontier x2 >= 1.3x frontier x1. Prints each round and the medians.

``.venv/bin/python bench/bench_frontier.py [--rounds 3] [--hosts 200] [--pages 10]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

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
        subprocess.run(argv, check=True, capture_output=True, timeout=900)
        result: dict[str, float] = json.loads(report.read_text())
    return {
        "pages": result["pages"],
        "seconds": result["seconds"],
        "crawl_ms": 1000 * result["cpu_s"] / max(result["pages"], 1),
    }


def frontier(
    settings: Settings, web: BroadWeb, crawlers: int, concurrency: int, per_host: int, tmp: Path
) -> dict[str, float]:
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
    before = {stage: cpu_of(pid) for stage, pid in pids.items()}
    run = FrontierRun(settings, job, uuid.uuid4().hex, crawlers, tmp)
    started = time.monotonic()
    report = run.run(tmp / f"{job.name}.json")
    seconds = time.monotonic() - started
    pages = int(report["pages_fetched"])
    if report["finish_reason"] != "finished":
        raise RuntimeError(f"the frontier run ended with {report['finish_reason']}")
    out = {"pages": pages, "seconds": seconds, "crawl_ms": 1000 * float(report["cpu_s"]) / max(pages, 1)}
    for stage, pid in pids.items():
        out[f"{stage}_ms"] = 1000 * (cpu_of(pid) - before[stage]) / max(pages, 1)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--pages", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--per-host", type=int, default=4)
    args = parser.parse_args()
    settings = load_settings()
    kinds = ["baseline", "frontier x1", "frontier x2"]
    results: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
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
            order = kinds[n % 3 :] + kinds[: n % 3]
            for kind in order:
                with BroadWeb(**web_args) as web:  # type: ignore[arg-type]
                    if kind == "baseline":
                        result = baseline(web, args.concurrency, args.per_host)
                    else:
                        result = frontier(settings, web, int(kind[-1]), args.concurrency, args.per_host, tmp)
                results[kind].append(result)
                rate = result["pages"] / result["seconds"]
                stages = ", ".join(f"{k[:-3]} {v:.1f}" for k, v in result.items() if k.endswith("_ms"))
                line = f"round {n + 1} {kind:12s} {result['pages']:6.0f} pages {rate:7.1f} pages/s"
                print(f"{line}  CPU ms/page: {stages}")
    print("medians:")
    rate = {kind: statistics.median(r["pages"] / r["seconds"] for r in results[kind]) for kind in kinds}
    for kind in kinds:
        keys = [k for k in results[kind][0] if k.endswith("_ms")]
        stages = ", ".join(f"{k[:-3]} {statistics.median(r[k] for r in results[kind]):.1f}" for k in keys)
        print(f"  {kind:12s} {rate[kind]:7.1f} pages/s  CPU ms/page: {stages}")
    one, two = rate["frontier x1"] / rate["baseline"], rate["frontier x2"] / rate["frontier x1"]
    print(f"frontier x1 / baseline: {one:.2f} (target >= 1.0: {'met' if one >= 1.0 else 'not met'})")
    print(f"frontier x2 / frontier x1: {two:.2f} (target >= 1.3: {'met' if two >= 1.3 else 'not met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
