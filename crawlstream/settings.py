"""Typed settings for every crawlstream process, read once from the environment.

Sources, lowest priority first: defaults here, ``<state_dir>/stack.env`` (written by
``crawlstream stack up`` with the embedded stack's endpoints and generated secrets), ``.env``
in the working directory, then real environment variables. Variables use the prefix
``CRAWLSTREAM_`` and ``__`` between sections, e.g. ``CRAWLSTREAM_KAFKA__BOOTSTRAP_SERVERS``.

Components receive a :class:`Settings` through a factory (``from_settings``/``from_crawler``);
nothing reads a global. Bad configuration raises :class:`ConfigError` naming the field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from crawlstream.errors import ConfigError

ENV_PREFIX = "CRAWLSTREAM_"
DEFAULT_STATE_DIR = Path(".crawlstream")


# The processes of the pipeline, each with its own Kafka principal on a secured cluster
# (crawlstream/kafka.py builds their clients, crawlstream/acls.py what each may do).
Stage = Literal["crawler", "streams", "sinks", "connect", "follow", "admin"]
STAGES: tuple[Stage, ...] = ("crawler", "streams", "sinks", "connect", "follow", "admin")
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class SaslCredential(BaseModel):
    """A SASL user and its password (SCRAM or PLAIN)."""

    username: str = Field(default="", pattern=r"^[^\s,=]*$")
    password: SecretStr = SecretStr("")

    @model_validator(mode="after")
    def _both_or_neither(self) -> SaslCredential:
        if self.username and not self.password.get_secret_value():
            raise ValueError(f"user {self.username!r} has no password")
        if self.password.get_secret_value() and not self.username:
            raise ValueError("a password without a username")
        return self

    @property
    def set(self) -> bool:
        return bool(self.username)


class StageCredentials(BaseModel):
    """One credential per stage, for a host that runs several stages with one environment (the
    embedded stack writes these to stack.env). A process that runs one stage sets ``kafka.sasl``
    instead (CRAWLSTREAM_KAFKA__SASL__USERNAME / __PASSWORD, e.g. from a Kubernetes Secret)."""

    crawler: SaslCredential = Field(default_factory=SaslCredential)
    streams: SaslCredential = Field(default_factory=SaslCredential)
    sinks: SaslCredential = Field(default_factory=SaslCredential)
    connect: SaslCredential = Field(default_factory=SaslCredential)
    follow: SaslCredential = Field(default_factory=SaslCredential)
    admin: SaslCredential = Field(default_factory=SaslCredential)


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:19092"
    topic_prefix: str = Field(default="crawlstream", pattern=r"^[A-Za-z0-9._-]+$")
    partitions: int = Field(default=3, ge=1, le=1024, description="partitions of pipeline topics")
    replication_factor: int = Field(default=1, ge=1)
    # min.insync.replicas of catalog topics (with producers' acks=all: how many replicas hold a
    # record before it counts as written). None: the broker's default.
    min_insync_replicas: int | None = Field(default=None, ge=1)
    # Extra librdkafka settings for managed clusters, applied after the typed ones below.
    client_config: dict[str, str] = Field(default_factory=dict)
    max_message_bytes: int = Field(default=8 * 1024 * 1024, ge=1024 * 1024)
    # How long a consumer killed without leaving its group keeps its partitions (librdkafka's
    # default is 45 s: a sink or follower killed by kill -9 stalled its partitions that long).
    consumer_session_timeout_s: float = Field(default=10.0, ge=6, le=300)
    # Security (every client: librdkafka, aiokafka/faust, kafka-python, Kafka Connect).
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    # CA certificates (PEM) the brokers' certificates are checked against; None: the system's.
    ssl_ca_location: Path | None = None
    # Client certificate and key (PEM) for brokers that require TLS client authentication.
    ssl_certificate_location: Path | None = None
    ssl_key_location: Path | None = None
    ssl_key_password: SecretStr | None = None
    # Check that a broker's certificate names the host (or IP) connected to.
    ssl_check_hostname: bool = True
    # This process's credential (one stage per process, the production way) ...
    sasl: SaslCredential = Field(default_factory=SaslCredential)
    # ... or one per stage, picked by the stage a client is built for; it wins over ``sasl``.
    credentials: StageCredentials = Field(default_factory=StageCredentials)

    @field_validator("bootstrap_servers")
    @classmethod
    def _hosts_have_ports(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {server.strip()!r}")
        return value

    @field_validator("ssl_ca_location", "ssl_certificate_location", "ssl_key_location")
    @classmethod
    def _file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a file")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSettings:
        if self.min_insync_replicas is not None and self.min_insync_replicas > self.replication_factor:
            raise ValueError(
                f"min_insync_replicas ({self.min_insync_replicas}) exceeds replication_factor "
                f"({self.replication_factor}): no write with acks=all could succeed"
            )
        if (self.ssl_certificate_location is None) != (self.ssl_key_location is None):
            raise ValueError("ssl_certificate_location and ssl_key_location go together")
        return self

    def credential(self, stage: Stage) -> SaslCredential | None:
        """The SASL credential ``stage``'s clients log in with: its own, else this process's."""
        own: SaslCredential = getattr(self.credentials, stage)
        if own.set:
            return own
        return self.sasl if self.sasl.set else None

    def librdkafka(self, **overrides: Any) -> dict[str, Any]:
        """The admin principal's librdkafka config plus ``overrides``: for tests and scripts.
        Stages build their clients with crawlstream.kafka (per-stage principal and defaults)."""
        from crawlstream.kafka import base_config  # the factory imports this module

        return {**base_config(self, "admin"), **overrides}


class PostgresSettings(BaseModel):
    # Role used by sink workers: DML only on crawlstream's tables.
    url: SecretStr = SecretStr("postgresql://crawlstream_app@127.0.0.1:15432/crawlstream")
    # Role that owns the schema and runs migrations; defaults to ``url``.
    owner_url: SecretStr | None = None
    # Role name the migrations grant DML to (the user in ``url``).
    app_role: str = "crawlstream_app"
    # Replication role Debezium logs in as (REPLICATION + SELECT on published tables).
    cdc_user: str = "crawlstream_cdc"
    cdc_password: SecretStr = SecretStr("")
    publication: str = "crawlstream_pages"
    slot_name: str = "crawlstream_pages"
    # The page sink emits each page event as a transactional logical decoding message with this
    # prefix (pg_logical_emit_message); the outbox connector reads only this prefix
    # (message.prefix.include.list) through its own publication, which holds ``cdc_heartbeat``
    # only (migration 0007): the connector needs no table rows, only the messages and heartbeats.
    event_message_prefix: str = Field(default="crawlstream.outbox", pattern=r"^[A-Za-z0-9._-]+$")
    events_publication: str = "crawlstream_events"

    @field_validator("url", "owner_url")
    @classmethod
    def _is_postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("postgresql://", "postgresql+psycopg2://", "postgres://")
        ):
            raise ValueError("expected a postgresql:// URL")
        return value

    def dsn(self, *, owner: bool = False) -> str:
        """A libpq DSN (no SQLAlchemy driver suffix) for the app or the owner role."""
        secret = self.owner_url if owner and self.owner_url is not None else self.url
        raw = secret.get_secret_value()
        return raw.replace("postgresql+psycopg2://", "postgresql://", 1)

    def sqlalchemy_url(self, *, owner: bool = False) -> str:
        return self.dsn(owner=owner).replace("postgresql://", "postgresql+psycopg2://", 1)


class ConnectSettings(BaseModel):
    url: str = "http://127.0.0.1:18083"
    connector_name: str = "crawlstream-pages-cdc"
    # Debezium names change topics <topic_prefix>.<schema>.<table>.
    cdc_topic_prefix: str = Field(default="cdc", pattern=r"^[A-Za-z0-9._-]+$")
    # The outbox connector (deploy/connect/outbox-cdc.json): Debezium's EventRouter routes
    # outbox rows to outbox.event.<aggregatetype>, e.g. outbox.event.page; it has its own slot.
    outbox_connector_name: str = "crawlstream-outbox-cdc"
    outbox_slot_name: str = "crawlstream_outbox"
    outbox_topic_prefix: str = Field(default="outbox", pattern=r"^[A-Za-z0-9._-]+$")
    # Both connectors emit heartbeats (heartbeat.interval.ms) to <this>.<topic.prefix>, e.g.
    # __debezium-heartbeat.cdc; their heartbeat.action.query keeps idle slots confirming WAL.
    heartbeat_topic_prefix: str = Field(default="__debezium-heartbeat", pattern=r"^[A-Za-z0-9._-]+$")
    # `crawlstream cdc status` warns when a slot retains more WAL than this.
    slot_lag_warn_bytes: int = Field(default=256 * 1024 * 1024, ge=0)


class StackSettings(BaseModel):
    """The embedded stack that ``crawlstream stack up`` supervises (not used in production)."""

    state_dir: Path = DEFAULT_STATE_DIR
    cache_dir: Path = Path.home() / ".cache" / "crawlstream"
    kafka_port: int = Field(default=19092, ge=1, le=65535)
    controller_port: int = Field(default=19093, ge=1, le=65535)
    postgres_port: int = Field(default=15432, ge=1, le=65535)
    connect_port: int = Field(default=18083, ge=1, le=65535)
    # `stack up --with-prometheus`: the Prometheus server scraping every process (deploy/prometheus).
    prometheus_port: int = Field(default=19090, ge=1, le=65535)
    java_home: Path | None = None
    postgres_bin_dir: Path | None = None
    start_timeout_s: float = Field(default=180.0, gt=0)
    # Kafka nodes, each a combined broker + KRaft controller (so as many voters); 3 is a cluster
    # that survives the loss of one node. Node i (0-based) listens on kafka_port + 10*i (clients),
    # controller_port + 10*i (controllers) and, when secure, kafka_port + 10*i + 2 (replication).
    brokers: int = Field(default=1, ge=1, le=5)
    # SASL_SSL (SCRAM-SHA-512) for clients, mutual TLS between nodes, ACLs: one principal per stage.
    secure: bool = False
    # `crawlstream workers up --streams N --sinks N`: worker i (0-based) serves its ports (metrics,
    # faust web) at the configured port + i * this.
    worker_port_stride: int = Field(default=100, ge=1, le=10000)

    @field_validator("brokers")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("an odd number of nodes (1, 3 or 5): the controllers vote by majority")
        return value

    @model_validator(mode="after")
    def _ports_distinct(self) -> StackSettings:
        used: dict[int, str] = {}
        fixed = {
            "postgres_port": self.postgres_port,
            "connect_port": self.connect_port,
            "prometheus_port": self.prometheus_port,
        }
        for field, port in fixed.items():
            used[port] = field
        for node in range(self.brokers):
            names = {
                self.kafka_port + 10 * node: "kafka_port",
                self.controller_port + 10 * node: "controller_port",
            }
            if self.secure:
                names[self.kafka_port + 10 * node + 2] = "kafka_port"
            for port, field in names.items():
                if port > 65535:
                    raise ValueError(f"{field}: node {node + 1} would listen on {port}, above 65535")
                if port in used:
                    raise ValueError(
                        f"{field}: node {node + 1} would listen on {port}, which {used[port]} uses; "
                        "pick ports further apart"
                    )
                used[port] = field
        return self


class MetricsSettings(BaseModel):
    host: str = "127.0.0.1"
    crawler_port: int = Field(default=9410, ge=0, le=65535)
    streams_port: int = Field(default=9411, ge=0, le=65535)
    sink_port: int = Field(default=9412, ge=0, le=65535)
    scheduler_port: int = Field(default=9415, ge=0, le=65535)
    # `crawlstream exporter`: consumer lag (kafka_exporter names), sink-stored lag, CDC slot lag.
    exporter_port: int = Field(default=9414, ge=0, le=65535)


# The body cap of a page record: the one default every spider and middleware falls back on.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024


class CrawlSettings(BaseModel):
    user_agent: str = "crawlstream/0.1 (+https://github.com/crawlstream/crawlstream)"
    # Bounded by default: the open web has traps (calendars, session IDs in URLs, endless
    # pagination). 0 turns a limit off, explicitly.
    max_pages: int = Field(default=100_000, ge=0, description="pages per crawl (0: no limit)")
    max_pages_per_host: int = Field(default=50_000, ge=0, description="pages per host (0: no limit)")
    max_depth: int = Field(default=16, ge=0, description="link hops from the seeds (0: no limit)")
    max_links_per_page: int = Field(default=1000, ge=1, description="outlinks followed per page")
    max_url_length: int = Field(default=2048, ge=64, le=65536, description="longer URLs are refused")
    # Cap of the body kept in a record (and of derived texts), recorded as body_truncated.
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024)
    # Downloads above this are aborted while downloading (Scrapy DOWNLOAD_MAXSIZE; also caps
    # decompressed bodies).
    max_response_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    concurrency: int = Field(default=16, ge=1)
    concurrency_per_domain: int = Field(default=8, ge=1)
    download_delay_s: float = Field(default=0.0, ge=0)
    download_timeout_s: float = Field(default=30.0, gt=0)
    obey_robots: bool = True
    allow_private_addresses: bool = False
    delivery_timeout_s: float = Field(default=60.0, gt=0)


class FrontierSettings(BaseModel):
    """Frontier jobs (``source = "frontier"``): the requests topic, host state, completion."""

    # Partitions of <prefix>.requests and <prefix>.hosts (one host, one partition, one crawler at
    # a time): more than kafka.partitions so that crawler processes split the hosts evenly.
    request_partitions: int = Field(default=12, ge=1, le=1024)
    # Requests a crawler process reads ahead into its per-host queues before it pauses the topic.
    read_ahead: int = Field(default=5000, ge=10)
    # A crawler that fails this many fetches in a row on a host backs off from it, doubling from
    # backoff_initial_s up to backoff_max_s.
    backoff_after_errors: int = Field(default=3, ge=1)
    backoff_initial_s: float = Field(default=5.0, gt=0)
    backoff_max_s: float = Field(default=300.0, gt=0)
    # robots.txt kept in the host state is used for this long before it is fetched again.
    robots_max_age_s: float = Field(default=86_400.0, gt=0)
    # How often a run's runner checks completion and prints progress.
    poll_interval_s: float = Field(default=0.5, gt=0, le=10)
    # The ledger publishes a run's progress at most this often while requests are open (a change
    # after that sends it); a change that makes the run quiet, or follows a quiet one, is sent at
    # once, since completion is judged on them (streams.ledger). 0: every change.
    progress_interval_s: float = Field(default=0.5, ge=0, le=10)


class StreamsSettings(BaseModel):
    # Also the Kafka consumer group id and the prefix of faust's changelog topics.
    app_id: str = Field(default="crawlstream-streams", pattern=r"^[A-Za-z0-9._-]+$")
    # Table state on disk (faust's rocksdict store), restored from changelogs only for what it
    # lacks; unit tests use "memory://".
    store: str = "rocksdb://"
    web_port: int = Field(default=6066, ge=1, le=65535)
    # The faust web server (table views, /metrics) listens here; its /table views expose table
    # contents, so it stays on loopback unless a deployment routes views between hosts.
    web_bind: str = "127.0.0.1"
    # How other workers reach this one: table views answer for keys another worker owns by
    # redirecting to that worker's canonical URL, http://<web_host>:<web_port> unless
    # canonical_url says otherwise (Kubernetes: the pod IP or a headless service's pod name).
    web_host: str = "127.0.0.1"
    canonical_url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(:\d+)?/?$")
    # Static group membership (faust consumer_group_instance_id): a stable, unique name per
    # worker (a StatefulSet pod name); a restarted worker takes its partitions back without a
    # rebalance of the others. None: dynamic membership.
    instance_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,200}$")
    # faust's datadir is <data_dir>/<app_id> (table files; RocksDB data with rocksdb://).
    data_dir: Path = DEFAULT_STATE_DIR / "streams"
    # How often processed offsets are committed; drain checks compare these to end offsets.
    commit_interval_s: float = Field(default=1.0, gt=0, le=60)
    # A worker killed without leaving the group holds its partitions this long (faust's default
    # is 60 s); heartbeats run on the consumer thread, so a busy event loop does not expire it.
    session_timeout_s: float = Field(default=10.0, ge=6, le=90)
    # Outputs and changelog records wait this long to share a batch (librdkafka's linger.ms and
    # faust's producer_linger). At crawl rates most stage records would travel alone in a batch
    # (61 bytes of header, nothing for zstd to share): on a 3,000-page demo crawl at ~40 pages/s
    # the stage wrote 2.30 bytes per raw byte at 5 ms, 1.62 at 50 ms, 1.34 at 100 ms
    # (bench/bench_stream_crawl.py). Each hop of a page (about 4) waits up to this long.
    producer_linger_s: float = Field(default=0.05, ge=0, le=1)
    # The worker's asyncio event loop: uvloop (libuv) or Python's own ("aio").
    event_loop: Literal["uvloop", "aio"] = "uvloop"
    # Generation-0 threshold of Python's GC in the worker (crawlstream.gctuning; 0: Python's
    # default), as the crawlers' CRAWLSTREAM_GC_GEN0_THRESHOLD: fewer passes over a large heap.
    gc_gen0_threshold: int = Field(default=10_000, ge=0)
    # Pages whose SimHashes differ in at most this many bits are near-duplicates (LSH banding
    # finds every such pair for distances up to 15).
    near_duplicate_distance: int = Field(default=3, ge=0, le=15)
    # Per-domain windowed stats and run progress (streams.stats); off: no stats agents at all.
    stats_enabled: bool = True
    # A per-domain stats window is emitted to <prefix>.stats this long after its end (wall clock),
    # so events fetched just before the end still count; closes are checked at this interval.
    stats_grace_s: float = Field(default=10.0, ge=1, le=3600)
    stats_close_interval_s: float = Field(default=5.0, gt=0, le=60)
    # Stats samples are summed per domain (and per run) and minute and sent this often, or as soon
    # as the input pauses (their events are acked once they are sent): one record per group and
    # flush instead of one per event. On a broad crawl a domain gets a few pages a second at most,
    # so 1 s summed almost nothing (bench/bench_frontier.py: ~0.9 samples per page).
    stats_flush_interval_s: float = Field(default=5.0, gt=0, le=10)
    # A page waits in memory for its dedup verdict; past this it is sent without dedup marks
    # (counted: streams_verdicts_total{outcome="timed_out"}) rather than stall its partition.
    dedup_timeout_s: float = Field(default=300.0, ge=10, le=3600)


class SinkSettings(BaseModel):
    group_id: str = "crawlstream-sink-pages"
    # Static group membership (librdkafka group.instance.id, per family group): a stable, unique
    # name per sink worker process. None: dynamic membership.
    instance_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,200}$")
    batch_size: int = Field(default=1000, ge=1)
    batch_max_latency_s: float = Field(default=0.5, gt=0)
    # Backoff while PostgreSQL is unavailable: doubles from initial up to max between retries.
    retry_backoff_initial_s: float = Field(default=0.5, gt=0)
    retry_backoff_max_s: float = Field(default=30.0, gt=0)
    # When every record of a batch fails with an error of our own statements (SQLSTATE 42xxx:
    # schema, grants or SQL wrong, e.g. a migration not run yet), the batch is retried with the
    # backoff above for this long (alert: sink_statement_errors_total), then dead-lettered, so
    # that no partition stops for ever. 0 dead-letters at once.
    statement_retry_s: float = Field(default=600.0, ge=0)


class FollowSettings(BaseModel):
    """`crawlstream follow`: the reference consumer of the page events topic (outbox.event.page).

    Webhooks (follow/webhooks): each URL gets its own bounded queue and worker; every
    notification is signed ``X-Crawlstream-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">``.
    """

    group_id: str = Field(default="crawlstream-follow", pattern=r"^[A-Za-z0-9._-]+$")
    metrics_port: int = Field(default=9413, ge=0, le=65535)
    # Receivers, as a JSON list. Their paths and queries may carry tokens: logs show only
    # scheme://host:port. Checked at start against the address policy (crawlstream.addresses).
    webhook_urls: list[str] = Field(default_factory=list)
    webhook_secret: SecretStr = SecretStr("")
    # During a secret rotation: also sign with this one (a second v1), so receivers that still
    # hold the old secret keep verifying until they switch.
    webhook_previous_secret: SecretStr = SecretStr("")
    # Private, loopback and other non-global receiver addresses are refused (at start and at
    # every connection) unless this is true; then only the hosts and ports of webhook_urls.
    allow_private_webhooks: bool = False
    # One attempt (lookup, connect, TLS, send, read) ends after this long, whatever the receiver
    # does (a slow drip included) ...
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=300)
    # ... and one notification's delivery (every attempt and wait between them) after this long.
    webhook_deadline_s: float = Field(default=60.0, gt=0, le=3600)
    webhook_max_attempts: int = Field(default=5, ge=1, le=100)
    webhook_backoff_initial_s: float = Field(default=0.5, gt=0)
    webhook_backoff_max_s: float = Field(default=30.0, gt=0)
    # A receiver's Retry-After (429, 503) is honoured up to this long.
    webhook_retry_after_max_s: float = Field(default=60.0, ge=0)
    # Notifications waiting per receiver; beyond it they are dead letters (webhook_queue_full).
    webhook_queue_size: int = Field(default=1000, ge=1, le=1_000_000)
    # Bytes of a receiver's answer read at most; the rest is discarded with the connection.
    webhook_max_response_bytes: int = Field(default=64 * 1024, ge=0, le=16 * 1024 * 1024)
    # On stop: how long queued notifications may still be delivered before follow exits (the
    # rest are not committed, so they are delivered again after a restart).
    shutdown_grace_s: float = Field(default=10.0, ge=0)

    @field_validator("webhook_urls")
    @classmethod
    def _http_urls(cls, value: list[str]) -> list[str]:
        # Messages name the index and scheme://host only: a URL's path or query may be a token.
        for index, url in enumerate(value):
            problem = webhook_url_problem(url)
            if problem:
                raise ValueError(f"webhook_urls[{index}]: {problem}")
        return value


def webhook_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a webhook receiver (without echoing its path), or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "not a valid URL"
    if parts.scheme not in ("http", "https"):
        return f"expected an http:// or https:// URL, got scheme {parts.scheme[:16]!r}"
    if not parts.hostname:
        return "the URL has no host"
    if parts.username is not None or parts.password is not None:
        return "credentials in the URL (user:password@) are not supported: put a token in the path"
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        return "the URL contains spaces or control characters"
    return None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_file=(DEFAULT_STATE_DIR / "stack.env", ".env"),
        env_file_encoding="utf-8",
        extra="ignore",
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    connect: ConnectSettings = Field(default_factory=ConnectSettings)
    stack: StackSettings = Field(default_factory=StackSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    crawl: CrawlSettings = Field(default_factory=CrawlSettings)
    frontier: FrontierSettings = Field(default_factory=FrontierSettings)
    streams: StreamsSettings = Field(default_factory=StreamsSettings)
    sink: SinkSettings = Field(default_factory=SinkSettings)
    follow: FollowSettings = Field(default_factory=FollowSettings)
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    log_json: bool = False


def _env_name(loc: tuple[int | str, ...]) -> str:
    return ENV_PREFIX + "__".join(str(part).upper() for part in loc)


def load_settings(**overrides: Any) -> Settings:
    """Read settings; on bad input raise ConfigError naming each bad field and its variable."""
    env_files: list[Path] = []
    state_dir = os.environ.get(f"{ENV_PREFIX}STACK__STATE_DIR")
    env_files.append((Path(state_dir) if state_dir else DEFAULT_STATE_DIR) / "stack.env")
    env_files.append(Path(".env"))
    try:
        return Settings(_env_file=tuple(env_files), **overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])} ({_env_name(err['loc'])}): {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None
