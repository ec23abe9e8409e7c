"""What the scheduler tells Prometheus: per-run /metrics ports announced as file_sd targets while
the run lives (rebuilt from the state after a restart), and the counters and gauges the scheduler
alerts in deploy/prometheus/rules read (finished by outcome, lost, skipped, missed, next due)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import REGISTRY

from crawlers.jobs import JobSpec, parse_jobs
from crawlers.scheduler import TARGETS_FILE, Scheduler

T0 = datetime(2026, 11, 25, 10, 30, 15, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class FakeLauncher:
    """Honours the Launcher protocol; runs live until ``end`` is called."""

    def __init__(self) -> None:
        self.ports: list[int | None] = []
        self.running: set[int] = set()
        self.results: dict[str, str | None] = {}

    def launch(self, job: JobSpec, run_id: str, metrics_port: int | None) -> tuple[int, str]:
        self.ports.append(metrics_port)
        pid = 4000 + len(self.ports)
        self.running.add(pid)
        return pid, "token"

    def alive(self, pid: int, token: str) -> bool:
        return pid in self.running

    def outcome(self, run_id: str) -> str | None:
        return self.results.get(run_id, "succeeded")

    def end(self, run_id: str, result: str | None) -> None:
        self.results[run_id] = result
        self.running.clear()


def jobs() -> dict[str, JobSpec]:
    return parse_jobs({"jobs": {"nightly": {"start_urls": ["http://a/"], "schedule": "* * * * *"}}})


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"crawl_job": "nightly", **labels}) or 0.0


def targets(tmp_path: Path) -> list[dict[str, object]]:
    loaded: list[dict[str, object]] = json.loads((tmp_path / "scheduler/targets" / TARGETS_FILE).read_text())
    return loaded


def test_a_run_is_a_file_sd_target_while_it_lives(tmp_path: Path) -> None:
    launcher, clock = FakeLauncher(), Clock()
    scheduler = Scheduler(jobs(), tmp_path, launcher, clock=clock, metrics_host="127.0.0.1")
    scheduler.tick()
    assert targets(tmp_path) == []
    clock.now = T0 + timedelta(minutes=1)
    (run_id,) = scheduler.tick()
    (port,) = launcher.ports
    assert port is not None
    assert port > 0
    assert targets(tmp_path) == [{"targets": [f"127.0.0.1:{port}"], "labels": {"crawl_job": "nightly"}}]
    # A restarted scheduler announces the live run from its state...
    (tmp_path / "scheduler/targets" / TARGETS_FILE).unlink()
    restarted = Scheduler(jobs(), tmp_path, launcher, clock=clock, metrics_host="127.0.0.1")
    assert targets(tmp_path)[0]["targets"] == [f"127.0.0.1:{port}"]
    # ...and withdraws it when the run ends.
    launcher.end(run_id, "succeeded")
    restarted.tick()
    assert targets(tmp_path) == []


def test_without_a_metrics_host_runs_serve_no_metrics(tmp_path: Path) -> None:
    launcher, clock = FakeLauncher(), Clock()
    scheduler = Scheduler(jobs(), tmp_path, launcher, clock=clock)
    scheduler.tick()
    clock.now = T0 + timedelta(minutes=1)
    scheduler.tick()
    assert launcher.ports == [None]
    assert targets(tmp_path) == []


def test_outcomes_lost_skipped_missed_and_next_due(tmp_path: Path) -> None:
    launcher, clock = FakeLauncher(), Clock()
    before = {
        "failed": value("scheduler_runs_finished_total", outcome="failed"),
        "succeeded": value("scheduler_runs_finished_total", outcome="succeeded"),
        "lost": value("scheduler_runs_lost_total"),
        "skipped": value("scheduler_runs_skipped_total"),
        "missed": value("scheduler_runs_missed_total"),
    }

    def delta(name: str, metric: str, **labels: str) -> float:
        return value(metric, **labels) - before[name]

    scheduler = Scheduler(jobs(), tmp_path, launcher, clock=clock, metrics_host="127.0.0.1")
    scheduler.tick()
    clock.now = T0 + timedelta(minutes=1)  # 10:31:15: the 10:31 run starts
    (first,) = scheduler.tick()
    assert (
        value("scheduler_next_run_timestamp_seconds")
        == datetime(2026, 11, 25, 10, 32, tzinfo=UTC).timestamp()
    )
    clock.now += timedelta(minutes=1)  # still running at 10:32: skipped
    scheduler.tick()
    assert delta("skipped", "scheduler_runs_skipped_total") == 1
    launcher.end(first, "failed")
    clock.now += timedelta(minutes=1)  # 10:33: ended failed; the 10:33 run starts
    (second,) = scheduler.tick()
    assert delta("failed", "scheduler_runs_finished_total", outcome="failed") == 1
    launcher.end(second, None)  # gone without a report
    clock.now += timedelta(minutes=10)  # 10:43:15, ten due times passed unhandled (scheduler down)
    Scheduler(jobs(), tmp_path, launcher, clock=clock, metrics_host="127.0.0.1").tick()
    assert delta("lost", "scheduler_runs_lost_total") == 1
    assert delta("missed", "scheduler_runs_missed_total") == 9  # 10:34 .. 10:42; 10:43 runs
    assert delta("succeeded", "scheduler_runs_finished_total", outcome="succeeded") == 0
