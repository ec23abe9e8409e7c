"""Supervisor pieces that need no services: prerequisites, secrets, stack.env, status, down."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from rich.console import Console

from control.stack import postgres, supervisor
from control.stack.processes import ProcessManager, read_cmdline
from crawlstream.errors import PrerequisiteError
from crawlstream.settings import Settings, load_settings

QUIET = Console(quiet=True)


def test_missing_postgres_binaries_say_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(PrerequisiteError) as err:
        postgres.find_bin_dir(Settings(stack={"postgres_bin_dir": tmp_path}))
    assert "apt-get install postgresql" in str(err.value)
    assert "CRAWLSTREAM_STACK__POSTGRES_BIN_DIR" in str(err.value)


def test_secrets_are_generated_once_and_private(tmp_path: Path) -> None:
    first = postgres.load_or_create_secrets(tmp_path)
    assert set(first) == {"owner", "app", "cdc"}
    assert len(set(first.values())) == 3
    assert all(len(value) >= 32 for value in first.values())
    assert (tmp_path / "secrets.json").stat().st_mode & 0o777 == 0o600
    assert postgres.load_or_create_secrets(tmp_path) == first


def test_root_falls_back_when_postgres_cannot_reach_the_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Runs as any user (it used to be skipped unless root, so a CI not running as root never ran
    # it): as root, the real probe (runuser ... test -x) answers; otherwise what it would answer
    # for another user, search permission for others on the directory and every parent.
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    if os.geteuid() != 0:
        import pwd
        from types import SimpleNamespace

        monkeypatch.setattr(postgres, "running_as_root", lambda: True)
        monkeypatch.setattr(
            postgres.pwd,
            "getpwnam",
            lambda name: (
                SimpleNamespace(pw_name=name, pw_dir="/var/lib/postgresql")
                if name == postgres.OS_USER
                else pwd.getpwnam(name)
            ),
        )
        monkeypatch.setattr(
            postgres,
            "_traversable_by_postgres",
            lambda path: all(p.stat().st_mode & 0o001 for p in (path, *path.parents)),
        )
    settings = Settings(stack={"state_dir": hidden / "state"})
    layout = postgres.plan_layout(settings, Path("/usr/lib/postgresql/15/bin"))
    assert layout.data_dir.parent == Path("/var/lib/postgresql")
    assert layout.data_dir.name.startswith("crawlstream-")
    assert layout.superuser == "postgres"
    assert (hidden / "state" / "postgres.location").read_text().strip() == str(layout.data_dir)


def test_layout_uses_the_state_dir_when_reachable() -> None:
    # Not tmp_path: pytest's base temp dir is private to its user, which is the fallback case.
    state = Path("/tmp") / f"crawlstream-unit-{os.getpid()}"
    try:
        settings = Settings(stack={"state_dir": state})
        layout = postgres.plan_layout(settings, Path("/usr/lib/postgresql/15/bin"))
        assert layout.data_dir == state.resolve() / "postgres"
        assert layout.socket_dir == layout.data_dir
    finally:
        for leftover in sorted(state.rglob("*"), reverse=True):
            leftover.unlink()
        state.rmdir()


def test_stack_env_is_private_and_read_back_by_load_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CRAWLSTREAM_STACK__STATE_DIR", str(tmp_path / "state"))
    for name in list(os.environ):
        if name.startswith(("CRAWLSTREAM_POSTGRES", "CRAWLSTREAM_KAFKA", "CRAWLSTREAM_CONNECT")):
            monkeypatch.delenv(name)
    settings = Settings(
        stack={
            "state_dir": tmp_path / "state",
            "kafka_port": 29092,
            "postgres_port": 25432,
            "connect_port": 28083,
        }
    )
    (tmp_path / "state").mkdir()
    values = supervisor.stack_env(settings, {"owner": "pw-o", "app": "pw-a", "cdc": "pw-c"})
    path = supervisor.write_stack_env(tmp_path / "state", values)
    assert path.stat().st_mode & 0o777 == 0o600

    loaded = load_settings()
    assert loaded.kafka.bootstrap_servers == "127.0.0.1:29092"
    assert loaded.postgres.dsn() == "postgresql://crawlstream_app:pw-a@127.0.0.1:25432/crawlstream"
    assert (
        loaded.postgres.dsn(owner=True) == "postgresql://crawlstream_owner:pw-o@127.0.0.1:25432/crawlstream"
    )
    assert loaded.postgres.cdc_password.get_secret_value() == "pw-c"
    assert loaded.connect.url == "http://127.0.0.1:28083"
    assert supervisor.with_stack_endpoints(settings, values).postgres.dsn() == loaded.postgres.dsn()


def test_status_of_a_stopped_stack_is_unhealthy_and_secret_free(tmp_path: Path) -> None:
    settings = Settings(
        stack={"state_dir": tmp_path / "state", "kafka_port": 1, "postgres_port": 2, "connect_port": 3}
    )
    report = supervisor.status(settings)
    assert report["postgres_url"] == "postgresql://crawlstream_app@127.0.0.1:2/crawlstream"
    assert set(report["services"]) == {"postgres", "kafka", "connect"}
    assert not any(svc["healthy"] for svc in report["services"].values())
    assert all(svc["pid"] is None for svc in report["services"].values())
    json.dumps(report)  # --json must be able to print it


def test_down_stops_workers_recorded_in_run(tmp_path: Path) -> None:
    settings = Settings(stack={"state_dir": tmp_path})
    pm = ProcessManager(tmp_path)
    pid = pm.start("sink-worker", [sys.executable, "-c", "import time; time.sleep(120)"])
    assert supervisor.down(settings, console=QUIET, timeout_s=10) == ["sink-worker"]
    assert read_cmdline(pid) is None
    assert supervisor.down(settings, console=QUIET) == []
