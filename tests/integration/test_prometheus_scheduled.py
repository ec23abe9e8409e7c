"""Scheduled crawl runs reach the crawler dashboard: a real scheduler (thread of this test) starts a
one-minute cron job as a real ``crawlstream jobs run`` process on a port it picks, announces it as
a file_sd target, and a Prometheus running deploy/prometheus (as ``stack up --with-prometheus``
renders it, targets/scheduled-runs linked to the scheduler's folder) scrapes the run's crawler
metrics under job ``crawlstream-scheduled-runs`` with label ``crawl_job``; the crawler dashboard's
panels then return data for it; when the run ends its target is withdrawn.

Waits for a real minute boundary (up to ~60 s). Own topic prefix, state dir and ports.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from control.demosite import generate_demo_site, serve_directory
from control.ops.prom_server import render_config
from crawlers.jobs import load_jobs
from crawlers.scheduler import TARGETS_FILE, ProcessLauncher, Scheduler
from crawlstream.settings import load_settings
from crawlstream.topics import catalog, ensure_topics

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CRAWLER_BOARD = REPO / "deploy" / "grafana" / "dashboards" / "crawler.json"
JOBS = """
[jobs.minutely]
start_urls = ["{base}index.html"]
allow_private_hosts = ["{base}"]  # that host, on its port only
max_pages = 30
download_delay_s = 0.5
concurrency_per_domain = 1
schedule = "* * * * *"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if result := condition():
                return result
        except OSError:
            pass
        time.sleep(0.5)  # polling interval of a condition with a deadline
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=10) as response:
        result: list[dict[str, Any]] = json.loads(response.read())["data"]["result"]
    return result


def test_a_scheduled_run_is_scraped_and_fills_the_crawler_dashboard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("CRAWLSTREAM_KAFKA__TOPIC_PREFIX", f"test-schedprom-{uuid.uuid4().hex[:8]}")
    running = load_settings()  # the stack's endpoints, before the state dir moves
    monkeypatch.setenv("CRAWLSTREAM_KAFKA__BOOTSTRAP_SERVERS", running.kafka.bootstrap_servers)
    monkeypatch.setenv("CRAWLSTREAM_STACK__STATE_DIR", str(tmp_path / "state"))
    settings = load_settings()
    topics = catalog(settings)
    ensure_topics(settings, [topics.raw_pages, topics.dead_letter, topics.runs])
    generate_demo_site(tmp_path / "site", pages=30)
    server, base = serve_directory(tmp_path / "site")
    jobs_file = tmp_path / "jobs.toml"
    jobs_file.write_text(JOBS.format(base=base))
    state_dir = settings.stack.state_dir
    scheduler = Scheduler(
        load_jobs(jobs_file),
        state_dir,
        ProcessLauncher(jobs_file, state_dir / "logs"),
        metrics_host="127.0.0.1",
    )
    prom_port = free_port()
    with (tmp_path / "prometheus.log").open("wb") as prometheus_log:  # the child keeps its own
        prometheus = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={render_config(settings, tmp_path / 'prometheus-config')}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=prometheus_log,
        )
    prom = f"http://127.0.0.1:{prom_port}"
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run_forever, args=(stop, 0.2), daemon=True)
    thread.start()
    try:

        def ready() -> bool:
            with urllib.request.urlopen(f"{prom}/-/ready", timeout=2) as answer:
                return bool(answer.status == 200)

        wait_for(ready, 60, "Prometheus")
        state = wait_for(
            lambda: (st := scheduler.state.get("minutely")) is not None and st.pid is not None and st,
            90,
            "the scheduled run to start",
        )
        announced = json.loads((state_dir / "scheduler/targets" / TARGETS_FILE).read_text())
        assert announced == [
            {"targets": [f"127.0.0.1:{state.metrics_port}"], "labels": {"crawl_job": "minutely"}}
        ]
        selector = 'crawler_pages_fetched_total{job="crawlstream-scheduled-runs", crawl_job="minutely"}'
        scraped = wait_for(
            lambda: query(prom, f"count_over_time({selector}[1m]) >= 2"), 60, "two scrapes of the run"
        )
        assert scraped[0]["metric"]["instance"] == f"127.0.0.1:{state.metrics_port}"
        # The crawler dashboard's panels, as Grafana asks with its variables at their defaults.
        board = json.loads(CRAWLER_BOARD.read_text())
        crawling = [
            target["expr"]
            for panel in board["panels"]
            if panel["title"] in ("responses/s by status class", "records delivered and refused/s")
            for target in panel["targets"][:1]
        ]
        for expr in crawling:
            grafana = expr.replace("$__rate_interval", "20s").replace("$job", "crawlstream-scheduled-runs")
            grafana = grafana.replace("$instance", ".*")
            assert wait_for(lambda q=grafana: query(prom, q), 30, f"data for {grafana}")  # type: ignore[misc]
        # The run ends: its target is withdrawn on the scheduler's next tick.
        wait_for(lambda: scheduler.state["minutely"].pid is None, 180, "the run to end")
        targets = json.loads((state_dir / "scheduler/targets" / TARGETS_FILE).read_text())
        assert targets == []
        assert scheduler.state["minutely"].metrics_port is None
    finally:
        stop.set()
        thread.join(10)
        prometheus.terminate()
        prometheus.wait(30)
        server.shutdown()
        server.server_close()
