"""Least privilege on a secured Kafka: what each stage's principal may do, declared once.

One principal per stage (:data:`~crawlstream.settings.STAGES`), each allowed only the topics and
consumer groups of its own stage, from the topic catalog (crawlstream/topics.py):

- crawler: writes pages.raw, links, runs, deadletter; reads requests (distributed crawlers) in
  groups ``<prefix>-crawl*``.
- streams: reads pages.raw, links, pages.unique, pages.touches; writes pages.unique,
  pages.touches, requests, stats, deadletter; its repartition, changelog and internal topics;
  group ``streams.app_id``.
- sinks: reads pages.unique, pages.touches, stats, runs in groups ``sink.group_id*``; writes
  deadletter.
- connect: writes cdc.public.pages, outbox.event.page and the Debezium heartbeat topics.
- follow: reads outbox.event.page in group ``follow.group_id``; writes deadletter.
- admin: a super user (creates topics, users and ACLs, resets any group's offsets).

The stream stage creates its own topics (faust's changelogs and internal topics, named
``<app_id>-...``, and its repartition topics); every stage may read the configs of the topics it
uses (``ensure_topics`` checks them). :func:`acl_plan` is pure: the embedded stack applies it
(crawlstream/stack/security.py); on another cluster, create the same ACLs (``crawlstream stack
acls`` prints them as ``kafka-acls`` commands).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from crawlstream.settings import STAGES, Settings, Stage
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


def acl_plan(settings: Settings) -> list[Grant]:
    """Every grant of every stage but admin (a super user), sorted, without duplicates."""
    t = catalog(settings)
    app_id = settings.streams.app_id
    reads: dict[Stage, list[str]] = {
        "crawler": [t.requests.name],
        "streams": [
            t.raw_pages.name,
            t.links.name,
            t.unique_pages.name,
            t.page_touches.name,
            t.pages_by_content.name,
            t.pages_by_band.name,
        ],
        "sinks": [t.unique_pages.name, t.page_touches.name, t.stats.name, t.runs.name],
        "connect": [],
        "follow": [t.page_events.name],
    }
    writes: dict[Stage, list[str]] = {
        "crawler": [t.raw_pages.name, t.links.name, t.runs.name, t.dead_letter.name],
        "streams": [
            t.unique_pages.name,
            t.page_touches.name,
            t.requests.name,
            t.stats.name,
            t.dead_letter.name,
            t.pages_by_content.name,
            t.pages_by_band.name,
        ],
        "sinks": [t.dead_letter.name],
        "connect": [t.cdc_pages.name, t.page_events.name, t.cdc_heartbeat.name, t.outbox_heartbeat.name],
        "follow": [t.dead_letter.name],
    }
    groups: dict[Stage, tuple[str, Pattern] | None] = {
        "crawler": (f"{settings.kafka.topic_prefix}-crawl", "prefixed"),
        "streams": (app_id, "literal"),
        "sinks": (settings.sink.group_id, "prefixed"),  # one group per family: <id>, <id>-touches ...
        "connect": None,
        "follow": (settings.follow.group_id, "literal"),
    }
    plan: set[Grant] = set()
    for stage in STAGES:
        if stage == "admin":
            continue
        who = principal(settings, stage)
        plan.update(_topic_grants(who, reads[stage], ("read", "describe", "describe_configs")))
        plan.update(_topic_grants(who, writes[stage], ("write", "describe", "describe_configs")))
        if (group := groups[stage]) is not None:
            plan.update(Grant(who, "group", group[0], group[1], op) for op in ("read", "describe"))
    streams = principal(settings, "streams")
    # faust's changelogs and internal topics (<app_id>-<table>-changelog, <app_id>-stats-by-...):
    # the stage creates, reads and writes them; and it may create its own repartition topics.
    own: tuple[Operation, ...] = ("create", "read", "write", "describe", "describe_configs")
    plan.update(Grant(streams, "topic", f"{app_id}-", "prefixed", op) for op in own)
    plan.update(_topic_grants(streams, [t.pages_by_content.name, t.pages_by_band.name], ("create",)))
    # Kafka Connect looks the cluster up (its id) before it starts a connector.
    plan.add(Grant(principal(settings, "connect"), "cluster", CLUSTER, "literal", "describe"))
    return sorted(plan)


def allowed(plan: Iterable[Grant], who: str, resource: Resource, name: str, operation: Operation) -> bool:
    """Whether ``plan`` lets ``who`` do ``operation`` on the resource (read and write imply
    describe, as in Kafka). Used to check the plan, e.g. in tests."""
    implied = {operation} | ({"read", "write"} if operation == "describe" else set())
    return any(g.principal == who and g.operation in implied and g.matches(resource, name) for g in plan)
