"""Two sink workers in one consumer group split the partitions; rebalances mid-run lose nothing.

Worker A starts alone on a stream that is still being produced; worker B joins (a rebalance),
then A leaves (another). Each worker only ever writes the partitions it holds and seeks to the
offsets stored in Postgres on every assignment, so the rows and versions come out exact.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from crawlstream.settings import Settings
from crawlstream.topics import catalog, ensure_topics
from sinks.pages import PostgresPageSink
from tests.integration.sinks_support import (
    assert_stream_stored_exactly,
    end_offsets,
    owner,
    page_stream,
    produce,
    settings,
    start_worker,
    tag,
    wait_for,
)

__all__ = ["owner", "settings", "tag"]  # fixtures

pytestmark = pytest.mark.integration

N_URLS, N_CHANGED, N_REPLAYED = 2000, 500, 300


def test_two_workers_split_partitions_and_rebalance_mid_run(
    settings: Settings, owner: Any, tag: str, tmp_path: Path
) -> None:
    unique = catalog(settings).unique_pages
    ensure_topics(settings, [unique, catalog(settings).dead_letter])
    stream = page_stream(tag, N_URLS, N_CHANGED, N_REPLAYED)
    chunks = [stream[i : i + 100] for i in range(0, len(stream), 100)]
    produced = threading.Event()

    def produce_slowly() -> None:  # keeps the stream going while the group rebalances
        for chunk in chunks:
            produce(settings, unique.name, chunk)
        produced.set()

    sink = PostgresPageSink.from_settings(settings)
    group = settings.sink.group_id

    def stored() -> dict[int, int]:
        return sink.stored_offsets(group, unique.name)

    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    producer = threading.Thread(target=produce_slowly)
    producer.start()
    a = start_worker(settings, log_a)
    b = None
    try:
        wait_for(lambda: sum(stored().values()) > 0, 60, "worker A to store a batch", every_s=0.02)
        b = start_worker(settings, log_b)
        wait_for(lambda: "assigned" in log_b.read_text(), 60, "worker B to get partitions", every_s=0.1)
        a.send_signal(signal.SIGTERM)  # A leaves mid-run: B gets every partition
        assert a.wait(30) == 0, log_a.read_text()[-3000:]
        producer.join(120)
        assert produced.is_set()
        end = end_offsets(settings, unique.name, unique.partitions)
        wait_for(lambda: stored() == end, 120, f"stored offsets to reach {end}", every_s=0.2)
        assert_stream_stored_exactly(owner, tag, N_URLS, N_CHANGED)
        assert log_a.read_text().count("assigned") >= 1
        assert log_b.read_text().count("assigned") >= 2  # its share, then everything after A left
        b.send_signal(signal.SIGTERM)
        assert b.wait(30) == 0, log_b.read_text()[-3000:]
    finally:
        sink.close()
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
