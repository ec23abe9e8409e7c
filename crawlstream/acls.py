"""Least privilege on a secured Kafka: what each stage's principal may do, declared once.

One principal per stage (:data:`~crawlstream.settings.STAGES`), each allowed only the topics and
consumer groups of its own stage. The topics come from the catalog (crawlstream/topics.py): each
:class:`~crawlstream.topics.TopicSpec` names the stages that write and read it, and a stage gets
write or read (each with describe and describe_configs, which ``ensure_topics`` needs) on exactly
those. The groups come from :func:`consumer_groups`, the group names the stages' code uses:

- crawler: distributed crawlers' groups ``<prefix>-crawl*`` (``--group-id``) and frontier jobs'
  ``<prefix>-frontier-*`` (a job's crawlers, their ``-hosts`` readers, a run's progress reader);
  describe on the stream stage's group (a frontier run checks a stream worker is up and reads
  its committed offsets).
- streams: group ``streams.app_id``; it creates, reads and writes its own topics (faust's
  changelogs ``<app_id>-*`` and the repartition topics).
- sinks: groups ``sink.group_id*`` (one per family: ``<id>``, ``<id>-touches`` ...).
- follow: group ``follow.group_id``.
- connect: the Debezium topics; describe on the cluster (Connect reads its id). A distributed
  Connect cluster (Strimzi) also needs its group and storage topics: :func:`connect_cluster_grants`.
- admin: a super user (creates topics, users and ACLs, resets any group's offsets).

:func:`acl_plan` is pure: the embedded stack applies it (control/stack/security.py), ``crawlstream
stack acls`` prints it as ``kafka-acls`` commands, and ``crawlstream topics export --format k8s``
renders it as Strimzi ``KafkaUser`` resources (control/ops/manifests.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from crawlstream.settings import Settings, Stage
from crawlstream.topics import catalog

Resource = Literal["topic", "group", "cluster"]
Pattern = Literal["literal", "prefixed"]
Operation = Literal["read", "write", "create", "describe", "describe_configs", "alter_configs"]
CLUSTER = "kafka-cluster"  # Kafka's one cluster resource name


@dataclass(frozen=True, order=True)
class Grant:
    """ALLOW ``operation`` on a resource (by exact name, or by name prefix) to ``principal``."""

    principal: str  # "User:<name>"
    resource: Resource
    name: str
    pattern: Pattern
    operation: Operation

    def matches(self, resource: Resource, name: str) -> bool:
        if resource != self.resource:
            return False
        return name == self.name if self.pattern == "literal" else name.startswith(self.name)

    def kafka_acls_command(self) -> str:
        """The same grant as Kafka's own CLI adds it."""
        flag = {"topic": f"--topic '{self.name}'", "group": f"--group '{self.name}'", "cluster": "--cluster"}
        pattern = " --resource-pattern-type prefixed" if self.pattern == "prefixed" else ""
        operation = self.operation.replace("_", "").title().replace("configs", "Configs")
        return (
            f"kafka-acls --add --allow-principal '{self.principal}' --operation {operation} "
            f"{flag[self.resource]}{pattern}"
        )


def principal(settings: Settings, stage: Stage) -> str:
    """``User:<name>`` of ``stage``: its configured username, else the stage's own name."""
    credential = getattr(settings.kafka.credentials, stage)
    return f"User:{credential.username or stage}"


def _topic_grants(who: str, names: Iterable[str], operations: Iterable[Operation]) -> list[Grant]:
    return [Grant(who, "topic", name, "literal", op) for name in names for op in operations]


MEMBER: tuple[Operation, ...] = ("read", "describe")  # join a group, commit and fetch its offsets


@dataclass(frozen=True)
class GroupUse:
    """A consumer group (by exact name, or every group whose name starts with ``name``) that a
    stage uses with ``operations``."""

    name: str
    pattern: Pattern
    stage: Stage
    operations: tuple[Operation, ...] = MEMBER


def consumer_groups(settings: Settings) -> list[GroupUse]:
    """Every consumer group a stage uses (the names the stages build their groups with)."""
    prefix = settings.kafka.topic_prefix
    return [
        GroupUse(f"{prefix}-crawl", "prefixed", "crawler"),
        GroupUse(f"{prefix}-frontier-", "prefixed", "crawler"),
        GroupUse(settings.streams.app_id, "literal", "streams"),
        GroupUse(settings.streams.app_id, "literal", "crawler", ("describe",)),
        GroupUse(settings.sink.group_id, "prefixed", "sinks"),
        GroupUse(settings.follow.group_id, "literal", "follow"),
    ]


def acl_plan(settings: Settings) -> list[Grant]:
    """Every grant of every stage but admin (a super user), sorted, without duplicates."""
    t = catalog(settings)
    plan: set[Grant] = set()
    for spec in t.all():
        for stage in spec.readers:
            plan.update(
                _topic_grants(
                    principal(settings, stage), [spec.name], ("read", "describe", "describe_configs")
                )
            )
        for stage in spec.writers:
            plan.update(
                _topic_grants(
                    principal(settings, stage), [spec.name], ("write", "describe", "describe_configs")
                )
            )
    for use in consumer_groups(settings):
        plan.update(
            Grant(principal(settings, use.stage), "group", use.name, use.pattern, op) for op in use.operations
        )
    streams = principal(settings, "streams")
    # faust's changelogs and internal topics (<app_id>-<table>-changelog, <app_id>-stats-by-...):
    # the stage creates, reads and writes them; and it may create its own repartition topics.
    own: tuple[Operation, ...] = ("create", "read", "write", "describe", "describe_configs")
    plan.update(Grant(streams, "topic", f"{settings.streams.app_id}-", "prefixed", op) for op in own)
    plan.update(_topic_grants(streams, [t.pages_by_band.name, t.dedup_verdicts.name], ("create",)))
    # Kafka Connect looks the cluster up (its id) before it starts a connector.
    plan.add(Grant(principal(settings, "connect"), "cluster", CLUSTER, "literal", "describe"))
    return sorted(plan)


def connect_cluster_grants(settings: Settings, group: str, storage_topics: Iterable[str]) -> list[Grant]:
    """What a distributed Kafka Connect cluster (Strimzi's KafkaConnect) needs beyond
    :func:`acl_plan`: its worker group, and its config/offset/status topics, which it creates."""
    who = principal(settings, "connect")
    ops: tuple[Operation, ...] = ("create", "read", "write", "describe", "describe_configs")
    grants = [Grant(who, "group", group, "literal", op) for op in MEMBER]
    grants += [Grant(who, "topic", name, "literal", op) for name in storage_topics for op in ops]
    return sorted(grants)


def allowed(plan: Iterable[Grant], who: str, resource: Resource, name: str, operation: Operation) -> bool:
    """Whether ``plan`` lets ``who`` do ``operation`` on the resource (read and write imply
    describe, as in Kafka). Used to check the plan, e.g. in tests."""
    implied = {operation} | ({"read", "write"} if operation == "describe" else set())
    return any(g.principal == who and g.operation in implied and g.matches(resource, name) for g in plan)
