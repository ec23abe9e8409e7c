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
from confluent_kafka import Consumer

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


def test_a_worker_fenced_off_by_another_member_of_its_name_replaces_its_consumer_and_stores_all_once(
    settings: Settings, owner: Any, tag: str, tmp_path: Path
) -> None:
    """A static member fenced off (another consumer joins under its ``group.instance.id``, as a
    session timeout during a coordinator failover makes librdkafka do) gets a fatal error from
    the real broker; the worker replaces its consumer and the stream is stored exactly once."""
    unique = catalog(settings).unique_pages
    ensure_topics(settings, [unique, catalog(settings).dead_letter])
    stream = page_stream(tag, N_URLS, N_CHANGED, N_REPLAYED)
    chunks = [stream[i : i + 100] for i in range(0, len(stream), 100)]
    produced = threading.Event()

    def produce_slowly() -> None:
        for chunk in chunks:
            produce(settings, unique.name, chunk)
        produced.set()

    sink = PostgresPageSink.from_settings(settings)
    group, instance = settings.sink.group_id, f"{tag}-worker"

    def stored() -> dict[int, int]:
        return sink.stored_offsets(group, unique.name)

    log = tmp_path / "worker.log"
    producer = threading.Thread(target=produce_slowly)
    producer.start()
    worker = start_worker(settings, log, CRAWLSTREAM_SINK__INSTANCE_ID=instance)
    intruder = Consumer(
        settings.kafka.librdkafka(
            **{"group.id": group, "group.instance.id": instance, "session.timeout.ms": "6000"}
        )
    )
    try:
        wait_for(lambda: sum(stored().values()) > 0, 60, "the worker to store a batch", every_s=0.02)
        intruder.subscribe([unique.name])

        def fenced() -> bool:
            intruder.poll(0.2)  # joins under the worker's name: the broker fences the worker off
            return "replacing it" in log.read_text()

        wait_for(fenced, 60, "the worker to replace its fenced consumer", every_s=0.05)
        intruder.close()
        producer.join(120)
        assert produced.is_set()
        end = end_offsets(settings, unique.name, unique.partitions)
        wait_for(lambda: stored() == end, 120, f"stored offsets to reach {end}", every_s=0.2)
        assert_stream_stored_exactly(owner, tag, N_URLS, N_CHANGED)
        assert worker.poll() is None, log.read_text()[-3000:]  # replaced in place, not restarted
        assert "fatal" in log.read_text().lower()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, log.read_text()[-3000:]
    finally:
        sink.close()
        producer.join(120)
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
