"""``crawlstream scheduler``: starts crawl jobs on their cron schedules (UTC), one run per job at a time.

Each due job is started as its own process, ``python -m control.cli jobs run NAME --run-id ID
--no-progress`` (a Twisted reactor runs once per process), in a new session so it outlives a
scheduler restart; that process writes the run's ``started``/``finished`` RunEvents to
``<prefix>.runs``. Settings used: ``stack.state_dir`` (state, lock and run logs).

Restart safety, the mechanism:

- One scheduler per state directory: an exclusive ``flock`` on ``<state_dir>/scheduler/lock``.
- ``<state_dir>/scheduler/state.json`` (replaced atomically, fsynced) holds per job the last
  schedule time handled and the running process (pid + its kernel start time, so a recycled pid
  is not mistaken for the run).
- A due time is written as handled *before* the process is started (at most once: a crash in
  between skips that run rather than doubling it), then the pid is written.
- At start and on every tick, a job whose recorded process is still alive is not started again;
  due times that pass meanwhile are skipped (logged), never queued. Missed due times while the
  scheduler was down are coalesced into one run on restart.
- A run writes ``run-<id>.json`` when it ends; a run process gone without it (killed) gets a
  ``finished``/``failed`` RunEvent from the scheduler (``on_lost``), so every run is closed.

Metrics (``metrics.scheduler_port``; docs/metrics.md): runs started, finished by outcome, lost,
skipped and missed per job (label ``crawl_job``: ``job`` is Prometheus' own target label), the next
due time per job and the last tick, which deploy/prometheus/rules alert on. Each run serves the
crawler's metrics on a port of its own, picked here and announced to Prometheus as a file_sd
target in ``<state_dir>/scheduler/targets/scheduled-runs.json`` (labels ``crawl_job``) while the
run lives, so the crawler dashboard shows scheduled runs too (scrape job
``crawlstream-scheduled-runs`` in deploy/prometheus/prometheus.yml). The file is rewritten from
``state.json`` on every save, so a restart never leaves a dead run's target behind.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Protocol

from croniter import croniter
from prometheus_client import Counter, Gauge

from crawlers.jobs import JobSpec
from crawlstream.errors import ConfigError

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class JobState:
    last_due: str  # ISO time of the last schedule time handled (or first seen)
    run_id: str | None = None
    pid: int | None = None
    pid_token: str | None = None  # the process's start time in /proc: pid + token name one process
    started_at: str | None = None
    metrics_port: int | None = None  # the run's /metrics port (announced as a file_sd target)


class Launcher(Protocol):
    def launch(self, job: JobSpec, run_id: str, metrics_port: int | None) -> tuple[int, str]: ...
    def alive(self, pid: int, token: str) -> bool: ...
    def outcome(self, run_id: str) -> str | None:
        """The ended run's outcome (``succeeded``/``failed``), None when it left no report."""
        ...


LostRun = Callable[[JobSpec, JobState], None]


