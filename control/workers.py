"""The long-running worker processes of the embedded deployment: the faust stream workers
(``python -m streams worker``), the Postgres sink workers (``python -m sinks``) and, when asked
for, the page-event follower (``crawlstream follow``, a downstream consumer of
``outbox.event.page``).

``crawlstream workers up --streams N --sinks N`` runs N of each: worker i (1-based) is named
``streams-worker`` for i = 1 and ``streams-worker-<i>`` after (the same for ``sink-worker``),
serves its ports (metrics, faust web) at the configured port + (i - 1) * ``stack.worker_port_stride``
and keeps faust's table state in a data dir of its own. Its name is its static group membership
(``streams.instance_id`` / ``sink.instance_id``): a worker restarted after a crash takes its
partitions back without a rebalance of the others. Workers of a stage share its consumer groups,
so they split the partitions.

They run as managed processes of the stack (pidfiles under ``<state_dir>/run``, logs under
``<state_dir>/logs``), so ``crawlstream stack down`` stops them first. In production they are
Deployments (deploy/k8s) or compose services instead; nothing here is needed there.
"""

from __future__ import annotations

import re
import socket
import sys
import time
import urllib.request
from dataclasses import dataclass, field

from rich.console import Console

from control.stack.processes import ProcessManager, wait_until
from crawlstream.settings import Settings


@dataclass(frozen=True)
class Worker:
    name: str
    argv: list[str]
    metrics_port: int
    # Added to the worker's environment: its ports, data dir and static membership id.
    env: dict[str, str] = field(default_factory=dict)


FOLLOWER = "follower"
STREAMS = "streams-worker"
SINKS = "sink-worker"


def worker_name(stage: str, index: int) -> str:
    """``streams-worker``, ``streams-worker-2``, ... (index is 1-based)."""
    return stage if index == 1 else f"{stage}-{index}"


def _index(stage: str, name: str) -> int | None:
    if name == stage:
        return 1
    match = re.fullmatch(rf"{re.escape(stage)}-([0-9]+)", name)
    return int(match.group(1)) if match else None


def worker_specs(
    settings: Settings, *, follower: bool = True, streams: int = 1, sinks: int = 1
) -> list[Worker]:
    """The workers, in start order; the follower last (and only when ``follower``)."""
    python = sys.executable
    stride = settings.stack.worker_port_stride
    specs = []
    for i in range(1, streams + 1):
        name, shift = worker_name(STREAMS, i), stride * (i - 1)
        env = {"CRAWLSTREAM_STREAMS__INSTANCE_ID": name}
        if i > 1:
            env |= {
                "CRAWLSTREAM_METRICS__STREAMS_PORT": str(settings.metrics.streams_port + shift),
                "CRAWLSTREAM_STREAMS__WEB_PORT": str(settings.streams.web_port + shift),
                # RocksDB locks its files: each worker keeps its own copy of the tables it serves.
                "CRAWLSTREAM_STREAMS__DATA_DIR": f"{settings.streams.data_dir}-{i}",
            }
        argv = [python, "-m", "streams", "worker", "-l", "info"]
        specs.append(Worker(name, argv, settings.metrics.streams_port + shift, env))
    for i in range(1, sinks + 1):
        name, shift = worker_name(SINKS, i), stride * (i - 1)
        env = {"CRAWLSTREAM_SINK__INSTANCE_ID": name}
        if i > 1:
            env["CRAWLSTREAM_METRICS__SINK_PORT"] = str(settings.metrics.sink_port + shift)
        specs.append(Worker(name, [python, "-m", "sinks"], settings.metrics.sink_port + shift, env))
    if follower:
        # A new group starts at the oldest event, an existing one where it committed: a
        # restarted follower misses nothing (at-least-once).
        argv = [python, "-m", "control.cli", "follow", "--from-beginning", "--quiet"]
        specs.append(Worker(FOLLOWER, argv, settings.follow.metrics_port))
    return specs


def recorded_counts(pm: ProcessManager) -> tuple[int, int]:
    """How many stream and sink workers ran here (pidfiles, alive or not): at least one each."""
    names = pm.names()

    def count(stage: str) -> int:
        return max([1, *(i for name in names if (i := _index(stage, name)) is not None)])

    return count(STREAMS), count(SINKS)


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
    settings: Settings,
    console: Console | None = None,
    timeout_s: float = 60.0,
    *,
    follower: bool = False,
    streams: int | None = None,
    sinks: int | None = None,
) -> list[str]:
    """Start each worker that is not running (the follower too when ``follower``, or when its
    pidfile says it ran and died); wait until each serves /metrics (it is up). Returns the names
    started: only what was missing. ``streams``/``sinks``: how many of each (None: as many as
    ran here before, at least one); workers beyond the count asked for are stopped."""
    console = console or Console(stderr=True)
    pm = ProcessManager(settings.stack.state_dir)
    follower = follower or FOLLOWER in pm.names()  # names() still lists a dead process's pidfile
    ran_streams, ran_sinks = recorded_counts(pm)
    streams, sinks = streams or ran_streams, sinks or ran_sinks
    for stage, keep in ((STREAMS, streams), (SINKS, sinks)):
        for name in pm.names():
            if (index := _index(stage, name)) is not None and index > keep and pm.stop(name):
                console.print(f"stopped {name} (scaled {stage} down to {keep})")
    started = []
    for worker in worker_specs(settings, follower=follower, streams=streams, sinks=sinks):
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
        pm.start(worker.name, worker.argv, env=worker.env)
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
    """Stop every worker this state dir runs (all N of each stage, the follower)."""
    console = console or Console(stderr=True)
    pm = ProcessManager(settings.stack.state_dir)
    streams, sinks = recorded_counts(pm)
    for worker in reversed(worker_specs(settings, streams=streams, sinks=sinks)):
        started = time.monotonic()
        if pm.stop(worker.name):
            console.print(f"stopped {worker.name} in {time.monotonic() - started:.1f}s")
