"""streams.stats.EveryWindowTable over a stand-in for faust's windowed table (no Kafka)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from streams import aggregate, stats


class FakeWindowedTable:
    """What the mixin uses of faust's Table: 60 s tumbling windows over a dict store."""

    def __init__(self) -> None:
        self.data: dict[Any, Any] = {}
        self.emitted: list[tuple[Any, Any]] = []

    def _window_ranges(self, timestamp: float) -> Iterator[tuple[float, float]]:
        start = timestamp // 60 * 60
        yield (start, start + 60 - 0.1)

    def _get_key(self, key: Any) -> Any:
        return self.data.get(key, {})

    def _set_key(self, key: Any, value: Any) -> None:
        self.data[key] = value

    async def on_window_close(self, key: Any, value: Any) -> None:
        self.emitted.append((key, value))

    def close_all(self) -> None:
        """As faust's cleanup: pop each stale window and call on_window_close with its value."""
        for key in list(self.data):
            asyncio.run(self.on_window_close(key, self.data.pop(key)))


class Table(stats.EveryWindowTable, FakeWindowedTable):
    pass


def sample(at: float) -> dict[str, Any]:
    return {"d": "example.org", "r": "run", "t": at, "pages": 1, "bytes": 10, "status_2xx": 1}


def add(table: Table, at: float) -> None:
    table._apply_window_op(lambda acc, s: aggregate.add(acc, s), "example.org", sample(at), at)


def test_a_reopened_window_starts_from_its_closed_totals() -> None:
    table = Table()
    for at in (120.0, 130.0, 185.0):
        add(table, at)
    table.close_all()
    assert sorted((key[1][0], value["pages"]) for key, value in table.emitted) == [(120.0, 2), (180.0, 1)]
    add(table, 140.0)  # late, for the window of 120
    table.close_all()
    (key, value) = table.emitted[-1]
    assert (key[1][0], value["pages"], value["bytes"]) == (120.0, 3, 30)


def test_closed_totals_are_kept_for_reopen_s_only(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(stats.time, "monotonic", lambda: clock[0])
    table = Table()
    table.reopen_s = 60.0
    add(table, 120.0)
    table.close_all()
    clock[0] += 61
    add(table, 240.0)
    table.close_all()  # this close prunes the window of 120, closed 61 s before
    add(table, 125.0)
    table.close_all()
    assert [(key[1][0], value["pages"]) for key, value in table.emitted] == [
        (120.0, 1),
        (240.0, 1),
        (120.0, 1),
    ]
    assert 120.0 in {key[1][0] for key in table._closed_windows()}  # closed again, kept again
