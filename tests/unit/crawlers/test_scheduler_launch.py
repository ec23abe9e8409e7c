"""The scheduler's launcher and loop (crawlers/scheduler.py), which test_scheduler.py fakes: the run
process is started for real, with a stand-in interpreter that records its command line and
session, so that what the scheduler asks of ``control.cli jobs run`` and the new session (a
run outlives a scheduler restart) are checked without crawling anything. Found by `make mutate`.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from crawlers import scheduler as scheduler_module
from crawlers.jobs import JobSpec, parse_jobs
from crawlers.scheduler import ProcessLauncher, Scheduler, process_token, utc_now
from crawlstream.errors import ConfigError
from tests.unit.crawlers.test_scheduler import T0, FakeLauncher

# Writes its arguments and its session id next to itself, then exits.
FAKE_PYTHON = """#!{python}
import json, os, sys
with open(os.path.join(os.path.dirname(sys.argv[0]), "argv.json.tmp"), "w") as out:
    json.dump({{"argv": sys.argv[1:], "sid": os.getsid(0), "pid": os.getpid()}}, out)
os.replace(os.path.join(os.path.dirname(sys.argv[0]), "argv.json.tmp"),
           os.path.join(os.path.dirname(sys.argv[0]), "argv.json"))
print("run output", flush=True)
print("run errors", file=sys.stderr, flush=True)
"""


def wait_for(predicate: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def job(name: str = "nightly") -> JobSpec:
    return parse_jobs({"jobs": {name: {"start_urls": ["http://a/"], "schedule": "0 3 * * *"}}})[name]


@pytest.fixture
def fake_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "bin" / "python"
    script.parent.mkdir()
    script.write_text(FAKE_PYTHON.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(script))
    return script


@pytest.mark.parametrize(("port", "port_arg"), [(9123, "9123"), (None, "-1")])
def test_a_run_is_launched_as_the_jobs_command_in_its_own_session(
    tmp_path: Path, fake_python: Path, port: int | None, port_arg: str
) -> None:
    logs = tmp_path / "state" / "logs"  # does not exist yet: made with its parents
    launcher = ProcessLauncher(tmp_path / "jobs.toml", logs)

    pid, token = launcher.launch(job(), "run42", port)

    record = fake_python.parent / "argv.json"
    wait_for(record.exists)
    seen = json.loads(record.read_text())
    assert seen["argv"] == [
        "-m",
        "control.cli",
        "jobs",
        "run",
        "nightly",
        "--jobs",
        str(tmp_path / "jobs.toml"),
        "--run-id",
        "run42",
        "--no-progress",
        "--report",
        str(logs / "run-run42.json"),
        "--metrics-port",
        port_arg,
    ]
    assert seen["pid"] == pid
    assert seen["sid"] == pid  # a session of its own: a scheduler restart does not take it down
    assert seen["sid"] != os.getsid(0)
    assert token  # its start time, read while it ran (or "" if it was already gone)
    wait_for(lambda: not launcher.alive(pid, token))  # our child, reaped once it ends
    assert pid not in scheduler_module._CHILDREN
    log_file = logs / "job-nightly-run42.log"
    assert log_file.read_text() == "run output\nrun errors\n"  # its output and errors: the run's log


def test_a_launch_reuses_an_existing_log_dir(tmp_path: Path, fake_python: Path) -> None:
    launcher = ProcessLauncher(tmp_path / "jobs.toml", tmp_path)
    pid, token = launcher.launch(job(), "a", None)
    wait_for(lambda: not launcher.alive(pid, token))
    pid, token = launcher.launch(job(), "b", None)
    wait_for(lambda: not launcher.alive(pid, token))
    assert sorted(p.name for p in tmp_path.glob("job-*.log")) == ["job-nightly-a.log", "job-nightly-b.log"]


def report(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "pages_fetched": 3,
        "responses_total": 4,
        "non_html": 0,
        "records_delivered": 3,
        "delivery_failures": 0,
        "fetch_errors": 0,
        "robots_denied": 0,
        "private_refused": 0,
        "distinct_canonical_urls": 3,
        "canonical_urls": ["http://a/"],
        "duration_s": 1.0,
        "finish_reason": "finished",
    }
    base.update(fields)
    return base


def test_a_runs_outcome_is_read_from_its_report(tmp_path: Path) -> None:
    launcher = ProcessLauncher(tmp_path / "jobs.toml", tmp_path)
    assert launcher.outcome("none") is None  # no report: the run was killed
    (tmp_path / "run-ok.json").write_text(json.dumps(report(added_by_a_newer_version=1)), encoding="utf-8")
    (tmp_path / "run-bad.json").write_text(json.dumps(report(delivery_failures=2)), encoding="utf-8")
    (tmp_path / "run-short.json").write_text(json.dumps({"pages_fetched": 1}), encoding="utf-8")
    (tmp_path / "run-torn.json").write_text('{"pages_fe', encoding="utf-8")

    assert launcher.outcome("ok") == "succeeded"  # unknown fields are ignored
    assert launcher.outcome("bad") == "failed"
    assert launcher.outcome("short") == "failed"  # it ended, its outcome is unknown
    assert launcher.outcome("torn") is None


def test_the_lock_is_the_state_dirs_scheduler_lock(tmp_path: Path) -> None:
    first = Scheduler({}, tmp_path, FakeLauncher())
    first.acquire_lock()
    assert (tmp_path / "scheduler" / "lock").exists()

    with pytest.raises(ConfigError) as caught:
        Scheduler({}, tmp_path, FakeLauncher()).acquire_lock()
    first.release_lock()
    assert str(tmp_path / "scheduler" / "lock") in str(caught.value)


def test_utc_now_is_aware_utc() -> None:
    now = utc_now()
    assert now.tzinfo is not None
    assert now.utcoffset() == timedelta(0)
    assert abs(now - datetime.now(UTC)) < timedelta(minutes=1)


class OneTick(threading.Event):
    """Stops the loop at its first wait, recording how long it would have waited and whether
    another scheduler could take the state directory's lock meanwhile."""

    def __init__(self, state_dir: Path | None = None) -> None:
        super().__init__()
        self.waits: list[float | None] = []
        self.state_dir = state_dir
        self.lock_held: bool | None = None

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        if self.state_dir is not None:
            other = Scheduler({}, self.state_dir, FakeLauncher())
            try:
                other.acquire_lock()
            except ConfigError:
                self.lock_held = True
            else:
                self.lock_held = False
                other.release_lock()
        self.set()
        return True


