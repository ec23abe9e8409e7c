"""Managed local processes: start detached, record a pidfile, stop only what we started.

Used by the embedded stack (Kafka, Connect, Postgres) and reusable for worker processes
(faust worker, sink worker). Layout under the state dir: ``run/<name>.pid`` (JSON: pid and
the exact command line) and ``logs/<name>.log`` (stdout+stderr, appended).

A pidfile is trusted only while ``/proc/<pid>/cmdline`` still equals the recorded command
line, so a pid reused by an unrelated process is never signalled; stale pidfiles are removed.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from crawlstream.errors import StackError

POLL_INTERVAL_S = 0.2
# The handles of the children this process started, by pid, until they are reaped. A detached
# child outlives the call that started it; dropping its Popen while it runs would make Python
# warn that it was forgotten (ResourceWarning), and the handle is what reaps it without racing
# Popen's own bookkeeping.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@atexit.register
def _leave_children_running() -> None:
    """The services this process started outlive it on purpose (``stack up`` returns, they run
    on): their handles go without the warning meant for a child forgotten by mistake."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        _CHILDREN.clear()


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def read_cmdline(pid: int) -> list[str] | None:
    """The live command line of ``pid``; None when it is gone or a zombie.

    An empty list means "present but unreadable right now": the kernel shows an empty
    cmdline for a moment while a process execs or exits.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        # The state letter follows the parenthesised command name, which may contain spaces.
        if stat[stat.rindex(")") + 2] in "ZX":
            return None
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return None
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, /proc/<pid>/stat field 22); None when it is
    gone or a zombie. With the pid it names one process for good: a reused pid starts later, and a
    process may rewrite its own command line (faust's worker sets its title with setproctitle)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return None if fields[0] in "ZX" else int(fields[19])
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return None


def settled_cmdline(pid: int, timeout_s: float = 2.0) -> list[str] | None:
    """Like :func:`read_cmdline`, but waits out the transient empty cmdline."""
    deadline = time.monotonic() + timeout_s
    while (cmdline := read_cmdline(pid)) == [] and time.monotonic() < deadline:
        time.sleep(0.02)
    return cmdline or None


def _reap(pid: int) -> None:
    # Our own children stay zombies until waited for; other processes' children raise.
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            del _CHILDREN[pid]
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


class ProcessManager:
    """Start, find and stop named processes whose pidfiles live in ``<state_dir>/run``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.run_dir = state_dir / "run"
        self.logs_dir = state_dir / "logs"

    def pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def log_path(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def names(self) -> list[str]:
        """Every name with a pidfile (live or stale), sorted."""
        return sorted(p.stem for p in self.run_dir.glob("*.pid")) if self.run_dir.is_dir() else []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
    ) -> int:
        """Start ``argv`` detached (own session), output appended to its log; returns the pid.

        ``env`` is added to a copy of this process's environment, for the child only.
        """
        if (pid := self.pid(name)) is not None:
            raise StackError(f"{name} is already running (pid {pid}, pidfile {self.pidfile(name)})")
        log = log_path or self.log_path(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        child_env = {**os.environ, **(env or {})}
        with log.open("ab") as out:
            out.write(f"--- {datetime.now(UTC).isoformat()} starting {name}\n".encode())
            out.flush()
            # A new session: Ctrl-C in the terminal that ran `stack up` must not reach the services.
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env,
                cwd=cwd,
                start_new_session=True,
            )
        _CHILDREN[proc.pid] = proc
        self.adopt(name, proc.pid, expected=list(argv))
        return proc.pid

    def adopt(self, name: str, pid: int, expected: list[str] | None = None) -> None:
        """Record ``pid`` (started elsewhere, e.g. by pg_ctl) as the managed process ``name``."""
        cmdline = settled_cmdline(pid) or expected
        if cmdline is None:
            raise StackError(f"{name}: process {pid} exited immediately; see {self.log_path(name)}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        record = {"pid": pid, "cmdline": cmdline, "started": start_ticks(pid)}
        self.pidfile(name).write_text(json.dumps(record) + "\n")

    def pid(self, name: str) -> int | None:
        """The pid of ``name`` if it is alive and still the process we started; else None.

        The process is known by its pid and start time (its command line where an older pidfile
        has no start time). A pidfile that is unreadable, dead or now names another process is
        removed.
        """
        path = self.pidfile(name)
        try:
            record = json.loads(path.read_text())
            pid, cmdline = int(record["pid"]), list(record["cmdline"])
            started = record.get("started")
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, AttributeError):
            path.unlink(missing_ok=True)
            return None
        _reap(pid)
        if started is not None:
            if start_ticks(pid) != started:
                path.unlink(missing_ok=True)
                return None
            return pid
        if settled_cmdline(pid) != cmdline:
            path.unlink(missing_ok=True)
            return None
        return pid

    def running(self, name: str) -> bool:
        return self.pid(name) is not None

    def stop(
        self,
        name: str,
        timeout_s: float = 30.0,
        graceful: Callable[[int], None] | None = None,
    ) -> bool:
        """Stop ``name``: ``graceful(pid)`` (default SIGTERM to its process group), then SIGKILL
        after ``timeout_s``. Returns False when it was not running. The pidfile is removed."""
        pid = self.pid(name)
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            (graceful or self._terminate)(pid)
        if not self._wait_gone(pid, timeout_s):
            with contextlib.suppress(ProcessLookupError):
                self._signal(pid, signal.SIGKILL)
            if not self._wait_gone(pid, 10.0):
                raise StackError(f"{name} (pid {pid}) survived SIGKILL; see {self.log_path(name)}")
        self.pidfile(name).unlink(missing_ok=True)
        return True

    def stop_together(self, names: Sequence[str], timeout_s: float = 30.0) -> list[str]:
        """Stop ``names`` at once: SIGTERM to each, then wait for each (SIGKILL after
        ``timeout_s``). For the nodes of a KRaft quorum: a node stopped after the others waits
        for a quorum that is gone until it is killed. Returns the names that were running."""
        pids = {name: pid for name in names if (pid := self.pid(name)) is not None}
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                self._terminate(pid)
        for name in pids:
            self.stop(name, timeout_s=timeout_s)  # signalled already: it waits (and kills)
        return list(pids)

    def _terminate(self, pid: int) -> None:
        self._signal(pid, signal.SIGTERM)

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        # Processes we started lead their own group: signal helpers they spawned too.
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)

    @staticmethod
    def _wait_gone(pid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            _reap(pid)
            if read_cmdline(pid) is None:  # [] = still exiting
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL_S)


def wait_until(
    check: Callable[[], str | None],
    *,
    service: str,
    log_path: Path,
    timeout_s: float,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Poll ``check`` (None = healthy, else a reason) until healthy or ``timeout_s`` passes.

    Fails fast when ``alive()`` says the process died. Errors name the service, its log
    path and the last 20 lines of the log.
    """
    deadline = time.monotonic() + timeout_s
    reason: str | None = "not checked yet"
    while True:
        reason = check()
        if reason is None:
            return
        if alive is not None and not alive():
            raise service_error(service, "exited during start-up", log_path)
        if time.monotonic() >= deadline:
            raise service_error(service, f"not healthy after {timeout_s:.0f}s ({reason})", log_path)
        time.sleep(POLL_INTERVAL_S)


def service_error(service: str, problem: str, log_path: Path) -> StackError:
    excerpt = tail(log_path) or "(log is empty)"
    return StackError(
        f"{service} {problem}; log: {log_path}\n--- last lines of {log_path.name} ---\n{excerpt}"
    )
