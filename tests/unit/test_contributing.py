"""CONTRIBUTING.md and the .github templates promise commands and paths: each must exist."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTRIBUTING = ROOT / "CONTRIBUTING.md"
TEMPLATES = [
    ROOT / ".github" / "PULL_REQUEST_TEMPLATE.md",
    ROOT / ".github" / "ISSUE_TEMPLATE" / "bug_report.md",
    ROOT / ".github" / "ISSUE_TEMPLATE" / "feature_request.md",
]
# What a backticked name looks like when it is a path of the repository.
_PATH = re.compile(
    r"`((?:crawlstream|crawlers|streams|sinks|control|follow|tests|deploy|bench|docs)/[\w./-]*)`"
)


def makefile_targets(makefile: Path) -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", makefile.read_text(), flags=re.MULTILINE))


def promised_make_targets(text: str) -> set[str]:
    return set(re.findall(r"\bmake ([a-z][\w-]*)", text))


def promised_paths(text: str) -> set[str]:
    return set(_PATH.findall(text))


def test_every_make_command_it_lists_is_a_makefile_target() -> None:
    promised = promised_make_targets(CONTRIBUTING.read_text())
    for template in TEMPLATES:
        promised |= promised_make_targets(template.read_text())
    assert {"install", "lint", "test", "test-unit"} <= promised  # the page names the essentials
    missing = promised - makefile_targets(ROOT / "Makefile")
    assert not missing, f"CONTRIBUTING.md or a template names make targets the Makefile lacks: {missing}"


def test_the_ci_runs_what_it_says_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make lint" in ci
    assert "make test" in ci


def test_every_path_it_names_exists() -> None:
    paths = promised_paths(CONTRIBUTING.read_text())
    assert "crawlers/spiders/" in paths  # the recipes are there
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"CONTRIBUTING.md names paths that do not exist: {missing}"


def test_the_dev_tools_it_names_are_dev_dependencies() -> None:
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    names = {re.split(r"[=<>\[ ]", requirement)[0] for requirement in dev}
    assert {"ruff", "mypy", "pytest"} <= names


@pytest.mark.parametrize("recipe", ["### A spider", "### An agent", "### A sink"])
def test_it_has_the_three_recipes(recipe: str) -> None:
    assert recipe in CONTRIBUTING.read_text()


def test_the_recipes_name_classes_that_exist() -> None:
    """The recipes tell a newcomer to subclass or call these: they must be importable."""
    from crawlers.spiders.common import RecordingMixin
    from sinks.base import InMemorySink
    from sinks.postgres import PostgresSink
    from streams.agent import Boundary
    from streams.outputs import Effects

    assert callable(RecordingMixin.record)  # type: ignore[attr-defined]
    assert callable(Boundary.agent)
    for cls in (InMemorySink, PostgresSink, Effects):
        assert isinstance(cls, type)


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_templates_exist_and_issue_templates_have_front_matter(template: Path) -> None:
    text = template.read_text()
    if template.parent.name == "ISSUE_TEMPLATE":
        front = re.match(r"---\n(.*?)\n---\n", text, flags=re.DOTALL)
        assert front is not None, f"{template.name}: GitHub needs YAML front matter"
        assert re.search(r"^name: \S", front.group(1), flags=re.MULTILINE)
        assert re.search(r"^about: \S", front.group(1), flags=re.MULTILINE)
