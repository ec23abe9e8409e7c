"""Frontier jobs on the real stack and a simulated broad web (tests/support/broadweb.py).

Each test serves its web on a fresh port (new canonical URLs for the pipeline) and runs a frontier
job: seeds -> the stream stage's frontier and ledger -> crawler processes -> pages and links ->
... until the run is complete by itself. Everything is judged on the server side (what was
fetched, how many requests a host had open at once, gaps) and against the web's link graph.
"""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from control.run.frontierjob import run_frontier_job
from control.run.pipeline import RunSummary
from crawlers.frontierrun import FrontierRun
from crawlers.jobs import JobSpec
from crawlstream.records import RunEvent
from crawlstream.settings import Settings
from crawlstream.topics import catalog
from tests.integration.kafka_read import read_topic
from tests.support.broadweb import BroadWeb

pytestmark = pytest.mark.e2e
PER_HOST = 4


def job(web: BroadWeb, **fields: Any) -> JobSpec:
    values: dict[str, Any] = {
        "name": f"e2e-{uuid.uuid4().hex[:8]}",
        "source": "frontier",
        "start_urls": [web.url(0, 0)],
        "follow": "any",
        "allow_private_addresses": True,  # the broad web is on loopback
        "concurrency_per_domain": PER_HOST,
        "concurrency": 64,
        "max_depth": 8,
        "retry_times": 3,
        "download_timeout_s": 20,
    }
    values.update(fields)
    return JobSpec.model_validate(values)


def fetched_once(web: BroadWeb) -> tuple[set[str], list[str]]:
    served = web.fetched(200)
    return set(served), sorted({u for u in served if served.count(u) > 1})


# The stream stage's per-domain stats windows sometimes dead-letter a window they close (a None
# accumulator, streams/stats.py): those letters have no origin, but the pipeline's touches check
# counts every stream-stage dead letter of the interval. The tests check raw = unique + touches
# themselves instead (see first_crawl_reconciles).
WINDOW_LETTERS = "unchanged touches = raw records - unique records - dead letters"


def stream_checks(summary: RunSummary) -> list[Any]:
    failed = [
        (c.stage, c.what, c.expected, c.actual)
        for c in summary.checks
        if not c.ok and c.what != WINDOW_LETTERS
    ]
    return failed + summary.notes if failed else []


def first_crawl_reconciles(summary: RunSummary) -> None:
    assert stream_checks(summary) == []
    assert summary.raw_records == summary.unique_new + summary.touches
    assert summary.touches == 0


def test_broad_crawl_with_two_crawlers_is_complete_polite_and_stops_by_itself(
    stack_settings: Settings, tmp_path: Path
) -> None:
    with BroadWeb(
        hosts=100,
        pages_per_host=6,
        big_pages=60,
        latency_s=0.02,
        rate_limited=[3, 4],
        trap=True,
        crawl_delay={5: 0.5},
    ) as web:
        spec = job(web, crawlers=2, max_pages_per_host=80)
        run_id = uuid.uuid4().hex
        summary = run_frontier_job(stack_settings, spec, run_id, timeout_s=180)
        report = summary.crawl

        assert report["finish_reason"] == "finished"
        first_crawl_reconciles(summary)
        # Coverage 1.0, from the link graph; each page fetched once between the two processes.
        reachable = web.reachable([web.url(0, 0)])
        fetched, twice = fetched_once(web)
        assert reachable <= fetched
        assert twice == []
        assert len(reachable) == 99 * 6 + 60 - 6 - 0  # every page of every host but the trap
        # The trap ends at max_depth; the rest of what was fetched is exactly the reachable set.
        assert {u for u in fetched if "/cal/" not in u} == reachable
        assert 0 < len([u for u in fetched if "/cal/" in u]) <= 8
        # Polite, on the server side: open requests per host, Retry-After, Crawl-delay.
        assert max(web.peak_in_flight().values()) <= PER_HOST
        assert web.violations == []
        # Arrivals, not sends: on a loaded machine a late arrival shortens the gap after it (and
        # lengthens the one before), so every gap holds half the Crawl-delay and their median all
        # of it; a delay that is not applied gives gaps of the 20 ms latency.
        gaps = web.gaps(web.sites[5].host)
        assert len(gaps) >= 5
        assert min(gaps) >= 0.5 / 2, gaps
        assert statistics.median(gaps) >= 0.5 - 0.02, gaps
        assert web.errors == []
        # Both processes crawled; the ledger closed every request it admitted.
        assert report["crawler_reports"] == 2
        progress = report["frontier"]
        assert progress["admitted"] == progress["closed"]
        assert progress["fetched"] == report["pages_fetched"] == len(fetched)
        assert progress["failed"] == 0
        assert progress["refused"].get("robots", 0) > 0  # the /private/ links, refused by robots.txt
        events = [
            RunEvent.model_validate_json(v)
            for _, v in read_topic(stack_settings, catalog(stack_settings).runs.name)
        ]
        finished = [e for e in events if e.run_id == run_id and e.event == "finished"]
        assert [e.outcome for e in finished] == ["succeeded"]


