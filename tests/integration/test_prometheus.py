"""deploy/prometheus and deploy/grafana against the real Prometheus (Debian's package) and a live
pipeline (promtool's checks of the config and rules without services: tests/unit/control/ops): every
process's /metrics passes
``promtool check metrics``, and a Prometheus started here with our prometheus.yml and rules
(targets pointed at this test's processes) evaluates every dashboard and rule expression
without error, with data, during a crawl of the demo site through the running workers.

Own processes: a lag exporter, a follower (own group) and a crawler (default topic prefix, so the
shared workers carry its pages; pipeline runs count only their own URLs) on free ports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from control.demosite import generate_demo_site, serve_directory
from control.ops.metrics_catalog import PROCESSES, exporter_metrics, metrics_of
from crawlstream.settings import Settings, load_settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "prometheus"
DASHBOARDS = sorted((REPO / "deploy" / "grafana" / "dashboards").glob("*.json"))


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
        time.sleep(0.25)  # polling interval of a condition with a deadline
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], input=stdin, capture_output=True, text=True, timeout=60)


def dashboard_exprs() -> list[tuple[str, str]]:
    found = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                found.append((f"{path.stem}: {panel['title']}", target["expr"]))
    return found


def known_names() -> set[str]:
    names = {"up"}
    for m in [*(m for p in PROCESSES for m in metrics_of(p.package)), *exporter_metrics()]:
        names |= (
            {m.name, f"{m.name}_bucket", f"{m.name}_sum", f"{m.name}_count"}
            if m.type == "histogram"
            else {m.name}
        )
    return names


def referenced(expr: str, names: set[str]) -> set[str]:
    import re

    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", re.sub(r'"[^"]*"', "", expr)))
    return {
        w
        for w in words
        if "_" in w
        and (
            w in names or w.startswith(("crawler_", "streams_", "sink_", "follow_", "kafka_", "crawlstream_"))
        )
    }


def selectors(expr: str, names: set[str]) -> list[str]:
    """The selectors of ``expr`` (a known metric name and its label matchers)."""
    import re

    found = re.finditer(r"\b[a-z][a-z0-9_]*(\{[^}]*\})?", expr)
    return [m.group(0) for m in found if m.group(0).split("{")[0] in names]


def has_samples(prom: Prom, selector: str, at: float) -> bool:
    return bool(prom.query(f"count_over_time({selector}[1m]) >= 2", at)["data"]["result"])


def rule_count() -> int:
    return sum(
        len(re.findall(r"^\s*- alert: ", path.read_text(), re.M)) for path in (DEPLOY / "rules").glob("*.yml")
    )


def dashboard_query(expr: str) -> str:
    """A dashboard expression as Grafana sends it with every variable at its default."""
    for variable, value in (
        ("$__rate_interval", "1m"),
        ("$job", ".*"),
        ("$instance", ".*"),
        ("$prefix", "crawlstream"),
    ):
        expr = expr.replace(variable, value)
    return expr


class Prom:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def query(self, expr: str, at: float | None = None) -> dict[str, Any]:
        params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        try:
            body = get(f"{self.base}/api/v1/query?{urllib.parse.urlencode(params)}")
        except urllib.error.HTTPError as exc:
            return {"status": "error", "error": exc.read().decode()}
        result: dict[str, Any] = json.loads(body)
        return result


@pytest.fixture
def settings(stack_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The running stack with its workers (their /metrics are scraped here)."""
    monkeypatch.chdir(REPO)
    return load_settings()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
    for proc in started:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_prometheus_scrapes_a_crawl_and_evaluates_every_expression(
    settings: Settings, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    tag = f"promtest-{uuid.uuid4().hex[:8]}"
    ports = {"crawler": free_port(), "follow": free_port(), "exporter": free_port()}
    ports |= {"streams": settings.metrics.streams_port, "sink": settings.metrics.sink_port}
    ports["streams-faust"] = settings.streams.web_port
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {
        **os.environ,
        "CRAWLSTREAM_FOLLOW__GROUP_ID": tag,
        "CRAWLSTREAM_FOLLOW__METRICS_PORT": str(ports["follow"]),
    }

    def start(name: str, argv: list[str], extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with (logs / f"{name}.log").open("wb") as out:
            proc = subprocess.Popen(
                argv, cwd=REPO, env={**env, **(extra or {})}, stdout=out, stderr=subprocess.STDOUT
            )
        procs.append(proc)
        return proc

    cs = str(Path(sys.executable).with_name("crawlstream"))
    start("exporter", [cs, "exporter", "--port", str(ports["exporter"])])
    start("follow", [cs, "follow", "--quiet"])

    # Our prometheus.yml and rules verbatim; only the file_sd targets point at this test's processes.
    config_dir = tmp_path / "prometheus"
    shutil.copytree(DEPLOY, config_dir)
    for name, port in ports.items():
        (config_dir / "targets" / f"{name}.json").write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"]}]))
    prom_port = free_port()
    start(
        "prometheus",
        [
            "prometheus",
            f"--config.file={config_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
    )
    prom = Prom(prom_port)
    wait_for(lambda: get(f"{prom.base}/-/ready"), 60, "Prometheus to be ready")

    for name in ("exporter", "follow", "streams", "sink"):
        text = wait_for(lambda n=name: get(f"http://127.0.0.1:{ports[n]}/metrics"), 60, f"{name} /metrics")  # type: ignore[misc]
        lint = promtool("check", "metrics", stdin=text)
        assert lint.returncode == 0, f"{name}: {lint.stdout}{lint.stderr}"

    site = tmp_path / "site"
    generate_demo_site(site, pages=60)
    server, base_url = serve_directory(site)
    try:
        crawl = start(
            "crawler",
            [
                sys.executable,
                "-m",
                "crawlers",
                "crawl",
                "--start-url",
                f"{base_url}index.html",
                "--allow-private-host",
                base_url,  # that host, on its port only
                "--metrics-port",
                str(ports["crawler"]),
                "--job-id",
                tag,
                "--run-id",
                tag,
                "--report",
                str(tmp_path / "report.json"),
            ],
            # About a minute of crawling: every target must be scraped twice while the crawler lives,
            # also on a loaded machine where targets answer their first scrapes late.
            {"CRAWLSTREAM_CRAWL__DOWNLOAD_DELAY_S": "1.0", "CRAWLSTREAM_CRAWL__CONCURRENCY_PER_DOMAIN": "1"},
        )
        text = wait_for(lambda: get(f"http://127.0.0.1:{ports['crawler']}/metrics"), 60, "crawler /metrics")
        lint = promtool("check", "metrics", stdin=text)
        assert lint.returncode == 0, f"crawler: {lint.stdout}{lint.stderr}"

        jobs = 'job=~"crawlstream-(crawler|streams|sink|follow|exporter)"'

        def every_target_scraped_twice_while_crawling() -> float | None:
            checks = (
                f"count(count_over_time(up{{{jobs}}}[1m]) >= 2) == 5",
                f"count(up{{{jobs}}} == 1) == 5",
                "crawler_records_produced_total > 0",
                # Every stage has handled records of this crawl (on a loaded machine the stream and
                # sink stages trail the crawler: their labelled counters appear with their first record).
                "streams_events_total > 0",
                "sink_records_written_total > 0",
            )
            ok = all(prom.query(check)["data"]["result"] for check in checks)
            return time.time() if ok else None

        at = wait_for(
            every_target_scraped_twice_while_crawling, 240, "two scrapes of every target during the crawl"
        )
        assert crawl.poll() is None or crawl.returncode == 0, (logs / "crawler.log").read_text()[-3000:]
        assert crawl.wait(120) == 0, (logs / "crawler.log").read_text()[-3000:]
    finally:
        server.shutdown()
        server.server_close()

    names = known_names()
    present = {n for n in names if prom.query(f'count({{__name__="{n}"}})', at)["data"]["result"]}
    assert {"up", "kafka_brokers", "crawlstream_cdc_slot_lag_bytes"} <= present
    empty, unknown = [], []
    for where, expr in dashboard_exprs():
        expr = dashboard_query(expr)
        answer = prom.query(expr, at)
        assert answer["status"] == "success", f"{where}: {expr}: {answer.get('error')}"
        used = referenced(expr, names)
        unknown += [f"{where}: {n}" for n in used if n not in names]
        # Labelled series appear with their first event (no dead letter, no 5xx: no series), so an
        # expression must return data exactly when each of its selectors had two samples.
        if all(has_samples(prom, sel, at) for sel in selectors(expr, names)) and not answer["data"]["result"]:
            empty.append(f"{where}: {expr}")
    assert not unknown, f"dashboards use metrics no process defines: {unknown}"
    assert not empty, f"expressions without data although their metrics exist: {empty}"
    for core in (
        "crawler_records_produced_total",
        "streams_events_total",
        "sink_records_written_total",
        "kafka_consumergroup_lag",
    ):
        assert core in present, f"{core} was not scraped during the crawl"
    # faust's own sensor, from the stream worker's web server (its own job: ms-named metrics).
    faust_query = 'faust_messages_received_total{job="crawlstream-streams-faust"} > 0'
    wait_for(lambda: prom.query(faust_query)["data"]["result"] or None, 60, "faust's sensor to be scraped")

    def rules_evaluated() -> list[dict[str, Any]] | None:
        groups = json.loads(get(f"{prom.base}/api/v1/rules"))["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r["health"] != "unknown" for r in rules) else None

    rules = wait_for(rules_evaluated, 60, "every rule to be evaluated")
    assert len(rules) == rule_count()
    for rule in rules:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
        assert prom.query(rule["query"], at)["status"] == "success", rule["name"]
        missing = [n for n in referenced(rule["query"], names) if n not in names]
        assert not missing, f"{rule['name']} uses unknown metrics {missing}"