def process_token(pid: int) -> str | None:
    """The kernel start time of ``pid`` (field 22 of /proc/pid/stat), None if it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]  # a zombie has finished


class ProcessLauncher:
    def __init__(self, jobs_file: Path, log_dir: Path) -> None:
        self.jobs_file = jobs_file
        self.log_dir = log_dir

    def launch(self, job: JobSpec, run_id: str, metrics_port: int | None) -> tuple[int, str]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"job-{job.name}-{run_id}.log"
        argv = [
            sys.executable,
            "-m",
            "control.cli",
            "jobs",
            "run",
            job.name,
            "--jobs",
            str(self.jobs_file),
        ]
        argv += ["--run-id", run_id, "--no-progress", "--report", str(self.report_path(run_id))]
        argv += ["--metrics-port", str(-1 if metrics_port is None else metrics_port)]
        with log_path.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        _CHILDREN[proc.pid] = proc
        return proc.pid, process_token(proc.pid) or ""

    def report_path(self, run_id: str) -> Path:
        return self.log_dir / f"run-{run_id}.json"

    def outcome(self, run_id: str) -> str | None:
        """The outcome its run event carries, from the report ``jobs run --report`` wrote."""
        from dataclasses import fields

        from crawlers.jobrun import outcome
        from crawlers.runner import CrawlReport

        try:
            raw = json.loads(self.report_path(run_id).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        known = {f.name for f in fields(CrawlReport)}
        try:
            return outcome(CrawlReport(**{k: v for k, v in raw.items() if k in known}))
        except TypeError:  # a report missing fields: the run did end, its outcome is unknown
            return "failed"

    def alive(self, pid: int, token: str) -> bool:
        child = _CHILDREN.get(pid)
        if child is not None and child.poll() is not None:  # reap our own finished children
            del _CHILDREN[pid]
            return False
        return process_token(pid) == token


# The runs this scheduler started, by pid, until they are reaped: the handle reaps the child
# (a dropped Popen of a running child is a ResourceWarning, and its own bookkeeping would race ours).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}

SCHEDULED_JOBS = Gauge("scheduler_jobs", "jobs with a cron schedule")
RUNS_STARTED = Counter("scheduler_runs_started", "runs the scheduler started", ["crawl_job"])
RUNS_FINISHED = Counter(
    "scheduler_runs_finished",
    "runs that ended with a report, by the outcome of their run event (succeeded, failed)",
    ["crawl_job", "outcome"],
)
RUNS_SKIPPED = Counter(
    "scheduler_runs_skipped",
    "due times skipped because the job's previous run was still running",
    ["crawl_job"],
)
RUNS_MISSED = Counter(
    "scheduler_runs_missed",
    "due times that passed unhandled (scheduler down or stalled) and were coalesced into one run",
    ["crawl_job"],
)
RUNS_LOST = Counter("scheduler_runs_lost", "runs whose process ended without writing a report", ["crawl_job"])
RUNS_RUNNING = Gauge("scheduler_runs_running", "runs of scheduled jobs running now")
NEXT_RUN = Gauge(
    "scheduler_next_run_timestamp_seconds",
    "the job's next due time; one in the past means the scheduler has not handled it yet",
    ["crawl_job"],
)
LAST_TICK = Gauge("scheduler_last_tick_timestamp_seconds", "when the scheduler last checked the schedules")
OUTCOMES = ("succeeded", "failed")
TARGETS_FILE = "scheduled-runs.json"


def free_port(host: str) -> int:
    """A port free on ``host`` now, for a run's /metrics (the run binds it a moment later)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class Scheduler:
    def __init__(
        self,
        jobs: dict[str, JobSpec],
        state_dir: Path,
        launcher: Launcher,
        clock: Clock = utc_now,
        on_lost: LostRun | None = None,
        metrics_host: str | None = None,
    ):
        """``metrics_host``: where runs serve /metrics (``metrics.host``); None: runs serve none."""
        self.on_lost = on_lost
        self.jobs = {name: job for name, job in jobs.items() if job.schedule}
        self.dir = state_dir / "scheduler"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.dir / "state.json"
        self.targets_dir = self.dir / "targets"
        self.launcher = launcher
        self.clock = clock
        self.metrics_host = metrics_host
        self._lock_file: IO[str] | None = None
        self.state = self._load()
        for name in self.jobs:  # every series from 0, so increase() sees the first run
            for counter in (RUNS_STARTED, RUNS_SKIPPED, RUNS_MISSED, RUNS_LOST):
                counter.labels(crawl_job=name)
            for result in OUTCOMES:
                RUNS_FINISHED.labels(crawl_job=name, outcome=result)
        self._write_targets()  # after a restart: the runs still alive, and none that ended meanwhile

    def acquire_lock(self) -> None:
        lock_file = (self.dir / "lock").open("w")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            raise ConfigError(f"another scheduler holds {self.dir / 'lock'}") from None
        self._lock_file = lock_file

    def release_lock(self) -> None:
        """Let another scheduler take this state directory (closing the file drops the flock)."""
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _load(self) -> dict[str, JobState]:
        if not self.state_path.exists():
            return {}
        raw = json.loads(self.state_path.read_text(encoding="utf-8"))
        return {name: JobState(**value) for name, value in raw.items()}

    def _save(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as out:
            json.dump({name: asdict(s) for name, s in self.state.items()}, out, indent=2)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.state_path)
        self._write_targets()

    def _write_targets(self) -> None:
        """file_sd targets of the runs alive now, derived from the state (replaced atomically)."""
        host = self.metrics_host or "127.0.0.1"
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 (a comparison): runs listen everywhere, name the machine
            host = socket.getfqdn()
        address = f"[{host}]" if ":" in host else host
        targets = [
            {"targets": [f"{address}:{st.metrics_port}"], "labels": {"crawl_job": name}}
            for name, st in sorted(self.state.items())
            if st.pid is not None and st.metrics_port is not None
        ]
        self.targets_dir.mkdir(exist_ok=True)
        path = self.targets_dir / TARGETS_FILE
        text = json.dumps(targets, indent=2) + "\n"
        if path.exists() and path.read_text(encoding="utf-8") == text:
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)  # Prometheus never reads a half-written file

    def tick(self) -> list[str]:
        """Start every due job that is not running; returns the run ids started."""
        now = self.clock()
        started = []
        for name, job in self.jobs.items():
            state = self.state.get(name)
            if state is None:  # first sight: schedule from now on, no catch-up of the past
                self.state[name] = JobState(last_due=now.isoformat())
                self._save()
                continue
            running = state.pid is not None and self.launcher.alive(state.pid, state.pid_token or "")
            if state.pid is not None and not running:
                log.info("job %s run %s ended", name, state.run_id)
                result = self.launcher.outcome(state.run_id) if state.run_id else None
                if result is None:
                    log.error("job %s run %s ended without a report (killed?)", name, state.run_id)
                    RUNS_LOST.labels(crawl_job=name).inc()
                    if self.on_lost is not None:
                        self.on_lost(job, state)
                else:
                    RUNS_FINISHED.labels(crawl_job=name, outcome=result).inc()
                state.pid = state.pid_token = state.metrics_port = None
                self._save()
            assert job.schedule is not None
            it = croniter(job.schedule, datetime.fromisoformat(state.last_due))
            due: datetime | None = None
            passed = 0
            while (candidate := it.get_next(datetime)) <= now:
                due, passed = candidate, passed + 1  # coalesce every missed due time into the latest
            NEXT_RUN.labels(crawl_job=name).set(candidate.timestamp())
            if due is None:
                continue
            if passed > 1:
                log.warning("job %s: %d due times passed unhandled, coalesced into one", name, passed)
                RUNS_MISSED.labels(crawl_job=name).inc(passed - 1)
            state.last_due = due.isoformat()
            if running:
                log.warning("job %s due at %s skipped: run %s still running", name, due, state.run_id)
                RUNS_SKIPPED.labels(crawl_job=name).inc()
                self._save()
                continue
            state.run_id, state.started_at = uuid.uuid4().hex, now.isoformat()
            state.metrics_port = None if self.metrics_host is None else free_port(self.metrics_host)
            self._save()  # handled before launching: at most once across a crash
            state.pid, state.pid_token = self.launcher.launch(job, state.run_id, state.metrics_port)
            self._save()
            log.info("job %s due at %s: started run %s (pid %d)", name, due, state.run_id, state.pid)
            RUNS_STARTED.labels(crawl_job=name).inc()
            started.append(state.run_id)
        RUNS_RUNNING.set(sum(1 for st in self.state.values() if st.pid is not None))
        LAST_TICK.set(now.timestamp())
        return started

    def run_forever(self, stop: threading.Event, poll_s: float = 1.0) -> None:
        self.acquire_lock()
        try:
            log.info("scheduler: %d scheduled job(s): %s", len(self.jobs), ", ".join(self.jobs) or "none")
            SCHEDULED_JOBS.set(len(self.jobs))
            while not stop.is_set():
                self.tick()
                stop.wait(poll_s)
        finally:
            self.release_lock()
