"""Settings: defaults, environment overrides, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from crawlstream.errors import ConfigError
from crawlstream.settings import load_settings


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # No stack.env or .env from the developer's checkout may leak into these tests.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CRAWLSTREAM_STACK__STATE_DIR", str(tmp_path / "state"))


def test_defaults_point_at_the_embedded_stack() -> None:
    s = load_settings()
    assert s.kafka.bootstrap_servers == "127.0.0.1:19092"
    assert s.connect.url == "http://127.0.0.1:18083"
    assert s.postgres.dsn().startswith("postgresql://crawlstream_app@127.0.0.1:15432/")


def test_nested_environment_variables_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRAWLSTREAM_KAFKA__BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("CRAWLSTREAM_SINK__BATCH_SIZE", "250")
    s = load_settings()
    assert s.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert s.sink.batch_size == 250


def test_stack_env_file_is_read_and_real_env_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "stack.env").write_text(
        "CRAWLSTREAM_POSTGRES__URL=postgresql://app:s3cret@db:5432/crawlstream\n"
        "CRAWLSTREAM_CONNECT__URL=http://connect:8083\n"
    )
    monkeypatch.setenv("CRAWLSTREAM_CONNECT__URL", "http://other:8083")
    s = load_settings()
    assert s.postgres.dsn() == "postgresql://app:s3cret@db:5432/crawlstream"
    assert s.connect.url == "http://other:8083"


def test_secrets_are_not_shown_in_repr(tmp_path: Path) -> None:
    s = load_settings(postgres={"url": "postgresql://app:hunter2@db/x"})
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s.model_dump())


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("CRAWLSTREAM_KAFKA__BOOTSTRAP_SERVERS", "no-port-here", "kafka.bootstrap_servers"),
        ("CRAWLSTREAM_KAFKA__PARTITIONS", "0", "kafka.partitions"),
        ("CRAWLSTREAM_POSTGRES__URL", "mysql://x@y/z", "postgres.url"),
        ("CRAWLSTREAM_STACK__KAFKA_PORT", "99999", "stack.kafka_port"),
        ("CRAWLSTREAM_LOG_LEVEL", "LOUD", "log_level"),
    ],
)
def test_bad_configuration_fails_naming_field_and_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert field in str(info.value)
    assert variable in str(info.value)


def test_librdkafka_config_merges_extras() -> None:
    s = load_settings(
        kafka={"client_config": {"security.protocol": "SSL", "socket.keepalive.enable": "true"}}
    )
    conf = s.kafka.librdkafka(**{"group.id": "g"})
    assert conf == {
        "bootstrap.servers": "127.0.0.1:19092",
        "security.protocol": "SSL",
        "ssl.endpoint.identification.algorithm": "https",
        "socket.keepalive.enable": "true",
        "group.id": "g",
    }