def test_kill_9_of_a_crawler_hands_its_hosts_to_the_other_and_loses_nothing(
    stack_settings: Settings, tmp_path: Path
) -> None:
    with BroadWeb(hosts=40, pages_per_host=10, latency_s=0.05) as web:
        spec = job(web, crawlers=2, max_pages_per_host=0)
        run = FrontierRun(stack_settings, spec, uuid.uuid4().hex, 2, tmp_path)
        result: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda: result.update(run.run(tmp_path / "report.json")), daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 120
        while len(web.fetched(200)) < 100:
            assert time.monotonic() < deadline, "the crawl did not start"
            time.sleep(0.1)  # poll the server log until enough was fetched
        victim = run.procs[0]
        os.kill(victim.pid, signal.SIGKILL)
        thread.join(timeout=300)
        assert not thread.is_alive()

        assert result["finish_reason"] == "finished"
        reachable = web.reachable([web.url(0, 0)])
        fetched, _twice = fetched_once(web)  # the killed process's unfinished requests come again
        assert reachable <= fetched
        assert max(web.peak_in_flight().values()) <= PER_HOST
        assert result["crawler_exit_codes"][0] == -signal.SIGKILL


def test_scope_depth_and_budgets_are_enforced_and_counted(stack_settings: Settings, tmp_path: Path) -> None:
    with BroadWeb(hosts=12, pages_per_host=10, latency_s=0.005, cross_links=2) as web:
        seed = web.url(0, 0)

        def crawl(**fields: Any) -> tuple[dict[str, Any], set[str]]:
            mark = len(web.hits)
            run = FrontierRun(stack_settings, job(web, **fields), uuid.uuid4().hex, 1, tmp_path)
            report = run.run(tmp_path / f"{uuid.uuid4().hex}.json")
            assert report["finish_reason"] == "finished"
            hits = web.hits[mark:]
            return report["frontier"], {
                f"http://{h.host}:{web.port}{h.path}" for h in hits if h.path.startswith("/p/")
            }

        # same-host: host 0's pages only; the other hosts' links are counted offsite.
        progress, got = crawl(follow="same-host")
        assert got == {u for u in web.reachable([seed]) if u.startswith(f"http://{web.sites[0].host}:")}
        assert progress["refused"]["offsite_host"] > 0
        # max_depth 1: the seed and what it links to.
        progress, got = crawl(max_depth=1)
        assert got == web.reachable([seed], max_depth=1)
        assert progress["refused"]["too_deep"] > 0
        # Budgets: 25 requests in all, 2 per host, 5 hosts.
        progress, got = crawl(max_pages=25, max_pages_per_host=2, max_hosts=5)
        assert progress["admitted"] == len(got) <= 10
        hosts = {u.split("/")[2] for u in got}
        assert len(hosts) == 5
        assert all(sum(u.split("/")[2] == h for u in got) <= 2 for h in hosts)
        assert progress["refused"]["max_hosts"] > 0
        assert progress["refused"]["host_budget"] > 0
        progress, got = crawl(max_pages=7)
        assert progress["admitted"] == len(got) == 7
        assert progress["refused"]["max_pages"] > 0
        # deny: no page matching it is fetched, each refusal counted.
        progress, got = crawl(deny=[r"/p/[5-9]$"])
        assert got
        assert not any(u.rsplit("/", 1)[1] in "56789" for u in got if "/p/" in u and u != seed)
        assert progress["refused"]["filtered"] > 0


def test_a_huge_host_does_not_delay_the_small_ones(stack_settings: Settings, tmp_path: Path) -> None:
    with BroadWeb(hosts=31, pages_per_host=3, big_pages=600, latency_s=0.02, cross_links=0) as web:
        run = FrontierRun(
            stack_settings, job(web, crawlers=1, max_pages_per_host=0), uuid.uuid4().hex, 1, tmp_path
        )
        report = run.run(tmp_path / "report.json")
        assert report["finish_reason"] == "finished"
        first = web.first_fetch()
        big = web.sites[1].host
        big_fetches = sorted(h.start for h in web.hits if h.host == big and h.path.startswith("/p/"))
        assert len(big_fetches) == 600
        small = [host for host in first if host not in (big, web.sites[0].host)]
        assert len(small) == 29
        # Time to first fetch: every small host is reached before the big host is 1/6 done.
        assert max(first[h] for h in small) < big_fetches[100]


