"""The long-running worker processes of the embedded deployment: the faust stream worker
(``python -m streams worker``), the Postgres sink worker (``python -m sinks``) and, when asked
for, the page-event follower (``crawlstream follow``, a downstream consumer of
``outbox.event.page``).

They run as managed processes of the stack (pidfiles under ``<state_dir>/run``, logs under
``<state_dir>/logs``), so ``crawlstream stack down`` stops them first. In production they are
Deployments (deploy/k8s) or compose services instead; nothing here is needed there.
"""

from __future__ import annotations

import socket
import sys
import time
import urllib.request
from dataclasses import dataclass

from rich.console import Console

from crawlstream.settings import Settings
from crawlstream.stack.processes import ProcessManager, wait_until


@dataclass(frozen=True)
class Worker:
    name: str
    argv: list[str]
    metrics_port: int


FOLLOWER = "follower"


def worker_specs(settings: Settings, *, follower: bool = True) -> list[Worker]:
    """The workers, in start order; the follower last (and only when ``follower``)."""
    python = sys.executable
    specs = [
        Worker(
            "streams-worker", [python, "-m", "streams", "worker", "-l", "info"], settings.metrics.streams_port
        ),
        Worker("sink-worker", [python, "-m", "sinks"], settings.metrics.sink_port),
    ]
    if follower:
        # A new group starts at the oldest event, an existing one where it committed: a
        # restarted follower misses nothing (at-least-once).
        argv = [python, "-m", "crawlstream.cli", "follow", "--from-beginning", "--quiet"]
        specs.append(Worker(FOLLOWER, argv, settings.follow.metrics_port))
    return specs


def _port_taken(host: str, port: int) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return (
            f"port {port} still held by the previous process" if sock.connect_ex((host, port)) == 0 else None
        )


def _metrics_answer(host: str, port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2) as response:
            return None if response.status == 200 else f"/metrics answered {response.status}"
    except OSError as exc:
        return f"/metrics not answering ({exc})"


def start_workers(
    settings: Settings, console: Console | None = None, timeout_s: float = 60.0, *, follower: bool = False
) -> list[str]:
    """Start each worker that is not running (the follower too when ``follower``, or when its
    pidfile says it ran and died); wait until each serves /metrics (it is up). Returns the names
    started: only what was missing."""
    console = console or Console(stderr=True)
    pm = ProcessManager(settings.stack.state_dir)
    follower = follower or FOLLOWER in pm.names()  # names() still lists a dead process's pidfile
    started = []
    for worker in worker_specs(settings, follower=follower):
        crashed = pm.pidfile(worker.name).exists()
        if pm.running(worker.name):
            continue
        if crashed:
            # A worker killed a moment ago may hold its metrics port until its last thread exits.
            wait_until(
                lambda w=worker: _port_taken(settings.metrics.host, w.metrics_port),  # type: ignore[misc]
                service=worker.name,
                log_path=pm.log_path(worker.name),
                timeout_s=timeout_s,
            )
        pm.start(worker.name, worker.argv)
        console.print(f"started {worker.name} (log {pm.log_path(worker.name)})")
        wait_until(
            lambda w=worker: _metrics_answer(settings.metrics.host, w.metrics_port),  # type: ignore[misc]
            service=worker.name,
            log_path=pm.log_path(worker.name),
            timeout_s=timeout_s,
            alive=lambda w=worker: pm.running(w.name),  # type: ignore[misc]
        )
        started.append(worker.name)
    return started


def stop_workers(settings: Settings, console: Console | None = None) -> None:
    console = console or Console(stderr=True)
    pm = ProcessManager(settings.stack.state_dir)
    for worker in reversed(worker_specs(settings)):
        started = time.monotonic()
        if pm.stop(worker.name):
            console.print(f"stopped {worker.name} in {time.monotonic() - started:.1f}s")
