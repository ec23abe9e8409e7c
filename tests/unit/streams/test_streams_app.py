"""The faust app factory: settings map onto faust's configuration."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import faust
import pytest
from faust.types.auth import AuthProtocol, SASLMechanism
from faust.types.enums import ProcessingGuarantee

from crawlstream.errors import ConfigError
from crawlstream.settings import KafkaSettings, Settings, StreamsSettings
from streams.app import broker_urls, create_app, new_app


def settings(**kafka: object) -> Settings:
    return Settings(
        _env_file=None,
        kafka=KafkaSettings(
            bootstrap_servers="h1:9092, h2:9093", partitions=6, replication_factor=3, **kafka
        ),
        streams=StreamsSettings(app_id="unit-app", web_port=7001, data_dir=Path("/tmp/state")),
    )


def test_broker_urls_use_faust_form() -> None:
    assert broker_urls("h1:9092, h2:9093") == ["kafka://h1:9092", "kafka://h2:9093"]


def test_app_configuration_follows_settings() -> None:
    conf = new_app(settings(max_message_bytes=3 * 1024 * 1024)).conf
    assert conf.id == "unit-app"
    assert [str(url) for url in conf.broker] == ["kafka://h1:9092", "kafka://h2:9093"]
    assert str(conf.store) == "rocksdb:"  # the default for workers
    assert (conf.topic_partitions, conf.topic_replication_factor) == (6, 3)
    assert conf.producer_max_request_size == conf.consumer_max_fetch_size == 3 * 1024 * 1024
    assert ProcessingGuarantee(conf.processing_guarantee) is ProcessingGuarantee.AT_LEAST_ONCE
    assert conf.broker_commit_interval == 1.0
    assert conf.broker_session_timeout == 10.0
    assert (conf.web_bind, conf.web_host, conf.web_port) == ("127.0.0.1", "127.0.0.1", 7001)
    assert conf.datadir == Path("/tmp/state/unit-app")
    assert conf.topic_disable_leader
    assert conf.table_cleanup_interval == 5.0  # streams.stats_close_interval_s: windows close
    assert conf.stream_wait_empty is False  # events held for their verdict cannot finish mid-rebalance


def test_create_app_registers_the_chain_with_copartitioned_changelogs() -> None:
    app = create_app(settings())
    assert sorted(agent.name for agent in app.agents.values()) == [
        "aggregate_domains",
        "apply_verdicts",
        "detect_changes",
        "find_duplicates",
        "frontier_ledger",
        "plan_requests",
        "track_runs",
    ]
    tables = (
        "urls",
        "dedup_index",
        "frontier_seen",
        "frontier_urls",
        "ledger_runs",
        "ledger_urls",
        "ledger_hosts",
        "domain_1m",
        "domain_5m",
        "run_progress",
    )
    for name in tables:
        table = app.tables[name]
        assert table.changelog_topic.get_topic_name() == f"unit-app-{name}-changelog"
        assert table.partitions == table.changelog_topic.partitions == 6  # the source topics' count


def test_the_internal_topics_agents_read_are_specs_a_worker_creates_before_faust_starts() -> None:
    from streams.topology import internal_inputs

    specs = internal_inputs(create_app(settings()))
    # The stats samples' topics: faust would create them only after its consumer's metadata,
    # which then ignores them for minutes; catalog topics are not in this list.
    assert [(s.name, s.partitions) for s in specs] == [
        ("unit-app-stats-by-domain", 6),
        ("unit-app-stats-by-run", 6),
    ]


def test_sasl_ssl_settings_become_faust_broker_credentials(tmp_path: Path) -> None:
    """The streams stage takes TLS and SASL like every other client: SCRAM over TLS with the
    streams principal's credential, the brokers checked against the configured CA."""
    ca = _self_signed_ca(tmp_path)
    conf = new_app(
        settings(
            security_protocol="SASL_SSL",
            ssl_ca_location=ca,
            credentials={"streams": {"username": "streams", "password": "pw-streams"}},
            sasl={"username": "other", "password": "pw-other"},
        )
    ).conf
    credentials = conf.broker_credentials
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol is AuthProtocol.SASL_SSL
    assert credentials.mechanism is SASLMechanism.SCRAM_SHA_512
    assert (credentials.username, credentials.password) == ("streams", "pw-streams")
    assert credentials.ssl_context is not None
    assert credentials.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert credentials.ssl_context.check_hostname
    assert "pw-streams" not in repr(credentials)


def test_plaintext_has_no_credentials_and_static_membership_follows_the_instance_id() -> None:
    s = settings()
    s.streams.instance_id = "streams-worker-2"
    conf = new_app(s).conf
    assert conf.broker_credentials is None
    assert conf.consumer_group_instance_id == "streams-worker-2"


def test_a_security_key_aiokafka_cannot_honour_is_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"kafka\.client_config.*sasl\.oauthbearer\.config"):
        new_app(settings(client_config={"sasl.oauthbearer.config": "scope=x"}))


def test_sasl_without_a_credential_for_the_stage_fails_naming_the_variables() -> None:
    with pytest.raises(ConfigError, match=r"CRAWLSTREAM_KAFKA__CREDENTIALS__STREAMS__USERNAME"):
        new_app(settings(security_protocol="SASL_PLAINTEXT"))


def _self_signed_ca(tmp_path: Path) -> Path:
    key, cert = tmp_path / "ca.key", tmp_path / "ca.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=unit CA",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert
