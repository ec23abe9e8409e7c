from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crawlers.jobs import JobSpec, parse_jobs
from crawlers.scheduler import Scheduler, process_token
from crawlstream.errors import ConfigError

T0 = datetime(2026, 11, 25, 10, 30, 15, tzinfo=UTC)


class FakeLauncher:
    def __init__(self) -> None:
        self.launched: list[tuple[str, str, datetime]] = []
        self.ports: list[int | None] = []
        self.running: set[int] = set()
        self.clock = Clock()

    def launch(self, job: JobSpec, run_id: str, metrics_port: int | None) -> tuple[int, str]:
        pid = 1000 + len(self.launched)
        self.launched.append((job.name, run_id, self.clock()))
        self.ports.append(metrics_port)
        self.running.add(pid)
        return pid, f"token-{pid}"

    def alive(self, pid: int, token: str) -> bool:
        return pid in self.running and token == f"token-{pid}"

    def outcome(self, run_id: str) -> str | None:
        return None if run_id in self.killed else self.outcomes.get(run_id, "succeeded")

    killed: set[str] = set()
    outcomes: dict[str, str] = {}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def _jobs() -> dict[str, JobSpec]:
    return parse_jobs(
        {
            "jobs": {
                "minutely": {"start_urls": ["http://a/"], "schedule": "* * * * *"},
                "manual": {"start_urls": ["http://b/"]},
            }
        }
    )


def _scheduler(tmp_path: Path, launcher: FakeLauncher) -> Scheduler:
    return Scheduler(_jobs(), tmp_path, launcher, clock=launcher.clock)


def test_runs_on_time_once_and_never_twice_at_once(tmp_path: Path) -> None:
    launcher = FakeLauncher()
    clock = launcher.clock
    scheduler = _scheduler(tmp_path, launcher)
    assert list(scheduler.jobs) == ["minutely"]  # unscheduled jobs are left alone
    assert scheduler.tick() == []  # first sight: nothing from the past
    clock.now = T0.replace(second=59)
    assert scheduler.tick() == []
    clock.now = datetime(2026, 11, 25, 10, 31, 0, 300_000, tzinfo=UTC)
    started = scheduler.tick()
    assert len(started) == 1
    assert launcher.launched[0][2] == clock.now  # on the first tick after 10:31:00
    assert scheduler.tick() == []  # the same due time is not started twice
    clock.now += timedelta(minutes=1)
    assert scheduler.tick() == []  # still running: skipped, not queued
    launcher.running.clear()  # the run ends
    clock.now += timedelta(seconds=30)
    assert scheduler.tick() == []  # next due time is 10:33:00
    clock.now = datetime(2026, 11, 25, 10, 33, 1, tzinfo=UTC)
    assert len(scheduler.tick()) == 1
    assert len(launcher.launched) == 2


def test_restart_does_not_double_start(tmp_path: Path) -> None:
    launcher = FakeLauncher()
    clock = launcher.clock
    first = _scheduler(tmp_path, launcher)
    first.tick()
    clock.now = T0 + timedelta(minutes=1)
    assert len(first.tick()) == 1
    state = json.loads((tmp_path / "scheduler" / "state.json").read_text())
    assert state["minutely"]["pid"] == 1000
    # Restarted at the same instant, and a minute later, while the run is still alive.
    second = _scheduler(tmp_path, launcher)
    assert second.tick() == []
    clock.now += timedelta(minutes=1)
    assert second.tick() == []
    # Down for ten minutes, the run over: the missed due times coalesce into one run.
    launcher.running.clear()
    clock.now += timedelta(minutes=10)
    third = _scheduler(tmp_path, launcher)
    assert len(third.tick()) == 1
    assert third.tick() == []
    assert len(launcher.launched) == 2


def test_one_scheduler_per_state_dir(tmp_path: Path) -> None:
    launcher = FakeLauncher()
    first = _scheduler(tmp_path, launcher)
    first.acquire_lock()
    with pytest.raises(ConfigError, match="another scheduler"):
        _scheduler(tmp_path, launcher).acquire_lock()
    assert first.state == {}


def test_process_token_names_a_live_process() -> None:
    import os

    assert process_token(os.getpid())
    assert process_token(2**22 + 12345) is None


def test_a_killed_run_is_closed_by_the_scheduler(tmp_path: Path) -> None:
    launcher = FakeLauncher()
    launcher.killed = set()
    lost: list[str | None] = []
    scheduler = Scheduler(
        _jobs(),
        tmp_path,
        launcher,
        clock=launcher.clock,
        on_lost=lambda job, state: lost.append(state.run_id),
    )
    scheduler.tick()
    launcher.clock.now = T0 + timedelta(minutes=1)
    (run_id,) = scheduler.tick()
    launcher.running.clear()
    launcher.killed.add(run_id)  # gone without its report
    launcher.clock.now += timedelta(seconds=5)
    scheduler.tick()
    assert lost == [run_id]
    scheduler.tick()
    assert lost == [run_id]  # reported once
