"""``crawlstream stack up --with-prometheus``: a local Prometheus running deploy/prometheus.

Starts two managed processes of the embedded stack (pidfiles in ``<state_dir>/run``, logs in
``<state_dir>/logs``, stopped by ``stack down`` with the workers): the lag exporter
(``crawlstream exporter`` on ``metrics.exporter_port``) and Debian's ``prometheus`` binary on
``127.0.0.1:<stack.prometheus_port>``, its data under ``<state_dir>/prometheus``. Without the
binary it says how to get one and starts nothing.

Its configuration is deploy/prometheus's, in ``<state_dir>/prometheus-config``: prometheus.yml and
the rules copied as they are, and the file_sd targets (the part a deployment owns) rewritten with
the host and ports the settings name, so a stack on other ports is scraped where it runs;
``targets/scheduled-runs`` links to the scheduler's live run targets (crawlers/scheduler.py).
"""

from __future__ import annotations

import json
import shutil
import sys
import urllib.request
from pathlib import Path

from rich.console import Console

from control.stack.deploy_data import deploy_dir
from control.stack.processes import ProcessManager, wait_until
from crawlstream.settings import Settings

DEPLOY = deploy_dir() / "prometheus"


def _answers(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (our http:// URLs)
            return None if response.status == 200 else f"{url} answered {response.status}"
    except OSError as exc:
        return f"{url} not answering ({exc})"


def target_ports(settings: Settings) -> dict[str, int]:
    """deploy/prometheus/targets/<name>.json -> the port the settings give that process."""
    metrics = settings.metrics
    return {
        "crawler": metrics.crawler_port,
        "streams": metrics.streams_port,
        "streams-faust": settings.streams.web_port,
        "sink": metrics.sink_port,
        "follow": settings.follow.metrics_port,
        "scheduler": metrics.scheduler_port,
        "exporter": metrics.exporter_port,
    }


def render_config(settings: Settings, dest: Path, source: Path = DEPLOY) -> Path:
    """deploy/prometheus for this stack in ``dest``; returns the prometheus.yml to run."""
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "targets").mkdir(parents=True)
    shutil.copy2(source / "prometheus.yml", dest / "prometheus.yml")
    shutil.copytree(source / "rules", dest / "rules")
    host = settings.metrics.host if settings.metrics.host not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
    ports = target_ports(settings)
    for path in sorted((source / "targets").glob("*.json")):
        groups = json.loads(path.read_text())
        if path.stem in ports:  # keep the file's labels, point its one target at this stack
            for group in groups:
                group["targets"] = [f"{host}:{ports[path.stem]}"]
        (dest / "targets" / path.name).write_text(json.dumps(groups) + "\n")
    runs = settings.stack.state_dir.resolve() / "scheduler" / "targets"
    runs.mkdir(parents=True, exist_ok=True)
    (dest / "targets" / "scheduled-runs").symlink_to(runs, target_is_directory=True)
    return dest / "prometheus.yml"


def prometheus_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.stack.prometheus_port}"


def start_prometheus(settings: Settings, console: Console, timeout_s: float = 60.0) -> str | None:
    """Start the exporter and Prometheus unless running; returns Prometheus' URL (None: no binary)."""
    binary = shutil.which("prometheus")
    if binary is None:
        console.print(
            "[yellow]prometheus not found: install it (Debian: apt-get install prometheus, "
            "or `make prereqs`) to use --with-prometheus[/]"
        )
        return None
    state = settings.stack.state_dir.resolve()
    pm = ProcessManager(state)
    exporter_url = f"http://{settings.metrics.host}:{settings.metrics.exporter_port}/metrics"
    url = prometheus_url(settings)
    argv = {
        "exporter": lambda: [sys.executable, "-m", "control.cli", "exporter"],
        "prometheus": lambda: [
            binary,
            f"--config.file={render_config(settings, state / 'prometheus-config')}",
            f"--storage.tsdb.path={state / 'prometheus'}",
            f"--web.listen-address=127.0.0.1:{settings.stack.prometheus_port}",
            "--storage.tsdb.retention.time=7d",
        ],
    }
    ready = {"exporter": exporter_url, "prometheus": f"{url}/-/ready"}
    for name in ("exporter", "prometheus"):
        if pm.running(name):
            continue
        pid = pm.start(name, argv[name]())
        console.print(f"[bold cyan]stack[/] {name} starting (pid {pid}, log {pm.log_path(name)})")
        wait_until(
            lambda n=name: _answers(ready[n]),  # type: ignore[misc]
            service=name,
            log_path=pm.log_path(name),
            timeout_s=timeout_s,
            alive=lambda n=name: pm.running(n),  # type: ignore[misc]
        )
    console.print(
        f"[bold cyan]stack[/] prometheus at {url} (targets: {url}/targets), lag exporter at {exporter_url}"
    )
    return url
