"""control.stack.processes: pidfiles, /proc verification, stop escalation, health waits."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from control.stack.processes import ProcessManager, read_cmdline, start_ticks, tail, wait_until
from crawlstream.errors import StackError

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]
# Ignores SIGTERM, so only the SIGKILL escalation can stop it; prints once the handler is set.
STUBBORN = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
    "time.sleep(120)",
]


@pytest.fixture
def pm(tmp_path: Path) -> ProcessManager:
    manager = ProcessManager(tmp_path)
    yield manager
    for name in manager.names():
        manager.stop(name, timeout_s=1)


def test_start_records_pid_and_cmdline_then_stop_removes_it(pm: ProcessManager) -> None:
    pid = pm.start("worker", SLEEPER, env={"CRAWLSTREAM_TEST_MARK": "1"})
    record = json.loads(pm.pidfile("worker").read_text())
    assert record == {"pid": pid, "cmdline": SLEEPER, "started": start_ticks(pid)}
    assert record["started"] is not None
    assert pm.running("worker")
    assert "CRAWLSTREAM_TEST_MARK=1" in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    assert "CRAWLSTREAM_TEST_MARK" not in os.environ
    assert pm.log_path("worker").read_text().startswith("--- ")

    assert pm.stop("worker", timeout_s=10) is True
    assert read_cmdline(pid) is None
    assert not pm.pidfile("worker").exists()
    assert pm.stop("worker") is False


def test_start_refuses_a_second_copy(pm: ProcessManager) -> None:
    pm.start("worker", SLEEPER)
    with pytest.raises(StackError, match="already running"):
        pm.start("worker", SLEEPER)


def test_stop_escalates_to_sigkill_after_the_deadline(pm: ProcessManager) -> None:
    pid = pm.start("stubborn", STUBBORN)
    wait_until(
        lambda: None if "ready" in pm.log_path("stubborn").read_text() else "no handler yet",
        service="stubborn",
        log_path=pm.log_path("stubborn"),
        timeout_s=20,
    )
    assert pm.stop("stubborn", timeout_s=0.5) is True
    assert read_cmdline(pid) is None


def test_dead_pid_pidfile_is_cleaned(pm: ProcessManager) -> None:
    pid = pm.start("worker", SLEEPER)
    pm.stop("worker")
    pm.pidfile("worker").write_text(json.dumps({"pid": pid, "cmdline": SLEEPER}))
    assert pm.pid("worker") is None
    assert not pm.pidfile("worker").exists()


def test_reused_pid_is_never_signalled(pm: ProcessManager) -> None:
    # Our own pid, recorded with another command line: exactly what a recycled pid looks like.
    pm.run_dir.mkdir(parents=True)
    pm.pidfile("kafka").write_text(json.dumps({"pid": os.getpid(), "cmdline": ["java", "kafka.Kafka"]}))
    assert pm.stop("kafka") is False  # would have SIGTERMed pytest itself otherwise
    assert not pm.pidfile("kafka").exists()


def test_a_process_that_rewrites_its_command_line_is_still_ours(pm: ProcessManager) -> None:
    # faust's worker retitles itself with setproctitle (when installed): /proc/<pid>/cmdline
    # changes, the process does not. An exec in place changes the command line the same way.
    # The child rewrites itself only once the file appears, after its pidfile is written (as faust).
    go = pm.state_dir / "go"
    retitled = [
        sys.executable,
        "-c",
        f"import os, sys, pathlib\nwhile not pathlib.Path({str(go)!r}).exists(): os.sched_yield()\n"
        "os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(120)', 'x'])",
    ]
    pid = pm.start("faustish", retitled)
    assert pm.pid("faustish") == pid
    go.touch()
    wait_until(
        lambda: None if read_cmdline(pid) and read_cmdline(pid)[-1] == "x" else "not yet",
        service="faustish",
        log_path=pm.log_path("faustish"),
        timeout_s=10,
    )
    assert read_cmdline(pid) != retitled
    assert pm.pid("faustish") == pid  # same pid, same start time: still the process we started
    assert pm.stop("faustish", timeout_s=10) is True


def test_a_reused_pid_with_another_start_time_is_not_ours(pm: ProcessManager) -> None:
    pm.run_dir.mkdir(parents=True)
    mine = start_ticks(os.getpid())
    assert mine is not None
    pm.pidfile("kafka").write_text(
        json.dumps({"pid": os.getpid(), "cmdline": ["java", "kafka.Kafka"], "started": mine - 1})
    )
    assert pm.stop("kafka") is False  # would have SIGTERMed pytest itself otherwise
    assert not pm.pidfile("kafka").exists()


def test_garbage_pidfile_is_removed(pm: ProcessManager) -> None:
    pm.run_dir.mkdir(parents=True)
    pm.pidfile("x").write_text("not json")
    assert pm.pid("x") is None
    assert pm.names() == []


def test_tail_returns_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail(log, 3) == "line 97\nline 98\nline 99"
    assert tail(tmp_path / "missing.log") == ""


def test_wait_until_error_names_service_log_and_tail(tmp_path: Path) -> None:
    log = tmp_path / "kafka.log"
    log.write_text("starting\nFATAL port in use\n")
    with pytest.raises(StackError) as err:
        wait_until(lambda: "still down", service="kafka", log_path=log, timeout_s=0.3)
    message = str(err.value)
    assert "kafka not healthy after" in message
    assert str(log) in message
    assert "FATAL port in use" in message


def test_wait_until_fails_fast_when_the_process_died(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="exited during start-up"):
        wait_until(
            lambda: "down", service="connect", log_path=tmp_path / "c.log", timeout_s=600, alive=lambda: False
        )


def test_wait_until_returns_once_healthy(tmp_path: Path) -> None:
    answers = iter(["starting", "starting", None])
    wait_until(lambda: next(answers), service="x", log_path=tmp_path / "x.log", timeout_s=10)


def _quorum_member(marks: Path, me: str, peer: str) -> list[str]:
    """A process that, on SIGTERM, leaves only once its peer got SIGTERM too (as a KRaft node
    waits for the quorum), and then writes ``<me>.clean``."""
    code = (
        "import pathlib, signal, sys, time\n"
        f"marks = pathlib.Path({str(marks)!r})\n"
        "def leave(*_):\n"
        f"    (marks / {me!r}).touch()\n"
        f"    while not (marks / {peer!r}).exists(): time.sleep(0.05)\n"
        f"    (marks / {me + '.clean'!r}).touch()\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, leave)\n"
        f"(marks / {me + '.ready'!r}).touch()\n"
        "while True: time.sleep(1)\n"
    )
    return [sys.executable, "-c", code]


def test_stop_together_stops_members_that_wait_for_each_other(pm: ProcessManager, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    pm.start("node-a", _quorum_member(marks, "a", "b"))
    pm.start("node-b", _quorum_member(marks, "b", "a"))
    wait_until(
        lambda: None if (marks / "a.ready").exists() and (marks / "b.ready").exists() else "starting",
        service="nodes",
        log_path=pm.log_path("node-a"),
        timeout_s=30,
    )
    # One after the other, the first would wait for the second until killed (timeout 20 s here).
    assert pm.stop_together(["node-a", "node-b", "node-c"], timeout_s=20) == ["node-a", "node-b"]
    assert (marks / "a.clean").exists()
    assert (marks / "b.clean").exists()
    assert not pm.running("node-a")
    assert not pm.running("node-b")
