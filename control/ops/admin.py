"""Kafka admin reads and writes the ops tools share: watermarks, timestamps, groups and their offsets.

Used by ``crawlstream offsets``, ``crawlstream topics``, ``crawlstream exporter`` and
``crawlstream status``. Talks to ``settings.kafka`` through confluent-kafka's AdminClient, and for
the one call it lacks (OffsetDelete, KIP-496) through kafka-python's admin client. The tools never
join a consumer group, so they never disturb the groups they inspect.
"""

from __future__ import annotations

import logging
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
from crawlstream.kafka import admin_config, kafka_python_config
from crawlstream.settings import Settings

log = logging.getLogger(__name__)
TP = tuple[str, int]
# The broker's own topics. Other names may start with "__" too, e.g. Debezium's heartbeat topics
# (__debezium-heartbeat.<topic.prefix>), which the catalog declares.
KAFKA_INTERNAL = frozenset({"__consumer_offsets", "__transaction_state", "__share_group_state"})


@dataclass(frozen=True)
class Member:
    """One live member of a group, as ``kafka-consumer-groups --describe --members`` shows it."""

    member_id: str
    client_id: str
    host: str
    group_instance_id: str | None
    assignment: list[TP]


@dataclass(frozen=True)
class GroupInfo:
    group: str
    state: str
    members: int
    # topic -> partitions assigned to live members (empty when the group is idle)
    assigned: dict[str, list[int]]
    member_list: tuple[Member, ...] = ()
    coordinator: str = ""
    assignor: str = ""
    type: str = ""


@dataclass(frozen=True)
class GroupListing:
    group: str
    state: str
    type: str
    simple: bool  # a "simple" group: offsets committed by consumers that never joined (no members)


def admin_client(settings: Settings) -> AdminClient:
    # log_level 4: warnings and errors only; notices such as BGQUEUE at close are noise here
    return AdminClient(admin_config(settings, log_level=4))


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


def _name(value: Any) -> str:
    return str(getattr(value, "name", value))


def describe_group(admin: AdminClient, group: str, timeout_s: float = 10.0) -> GroupInfo:
    """State, members (client id, host, assignment), coordinator; a group Kafka never saw is DEAD."""
    futures = admin.describe_consumer_groups([group], request_timeout=timeout_s)
    desc = _result(futures[group], f"describe group {group}", timeout_s)
    members = []
    assigned: dict[str, set[int]] = {}
    for member in desc.members or []:
        tps = [
            (tp.topic, tp.partition)
            for tp in (member.assignment.topic_partitions if member.assignment else None) or []
        ]
        for topic, partition in tps:
            assigned.setdefault(topic, set()).add(partition)
        members.append(
            Member(member.member_id, member.client_id, member.host, member.group_instance_id, sorted(tps))
        )
    node = desc.coordinator
    return GroupInfo(
        group,
        _name(desc.state),
        len(members),
        {t: sorted(p) for t, p in assigned.items()},
        tuple(sorted(members, key=lambda m: (m.client_id, m.member_id))),
        f"{node.host}:{node.port} ({node.id})" if node is not None else "",
        str(desc.partition_assignor or ""),
        _name(getattr(desc, "type", "")),
    )


def group_listings(admin: AdminClient, timeout_s: float = 10.0, *, strict: bool = True) -> list[GroupListing]:
    """Every consumer group the cluster knows, with its state and type (``--list --state --type``).

    A broker that cannot answer fails the call when ``strict``; otherwise (the exporter and
    ``status``, which report what they can) its groups are left out with a warning.
    """
    result = _result(admin.list_consumer_groups(request_timeout=timeout_s), "list groups", timeout_s)
    if result.errors:
        if strict:
            raise StackError(f"Kafka list groups failed on some brokers: {result.errors}")
        log.warning("listing consumer groups failed on some brokers: %s", result.errors)
    return sorted(
        (
            GroupListing(
                g.group_id, _name(g.state), _name(getattr(g, "type", "")), bool(g.is_simple_consumer_group)
            )
            for g in result.valid
        ),
        key=lambda g: g.group,
    )


def list_groups(admin: AdminClient, timeout_s: float = 10.0) -> list[str]:
    return [g.group for g in group_listings(admin, timeout_s, strict=False)]


def delete_group(admin: AdminClient, group: str, timeout_s: float = 30.0) -> None:
    """Delete the group and every offset it committed; Kafka refuses while it has members."""
    futures = admin.delete_consumer_groups([group], request_timeout=timeout_s)
    _result(futures[group], f"delete group {group}", timeout_s)


def delete_group_offsets(settings: Settings, group: str, tps: list[TP], timeout_s: float = 30.0) -> None:
    """Delete ``group``'s committed offsets of ``tps`` (OffsetDelete, what
    ``kafka-consumer-groups --delete-offsets`` sends; confluent-kafka has no binding for it)."""
    from kafka import KafkaAdminClient  # only this command needs it
    from kafka import TopicPartition as KpTopicPartition

    client = KafkaAdminClient(**kafka_python_config(settings), request_timeout_ms=int(timeout_s * 1000))
    try:
        result = client.delete_group_offsets(group, [KpTopicPartition(t, p) for t, p in tps])
    except Exception as exc:
        raise StackError(f"Kafka delete offsets of group {group} failed: {exc}") from exc
    finally:
        client.close()
    failed = [
        f"{tp.topic}[{tp.partition}]: {error.__name__}"
        for tp, error in sorted(result.items())
        if getattr(error, "errno", 0)
    ]
    if failed:
        raise StackError(f"Kafka refused to delete some offsets of group {group}: {'; '.join(failed)}")


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
