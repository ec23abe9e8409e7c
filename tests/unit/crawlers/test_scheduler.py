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
    second = _scheduler(tmp_path, launcher)
    with pytest.raises(ConfigError, match="another scheduler"):
        second.acquire_lock()
    assert first.state == {}
    first.release_lock()  # the lock is the open file: released, the next scheduler takes it
    second.acquire_lock()
    second.release_lock()


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


def test_a_crash_between_the_decision_and_the_launch_never_starts_that_due_time_twice(tmp_path: Path) -> None:
    # "At most once across a crash": the due time is saved as handled before the launch, so a
    # scheduler killed in between loses that run (and says so) rather than starting it twice.
    launcher = FakeLauncher()
    clock = launcher.clock
    first = _scheduler(tmp_path, launcher)
    first.tick()
    clock.now = T0 + timedelta(minutes=1)

    def killed(*_args: object) -> tuple[int, str]:
        raise KeyboardInterrupt("scheduler killed before the launch")

    first.launcher = type(
        "Dying", (), {"launch": killed, "alive": launcher.alive, "outcome": launcher.outcome}
    )()
    with pytest.raises(KeyboardInterrupt):
        first.tick()
    state = json.loads((tmp_path / "scheduler" / "state.json").read_text())
    assert state["minutely"]["run_id"] is not None
    assert state["minutely"]["pid"] is None

    restarted = _scheduler(tmp_path, launcher)
    assert restarted.tick() == []  # the same instant: that due time was handled
    clock.now += timedelta(seconds=40)
    assert restarted.tick() == []  # still before the next due time
    assert launcher.launched == []
    clock.now += timedelta(seconds=20)
    assert len(restarted.tick()) == 1  # the next due time runs as usual


def test_a_reused_pid_is_not_taken_for_the_run(tmp_path: Path) -> None:
    import os

    from crawlers.scheduler import ProcessLauncher

    real = ProcessLauncher(tmp_path / "jobs.toml", tmp_path)
    me = os.getpid()
    assert real.alive(me, process_token(me) or "")
    assert not real.alive(me, "12345")  # the same pid, another process's start time: not our run

    launcher = FakeLauncher()
    clock = launcher.clock
    scheduler = _scheduler(tmp_path, launcher)
    scheduler.tick()
    clock.now = T0 + timedelta(minutes=1)
    scheduler.tick()
    pid = scheduler.state["minutely"].pid
    assert pid is not None
    scheduler.state["minutely"].pid_token = "another process"  # the run ended, its pid reused
    clock.now += timedelta(minutes=1)
    assert len(scheduler.tick()) == 1  # not skipped as "still running"
