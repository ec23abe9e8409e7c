"""Kafka admin reads and writes the ops tools share: watermarks, timestamps, group offsets.

Used by ``crawlstream offsets``, ``crawlstream topics``, ``crawlstream exporter`` and
``crawlstream status``. Talks to ``settings.kafka`` through confluent-kafka's AdminClient only:
the tools never join a consumer group, so they never disturb the groups they inspect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    OffsetSpec,
    ResourceType,
)

from crawlstream.errors import StackError
from crawlstream.settings import Settings

TP = tuple[str, int]
# The broker's own topics. Other names may start with "__" too, e.g. Debezium's heartbeat topics
# (__debezium-heartbeat.<topic.prefix>), which the catalog declares.
KAFKA_INTERNAL = frozenset({"__consumer_offsets", "__transaction_state", "__share_group_state"})


@dataclass(frozen=True)
class GroupInfo:
    group: str
    state: str
    members: int
    # topic -> partitions assigned to live members (empty when the group is idle)
    assigned: dict[str, list[int]]


def admin_client(settings: Settings) -> AdminClient:
    # log_level 4: warnings and errors only; notices such as BGQUEUE at close are noise here
    return AdminClient(settings.kafka.librdkafka(log_level=4))


def _result(future: Any, what: str, timeout_s: float) -> Any:
    try:
        return future.result(timeout=timeout_s)
    except Exception as exc:
        raise StackError(f"Kafka {what} failed: {exc}") from exc


def topic_partitions(admin: AdminClient, timeout_s: float = 10.0) -> dict[str, list[int]]:
    """Every topic (the broker's internal ones excluded) with its partition ids."""
    meta = admin.list_topics(timeout=timeout_s)
    return {
        name: sorted(info.partitions)
        for name, info in meta.topics.items()
        if name not in KAFKA_INTERNAL and info.error is None
    }


def partitions_of(admin: AdminClient, topic: str, timeout_s: float = 10.0) -> list[int]:
    meta = admin.list_topics(topic, timeout=timeout_s)
    info = meta.topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        raise StackError(f"topic {topic} does not exist")
    return sorted(info.partitions)


def _list_offsets(admin: AdminClient, tps: list[TP], spec: OffsetSpec, timeout_s: float) -> dict[TP, int]:
    if not tps:
        return {}
    futures = admin.list_offsets({TopicPartition(t, p): spec for t, p in tps}, request_timeout=timeout_s)
    return {
        (tp.topic, tp.partition): int(
            _result(f, f"list_offsets {tp.topic}[{tp.partition}]", timeout_s).offset
        )
        for tp, f in futures.items()
    }


def watermarks(admin: AdminClient, tps: list[TP], timeout_s: float = 10.0) -> dict[TP, tuple[int, int]]:
    """(earliest, latest) offset per partition: the bounds a reset clamps to."""
    low = _list_offsets(admin, tps, OffsetSpec.earliest(), timeout_s)  # type: ignore[no-untyped-call]
    high = _list_offsets(admin, tps, OffsetSpec.latest(), timeout_s)  # type: ignore[no-untyped-call]
    return {tp: (low[tp], high[tp]) for tp in tps}


def offsets_for_time(admin: AdminClient, tps: list[TP], ts_ms: int, timeout_s: float = 10.0) -> dict[TP, int]:
    """First offset whose timestamp is >= ts_ms; -1 where no such record exists (use the end)."""
    return _list_offsets(admin, tps, OffsetSpec.for_timestamp(ts_ms), timeout_s)


def group_offsets(admin: AdminClient, group: str, timeout_s: float = 10.0) -> dict[TP, int]:
    """Every committed offset of ``group`` (partitions it never committed are absent)."""
    futures = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group)], request_timeout=timeout_s
    )
    result = _result(futures[group], f"list offsets of group {group}", timeout_s)
    return {
        (tp.topic, tp.partition): int(tp.offset)
        for tp in result.topic_partitions or []
        if tp.offset is not None and tp.offset >= 0
    }


def describe_group(admin: AdminClient, group: str, timeout_s: float = 10.0) -> GroupInfo:
    futures = admin.describe_consumer_groups([group], request_timeout=timeout_s)
    desc = _result(futures[group], f"describe group {group}", timeout_s)
    assigned: dict[str, set[int]] = {}
    for member in desc.members or []:
        for tp in (member.assignment.topic_partitions if member.assignment else None) or []:
            assigned.setdefault(tp.topic, set()).add(tp.partition)
    state = getattr(desc.state, "name", str(desc.state))
    return GroupInfo(group, state, len(desc.members or []), {t: sorted(p) for t, p in assigned.items()})


def list_groups(admin: AdminClient, timeout_s: float = 10.0) -> list[str]:
    result = _result(admin.list_consumer_groups(request_timeout=timeout_s), "list groups", timeout_s)
    return sorted(g.group_id for g in result.valid)


def alter_group_offsets(
    admin: AdminClient, group: str, offsets: dict[TP, int], timeout_s: float = 30.0
) -> None:
    """Commit ``offsets`` for ``group``; Kafka refuses this while the group has members."""
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())]
    )
    futures = admin.alter_consumer_group_offsets([request], request_timeout=timeout_s)
    result = _result(futures[group], f"alter offsets of group {group}", timeout_s)
    failed = [f"{tp.topic}[{tp.partition}]: {tp.error}" for tp in result.topic_partitions if tp.error]
    if failed:
        raise StackError(f"Kafka refused some offsets of group {group}: {'; '.join(failed)}")


def topic_configs(admin: AdminClient, topic: str, timeout_s: float = 10.0) -> dict[str, str]:
    resource = ConfigResource(ResourceType.TOPIC, topic)
    entries = _result(admin.describe_configs([resource])[resource], f"describe configs of {topic}", timeout_s)
    return {name: str(entry.value) for name, entry in entries.items()}
