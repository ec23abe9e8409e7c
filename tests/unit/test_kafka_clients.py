"""The Kafka client factory (crawlstream/kafka.py): per-stage configs and security mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crawlstream import kafka
from crawlstream.errors import ConfigError
from crawlstream.settings import KafkaSettings, Settings


def _settings(**kafka_fields: Any) -> Settings:
    return Settings(kafka=KafkaSettings(**kafka_fields))


def _secured(tmp_path: Path, **extra: Any) -> Settings:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read by the factory")
    return _settings(
        bootstrap_servers="127.0.0.1:1,127.0.0.1:2",
        security_protocol="SASL_SSL",
        ssl_ca_location=ca,
        credentials={
            "crawler": {"username": "crawler-user", "password": "crawler-secret"},
            "streams": {"username": "streams-user", "password": "streams-secret"},
        },
        **extra,
    )


def test_plaintext_configs_carry_no_security_keys_and_the_stage_defaults() -> None:
    settings = _settings(bootstrap_servers="127.0.0.1:9", consumer_session_timeout_s=12)
    producer = kafka.producer_config(settings, "crawler", **{"linger.ms": 100})
    assert producer["bootstrap.servers"] == "127.0.0.1:9"
    assert producer["acks"] == "all"
    assert producer["enable.idempotence"] is True
    assert producer["linger.ms"] == 100
    assert producer["client.id"] == "crawlstream-crawler"
    assert not any(k.startswith(("security.", "sasl.", "ssl.")) for k in producer)
    consumer = kafka.consumer_config(settings, "sinks", "g1")
    assert consumer["group.id"] == "g1"
    assert consumer["session.timeout.ms"] == 12_000
    assert consumer["max.partition.fetch.bytes"] == settings.kafka.max_message_bytes
    assert "group.instance.id" not in consumer


def test_a_sink_worker_with_an_instance_id_is_a_static_member() -> None:
    settings = Settings(sink={"instance_id": "sink-worker-2"})
    assert kafka.consumer_config(settings, "sinks", "g")["group.instance.id"] == "sink-worker-2"
    assert "group.instance.id" not in kafka.consumer_config(settings, "crawler", "g")


def test_each_stage_logs_in_as_its_own_principal(tmp_path: Path) -> None:
    settings = _secured(tmp_path)
    crawler = kafka.producer_config(settings, "crawler")
    streams = kafka.consumer_config(settings, "streams", "app")
    assert (crawler["sasl.username"], crawler["sasl.password"]) == ("crawler-user", "crawler-secret")
    assert (streams["sasl.username"], streams["sasl.password"]) == ("streams-user", "streams-secret")
    assert crawler["security.protocol"] == "SASL_SSL"
    assert crawler["sasl.mechanism"] == "SCRAM-SHA-512"
    assert crawler["ssl.ca.location"] == str(tmp_path / "ca.pem")


def test_a_sasl_stage_without_a_credential_fails_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"kafka\.credentials\.sinks\.username"):
        kafka.consumer_config(_secured(tmp_path), "sinks", "g")


def test_the_password_is_not_in_the_typed_security_repr(tmp_path: Path) -> None:
    security = kafka.client_security(_secured(tmp_path), "crawler")
    assert "crawler-secret" not in repr(security)


def test_aiokafka_gets_the_same_login_and_a_verifying_tls_context(tmp_path: Path, monkeypatch: Any) -> None:
    contexts: list[kafka.ClientSecurity] = []

    def fake_context(security: kafka.ClientSecurity) -> str:
        contexts.append(security)
        return "ctx"

    monkeypatch.setattr(kafka, "ssl_context", fake_context)
    out = kafka.aiokafka_security(_secured(tmp_path), "streams")
    assert out == {
        "security_protocol": "SASL_SSL",
        "ssl_context": "ctx",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "streams-user",
        "sasl_plain_password": "streams-secret",
    }
    assert contexts[0].ca_location == str(tmp_path / "ca.pem")
    assert contexts[0].check_hostname


def test_a_security_key_other_clients_cannot_honour_is_refused_by_name(tmp_path: Path) -> None:
    settings = _secured(tmp_path, client_config={"ssl.crl.location": "/x"})
    with pytest.raises(ConfigError, match=r"ssl\.crl\.location"):
        kafka.aiokafka_security(settings, "streams")
    with pytest.raises(ConfigError, match=r"ssl\.crl\.location"):
        kafka.java_client_properties(settings, "connect")


def test_java_properties_can_reference_the_password_instead_of_holding_it(tmp_path: Path) -> None:
    settings = _secured(tmp_path)
    props = kafka.java_client_properties(settings, "crawler", password_reference="${env:PW}")
    assert "crawler-secret" not in "".join(props.values())
    assert 'password="${env:PW}"' in props["sasl.jaas.config"]
    assert "ScramLoginModule" in props["sasl.jaas.config"]
    assert props["ssl.truststore.type"] == "PEM"


def test_properties_text_refuses_values_that_would_break_the_file() -> None:
    assert kafka.properties_text({"a": True, "b": 1}) == "a=true\nb=1\n"
    with pytest.raises(ConfigError, match="b:"):
        kafka.properties_text({"b": "x\ny"})
