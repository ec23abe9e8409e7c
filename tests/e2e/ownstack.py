"""A whole stack of a test module's own (3 Kafka nodes, optionally secured, PostgreSQL, Kafka
Connect with Debezium, one stream and one sink worker), on a free block of ports and in a state
dir of its own, so that it runs in ``make test`` next to the single-node stack the other tests use.

The environment of the test process (and so of every child it starts: crawls, workers) points at
it while it runs; it is stopped after, its logs kept in the state dir until the next run.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from rich.console import Console

from control.cli import migrate
from control.stack import supervisor
from control.workers import start_workers
from crawlstream.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
# The stack's ports, as offsets from a base port: node i (0-based) listens on base + 10*i (clients),
# base + 1 + 10*i (controllers) and, secured, base + 2 + 10*i (replication); then PostgreSQL,
# Connect, Prometheus (not started); the processes' metrics and web ports from base + 30, a second
# worker's 10 above its first's.
PORT_OFFSETS = {
    "STACK__KAFKA_PORT": 0,
    "STACK__CONTROLLER_PORT": 1,
    "STACK__POSTGRES_PORT": 3,
    "STACK__CONNECT_PORT": 4,
    "STACK__PROMETHEUS_PORT": 5,
    "METRICS__CRAWLER_PORT": 30,
    "METRICS__STREAMS_PORT": 31,
    "METRICS__SINK_PORT": 32,
    "METRICS__SCHEDULER_PORT": 33,
    "METRICS__EXPORTER_PORT": 34,
    "FOLLOW__METRICS_PORT": 35,
    "STREAMS__WEB_PORT": 36,
}
PORT_BLOCK = 50
START_TIMEOUT_S = 300.0


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_base_port() -> int:
    """A base port whose whole block is free, below Linux's ephemeral range."""
    for base in random.Random().sample(range(20000, 32000, 100), 60):
        if all(_bindable(base + o) for o in range(PORT_BLOCK)):
            return base
    raise AssertionError("no free block of ports for a stack of its own")


def stack_env(state_dir: Path, *, secure: bool) -> dict[str, str]:
    """The 3-node stack's settings, as environment variables."""
    base = _free_base_port()
    return {f"CRAWLSTREAM_{name}": str(base + o) for name, o in PORT_OFFSETS.items()} | {
        "CRAWLSTREAM_STACK__STATE_DIR": str(state_dir),
        "CRAWLSTREAM_STACK__BROKERS": "3",
        "CRAWLSTREAM_STACK__SECURE": "true" if secure else "false",
        "CRAWLSTREAM_STACK__WORKER_PORT_STRIDE": "10",
        "CRAWLSTREAM_STREAMS__DATA_DIR": str(state_dir / "streams"),
    }


@contextmanager
def own_stack(name: str, *, secure: bool = False, keep_env: str = "") -> Iterator[Settings]:
    """A fresh stack in ``<repo>/.crawlstream-<name>`` with its workers, for the ``with`` block.
    Variables starting with ``keep_env`` (a test's own knobs) stay in the environment."""
    state_dir = REPO / f".crawlstream-{name}"
    quiet = Console(quiet=True)
    with pytest.MonkeyPatch.context() as mp:
        # Endpoints and passwords come from the stack's own stack.env, never from this shell.
        for key in list(os.environ):
            if key.startswith("CRAWLSTREAM_") and not (keep_env and key.startswith(keep_env)):
                mp.delenv(key)
        for key, value in stack_env(state_dir, secure=secure).items():
            mp.setenv(key, value)
        if state_dir.exists():  # a previous run's: its processes stopped, its data gone
            supervisor.down(load_settings(), console=quiet)
            shutil.rmtree(state_dir)
        settings = load_settings()
        try:
            supervisor.up(settings, migrate=migrate, console=quiet, timeout_s=START_TIMEOUT_S)
            settings = load_settings()
            start_workers(settings, console=quiet, timeout_s=120)
            yield settings
        finally:
            supervisor.down(settings, console=quiet)
