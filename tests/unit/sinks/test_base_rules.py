"""The sink contract's in-memory sink as the worker uses it (found by `make mutate`): the worker
opens its sink before the first write and closes it when it stops."""

from __future__ import annotations

from typing import Any

import pytest

from sinks.base import InMemorySink, SinkBatch, SinkRecord


def test_a_new_in_memory_sink_is_neither_open_nor_closed() -> None:
    sink = InMemorySink[str](key=lambda v: v)
    assert (sink.opened, sink.closed) == (False, False)
    sink.open()
    assert (sink.opened, sink.closed) == (True, False)
    sink.close()
    assert (sink.opened, sink.closed) == (True, True)


def test_the_worker_opens_its_sink_before_writing_and_closes_it_at_the_end(
    rig: Any, make_page: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_at_write: list[bool] = []
    write = rig.sink.write

    def checked(batch: SinkBatch[Any]) -> int:
        open_at_write.append(rig.sink.opened and not rig.sink.closed)
        return int(write(batch))

    monkeypatch.setattr(rig.sink, "write", checked)
    for url in ("https://a.test/1", "https://a.test/2"):
        rig.consumer.append(0, make_page(url).to_bytes(), key=url.encode())
    assert not rig.sink.opened

    rig.worker.run(max_idle_s=5)

    assert open_at_write
    assert all(open_at_write)
    assert rig.sink.closed


def test_the_in_memory_fence_skips_what_its_group_stored_only() -> None:
    sink = InMemorySink[str](key=lambda v: v)
    sink.write(SinkBatch("g", [SinkRecord("a", "t", 0, 0)], {("t", 0): 5}))
    assert sink.write(SinkBatch("g", [SinkRecord("b", "t", 0, 4)], {("t", 0): 5})) == 0  # below: fenced
    assert sink.write(SinkBatch("h", [SinkRecord("b", "t", 0, 4)], {("t", 0): 5})) == 1  # another group
