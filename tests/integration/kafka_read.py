"""Reading whole topics back in integration tests (a fresh consumer, no group commits)."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, TopicPartition

from crawlstream.settings import Settings


def read_topic(settings: Settings, topic: str, timeout_s: float = 30.0) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of ``topic`` up to its current end offsets."""
    consumer = Consumer(
        settings.kafka.librdkafka(
            **{"group.id": f"test-read-{uuid.uuid4().hex}", "enable.auto.commit": False}
        )
    )
    try:
        parts = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        seen = {p: 0 for p in parts}
        out: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + timeout_s
        while any(seen[p] < ends[p] for p in parts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {seen} of {ends} in {topic}")
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            seen[msg.partition()] = msg.offset() + 1
            out.append((msg.key() or b"", msg.value() or b""))
        return out
    finally:
        consumer.close()
