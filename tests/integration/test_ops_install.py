"""``pip install .`` (not editable) works from any directory: a wheel built from the repository's
tracked files is installed into a fresh virtualenv, and from a directory outside the repository
``crawlstream --version`` / ``--help`` answer, the deploy files are found inside site-packages,
and ``crawlstream stack up`` starts a second embedded stack (free ports, a scratch state dir) that
``stack down`` stops again.

The fresh venv gets the dev venv's site-packages as a ``.pth`` line for the third-party
dependencies (installing them from PyPI again would take minutes); a ``.pth`` line adds a path
without running the ``.pth`` files in it, so the dev venv's editable crawlstream stays invisible,
which the test checks.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from crawlstream import __version__

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# Files a wheel must carry for `stack up` and `--with-prometheus` (relative to deploy/).
STACK_FILES = [
    "maven/pom.xml",
    "stack/kafka-server.properties",
    "stack/connect-standalone.properties",
    "stack/log4j2.properties",
    "connect/pages-cdc.json",
    "connect/outbox-cdc.json",
    "prometheus/prometheus.yml",
    "prometheus/rules/crawlstream.yml",
    "grafana/dashboards/overview.json",
    "postgres/roles.sql",
    "jobs.toml",
]


SITE_DEPLOY = f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages/crawlstream_deploy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{argv}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the fresh venv's bin directory, a working directory outside the repository)."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"
    # The tracked files only (what a clone has), so nothing built or cached here leaks in and the
    # build's own build/ and egg-info stay out of the worktree.
    tracked = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], REPO)
    for name in filter(None, tracked.split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(source)], tmp)
    (wheel,) = (tmp / "dist").glob("crawlstream-*.whl")
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp)
    purelib = Path(
        run(
            [str(venv / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp
        ).strip()
    )
    (purelib / "dev-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], tmp)
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return venv / "bin", elsewhere


def clean_env(**extra: str) -> dict[str, str]:
    # No CRAWLSTREAM_* from the caller: the installed command must stand on its defaults.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRAWLSTREAM_")}
    return {**env, **extra}


def test_version_help_and_packaged_deploy_files(installed: tuple[Path, Path]) -> None:
    bin_dir, elsewhere = installed
    env = clean_env()
    assert (
        run([str(bin_dir / "crawlstream"), "--version"], elsewhere, env).strip()
        == f"crawlstream {__version__}"
    )
    assert "stack" in run([str(bin_dir / "crawlstream"), "--help"], elsewhere, env)
    assert "usage: python -m sinks" in run([str(bin_dir / "python"), "-m", "sinks", "--help"], elsewhere, env)
    probe = (
        "import json, crawlstream, sinks; "
        "from control.stack import deploy_data, maven, kafka, connect; "
        "from control.ops import prom_server; "
        "print(json.dumps({'package': crawlstream.__file__, 'sinks': sinks.__file__, "
        "'deploy': str(deploy_data.deploy_dir()), 'pom': str(maven.POM), "
        "'kafka': str(kafka.BASE_PROPERTIES), 'connector': str(connect.CONNECTOR_JSON), "
        "'prometheus': str(prom_server.DEPLOY)}))"
    )
    found = json.loads(run([str(bin_dir / "python"), "-c", probe], elsewhere, env))
    site = str(bin_dir.parent)
    for name, path in found.items():
        assert path.startswith(site), f"{name} comes from {path}, not the installed wheel under {site}"
    deploy = Path(found["deploy"])
    for name in STACK_FILES:
        assert (deploy / name).read_bytes() == (REPO / "deploy" / name).read_bytes(), name
    assert Path(found["pom"]) == deploy / "maven/pom.xml"
    assert Path(found["prometheus"]) == deploy / "prometheus"


def test_stack_up_and_down_from_the_installed_package(installed: tuple[Path, Path], tmp_path: Path) -> None:
    bin_dir, elsewhere = installed
    cs = str(bin_dir / "crawlstream")
    state = tmp_path / "state"
    env = clean_env(
        CRAWLSTREAM_STACK__STATE_DIR=str(state),
        CRAWLSTREAM_STACK__KAFKA_PORT=str(free_port()),
        CRAWLSTREAM_STACK__CONTROLLER_PORT=str(free_port()),
        CRAWLSTREAM_STACK__POSTGRES_PORT=str(free_port()),
        CRAWLSTREAM_STACK__CONNECT_PORT=str(free_port()),
    )
    try:
        run([cs, "stack", "up"], elsewhere, env, timeout=900)
        report = json.loads(run([cs, "stack", "status", "--json"], elsewhere, env))
        assert report["services"], report
        assert all(svc["healthy"] for svc in report["services"].values()), report
        # The broker runs with the packaged files: its command line names the installed log4j2 config.
        pid = json.loads((state / "run" / "kafka.pid").read_text())["pid"]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        log4j = [arg for arg in cmdline if arg.startswith("-Dlog4j2.configurationFile=")]
        assert log4j == [f"-Dlog4j2.configurationFile={bin_dir.parent}/{SITE_DEPLOY}/stack/log4j2.properties"]
    finally:
        down = subprocess.run(
            [cs, "stack", "down"],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert down.returncode == 0, down.stdout + down.stderr
    stopped = subprocess.run(
        [cs, "stack", "status", "--json"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120
    )
    assert stopped.returncode == 1, stopped.stdout  # every service down again