def test_a_recrawl_sends_validators_and_304s_become_touches(stack_settings: Settings, tmp_path: Path) -> None:
    with BroadWeb(hosts=10, pages_per_host=5, latency_s=0.005, private_links=False) as web:
        spec = job(web, crawlers=1)
        first = run_frontier_job(stack_settings, spec, uuid.uuid4().hex, timeout_s=180)
        assert first.crawl["finish_reason"] == "finished"
        first_crawl_reconciles(first)
        pages = len(web.reachable([web.url(0, 0)]))
        assert first.unique_new == pages
        web.change(2, [0, 1, 2])
        served_before = len(web.hits)

        # control.run.pipeline counts a row whose stored_at moved (a changed page's new version) as
        # a new row, and expects a create event for every key of the unique topic (changed pages
        # are there too): those checks fail for any recrawl that changes pages, whatever crawled
        # it (reported to the pipeline's owners); every other check must reconcile.
        second = run_frontier_job(stack_settings, spec, uuid.uuid4().hex, timeout_s=30)
        assert second.crawl["finish_reason"] == "finished"
        changed_rows = {
            "new rows = unique pages",
            "create events = new rows",
            "every new URL has its create event",
        }
        assert {c[1] for c in stream_checks(second) if isinstance(c, tuple)} <= changed_rows
        statuses = [h.status for h in web.hits[served_before:] if h.path.startswith("/p/")]
        assert statuses.count(304) == pages - 3
        assert statuses.count(200) == 3
        progress = second.crawl["frontier"]
        assert (progress["not_modified"], progress["fetched"]) == (pages - 3, 3)
        # A 304 is a touch: no new version, no change event; the changed pages are versions.
        assert second.touches == pages - 3
        # The changed pages' new versions (PageEvent "changed"); no page is new to the pipeline.
        assert len(second.counts.unique_changed_urls & second.counts.crawl.urls) == 3
        assert second.unique_new == 0
        assert second.cdc_creates == 0


def test_jobs_stop_ends_the_run_cleanly_and_a_new_run_starts_afresh(
    stack_settings: Settings, tmp_path: Path
) -> None:
    import subprocess
    import sys

    from crawlstream.records import RunProgress

    with BroadWeb(hosts=20, pages_per_host=30, latency_s=0.2) as web:
        name = f"e2e-stop-{uuid.uuid4().hex[:6]}"
        jobs = tmp_path / "jobs.toml"
        jobs.write_text(
            f'[jobs.{name}]\nsource = "frontier"\nstart_urls = ["{web.url(0, 0)}"]\nfollow = "any"\n'
            "allow_private_addresses = true\ncrawlers = 2\nconcurrency_per_domain = 2\n"
        )
        cli = [sys.executable, "-m", "control.cli", "jobs"]
        with (tmp_path / "run.log").open("wb") as log:  # the child keeps its own descriptor
            runner = subprocess.Popen(
                [*cli, "run", name, "--jobs", str(jobs)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 120
        while len(web.fetched(200)) < 30:
            assert runner.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the run did not start fetching"
            time.sleep(0.1)  # poll the server log
        stop = subprocess.run([*cli, "stop", name], capture_output=True, text=True, timeout=60)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert runner.wait(timeout=180) == 0, (tmp_path / "run.log").read_text()[-3000:]
        len(web.fetched(None))
        reachable = web.reachable([web.url(0, 0)])
        assert len(web.fetched(200)) < len(reachable)  # stopped before the end

        topics = catalog(stack_settings)
        events = [RunEvent.model_validate_json(v) for _, v in read_topic(stack_settings, topics.runs.name)]
        [finished] = [e for e in events if e.job_id == name and e.event == "finished"]
        assert finished.outcome == "stopped"
        progress = [
            RunProgress.model_validate_json(v)
            for k, v in read_topic(stack_settings, topics.frontier_progress.name)
            if v and k == finished.run_id.encode()
        ]
        assert progress[-1].state == "stopped"
        assert not (Path(stack_settings.stack.state_dir) / "frontier" / f"{name}.json").exists()
        # Nothing half-done: a new run of the job is complete (the stopped run's leftover requests
        # are skipped, its URLs are requested again, with their validators).
        mark = len(web.hits)
        spec = JobSpec.model_validate({**job(web).model_dump(), "name": name, "crawlers": 2})
        report = FrontierRun(stack_settings, spec, uuid.uuid4().hex, 2, tmp_path).run(tmp_path / "again.json")
        assert report["finish_reason"] == "finished"
        served = {f"http://{h.host}:{web.port}{h.path}" for h in web.hits[mark:] if h.status in (200, 304)}
        assert reachable <= served
        assert max(web.peak_in_flight().values()) <= PER_HOST
