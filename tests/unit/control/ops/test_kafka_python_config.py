"""``offsets delete --topic`` talks to Kafka through kafka-python: the librdkafka settings map onto
its arguments, and a setting without an equivalent is refused by name (never silently dropped,
which for a security setting would mean connecting in plaintext)."""

from __future__ import annotations

import pytest

from control.ops.admin import kafka_python_config
from crawlstream.errors import ConfigError
from crawlstream.settings import KafkaSettings, Settings


def settings_with(client_config: dict[str, str]) -> Settings:
    return Settings.model_construct(
        kafka=KafkaSettings(bootstrap_servers="b1:9092,b2:9092", client_config=client_config)
    )


def test_sasl_ssl_settings_map_onto_kafka_python() -> None:
    config = kafka_python_config(
        settings_with(
            {
                "security.protocol": "SASL_SSL",
                "sasl.mechanisms": "SCRAM-SHA-512",
                "sasl.username": "ops",
                "sasl.password": "secret",
                "ssl.ca.location": "/etc/ca.pem",
            }
        )
    )
    assert config == {
        "bootstrap_servers": ["b1:9092", "b2:9092"],
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "ops",
        "sasl_plain_password": "secret",
        "ssl_cafile": "/etc/ca.pem",
    }


def test_a_setting_without_an_equivalent_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"sasl\.oauthbearer\.config.*no kafka-python equivalent"):
        kafka_python_config(settings_with({"sasl.oauthbearer.config": "x", "client.id": "ops"}))
