"""Topics are declared once, in crawlstream/topics.py: code takes names from the catalog.

A topic name written as a string anywhere else in the packages (``"pages.raw"``,
``f"{prefix}.deadletter"``, ``"outbox.event.page"``) is a second declaration that a rename or a
prefix would silently miss. The deploy files (Kubernetes, compose, Grafana, the example jobs) are
data that must spell names out: each name they use must be one the catalog declares.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from crawlstream.settings import Settings
from crawlstream.topics import catalog

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("crawlstream", "crawlers", "streams", "sinks", "control", "follow")
# Strings that equal a topic's suffix but mean something else, each with where and why.
NOT_TOPICS = {
    ("control/cli.py", "hosts"): "a key of the frontier report",
    ("crawlers/__main__.py", "requests"): "the distributed mode's subcommand",
    ("crawlers/frontierrun.py", "requests"): "the distributed mode's subcommand",
    ("crawlers/spiders/feed.py", "links"): "feedparser's entry field",
    ("sinks/families.py", "stats"): "the sink family's name",
    ("sinks/families.py", "runs"): "the sink family's name",
    ("control/ops/manifests.py", "requests"): "Kubernetes resource requests",
}


def topic_names() -> tuple[set[str], set[str]]:
    """The default catalog's names, and the suffixes after the ``crawlstream.`` prefix."""
    names = {spec.name for spec in catalog(Settings(_env_file=None)).all()}
    prefix = Settings(_env_file=None).kafka.topic_prefix + "."
    return names, {name.removeprefix(prefix) for name in names if name.startswith(prefix)}


def _docstrings(tree: ast.Module) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def topic_literals(path: Path, names: set[str], suffixes: set[str]) -> list[tuple[int, str]]:
    """String constants of a module (docstrings aside) that spell a topic name or its suffix."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value
            if text in names or text in suffixes or any(text.endswith("." + s) for s in suffixes):
                found.append((node.lineno, text))
    return sorted(found)


def test_no_module_spells_a_topic_name_the_catalog_declares() -> None:
    names, suffixes = topic_names()
    repeated = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative == "crawlstream/topics.py":
                continue
            for line, text in topic_literals(path, names, suffixes):
                if (relative, text) not in NOT_TOPICS:
                    repeated.append(f"{relative}:{line}: {text!r}")
    assert not repeated, "take these from crawlstream.topics.catalog(settings):\n" + "\n".join(repeated)


def test_the_scan_catches_the_forms_a_repeat_takes(tmp_path: Path) -> None:
    names, suffixes = topic_names()
    module = tmp_path / "m.py"
    module.write_text(
        '"""Writes crawlstream.pages.raw."""\n'
        'A = "crawlstream.links"\n'
        'B = f"{prefix}.deadletter"\n'
        'C = "outbox.event.page"\n'
        'D = "pages.raw" if x else "hosted"\n'
    )
    assert topic_literals(module, names, suffixes) == [
        (2, "crawlstream.links"),
        (3, ".deadletter"),
        (4, "outbox.event.page"),
        (5, "pages.raw"),
    ]


def test_the_exceptions_still_exist() -> None:
    """An exception whose string is gone is stale: remove it, or it would hide a future repeat."""
    names, suffixes = topic_names()
    for relative, text in NOT_TOPICS:
        found = {t for _, t in topic_literals(ROOT / relative, names, suffixes)}
        assert text in found, f"{relative}: {text!r} is no longer there; drop it from NOT_TOPICS"


def test_deploy_files_name_only_catalog_topics() -> None:
    names, _ = topic_names()
    prefix = Settings(_env_file=None).kafka.topic_prefix
    # A name followed by "/" is a Kubernetes annotation or label domain (crawlstream.io/key).
    spelled = re.compile(rf"\b{re.escape(prefix)}\.[a-z][a-z0-9._-]*[a-z0-9](?![a-z0-9./-])")
    # Not topics of ours: Python modules (crawlstream.settings) and the compose Connect worker's
    # own storage topics (config.storage.topic etc., created by Connect itself).
    modules = {f"crawlstream.{p.stem}" for p in (ROOT / "crawlstream").glob("*.py")}
    connect_internal = re.compile(rf"^{re.escape(prefix)}\.connect\.(configs|offsets|status)$")
    unknown = []
    for path in sorted((ROOT / "deploy").rglob("*")):
        if path.suffix not in (".yml", ".yaml", ".json", ".toml", ".properties") or "target" in path.parts:
            continue
        for match in spelled.finditer(path.read_text(encoding="utf-8", errors="replace")):
            token = match.group(0)
            if token in modules or connect_internal.match(token):
                continue
            if token not in names and not any(token.startswith(n + ".") for n in names):
                unknown.append(f"{path.relative_to(ROOT)}: {token}")
    assert not unknown, "deploy files name topics the catalog does not declare:\n" + "\n".join(unknown)
