"""streams.faustcompat: the faust internals the stage relies on, pinned to the installed faust."""

from __future__ import annotations

import ast
import asyncio
import json
import re
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import faust
import faust.agents
import faust.stores.base
import faust.stores.rocksdb
import faust.tables.base
import faust.tables.wrappers
import faust.transport.consumer
import pytest

from streams import faustcompat

ROOT = Path(__file__).resolve().parents[3]
FAUST_CLASSES: tuple[type, ...] = (
    faust.App,
    faust.stores.base.Store,
    faust.stores.rocksdb.Store,
    faust.tables.base.Collection,
    faust.Table,
    faust.tables.wrappers.WindowWrapper,
    faust.Stream,
    faust.Event,
    faust.agents.Agent,
    faust.transport.consumer.Consumer,
)


def test_installed_faust_is_a_checked_version() -> None:
    low, high = faustcompat.CHECKED
    assert low <= faustcompat.installed_version() < high, version("faust-streaming")


def test_checked_range_is_the_range_pyproject_allows() -> None:
    """Widening the dependency range means reading faust's internals again: both move together."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (faust_dep,) = [d for d in deps if d.startswith("faust-streaming")]
    low, high = re.findall(r">=([\d.]+),<([\d.]+)", faust_dep)[0]
    as_tuple = lambda v: tuple(int(p) for p in v.split("."))  # noqa: E731
    assert (as_tuple(low), as_tuple(high)) == faustcompat.CHECKED


def test_every_declared_internal_is_there_with_its_parameters() -> None:
    assert faustcompat.problems() == []


def test_a_missing_internal_fails_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(faust.stores.rocksdb.Store, "_db_for_partition")
    with pytest.raises(faustcompat.FaustIncompatible, match=r"rocksdb\.Store\._db_for_partition is missing"):
        faustcompat.check()


def test_a_changed_signature_fails_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def encode(self: Any, key: Any, extra: Any) -> bytes:
        return b""

    monkeypatch.setattr(faust.stores.base.Store, "_encode_key", encode)
    with pytest.raises(faustcompat.FaustIncompatible, match=r"_encode_key\('self', 'key', 'extra'\)"):
        faustcompat.check()


def test_shims_behave_as_faust_does_on_a_rocksdb_table(tmp_path: Path) -> None:
    async def main() -> None:
        app = faust.App(
            "compat-test", store="rocksdb://", datadir=str(tmp_path), broker="kafka://127.0.0.1:1"
        )
        table = app.Table("urls", partitions=1)
        store = table.data
        raw_key = faustcompat.encode_key(store, "https://example.org/")
        assert raw_key == b'"https://example.org/"'  # JSON: keyscan relies on prefix order
        db = faustcompat.rocksdb_for_partition(store, 0)
        assert db is not None
        db.put(raw_key, json.dumps({"seen": 1}).encode())
        assert store["https://example.org/"] == {"seen": 1}  # faust's own read finds our write
        memory = faust.App("compat-mem", store="memory://", broker="kafka://127.0.0.1:1")
        assert faustcompat.rocksdb_for_partition(memory.Table("t", partitions=1).data, 0) is None

    asyncio.run(main())


def test_window_ranges_and_key_ttl_on_a_windowed_table() -> None:
    async def main() -> None:
        app = faust.App("compat-win", store="memory://", broker="kafka://127.0.0.1:1")
        wrapper = app.Table("w", default=int, partitions=1).hopping(300, 60, expires=600)
        ranges = list(faustcompat.window_ranges(wrapper.table, 1_000.0))
        assert ranges == list(wrapper.table.window.ranges(1_000.0))
        assert len(ranges) == 5
        assert all(start <= 1_000.0 <= end for start, end in ranges)
        key = ("example.org", ranges[0])
        faustcompat.set_key_ttl(wrapper.table, key, 0)
        assert key in wrapper.table._partition_timestamp_keys[(0, ranges[0][1])]

    asyncio.run(main())


def _faust_private_names() -> set[str]:
    return {
        name
        for cls in FAUST_CLASSES
        for name in dir(cls)
        if name.startswith("_") and not name.startswith("__")
    }


def _own_names(trees: list[ast.Module]) -> set[str]:
    """Private names our own code assigns (attributes, class attributes); a method named like a
    faust internal overrides it, which is relying on it too, so methods are not "own"."""
    own = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                own.add(node.attr)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                own.add(node.target.id)
    return own


def faust_internals_used(source_dir: Path, skip: str = "faustcompat.py") -> dict[str, set[str]]:
    """Per module of ``source_dir``: the faust private names it reaches for (attributes or getattr)."""
    trees = {path.name: ast.parse(path.read_text()) for path in sorted(source_dir.glob("*.py"))}
    private = _faust_private_names() - _own_names(list(trees.values()))
    used: dict[str, set[str]] = {}
    for name, tree in trees.items():
        if name == skip:
            continue
        methods = {
            id(item)
            for cls in ast.walk(tree)
            if isinstance(cls, ast.ClassDef)
            for item in cls.body
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        for node in ast.walk(tree):
            attr = None
            if id(node) in methods:  # a method named like a faust internal overrides it
                attr = node.name  # type: ignore[attr-defined]
            elif isinstance(node, ast.Attribute):
                attr = node.attr
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) in ("getattr", "hasattr")
                and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
            ):
                attr = node.args[1].value
            if isinstance(attr, str) and attr in private:
                used.setdefault(name, set()).add(attr)
    return used


def test_every_faust_internal_the_stage_uses_is_declared() -> None:
    used = faust_internals_used(ROOT / "streams")
    declared = {internal.name for internal in faustcompat.INTERNALS}
    undeclared = {module: names - declared for module, names in used.items() if names - declared}
    assert not undeclared, f"declare these faust internals in streams/faustcompat.py: {undeclared}"
    assert used, "the scan found none: it no longer sees the stage's uses"


def test_the_scan_sees_an_undeclared_internal(tmp_path: Path) -> None:
    (tmp_path / "agent.py").write_text(
        "def f(app):\n    return app._fetcher, getattr(app, '_consumer')\n"
        "class T:\n    def _apply_window_op(self): ...\n    def _own_helper(self): ...\n"
        "def _join(parts): ...\n"
    )
    assert faust_internals_used(tmp_path) == {"agent.py": {"_fetcher", "_consumer", "_apply_window_op"}}
