"""Every source crawls the hostile web through the whole pipeline, which carries on.

The hostile web server (tests/support/hostile.py, loopback only, bounded in time) serves every
trap the open web sets: redirect loops and chains, an infinite calendar, 50 MB and slow bodies,
gzip/deflate/brotli bombs, 100,000 links, bad encodings, 429 with Retry-After, redirects and
links to private and metadata addresses in every odd form, other schemes, a 3,000-character URL,
a page of control characters, XML bombs in sitemaps and feeds, an API whose next page never ends.

Through a pipeline of its own (tests/e2e/isolated.py: stream worker, sink worker, follower and
a distributed crawler on a topic prefix of their own), the frontier and distributed crawler
(seeded with one link), then the site, sitemap, feed, API and frontier sources (``crawlstream jobs run``)
crawl it. Afterwards:

- no request reached a refused address: the server's own log shows nothing on the decoy
  (127.0.0.1 on another port) nor on the second host;
- each crawl ended, delivered every record, and its peak RSS stayed under 1 GiB (the bound of
  the crawlers' own hostile test; the caps keep a fetch to a few MiB);
- the pipeline drained, and what the crawls produced reconciles downstream of the crawl stage
  (every raw URL reached an output, every page a row or a dead letter, one event per new row);
- no worker died, and an ordinary site crawled through the same running workers reconciles
  exactly.

The test collects every problem and fails once, listing them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from control.demosite import generate_demo_site, serve_directory
from control.run.pipeline import CrawlArgs, PipelineProbe, RunReader, crawl_counts, run_pipeline
from control.run.reconcile import reconcile
from crawlstream import offsets
from crawlstream.errors import CrawlstreamError
from crawlstream.records import LinkRecord
from crawlstream.settings import Settings
from crawlstream.urls import canonical_url, host_of
from tests.e2e.isolated import DISTRIBUTED, IsolatedPipeline
from tests.support.hostile import HostileWeb

pytestmark = pytest.mark.e2e

HOSTS = ["127.0.10.1", "127.0.10.2"]  # the crawls may reach the first (its port only), never the second
PEAK_RSS_BOUND = 1024 * 1024 * 1024
QUIET_TIMEOUT_S = 300.0
SOURCES = {
    "site": 'start_urls = ["{web}/"]',
    "sitemap": 'sitemap_urls = ["{web}/robots.txt"]',
    "feed": 'feed_urls = ["{web}/feed.xml", "{web}/xml/feed-laughs.xml", "{web}/xml/feed-xxe.xml"]',
    "api": 'api_endpoint = "{web}/api/endless?page=0"\nmax_api_pages = 40',
    # A frontier job: its own crawler process, scope and budgets, done when nothing is left.
    "frontier": 'start_urls = ["{web}/"]\nmax_pages = 400',
}


@pytest.fixture
def web() -> Iterator[HostileWeb]:
    with HostileWeb(hosts=HOSTS, max_response_s=30.0) as server:
        yield server


def run_job(web: HostileWeb, source: str, workdir: Path) -> tuple[int, dict[str, Any], str]:
    """``crawlstream jobs run`` of one source against the hostile web: (exit code, report, output)."""
    jobs = workdir / f"jobs-{source}.toml"
    seeds = SOURCES[source].format(web=web.url("").rstrip("/"))
    jobs.write_text(
        f'[jobs.hostile-{source}]\nsource = "{source}"\n{seeds}\n'
        f'allow_private_hosts = ["{web.netloc()}"]\ndownload_timeout_s = 5\nretry_times = 1\n'
    )
    report = workdir / f"report-{source}.json"
    argv = [sys.executable, "-m", "control.cli", "jobs", "run", f"hostile-{source}", "--jobs", str(jobs)]
    argv += ["--no-progress", "--report", str(report)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    output = proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.returncode, json.loads(report.read_text()) if report.exists() else {}, output


def distributed_quiet(settings: Settings, pipeline: IsolatedPipeline) -> bool:
    """Nothing left to do in the frontier loop: every request the crawler took is committed (its
    pages and links delivered first), every link the frontier took too (its requests delivered
    first), and no request arrived meanwhile."""
    t = PipelineProbe(settings).topics

    def done(group: str, topic: str) -> tuple[bool, offsets.Offsets]:
        end = offsets.end_offsets(settings, topic)
        return offsets.lag(end, offsets.committed_offsets(settings, group, topic)) == 0, end

    requests_done, requests_end = done(pipeline.crawler_group, t.requests.name)
    links_done, _ = done(settings.streams.app_id, t.links.name)
    again, end_again = done(pipeline.crawler_group, t.requests.name)
    return requests_done and links_done and again and end_again == requests_end


def test_every_source_crawls_the_hostile_web_and_the_pipeline_carries_on(
    isolated: Settings,
    pipeline: IsolatedPipeline,
    web: HostileWeb,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = isolated
    problems: list[str] = []
    pipeline.start(crawler_args=["--allow-private-host", web.netloc(), "--run-id", uuid.uuid4().hex])
    probe = PipelineProbe(settings)
    reader = RunReader(probe)
    reports: dict[str, dict[str, Any]] = {}

    # --- the frontier agent and the distributed crawler, from one seed link ----------------------
    root = web.url("/")
    seed = LinkRecord(
        url=root, canonical_url=canonical_url(root), host=host_of(root), source_url=root, depth=0
    )
    producer = Producer(settings.kafka.librdkafka(**{"enable.idempotence": True}))
    producer.produce(probe.topics.links.name, key=seed.canonical_url.encode(), value=seed.to_bytes())
    assert producer.flush(30) == 0
    started = time.monotonic()
    quiet = False
    while time.monotonic() - started < QUIET_TIMEOUT_S and not pipeline.dead():
        if web.requests_to((HOSTS[0], web.port)) and distributed_quiet(settings, pipeline):
            quiet = True
            break
        time.sleep(2.0)  # polling interval of a deadline-bounded wait
    requests = offsets.total(probe.end(probe.topics.requests.name))
    if not quiet:
        problems.append(
            f"the frontier and distributed crawler did not finish the hostile web within "
            f"{QUIET_TIMEOUT_S:.0f}s ({requests} requests so far; dead: {pipeline.dead()})"
        )

    # --- every other source ---------------------------------------------------------------------
    for source in SOURCES:
        code, report, output = run_job(web, source, tmp_path)
        reports[source] = report
        if code not in (0, 3) or report.get("finish_reason") != "finished":
            problems.append(
                f"{source}: the crawl exited {code} ({report.get('finish_reason')}): {output[-800:]}"
            )
        if report.get("delivery_failures", 0):
            problems.append(f"{source}: {report['delivery_failures']} records were not delivered")

    # --- the pipeline drains; no worker died ----------------------------------------------------
    try:
        probe.wait_drained(300, lambda _m: None)
    except CrawlstreamError as exc:
        problems.append(f"after the hostile crawls: {exc}")
    dead = pipeline.dead()
    for name in dead:
        problems.append(f"{name} died during the hostile crawls; its log ends:\n{pipeline.log_tail(name)}")
    # The distributed crawler's report (and its peak RSS) comes when it is stopped.
    if DISTRIBUTED not in dead:
        pipeline.stop(DISTRIBUTED)
        pipeline.pids.pop(DISTRIBUTED)
    if pipeline.crawler_report.exists():
        reports["distributed"] = json.loads(pipeline.crawler_report.read_text())
    else:
        problems.append("the distributed crawler wrote no report")

    # --- downstream of the crawl stage, the hostile crawls reconcile ------------------------------
    reader.poll()
    counts = reader.counts(crawl_counts(reports.values()))
    for check in reconcile(counts).checks:
        # The crawl stage's own figures (fetches, refusals, metadata records) are the crawlers'
        # test's business; from the raw topic on, nothing may be lost.
        if not check.ok and check.stage != "crawl" and not check.what.startswith("raw topic records"):
            problems.append(
                f"the hostile crawls do not reconcile: {check.stage}: {check.what}: "
                f"expected {check.expected_text}, got {check.actual}"
            )

    # --- an ordinary site through the same running workers --------------------------------------
    manifest = generate_demo_site(tmp_path / "site", pages=100)
    server, served = serve_directory(tmp_path / "site")
    try:
        args = CrawlArgs(
            start_urls=[f"{served}index.html"],
            allow_private_hosts=[served],  # that host, on its port only
            job_id="e2e-hostile-ordinary",
            run_id=uuid.uuid4().hex,
            expected_pages=manifest.expected_html_responses,
        )
        summary = run_pipeline(settings, args, timeout_s=180)
        problems += [
            f"the ordinary crawl after the hostile web does not reconcile: {c.stage}: {c.what}: "
            f"expected {c.expected_text}, got {c.actual}"
            for c in summary.checks
            if not c.ok
        ]
        problems += [f"the ordinary crawl: {note}" for note in summary.notes]
    except CrawlstreamError as exc:
        problems.append(f"the ordinary crawl after the hostile web failed: {exc}")
    finally:
        server.shutdown()
        server.server_close()  # shutdown stops serving; this closes its socket
    for name in pipeline.dead():
        if name not in dead:
            problems.append(f"{name} died after the hostile crawls; its log ends:\n{pipeline.log_tail(name)}")

    # --- bounded memory; nothing reached a refused address -------------------------------------
    for source, report in reports.items():
        peak = int(report.get("peak_rss_bytes", 0))
        if not 0 < peak < PEAK_RSS_BOUND:
            problems.append(
                f"{source}: peak RSS {peak / 2**20:.0f} MiB, bound {PEAK_RSS_BOUND / 2**20:.0f} MiB"
            )
    if web.requests_to(web.decoy):
        problems.append(f"requests reached the decoy (a refused address): {web.requests_to(web.decoy)[:5]}")
    if web.requests_to((HOSTS[1], web.port)):
        problems.append(f"requests reached the second host: {web.requests_to((HOSTS[1], web.port))[:5]}")
    if web.errors:
        problems.append(f"the hostile server itself failed: {web.errors[:3]}")

    letters = {stage: len(keys) for stage, keys in reader.letters.items()}  # dead letters by stage
    figures = {
        source: {
            k: report.get(k)
            for k in ("pages_fetched", "responses_total", "dead_letters", "peak_rss_bytes", "duration_s")
        }
        | {"refused": sum((report.get("refused") or {}).values())}
        for source, report in reports.items()
    }
    with capsys.disabled():
        print(
            f"\nhostile web: {len(web.log)} requests served, {len(web.trap_paths())} trap paths, "
            f"{requests} frontier requests, dead letters by stage {letters}"
        )
        for source, figure in figures.items():
            print(f"  {source:8} {figure}")
        for problem in problems:
            print(f"  PROBLEM: {problem}")
    assert not problems, "\n".join(problems)
