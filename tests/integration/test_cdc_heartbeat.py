"""Debezium heartbeats on the stack: slots confirm WAL that only unpublished tables wrote.

Both connectors (deploy/connect/*.json) run ``heartbeat.action.query`` every
``heartbeat.interval.ms``, upserting their row of ``cdc_heartbeat`` (migration 0003), which is in
the publication but in no ``table.include.list``. The test writes megabytes of WAL into
``sink_offsets`` only (not published; this test's consumer group, removed afterwards) and
touches neither ``pages`` nor ``outbox``; each slot's ``confirmed_flush_lsn`` must then pass the
LSN after those writes, so the WAL they retain stays bounded. Heartbeat records reach the
catalog's heartbeat topics, never the change topics.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from control.stack import connect
from crawlstream.settings import Settings
from crawlstream.topics import catalog
from tests.integration.sinks_support import owner, settings, tag, wait_for

__all__ = ["owner", "settings", "tag"]  # fixtures

pytestmark = pytest.mark.integration

ROWS = 20_000  # x 3 statements: several MB of WAL in a table no connector publishes


def end_offset(settings: Settings, topic: str) -> int:
    probe = Consumer(settings.kafka.librdkafka(**{"group.id": f"{settings.sink.group_id}-hb-probe"}))
    try:
        return int(probe.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1])
    finally:
        probe.close()


def test_idle_slots_confirm_wal_written_by_unpublished_tables(
    settings: Settings, owner: Any, tag: str
) -> None:
    configs = connect.connectors(settings)
    slots = {config["slot.name"] for config in configs.values()}
    interval_s = max(int(config["heartbeat.interval.ms"]) for config in configs.values()) / 1000
    topics = catalog(settings)
    heartbeat_topics = [topics.cdc_heartbeat.name, topics.outbox_heartbeat.name]
    beats_before = {t: end_offset(settings, t) for t in heartbeat_topics}
    started = datetime.now(UTC)

    with owner.cursor() as cur:
        cur.execute("SELECT pg_current_wal_lsn()")
        start_lsn = cur.fetchone()[0]
        cur.execute(
            "INSERT INTO sink_offsets (consumer_group, topic, partition, next_offset) "
            "SELECT %s, 'heartbeat-test', p, 0 FROM generate_series(1, %s) AS p",
            (tag, ROWS),
        )
        for _ in range(2):
            cur.execute(
                "UPDATE sink_offsets SET next_offset = next_offset + 1 WHERE consumer_group = %s", (tag,)
            )
        cur.execute(
            "SELECT pg_current_wal_lsn(), pg_wal_lsn_diff(pg_current_wal_lsn(), %s)::bigint", (start_lsn,)
        )
        written_lsn, written_bytes = cur.fetchone()
    assert written_bytes > 1_000_000, "the test must produce real WAL"

    def unconfirmed() -> dict[str, int]:
        with owner.cursor() as cur:
            cur.execute(
                "SELECT slot_name, pg_wal_lsn_diff(%s, confirmed_flush_lsn)::bigint "
                "FROM pg_replication_slots WHERE slot_name = ANY(%s)",
                (written_lsn, sorted(slots)),
            )
            return {str(name): int(behind) for name, behind in cur.fetchall()}

    assert set(unconfirmed()) == slots, "both connectors' slots exist"
    # A heartbeat's upsert is received within one interval, committed with the next heartbeat
    # record and Connect's next offset flush: a few intervals, with room for a loaded machine.
    wait_for(
        lambda: all(behind <= 0 for behind in unconfirmed().values()),
        timeout_s=6 * interval_s + 60,
        what=f"slots {sorted(slots)} to confirm {written_bytes} bytes of unpublished WAL",
        every_s=1.0,
    )

    def beats_since_start() -> dict[str, datetime]:
        with owner.cursor() as cur:
            cur.execute(
                "SELECT slot_name, beat_at FROM cdc_heartbeat WHERE slot_name = ANY(%s) AND beat_at > %s",
                (sorted(slots), started),
            )
            return dict(cur.fetchall())

    # Other writers of published tables (other tests, a running pipeline) can move the slots
    # before the next heartbeat does; the heartbeats must come all the same.
    wait_for(lambda: set(beats_since_start()) == slots, 3 * interval_s + 30, "a heartbeat of each slot")
    with owner.cursor() as cur:
        cur.execute(
            "SELECT slot_name, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint "
            "FROM pg_replication_slots WHERE slot_name = ANY(%s)",
            (sorted(slots),),
        )
        lag = dict(cur.fetchall())
        cur.execute(
            "SELECT slot_name, beat_at FROM cdc_heartbeat WHERE slot_name = ANY(%s)", (sorted(slots),)
        )
        beats = dict(cur.fetchall())
    # Bounded: what the slots still hold is less than this test alone wrote (other tests may be
    # writing meanwhile, hence not zero).
    assert all(behind < written_bytes for behind in lag.values()), lag
    assert set(beats) == slots
    assert all(at > started for at in beats.values()), beats
    for topic in heartbeat_topics:
        assert end_offset(settings, topic) > beats_before[topic], f"no heartbeat record on {topic}"
