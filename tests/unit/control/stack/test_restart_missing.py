"""Restarting only what is missing after a kill -9: workers (control.workers) and the
PostgreSQL lock file a killed server leaves behind (control.stack.postgres)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from control import workers
from control.stack import postgres
from control.stack.processes import ProcessManager, read_cmdline, wait_until
from control.workers import FOLLOWER, Worker, start_workers, stop_workers
from crawlstream.settings import Settings, load_settings

# A stand-in worker: serves /metrics on the port it is given, like the real ones.
METRICS_SERVER = (
    "import sys, http.server\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers(); self.wfile.write(b'up 1\\n')\n"
    "    def log_message(self, *a): pass\n"
    "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("CRAWLSTREAM_STACK__STATE_DIR", str(tmp_path))
    ports = {"streams-worker": _free_port(), "sink-worker": _free_port(), FOLLOWER: _free_port()}

    def specs(
        _settings: Settings, *, follower: bool = True, streams: int = 1, sinks: int = 1
    ) -> list[Worker]:
        names = ["streams-worker", "sink-worker", *([FOLLOWER] if follower else [])]
        return [Worker(n, [sys.executable, "-c", METRICS_SERVER, str(ports[n]), n], ports[n]) for n in names]

    monkeypatch.setattr(workers, "worker_specs", specs)
    loaded = load_settings()
    yield loaded
    stop_workers(loaded)


def kill_9(pm: ProcessManager, name: str) -> int:
    pid = pm.pid(name)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: None if read_cmdline(pid) is None else "still alive",
        service=name,
        log_path=pm.log_path(name),
        timeout_s=10,
    )
    return pid


def test_start_workers_restarts_only_the_killed_one(settings: Settings) -> None:
    pm = ProcessManager(settings.stack.state_dir)
    assert start_workers(settings, follower=True) == ["streams-worker", "sink-worker", FOLLOWER]
    pids = {name: pm.pid(name) for name in ("streams-worker", "sink-worker", FOLLOWER)}

    kill_9(pm, "sink-worker")
    assert start_workers(settings) == ["sink-worker"]
    assert pm.pid("streams-worker") == pids["streams-worker"]
    assert pm.pid(FOLLOWER) == pids[FOLLOWER]
    assert pm.pid("sink-worker") not in (None, pids["sink-worker"])


def test_a_killed_follower_is_restarted_without_being_asked_for(settings: Settings) -> None:
    """`workers up` restarts a follower that ran (its pidfile is still there) and died."""
    pm = ProcessManager(settings.stack.state_dir)
    start_workers(settings, follower=True)
    kill_9(pm, FOLLOWER)
    assert start_workers(settings) == [FOLLOWER]
    # Once stopped on purpose, it stays stopped.
    stop_workers(settings)
    assert start_workers(settings) == ["streams-worker", "sink-worker"]


def test_a_killed_servers_lock_file_is_removed_once_its_processes_are_gone(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    layout = postgres.PgLayout(tmp_path, data, data, 25432, "postgres")
    assert postgres.stale_lock_reason(layout) is None  # no lock: nothing to clear
    lock = data / "postmaster.pid"
    lock.write_text("999999\n")
    socket_lock = data / ".s.PGSQL.25432.lock"
    socket_lock.write_text("999999\n")
    # A process still running in the data directory: a backend of the killed server.
    backend = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], cwd=data)
    try:
        wait_until(
            lambda: None if backend.pid in postgres.cluster_processes(layout) else "not seen yet",
            service="backend",
            log_path=tmp_path / "none.log",
            timeout_s=10,
        )
        reason = postgres.stale_lock_reason(layout)
        assert reason is not None
        assert str(backend.pid) in reason
        assert lock.exists()
    finally:
        backend.kill()
        backend.wait()
    assert postgres.stale_lock_reason(layout) is None
    assert not lock.exists()
    assert not socket_lock.exists()


def test_a_crashed_services_port_is_awaited_a_strangers_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    """A JVM killed with SIGKILL holds its listening socket until its last thread has exited."""
    import threading

    from control.stack import supervisor
    from crawlstream.errors import StackError

    monkeypatch.setattr(supervisor, "PORT_RELEASE_S", 10.0)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = int(listener.getsockname()[1])
    with pytest.raises(StackError, match="already in use"):
        supervisor._require_free("kafka", port, "KAFKA_PORT")  # not ours: refused at once
    # The dying process lets go of the port a moment later (a fake of the exiting threads).
    threading.Timer(0.5, listener.close).start()
    supervisor._require_free("kafka", port, "KAFKA_PORT", crashed=True)
