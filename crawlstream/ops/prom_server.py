"""``crawlstream stack up --with-prometheus``: a local Prometheus running deploy/prometheus as is.

Starts two managed processes of the embedded stack (pidfiles in ``<state_dir>/run``, logs in
``<state_dir>/logs``, stopped by ``stack down`` with the workers): the lag exporter
(``crawlstream exporter`` on ``metrics.exporter_port``) and Debian's ``prometheus`` binary with
``deploy/prometheus/prometheus.yml`` on ``127.0.0.1:<stack.prometheus_port>``, its data under
``<state_dir>/prometheus``. Without the binary it says how to get one and starts nothing.
"""

from __future__ import annotations

import shutil
import sys
import urllib.request

from rich.console import Console

from crawlstream.settings import Settings
from crawlstream.stack.deploy_data import deploy_dir
from crawlstream.stack.processes import ProcessManager, wait_until

DEPLOY = deploy_dir() / "prometheus"


def _answers(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (our http:// URLs)
            return None if response.status == 200 else f"{url} answered {response.status}"
    except OSError as exc:
        return f"{url} not answering ({exc})"


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
        "exporter": [sys.executable, "-m", "crawlstream.cli", "exporter"],
        "prometheus": [
            binary,
            f"--config.file={DEPLOY / 'prometheus.yml'}",
            f"--storage.tsdb.path={state / 'prometheus'}",
            f"--web.listen-address=127.0.0.1:{settings.stack.prometheus_port}",
            "--storage.tsdb.retention.time=7d",
        ],
    }
    ready = {"exporter": exporter_url, "prometheus": f"{url}/-/ready"}
    for name in ("exporter", "prometheus"):
        if pm.running(name):
            continue
        pid = pm.start(name, argv[name])
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
