"""The topic catalog: every topic crawlstream reads or writes, declared once.

Every stage imports its topics from :func:`catalog` (name, partitions, key, configs, and
:attr:`TopicSpec.max_message_bytes`, the size every producer checks before producing);
``crawlstream topics list`` prints it and tests/unit/test_topics_declared_once.py fails on a
topic name spelled anywhere else. Not here: the stream stage's faust-internal topics (table
changelogs, ``<app_id>-stats-by-*``; :mod:`streams.app`, :mod:`streams.stats`), made by faust.

Topics are created explicitly by :func:`ensure_topics` (``crawlstream topics create``, ``stack
up``; brokers run with auto-creation off), which also brings the declared configs of existing
topics in line. An existing topic whose partition count differs from the catalog is an error,
because faust tables need their changelog partitions to match their source topic, except that a
``growable`` topic with fewer partitions gets more (no table is co-partitioned with it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from crawlstream.errors import StackError
from crawlstream.kafka import admin_config
from crawlstream.settings import Settings, Stage

# Kafka's default max.message.bytes (broker message.max.bytes) for topics that set none.
BROKER_DEFAULT_MAX_MESSAGE_BYTES = 1048588


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    key: str
    description: str
    config: dict[str, str] = field(default_factory=dict)
    # An existing topic with fewer partitions gets more (ensure_topics) instead of an error: no
    # table is co-partitioned with it (a key may move partition, which these topics tolerate).
    growable: bool = False
    # The stages whose clients write and read the topic: a secured cluster grants exactly these
    # (crawlstream/acls.py; the admin is a super user). Operators' tools read as admin.
    writers: tuple[Stage, ...] = ()
    readers: tuple[Stage, ...] = ()

    @property
    def max_message_bytes(self) -> int:
        """The largest record the topic takes: what every producer checks before producing."""
        return int(self.config.get("max.message.bytes", BROKER_DEFAULT_MAX_MESSAGE_BYTES))


@dataclass(frozen=True)
class TopicCatalog:
    raw_pages: TopicSpec
    unique_pages: TopicSpec
    dead_letter: TopicSpec
    cdc_pages: TopicSpec
    page_touches: TopicSpec
    links: TopicSpec
    requests: TopicSpec
    runs: TopicSpec
    stats: TopicSpec
    # The stream stage's dedup hops (LSH band keys) and their verdicts: internal to it.
    pages_by_band: TopicSpec
    dedup_verdicts: TopicSpec
    # Debezium's outbox EventRouter writes here (deploy/connect/outbox-cdc.json).
    page_events: TopicSpec
    # Debezium heartbeat records of the two connectors (topic.heartbeat.prefix.topic.prefix).
    cdc_heartbeat: TopicSpec
    outbox_heartbeat: TopicSpec
    # Frontier jobs: each run's ledger (input of streams.ledger), its progress, host state.
    frontier_ledger: TopicSpec
    frontier_progress: TopicSpec
    hosts: TopicSpec

    def all(self) -> list[TopicSpec]:
        return [
            self.raw_pages,
            self.unique_pages,
            self.dead_letter,
            self.cdc_pages,
            self.page_touches,
            self.links,
            self.requests,
            self.runs,
            self.stats,
            self.pages_by_band,
            self.dedup_verdicts,
            self.page_events,
            self.cdc_heartbeat,
            self.outbox_heartbeat,
            self.frontier_ledger,
            self.frontier_progress,
            self.hosts,
        ]


def catalog(settings: Settings) -> TopicCatalog:
    """Every topic, each with an explicit ``max.message.bytes``: the limit producers check against
    (:attr:`TopicSpec.max_message_bytes`) is the one the broker enforces, whatever its own default."""
    specs = _catalog(settings)
    # On a replicated cluster a write (acks=all) counts once this many replicas have it.
    durability = (
        {"min.insync.replicas": str(settings.kafka.min_insync_replicas)}
        if settings.kafka.min_insync_replicas is not None
        else {}
    )
    return TopicCatalog(
        **{
            name: replace(
                spec,
                config={
                    "max.message.bytes": str(BROKER_DEFAULT_MAX_MESSAGE_BYTES),
                    **durability,
                    **spec.config,
                },
            )
            for name, spec in vars(specs).items()
        }
    )


def _catalog(settings: Settings) -> TopicCatalog:
    prefix = settings.kafka.topic_prefix
    parts = settings.kafka.partitions
    big = {"max.message.bytes": str(settings.kafka.max_message_bytes), "compression.type": "producer"}
    return TopicCatalog(
        raw_pages=TopicSpec(
            f"{prefix}.pages.raw",
            parts,
            "canonical URL",
            "every HTML page the crawlers fetched (PageRecord JSON)",
            dict(big),
            writers=("crawler",),
            readers=("streams",),
        ),
        unique_pages=TopicSpec(
            f"{prefix}.pages.unique",
            parts,
            "canonical URL",
            "first sighting of each canonical URL (PageRecord JSON)",
            dict(big),
            writers=("streams",),
            readers=("sinks", "streams"),
        ),
        dead_letter=TopicSpec(
            f"{prefix}.deadletter",
            1,
            "original key",
            "records a stage could not handle, with reason and origin (DeadLetter JSON)",
            {**big, "retention.ms": str(30 * 24 * 3600 * 1000)},
            # Read by operators (`crawlstream deadletters`), as admin.
            writers=("crawler", "streams", "sinks", "follow"),
        ),
        cdc_pages=TopicSpec(
            f"{settings.connect.cdc_topic_prefix}.public.pages",
            1,
            "pages primary key",
            "Debezium change events of the pages table (envelope JSON, no schema)",
            # A change event holds a whole row, JSON-escaped: 16 MiB, as the producer limit
            # in deploy/connect/pages-cdc.json.
            {**big, "max.message.bytes": str(16 * 1024 * 1024)},
            writers=("connect",),
        ),
        page_touches=TopicSpec(
            f"{prefix}.pages.touches",
            parts,
            "canonical URL",
            "recrawls of known URLs whose content did not change (PageTouch JSON)",
            writers=("streams",),
            readers=("sinks", "streams"),
        ),
        links=TopicSpec(
            f"{prefix}.links",
            parts,
            "canonical URL",
            "links the crawlers discovered, input of the frontier (LinkRecord JSON)",
            writers=("crawler",),
            readers=("streams",),
        ),
        requests=TopicSpec(
            f"{prefix}.requests",
            settings.frontier.request_partitions,
            "host",
            "URLs to fetch for distributed crawlers; one host, one partition (CrawlRequest JSON)",
            growable=True,
            writers=("streams",),
            readers=("crawler",),
        ),
        runs=TopicSpec(
            f"{prefix}.runs",
            1,
            "run id",
            "crawl run started/finished events (RunEvent JSON)",
            writers=("crawler",),
            readers=("sinks",),
        ),
        stats=TopicSpec(
            f"{prefix}.stats",
            parts,
            "domain",
            "closed per-domain aggregation windows (DomainStats JSON)",
            writers=("streams",),
            readers=("sinks",),
        ),
        pages_by_band=TopicSpec(
            f"{prefix}.streams.pages-by-band",
            parts,
            "LSH band key <index>:<hex> (partition chosen by the stage: see streams.dedup)",
            "dedup probes of new/changed pages, hop by hop through the content and band tables "
            "(DedupProbe JSON)",
            writers=("streams",),
            readers=("streams",),
        ),
        dedup_verdicts=TopicSpec(
            f"{prefix}.streams.dedup-verdicts",
            parts,
            "canonical URL (partition: the page's raw partition)",
            "dedup verdicts back to the worker holding their page (DedupProbe JSON)",
            writers=("streams",),
            readers=("streams",),
        ),
        page_events=TopicSpec(
            "outbox.event.page",
            parts,
            "canonical URL (outbox aggregateid)",
            "page created/changed/gone events from the page sink's WAL messages (JSON; header eventType)",
            writers=("connect",),
            readers=("follow",),
        ),
        cdc_heartbeat=heartbeat_topic(settings, settings.connect.cdc_topic_prefix),
        outbox_heartbeat=heartbeat_topic(settings, settings.connect.outbox_topic_prefix),
        frontier_ledger=TopicSpec(
            f"{prefix}.frontier.ledger",
            parts,
            "run id",
            "a frontier run's candidates, closed requests and commands, in order (LedgerEntry JSON)",
            writers=("crawler", "streams"),
            readers=("streams",),
        ),
        frontier_progress=TopicSpec(
            f"{prefix}.frontier.progress",
            1,
            "run id",
            "the latest state of each frontier run's ledger (RunProgress JSON; compacted)",
            {**_compacted(), "retention.ms": str(30 * 24 * 3600 * 1000)},
            writers=("streams",),
            readers=("crawler",),
        ),
        hosts=TopicSpec(
            f"{prefix}.hosts",
            settings.frontier.request_partitions,
            "host",
            "per-host politeness state: robots.txt, Crawl-delay, cooldowns, backoff (HostState JSON; "
            "compacted; partitioned like the requests topic)",
            _compacted(),
            growable=True,
            writers=("crawler",),
            readers=("crawler",),
        ),
    )


def _compacted() -> dict[str, str]:
    # Compacted often enough that a restore reads about one record per key.
    return {
        "cleanup.policy": "compact",
        "segment.ms": str(3600 * 1000),
        "min.cleanable.dirty.ratio": "0.1",
        "delete.retention.ms": str(24 * 3600 * 1000),
    }


def heartbeat_topic(settings: Settings, connector_topic_prefix: str) -> TopicSpec:
    """Where a Debezium connector writes heartbeats: ``<topic.heartbeat.prefix>.<topic.prefix>``.
    One small record per heartbeat.interval.ms, no consumer of ours: a day's retention is plenty."""
    return TopicSpec(
        f"{settings.connect.heartbeat_topic_prefix}.{connector_topic_prefix}",
        1,
        "Debezium server name",
        "Debezium heartbeats (offset only, no row); they commit idle slots' LSNs. Not page data",
        {"retention.ms": str(24 * 3600 * 1000), "segment.ms": str(3600 * 1000)},
        writers=("connect",),
    )


