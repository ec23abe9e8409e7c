"""A pytest plugin for `make mutate` only: mutmut 3.7 reads ``item._nodeid``, which pytest 9 no
longer has (mutmut 3.8 reads ``item.nodeid`` but needs click>=8.4.2, which faust-streaming 0.15
refuses). Loaded with ``-p tests.support.mutmut_pytest9`` from ``[tool.mutmut]`` in pyproject.toml."""

from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item._nodeid = item.nodeid  # type: ignore[attr-defined]
