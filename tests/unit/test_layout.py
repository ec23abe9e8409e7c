"""The arrows of the layout (docs/layout.md): control -> stages -> kernel, never up, never across.

Every module of every package is parsed and each import it makes, lazy ones and ``TYPE_CHECKING``
ones included, is judged by the layer of the package it names:

- the kernel (``crawlstream``) imports nothing of the project above it;
- a stage (``crawlers``, ``streams``, ``sinks``, ``follow``) imports the kernel and itself, never
  another stage or ``control``: a record crosses a stage boundary only through a topic;
- ``control`` (the CLI, the stack, ops, runs) may import any of them.

``control/run/reconcile.py`` stays pure: it imports the standard library only.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KERNEL, STAGE, CONTROL = "kernel", "stage", "control"
LAYERS = {
    "crawlstream": KERNEL,
    "crawlers": STAGE,
    "streams": STAGE,
    "sinks": STAGE,
    "follow": STAGE,
    "control": CONTROL,
}
# Folders with an __init__.py that are no code package of the layout.
NOT_LAYERS = {"tests", "deploy"}  # deploy/ is data, shipped as crawlstream_deploy
# The one upward import allowed, each with why.
EXCEPTIONS = {
    ("crawlstream/__main__.py", "control"): "the `python -m crawlstream` shim, an entry point nobody imports",
}
PURE = ["control/run/reconcile.py"]


def imported_packages(path: Path) -> set[str]:
    """Top-level project packages a module imports (absolute imports; relative ones stay inside)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def arrows_up(root: Path, layers: dict[str, str]) -> list[str]:
    """Every import that points up or across, as ``path: package -> package``."""
    wrong = []
    for package, layer in sorted(layers.items()):
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            for target in sorted(imported_packages(path) & layers.keys() - {package}):
                allowed = (
                    layer == CONTROL
                    or (layer == STAGE and layers[target] == KERNEL)
                    or (relative, target) in EXCEPTIONS
                )
                if not allowed:
                    wrong.append(f"{relative}: {layer} {package} imports {layers[target]} {target}")
    return wrong


def test_no_arrow_points_up_or_across() -> None:
    wrong = arrows_up(ROOT, LAYERS)
    assert not wrong, "imports against the layout (docs/layout.md):\n" + "\n".join(wrong)


def test_every_package_has_a_layer() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - NOT_LAYERS
    assert packages == set(LAYERS), f"give each new package a layer here: {packages ^ set(LAYERS)}"


@pytest.mark.parametrize("module", PURE)
def test_the_reconciliation_is_pure(module: str) -> None:
    outside = {name for name in imported_packages(ROOT / module) if name not in sys.stdlib_module_names}
    assert not outside - {"__future__"}, f"{module} must stay a pure function of counts: imports {outside}"


def test_the_scan_catches_the_forms_an_upward_arrow_takes(tmp_path: Path) -> None:
    files = {
        "kern/lazy.py": "def f() -> None:\n    from stage_a.x import y\n",
        "kern/typing_only.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import ctl.cli\n",
        "stage_a/x.py": "import kern.errors\nfrom stage_a import z\ny = 1\n",
        "stage_a/across.py": "from stage_b import w\n",
        "stage_b/up.py": "import ctl.cli as cli\n",
        "ctl/cli.py": "import kern, stage_a, stage_b\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    layers = {"kern": KERNEL, "stage_a": STAGE, "stage_b": STAGE, "ctl": CONTROL}
    assert arrows_up(tmp_path, layers) == [
        "kern/lazy.py: kernel kern imports stage stage_a",
        "kern/typing_only.py: kernel kern imports control ctl",
        "stage_a/across.py: stage stage_a imports stage stage_b",
        "stage_b/up.py: stage stage_b imports control ctl",
    ]
