"""The faust app of the stream stage, built from :class:`~crawlstream.settings.Settings`.

``new_app(settings)`` configures an app with no agents (unit tests register one agent on it);
``create_app(settings)`` also registers every agent (raw -> changes -> touches or unique, or
dedup probes -> dedup hops -> verdicts -> unique; every outcome a stats sample -> stats; links ->
ledger -> requests; see each module) and the web views (:mod:`streams.views`); it is what
``python -m streams`` runs.
Agent modules take the app as an argument and never import this module, so there is no cycle.

Settings used: ``kafka.bootstrap_servers|partitions|replication_factor|max_message_bytes|
client_config`` and the streams principal's security (crawlstream.kafka), ``streams.app_id|store|
web_port|web_bind|web_host|canonical_url|instance_id|data_dir|commit_interval_s|session_timeout_s|
stats_close_interval_s|stats_enabled``.
The consumer group id is ``streams.app_id``; table changelogs are ``<app_id>-<table>-changelog``.
"""

from __future__ import annotations

from typing import Any

import faust

import streams.faustcompat  # noqa: F401  (checks at import the faust internals the stage uses)
from crawlstream.kafka import aiokafka_security
from crawlstream.settings import Settings
from streams import changes, dedup, frontier, ledger, outputs, recoveryguard, stats, verdicts, views
from streams.faustcli import __getattr__  # noqa: F401  (`faust -A streams.app`: the lazy `app`)
from streams.recrawl import RecrawlPolicy
from streams.topology import declare_topics


def broker_urls(bootstrap_servers: str) -> list[str]:
    """``h1:p1,h2:p2`` -> ``["kafka://h1:p1", "kafka://h2:p2"]`` (faust's broker list)."""
    return [f"kafka://{server.strip()}" for server in bootstrap_servers.split(",") if server.strip()]


def broker_credentials(settings: Settings) -> faust.SASLCredentials | faust.SSLCredentials | None:
    """faust's ``broker_credentials`` for the streams principal (crawlstream.kafka maps the same
    settings every other client uses; a key aiokafka cannot honour is refused there by name)."""
    security = aiokafka_security(settings, "streams")
    if "sasl_mechanism" in security:
        return faust.SASLCredentials(
            username=security["sasl_plain_username"],
            password=security["sasl_plain_password"],
            ssl_context=security.get("ssl_context"),
            mechanism=security["sasl_mechanism"],
        )
    if "ssl_context" in security:
        return faust.SSLCredentials(security["ssl_context"])
    return None


def new_app(settings: Settings) -> faust.App:
    """A configured faust app without agents."""
    kafka, streams = settings.kafka, settings.streams
    # faust's default canonical URL is http://<web_host>:<web_port>.
    canonical: dict[str, Any] = {"canonical_url": streams.canonical_url} if streams.canonical_url else {}
    app = faust.App(
        streams.app_id,
        broker=broker_urls(kafka.bootstrap_servers),
        broker_credentials=broker_credentials(settings),
        # Static membership: a restarted worker takes its partitions back without a rebalance.
        consumer_group_instance_id=streams.instance_id,
        # Every write waits for min.insync.replicas (faust's default; stated, since we rely on it).
        producer_acks=-1,
        store=streams.store,
        datadir=str(streams.data_dir / streams.app_id),
        # At-least-once: exactly_once has open upstream bugs; the sink is idempotent on URL.
        processing_guarantee="at_least_once",
        # Do not wait for unacked events on a rebalance or stop: events held for their dedup
        # verdict (streams.verdicts) cannot complete while consumption is paused. They are not
        # committed, so the partition's next owner replays them (at-least-once, as documented).
        stream_wait_empty=False,
        # Commit processed offsets promptly so "caught up" checks (committed == end offsets
        # for group app_id) see progress within about a second.
        broker_commit_interval=streams.commit_interval_s,
        broker_commit_every=1000,
        broker_session_timeout=streams.session_timeout_s,
        producer_linger=streams.producer_linger_s,
        # faust's own sends (windowed and run tables' changelogs, closed windows): compressed as
        # the stage's librdkafka producer compresses its records.
        producer_compression_type="zstd",
        # How often windowed tables check for windows to close (streams.stats).
        table_cleanup_interval=streams.stats_close_interval_s,
        consumer_auto_offset_reset="earliest",
        # Pages can be ~1 MB+; the producer and per-partition fetches must fit the largest record.
        producer_max_request_size=kafka.max_message_bytes,
        consumer_max_fetch_size=kafka.max_message_bytes,
        # Catalog topics are created by crawlstream.topics.ensure_topics; faust only declares
        # its internal topics (table changelogs), with these defaults where a table sets none.
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
        # No on_leader timers/tasks: skip the extra "__assignor-__leader" topic.
        topic_disable_leader=True,
        # The web server exposes table contents under /table: loopback unless a deployment
        # routes table views between hosts (streams.web_bind, web_host, canonical_url).
        web_bind=streams.web_bind,
        web_host=streams.web_host,
        web_port=streams.web_port,
        **canonical,
    )
    outputs.attach(app, settings)  # the librdkafka producer of the stage's agents and tables
    return app


def create_app(settings: Settings) -> faust.App:
    """The app with every agent registered: what a worker runs."""
    app = new_app(settings)
    topics = declare_topics(app, settings)
    aggregation = stats.register(app, settings, topics) if settings.streams.stats_enabled else None
    sampler = aggregation.buffer.hold if aggregation is not None else None
    awaiting = verdicts.AwaitingPages()
    detected = changes.register(app, settings, topics, RecrawlPolicy(), awaiting, sampler)
    dedup.register(app, settings, topics)
    verdicts.register(app, settings, topics, awaiting, sampler)
    frontier.register(app, settings, topics, detected.urls)
    ledger.register(app, settings, topics)
    if aggregation is not None:
        views.register(app, aggregation)
    # A changelog tail deleted during a restore must not keep the worker in recovery for good.
    recoveryguard.register(app)
    return app