def ensure_topics(
    settings: Settings,
    specs: list[TopicSpec] | None = None,
    timeout_s: float = 30.0,
    *,
    stage: Stage = "admin",
) -> list[str]:
    """Create missing topics; verify partition counts of existing ones and bring their declared
    configs (``max.message.bytes``, retention...) in line with the catalog. Returns created names.
    ``stage``: whose principal does it (on a secured cluster a stage may manage only its own)."""
    specs = specs if specs is not None else catalog(settings).all()
    admin = AdminClient(admin_config(settings, stage))
    existing = admin.list_topics(timeout=timeout_s).topics
    problems = [
        f"topic {s.name} has {len(existing[s.name].partitions)} partitions, catalog says {s.partitions}"
        for s in specs
        if s.name in existing
        and len(existing[s.name].partitions) != s.partitions
        and not (s.growable and len(existing[s.name].partitions) < s.partitions)
    ]
    if problems:
        raise StackError("; ".join(problems))
    grow = [s for s in specs if s.name in existing and len(existing[s.name].partitions) < s.partitions]
    if grow:
        from confluent_kafka.admin import NewPartitions  # type: ignore[attr-defined]

        for name, future in admin.create_partitions(
            [NewPartitions(s.name, s.partitions) for s in grow], operation_timeout=timeout_s
        ).items():
            try:
                future.result()
            except Exception as exc:
                raise StackError(f"cannot add partitions to topic {name}: {exc}") from exc
    _align_configs(admin, [s for s in specs if s.name in existing and s.config], timeout_s)
    missing = [s for s in specs if s.name not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [NewTopic(s.name, s.partitions, settings.kafka.replication_factor, config=s.config) for s in missing],
        operation_timeout=timeout_s,
    )
    created = []
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except Exception as exc:  # a concurrent creator is fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise StackError(f"cannot create topic {name}: {exc}") from exc
    return created


def _set(name: str, value: str) -> Any:
    return ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)


def _align_configs(admin: AdminClient, specs: list[TopicSpec], timeout_s: float) -> None:
    """Set the catalog's configs on existing topics where they differ (a topic created by an
    older catalog, or by hand); other configs of the topic are left alone."""
    if not specs:
        return
    resources = [ConfigResource(ResourceType.TOPIC, s.name) for s in specs]
    described = admin.describe_configs(resources, request_timeout=timeout_s)
    changes = []
    for spec, resource in zip(specs, resources, strict=True):
        current = {name: entry.value for name, entry in described[resource].result(timeout_s).items()}
        differ = {k: v for k, v in spec.config.items() if current.get(k) != v}
        if differ:
            changes.append(
                ConfigResource(
                    ResourceType.TOPIC,
                    spec.name,
                    incremental_configs=[
                        ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
                        for k, v in differ.items()
                    ],
                )
            )
    if not changes:
        return
    for resource, future in admin.incremental_alter_configs(changes, request_timeout=timeout_s).items():
        try:
            future.result(timeout_s)
        except Exception as exc:
            raise StackError(f"cannot set the catalog's configs on topic {resource.name}: {exc}") from exc
