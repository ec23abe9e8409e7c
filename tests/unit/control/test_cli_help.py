"""Every command and every option of ``crawlstream`` has help text; ``--version`` prints the package
version; the stages' ``python -m`` entry points print plain-text usage (no reST markup)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from control.cli import app
from crawlstream import __version__


# Typer ships its own copy of click (typer._click), so the tree is walked by its attributes:
# a group has ``commands``, every command ``help`` and ``params``.
def walk(command: Any, path: str) -> Iterator[tuple[str, Any]]:
    yield path, command
    for name, sub in sorted((getattr(command, "commands", None) or {}).items()):
        yield from walk(sub, f"{path} {name}")


def missing_help(root: Any) -> list[str]:
    missing = []
    for path, command in walk(root, "crawlstream"):
        if not (command.help or command.short_help):
            missing.append(f"command `{path}`")
        for param in command.params:
            # Typer keeps an argument's help on its own TyperArgument.help; click's Argument has none.
            if not getattr(param, "help", None):
                missing.append(f"`{path}` {param.param_type_name} {param.opts[0]}")
    return missing


def test_every_command_and_option_has_help() -> None:
    missing = missing_help(typer.main.get_command(app))
    assert not missing, "without help text:\n" + "\n".join(missing)


def test_the_walk_finds_a_missing_help() -> None:
    # The check itself: an option without help and a command without a docstring are reported.
    probe = typer.Typer()

    @probe.command()
    def bare(flag: bool = False) -> None:
        pass

    @probe.command()
    def other() -> None:
        """Documented."""

    found = missing_help(typer.main.get_command(probe))
    assert "command `crawlstream bare`" in found
    assert "`crawlstream bare` option --flag" in found
    assert not [m for m in found if "other" in m]


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"crawlstream {__version__}"


REST = re.compile(r"``|:(?:data|class|func|mod|meth|attr):`")


@pytest.mark.parametrize(
    "argv",
    [["sinks", "--help"], ["crawlers", "--help"], ["crawlers", "crawl", "--help"], ["streams", "--help"]],
)
def test_stage_entry_points_print_plain_usage(argv: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", *argv], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()
    assert not REST.search(done.stdout), f"reST markup in `python -m {' '.join(argv)}`:\n{done.stdout}"
