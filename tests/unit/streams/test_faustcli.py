"""``faust -A streams.app``: faust's command line finds the stage's app; ``worker`` is ours."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import streams.app
from crawlstream.settings import Settings, StreamsSettings
from streams import faustcli
from streams.app import create_app

FAUST = Path(sys.executable).parent / "faust"


def test_faust_cli_finds_the_app_with_every_table(tmp_path: Path) -> None:
    """``faust -A streams.app --json tables`` from any directory lists the tables of create_app."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRAWLSTREAM_")}
    env["CRAWLSTREAM_STREAMS__DATA_DIR"] = str(tmp_path / "state")
    env["CRAWLSTREAM_KAFKA__BOOTSTRAP_SERVERS"] = "127.0.0.1:9"  # `tables` needs no broker: none reachable
    out = subprocess.run(
        [str(FAUST), "-A", "streams.app", "--json", "tables"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=120,
        check=True,
    )
    listed = [table["name"] for table in json.loads(out.stdout.decode().strip().splitlines()[-1])]
    app = create_app(Settings(_env_file=None, streams=StreamsSettings(data_dir=tmp_path / "state")))
    assert listed == list(app.tables.keys())
    assert "urls" in listed


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["faust", "-A", "streams.app", "worker", "-l", "info"], ["worker", "-l", "info"]),
        (["faust", "--app=streams.app", "-L", "aio", "worker"], ["-L", "aio", "worker"]),
        (["faust", "--app", "streams.app", "worker", "--web-port", "7000"], ["worker", "--web-port", "7000"]),
        (["faust", "-A", "streams.app", "tables"], None),
    ],
)
def test_worker_argv_keeps_every_option_but_the_app(argv: list[str], expected: list[str] | None) -> None:
    assert faustcli.worker_argv(argv) == expected


def test_launched_by_faust() -> None:
    assert faustcli.launched_by_faust(["/venv/bin/faust", "worker"])
    assert faustcli.launched_by_faust(["/venv/lib/python3.11/site-packages/faust/__main__.py"])
    assert not faustcli.launched_by_faust(["/venv/lib/python3.11/site-packages/streams/__main__.py"])
    assert not faustcli.launched_by_faust(["/venv/bin/pytest"])


def test_faust_worker_runs_the_stage_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """``faust -A streams.app worker ...`` becomes ``python -m streams worker ...`` in the same process."""
    calls: list[tuple[str, list[str]]] = []

    def execv(path: str, args: list[str]) -> None:
        calls.append((path, args))
        raise SystemExit(0)  # execv does not return

    monkeypatch.setattr(os, "execv", execv)
    monkeypatch.setattr(sys, "argv", ["/venv/bin/faust", "-A", "streams.app", "worker", "-l", "info"])
    with pytest.raises(SystemExit):
        getattr(streams.app, "app")  # noqa: B009  (what faust's find_app does)
    assert calls == [(sys.executable, [sys.executable, "-m", "streams", "worker", "-l", "info"])]


def test_other_attributes_are_not_invented() -> None:
    with pytest.raises(AttributeError, match="no attribute 'apps'"):
        getattr(streams.app, "apps")  # noqa: B009


def test_the_app_is_built_once_from_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "argv", ["/venv/bin/pytest"])
    monkeypatch.setattr(faustcli, "_APP", None)
    monkeypatch.setenv("CRAWLSTREAM_STREAMS__APP_ID", "unit-faust-cli")
    monkeypatch.setenv("CRAWLSTREAM_STREAMS__DATA_DIR", str(tmp_path))
    first: Any = getattr(streams.app, "app")  # noqa: B009
    assert first.conf.id == "unit-faust-cli"
    assert getattr(streams.app, "app") is first  # noqa: B009
