"""``stack up --with-prometheus``'s part: the exporter and Prometheus as managed processes running
deploy/prometheus as is. Runs in a scratch state dir on free ports, so the shared stack's state
is never touched; stops what it started through the same ProcessManager ``stack down`` uses."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from rich.console import Console

from control.ops import prom_server
from control.stack.processes import ProcessManager
from crawlstream.settings import Settings, load_settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "prometheus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scraped_jobs(url: str) -> set[str]:
    with urllib.request.urlopen(f"{url}/api/v1/targets", timeout=10) as response:
        return {t["labels"]["job"] for t in json.loads(response.read())["data"]["activeTargets"]}


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.chdir(REPO)
    # The running stack's endpoints (from its stack.env) for the exporter, whose state dir moves.
    running = load_settings()
    monkeypatch.setenv("CRAWLSTREAM_KAFKA__BOOTSTRAP_SERVERS", running.kafka.bootstrap_servers)
    monkeypatch.setenv("CRAWLSTREAM_POSTGRES__URL", running.postgres.url.get_secret_value())
    monkeypatch.setenv("CRAWLSTREAM_CONNECT__URL", running.connect.url)
    monkeypatch.setenv("CRAWLSTREAM_STACK__STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CRAWLSTREAM_STACK__PROMETHEUS_PORT", str(free_port()))
    monkeypatch.setenv("CRAWLSTREAM_METRICS__EXPORTER_PORT", str(free_port()))
    return load_settings()


def test_prometheus_and_exporter_start_with_our_config(settings: Settings, tmp_path: Path) -> None:
    assert settings.stack.state_dir == tmp_path / "state"
    pm = ProcessManager(settings.stack.state_dir.resolve())
    try:
        url = prom_server.start_prometheus(settings, Console(file=None))
        assert url == f"http://127.0.0.1:{settings.stack.prometheus_port}"
        assert pm.running("prometheus")
        assert pm.running("exporter")
        expected = {
            f"crawlstream-{n}"
            for n in (
                "crawler",
                "streams",
                "streams-faust",
                "sink",
                "follow",
                "scheduler",
                "exporter",
            )
        }
        deadline = time.monotonic() + 30
        while (jobs := scraped_jobs(url)) != expected | {"prometheus"} and time.monotonic() < deadline:
            time.sleep(0.2)  # file_sd targets are discovered asynchronously: poll with a deadline
        assert jobs == expected | {"prometheus"}
        with urllib.request.urlopen(f"{url}/api/v1/rules", timeout=10) as response:
            loaded = [r for g in json.loads(response.read())["data"]["groups"] for r in g["rules"]]
        assert len(loaded) == sum(
            len(re.findall(r"^\s*- alert: ", p.read_text(), re.M)) for p in (DEPLOY / "rules").glob("*.yml")
        )
        # No scheduled run lives, so that job has no target yet; its file_sd folder is the scheduler's.
        with urllib.request.urlopen(f"{url}/api/v1/status/config", timeout=10) as response:
            assert "crawlstream-scheduled-runs" in json.loads(response.read())["data"]["yaml"]
        linked = settings.stack.state_dir / "prometheus-config" / "targets" / "scheduled-runs"
        assert linked.resolve() == (settings.stack.state_dir / "scheduler" / "targets").resolve()
        # The targets are this stack's ports (the settings'), not the defaults of deploy/prometheus.
        with urllib.request.urlopen(f"{url}/api/v1/targets", timeout=10) as response:
            active = json.loads(response.read())["data"]["activeTargets"]
        exporter = [t for t in active if t["labels"]["job"] == "crawlstream-exporter"]
        assert [t["labels"]["instance"] for t in exporter] == [f"127.0.0.1:{settings.metrics.exporter_port}"]
        again = prom_server.start_prometheus(settings, Console(file=None))  # idempotent
        assert again == url
    finally:
        for name in ("prometheus", "exporter"):
            pm.stop(name)
    assert not pm.running("prometheus")


def test_without_the_binary_it_says_what_to_install(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(prom_server.shutil, "which", lambda _name: None)
    assert prom_server.start_prometheus(settings, Console()) is None
    assert "apt-get install prometheus" in capsys.readouterr().out
    assert not ProcessManager(settings.stack.state_dir.resolve()).names()
