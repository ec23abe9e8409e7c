"""Reading Kafka offsets: partition end offsets and a consumer group's committed offsets.

Used by the pipeline run to know when a stage has caught up and to count records per run
(``end offset after - end offset before``: producers are idempotent and not transactional,
so offsets are contiguous and a difference is a record count).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from crawlstream.errors import StackError
from crawlstream.kafka import consumer_config
from crawlstream.settings import Settings, Stage

Offsets = dict[int, int]
T = TypeVar("T")
log = logging.getLogger(__name__)


@contextmanager
def _inspector(
    settings: Settings, group: str = "crawlstream-inspector", stage: Stage = "admin"
) -> Iterator[Consumer]:
    # A consumer that never subscribes: it reads metadata and offsets, it never joins the group.
    consumer = Consumer(consumer_config(settings, stage, group, **{"enable.auto.commit": False}))
    try:
        yield consumer
    finally:
        consumer.close()


def _partitions(consumer: Consumer, topic: str, timeout_s: float) -> list[int]:
    meta = consumer.list_topics(topic, timeout=timeout_s)
    info = meta.topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        raise StackError(f"topic {topic} does not exist (run `crawlstream topics create`)")
    return sorted(info.partitions)


# Answers of a cluster whose leaders or coordinators are moving (a topic just created, a broker
# that died or came back): the same question asked again a moment later, with fresh metadata,
# gets an answer.
_LEADERSHIP_MOVING = (
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError._TRANSPORT,
)


def _retrying(
    what: str,
    read: Callable[[], T],
    timeout_s: float,
    codes: tuple[int, ...] = _LEADERSHIP_MOVING,
    interval_s: float = 0.2,
) -> T:
    """``read()``, asked again while it fails with one of ``codes``, for up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return read()
        except KafkaException as exc:
            if exc.args[0].code() not in codes or time.monotonic() > deadline:
                raise
            log.info("%s: %s; asking again", what, exc.args[0].str())
            time.sleep(interval_s)  # retry interval while leadership or the coordinator moves


def end_offsets(settings: Settings, topic: str, timeout_s: float = 10.0) -> Offsets:
    """High watermark per partition."""

    def read() -> Offsets:
        with _inspector(settings) as consumer:
            return {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)[1]
                for p in _partitions(consumer, topic, timeout_s)
            }

    return _retrying(f"end offsets of {topic}", read, timeout_s)


def end_offsets_of(consumer: Consumer, topic: str, timeout_s: float = 10.0) -> Offsets:
    """High watermark per partition, asked through an existing consumer."""
    return {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s, cached=False)[1]
        for p in _partitions(consumer, topic, timeout_s)
    }


def committed_offsets(settings: Settings, group: str, topic: str, timeout_s: float = 10.0) -> Offsets:
    """Committed offset per partition for ``group`` (0 where the group never committed)."""

    def read() -> Offsets:
        with _inspector(settings, group) as consumer:
            parts = [TopicPartition(topic, p) for p in _partitions(consumer, topic, timeout_s)]
            return {tp.partition: max(tp.offset, 0) for tp in consumer.committed(parts, timeout=timeout_s)}

    return _retrying(f"committed offsets of {group} on {topic}", read, timeout_s)


def total(offsets: Offsets) -> int:
    return sum(offsets.values())


def delta(after: Offsets, before: Offsets) -> int:
    return sum(after[p] - before.get(p, 0) for p in after)


def lag(end: Offsets, committed: Offsets) -> int:
    return sum(max(end[p] - committed.get(p, 0), 0) for p in end)


_COORDINATOR_NOT_READY = (
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
)
# A topic created a moment ago (a worker's internal topics) answers these until its partitions
# have a leader.
_NOT_READY = (
    *_COORDINATOR_NOT_READY,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
)


def commit_start_where_absent(
    settings: Settings, group: str, topics: list[str], timeout_s: float = 60.0, *, stage: Stage = "admin"
) -> dict[tuple[str, int], int]:
    """Commit each partition's first offset for ``group`` where the group has none; return them.

    A stream worker calls this before faust joins the group. faust drops records it fetched in a
    generation that a rebalance ended but still acks them, and after the rebalance it seeks only
    partitions with a committed offset: on a new group, records fetched while a second worker was
    joining were skipped for good. With a committed start everywhere, every assignment seeks back.
    Offsets can only be committed this way while the group has no members; when it has, its
    members commit soon anyway, and nothing is committed here. While the group coordinator is not
    ready (a new broker creates ``__consumer_offsets`` on first use), or a topic created a moment
    ago has no partition leader yet, it retries for ``timeout_s``.
    """

    def commit() -> dict[tuple[str, int], int]:
        with _inspector(settings, group, stage) as consumer:
            return _commit_start(consumer, group, topics)

    return _retrying(
        f"start offsets of {group} (group coordinator or partition leaders not ready)",
        commit,
        timeout_s,
        _NOT_READY,
        interval_s=0.5,
    )


def _commit_start(consumer: Consumer, group: str, topics: list[str]) -> dict[tuple[str, int], int]:
    existing = consumer.list_topics(timeout=10).topics  # faust creates some topics itself on start
    wanted = [TopicPartition(t, p) for t in topics if t in existing for p in existing[t].partitions]
    absent = [tp for tp in consumer.committed(wanted, timeout=10) if tp.offset < 0]
    start = [
        TopicPartition(tp.topic, tp.partition, consumer.get_watermark_offsets(tp, timeout=10)[0])
        for tp in absent
    ]
    if not start:
        return {}
    try:
        consumer.commit(offsets=start, asynchronous=False)
    except KafkaException as exc:
        if exc.args[0].code() in _COORDINATOR_NOT_READY:
            raise
        log.info("not committing start offsets for %s (it has members): %s", group, exc.args[0].str())
        return {}
    return {(tp.topic, tp.partition): tp.offset for tp in start}