def test_run_forever_takes_the_lock_ticks_and_waits_the_poll_interval(tmp_path: Path) -> None:
    launcher = FakeLauncher()
    jobs = parse_jobs({"jobs": {"minutely": {"start_urls": ["http://a/"], "schedule": "* * * * *"}}})
    scheduler = Scheduler(jobs, tmp_path, launcher, clock=launcher.clock)
    stop = OneTick(tmp_path)

    scheduler.run_forever(stop, poll_s=0.25)

    assert stop.waits == [0.25]
    assert scheduler.state["minutely"].last_due == T0.isoformat()  # it ticked: the job was seen
    assert REGISTRY.get_sample_value("scheduler_jobs") == 1
    assert stop.lock_held is True  # it held the lock while it ran...
    after = Scheduler({}, tmp_path, FakeLauncher())
    after.acquire_lock()  # ...and let it go when it stopped
    after.release_lock()


def test_process_token_of_a_zombie_is_none() -> None:
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_for(lambda: Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z")
    assert process_token(child.pid) is None  # finished, not yet reaped: not alive
    child.wait()


WAITING_PYTHON = """#!{python}
import os, sys, time
release = os.path.join(os.path.dirname(sys.argv[0]), "release")
while not os.path.exists(release):
    time.sleep(0.01)
"""


def test_a_launched_run_is_alive_until_it_ends_then_reaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "bin" / "python"
    script.parent.mkdir()
    script.write_text(WAITING_PYTHON.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(script))
    launcher = ProcessLauncher(tmp_path / "jobs.toml", tmp_path / "logs")

    pid, token = launcher.launch(job(), "r1", None)
    try:
        assert launcher.alive(pid, token)
        assert launcher.alive(pid, token)  # asking again does not reap a live run
        assert not launcher.alive(pid, token + "0")  # another start time: not this run
    finally:
        (script.parent / "release").touch()  # the run ends, whatever was asserted
    wait_for(lambda: not launcher.alive(pid, token))
    assert pid not in scheduler_module._CHILDREN
    assert not launcher.alive(pid, token)


def ticks_since_boot() -> float:
    return float(Path("/proc/uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK")


def test_a_process_token_is_its_start_time_whatever_its_name() -> None:
    import subprocess

    before = ticks_since_boot()
    # A command name with ")" and " Z " in it: /proc/<pid>/stat puts it in parentheses.
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; open('/proc/self/comm', 'w').write('x) Z (y'); sys.stdin.read()"],
        stdin=subprocess.PIPE,
    )
    try:
        wait_for(lambda: Path(f"/proc/{child.pid}/comm").read_text().strip() == "x) Z (y")
        token = process_token(child.pid)
        after = ticks_since_boot()
        assert token is not None  # alive, not taken for a zombie
        assert before - 1 <= int(token) <= after + 1  # started between the two readings
        assert process_token(child.pid) == token
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()


@pytest.mark.parametrize("host", ["127.0.10.3", "::1"])
def test_a_free_port_is_one_the_kernel_picked_on_that_host(host: str) -> None:
    import socket

    port = scheduler_module.free_port(host)
    low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    assert low <= port <= high
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as again:
        again.bind((host, port))  # free on that host


def two_jobs() -> dict[str, JobSpec]:
    return parse_jobs(
        {
            "jobs": {
                "first": {"start_urls": ["http://a/"], "schedule": "* * * * *"},
                "second": {"start_urls": ["http://b/"], "schedule": "* * * * *"},
            }
        }
    )


def test_one_jobs_state_never_holds_back_another(tmp_path: Path) -> None:
    launcher = FakeLauncher()
    scheduler = Scheduler(two_jobs(), tmp_path, launcher, clock=launcher.clock)
    scheduler.tick()
    assert sorted(scheduler.state) == ["first", "second"]  # both seen at the first tick
    launcher.clock.now = T0 + timedelta(minutes=1)
    assert len(scheduler.tick()) == 2
    launcher.running.discard(scheduler.state["second"].pid or 0)  # only the second run ended
    launcher.clock.now += timedelta(minutes=1)
    (started,) = scheduler.tick()  # the first is still running (skipped); the second starts again
    assert started == scheduler.state["second"].run_id


def test_a_due_time_is_started_at_that_very_instant_with_the_run_id_it_saved(tmp_path: Path) -> None:
    launcher = FakeLauncher()
    scheduler = Scheduler(two_jobs(), tmp_path, launcher, clock=launcher.clock)
    scheduler.tick()
    launcher.clock.now = datetime(2026, 11, 25, 10, 31, 0, tzinfo=UTC)  # exactly the due time
    started = scheduler.tick()
    assert len(started) == 2
    assert [run_id for _name, run_id, _at in launcher.launched] == started
    saved = json.loads((tmp_path / "scheduler" / "state.json").read_text())
    assert [saved[name]["run_id"] for name in ("first", "second")] == started


def test_a_lost_run_is_reported_with_its_job(tmp_path: Path) -> None:
    launcher = FakeLauncher()
    launcher.killed = set()
    lost: list[tuple[str, str | None]] = []
    scheduler = Scheduler(
        two_jobs(),
        tmp_path,
        launcher,
        clock=launcher.clock,
        on_lost=lambda job, st: lost.append((job.name, st.run_id)),
    )
    scheduler.tick()
    launcher.clock.now = T0 + timedelta(minutes=1)
    scheduler.tick()
    first = scheduler.state["first"]
    launcher.running.discard(first.pid or 0)
    launcher.killed.add(first.run_id or "")
    launcher.clock.now += timedelta(seconds=5)
    scheduler.tick()
    assert lost == [("first", first.run_id)]


def test_two_due_times_missed_count_one_missed_run(tmp_path: Path) -> None:
    def missed() -> float:
        return REGISTRY.get_sample_value("scheduler_runs_missed_total", {"crawl_job": "first"}) or 0.0

    launcher = FakeLauncher()
    scheduler = Scheduler(two_jobs(), tmp_path, launcher, clock=launcher.clock)
    scheduler.tick()
    before = missed()
    launcher.clock.now = T0 + timedelta(minutes=2)  # 10:31 and 10:32 passed: one run, one missed
    assert len(scheduler.tick()) == 2
    assert missed() - before == 1


def test_an_ended_run_is_seen_ended_at_the_first_check(tmp_path: Path, fake_python: Path) -> None:
    launcher = ProcessLauncher(tmp_path / "jobs.toml", tmp_path)
    pid, token = launcher.launch(job(), "z", None)
    wait_for(lambda: Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z")
    assert not launcher.alive(pid, token)  # ended: not alive, and reaped
    assert not Path(f"/proc/{pid}").exists()


def test_a_job_not_due_does_not_hold_back_one_that_is(tmp_path: Path) -> None:
    jobs = parse_jobs(
        {
            "jobs": {
                "nightly": {"start_urls": ["http://a/"], "schedule": "0 3 * * *"},
                "minutely": {"start_urls": ["http://b/"], "schedule": "* * * * *"},
            }
        }
    )
    launcher = FakeLauncher()
    scheduler = Scheduler(jobs, tmp_path, launcher, clock=launcher.clock)
    scheduler.tick()
    launcher.clock.now = T0 + timedelta(minutes=1)
    (started,) = scheduler.tick()
    assert started == scheduler.state["minutely"].run_id


# The state directory, the lock and the metrics the scheduler keeps (issue 14, second pass).


def test_a_scheduler_makes_its_state_directory_with_its_parents(tmp_path: Path) -> None:
    state_dir = tmp_path / "not" / "made" / "yet"
    Scheduler(two_jobs(), state_dir, FakeLauncher())
    assert (state_dir / "scheduler").is_dir()


def test_releasing_a_lock_not_held_or_already_released_is_harmless(tmp_path: Path) -> None:
    scheduler = Scheduler(two_jobs(), tmp_path, FakeLauncher())
    scheduler.release_lock()  # never taken
    scheduler.acquire_lock()
    scheduler.release_lock()
    scheduler.release_lock()  # already released
    other = Scheduler(two_jobs(), tmp_path, FakeLauncher())
    other.acquire_lock()  # free again
    other.release_lock()


def test_every_series_of_a_job_starts_at_zero_and_its_next_due_time_is_shown(tmp_path: Path) -> None:
    # A job name never used before (the registry is global, and mutmut forks from a process that
    # ran the tests): its series exist only because this scheduler made them.
    name = f"fresh-{uuid.uuid4().hex}"
    launcher = FakeLauncher()
    jobs = parse_jobs({"jobs": {name: {"start_urls": ["http://a/"], "schedule": "0 3 * * *"}}})
    scheduler = Scheduler(jobs, tmp_path, launcher, clock=launcher.clock)
    for counter in ("started", "skipped", "missed", "lost"):
        assert REGISTRY.get_sample_value(f"scheduler_runs_{counter}_total", {"crawl_job": name}) == 0
    for outcome in ("succeeded", "failed"):
        labels = {"crawl_job": name, "outcome": outcome}
        assert REGISTRY.get_sample_value("scheduler_runs_finished_total", labels) == 0
    scheduler.tick()
    launcher.clock.now = T0 + timedelta(minutes=1)
    scheduler.tick()  # not due: the next due time is tomorrow at 03:00
    next_due = datetime(2026, 11, 26, 3, 0, tzinfo=UTC).timestamp()
    assert REGISTRY.get_sample_value("scheduler_next_run_timestamp_seconds", {"crawl_job": name}) == next_due


def test_a_started_run_is_counted_for_its_job_and_as_running(tmp_path: Path) -> None:
    def value(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    launcher = FakeLauncher()
    scheduler = Scheduler(two_jobs(), tmp_path, launcher, clock=launcher.clock)
    scheduler.tick()
    before = value("scheduler_runs_started_total", crawl_job="first") or 0.0
    launcher.clock.now = T0 + timedelta(minutes=1)
    assert len(scheduler.tick()) == 2
    assert value("scheduler_runs_started_total", crawl_job="first") == before + 1
    assert value("scheduler_runs_running") == 2
    launcher.running.discard(scheduler.state["second"].pid or 0)
    launcher.clock.now += timedelta(seconds=5)  # not due again yet: only the end is seen
    assert scheduler.tick() == []
    assert value("scheduler_runs_running") == 1


# Where Prometheus finds a run's /metrics (the file_sd targets).


def run_targets(tmp_path: Path, metrics_host: str | None) -> list[str]:
    """The targets announced for one run started with ``metrics_host``."""
    launcher = FakeLauncher()
    scheduler = Scheduler(two_jobs(), tmp_path, launcher, clock=launcher.clock, metrics_host=metrics_host)
    scheduler.tick()
    launcher.clock.now = T0 + timedelta(minutes=1)
    scheduler.tick()
    text = (tmp_path / "scheduler" / "targets" / scheduler_module.TARGETS_FILE).read_text()
    return [target for group in json.loads(text) for target in group["targets"]]


@pytest.mark.parametrize("everywhere", ["0.0.0.0", "::"])  # runs listening everywhere
def test_runs_listening_everywhere_are_announced_by_the_machines_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, everywhere: str
) -> None:
    monkeypatch.setattr(scheduler_module.socket, "getfqdn", lambda name="": "crawler-7.example")
    found = run_targets(tmp_path, everywhere)
    assert len(found) == 2
    assert all(target.startswith("crawler-7.example:") for target in found)


def test_runs_on_an_ipv6_host_are_announced_in_brackets(tmp_path: Path) -> None:
    found = run_targets(tmp_path, "::1")
    assert len(found) == 2
    assert all(target.startswith("[::1]:") for target in found)


def test_a_run_alive_from_before_a_restart_without_metrics_stays_a_local_target(tmp_path: Path) -> None:
    run_targets(tmp_path, "127.0.0.1")  # two runs started, alive, serving /metrics
    port = json.loads((tmp_path / "scheduler" / "state.json").read_text())["first"]["metrics_port"]
    (tmp_path / "scheduler" / "targets" / scheduler_module.TARGETS_FILE).unlink()
    Scheduler(two_jobs(), tmp_path, FakeLauncher(), metrics_host=None)  # restarted without a metrics host
    text = (tmp_path / "scheduler" / "targets" / scheduler_module.TARGETS_FILE).read_text()
    assert f"127.0.0.1:{port}" in [target for group in json.loads(text) for target in group["targets"]]
