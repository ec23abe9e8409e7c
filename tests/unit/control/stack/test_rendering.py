"""Config rendering of the embedded stack: broker, Connect worker, connector JSON, Postgres."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from control.stack import connect, kafka, postgres
from control.stack.maven import DEPLOY_DIR, JvmLayout
from crawlstream.errors import StackError
from crawlstream.settings import Settings
from crawlstream.topics import catalog


def _props(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        stack={
            "state_dir": tmp_path / "state",
            "kafka_port": 29092,
            "controller_port": 29093,
            "postgres_port": 25432,
            "connect_port": 28083,
        }
    )


def test_render_properties_replaces_in_place_and_appends_the_rest() -> None:
    base = "# comment a=1\na=1\nb = 2\n"
    out = kafka.render_properties(base, {"b": "3", "c": "4"}, Path("base.properties"))
    assert _props(out) == {"a": "1", "b": "3", "c": "4"}
    assert out.splitlines()[0].startswith("# Rendered by `crawlstream stack up` from base.properties")
    assert "# comment a=1" in out


def test_server_properties(settings: Settings) -> None:
    path = kafka.write_server_properties(settings)
    props = _props(path.read_text())
    assert path == settings.stack.state_dir.resolve() / "kafka" / "server.properties"
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:29092"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:29093"
    assert props["log.dirs"] == str(settings.stack.state_dir.resolve() / "kafka" / "data")
    assert props["auto.create.topics.enable"] == "false"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "share.coordinator.state.topic.replication.factor",
    ):
        assert props[key] == "1"
    assert int(props["message.max.bytes"]) > settings.kafka.max_message_bytes
    assert int(props["replica.fetch.max.bytes"]) >= int(props["message.max.bytes"])
    assert list(_props(path.read_text())).count("listeners") == 1


def test_cluster_id_is_kafka_shaped_and_stable(settings: Settings) -> None:
    first = kafka.cluster_id(settings)
    assert len(first) == 22
    assert not first.startswith("-")
    assert kafka.cluster_id(settings) == first


def test_broker_and_worker_commands(settings: Settings, tmp_path: Path) -> None:
    jvm = JvmLayout(Path("/usr/bin/java"), tmp_path / "jvm")
    broker = kafka.broker_command(jvm, Path("/s/server.properties"))
    assert broker[0] == "/usr/bin/java"
    assert "-Xmx768m" in broker
    assert broker[-2:] == ["kafka.Kafka", "/s/server.properties"]
    assert broker[broker.index("-cp") + 1] == f"{tmp_path / 'jvm' / 'lib'}/*"
    assert f"-Dlog4j2.configurationFile={DEPLOY_DIR / 'stack' / 'log4j2.properties'}" in broker
    worker = connect.worker_command(jvm, Path("/s/worker.properties"))
    assert worker[-2:] == ["org.apache.kafka.connect.cli.ConnectStandalone", "/s/worker.properties"]


def test_worker_properties(settings: Settings, tmp_path: Path) -> None:
    jvm = JvmLayout(Path("/usr/bin/java"), tmp_path / "jvm")
    props = _props(connect.write_worker_properties(settings, jvm).read_text())
    assert props["bootstrap.servers"] == "127.0.0.1:29092"
    assert props["listeners"] == "http://127.0.0.1:28083"
    assert props["plugin.path"] == str(tmp_path / "jvm" / "plugins")
    assert props["offset.storage.file.filename"] == str(
        settings.stack.state_dir.resolve() / "connect" / "offsets.dat"
    )
    assert props["offset.flush.interval.ms"] == "1000"
    assert props["key.converter.schemas.enable"] == props["value.converter.schemas.enable"] == "false"
    assert props["config.providers"] == "env"
    assert (
        props["config.providers.env.class"] == "org.apache.kafka.common.config.provider.EnvVarConfigProvider"
    )


def test_connector_json_matches_settings_and_reads_secrets_from_env(settings: Settings) -> None:
    config = connect.connector_config(settings)
    assert config["connector.class"] == "io.debezium.connector.postgresql.PostgresConnector"
    assert config["plugin.name"] == "pgoutput"
    assert config["topic.prefix"] == settings.connect.cdc_topic_prefix == "cdc"
    assert config["table.include.list"] == "public.pages"
    assert config["publication.autocreate.mode"] == "disabled"
    assert config["snapshot.mode"] == "initial"
    assert config["tombstones.on.delete"] == "true"
    env = connect.worker_env(settings, "s3cret")
    for key in (
        "database.hostname",
        "database.port",
        "database.dbname",
        "database.user",
        "database.password",
    ):
        placeholder = config[key]
        assert placeholder.startswith("${env:CRAWLSTREAM_CDC_")
        assert placeholder[6:-1] in env
    assert env["CRAWLSTREAM_CDC_DB_PASSWORD"] == "s3cret"
    assert env["CRAWLSTREAM_CDC_DB_PORT"] == "25432"
    assert all(isinstance(value, str) for value in config.values()), "Connect wants string values"


def test_connector_json_disagreeing_with_settings_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "c.json"
    config = json.loads(connect.CONNECTOR_JSON.read_text())
    other.write_text(json.dumps({**config, "topic.prefix": "changes"}))
    with pytest.raises(StackError, match=r"topic\.prefix='changes' but settings say 'cdc'"):
        connect.connector_config(Settings(), other)


def test_both_connectors_heartbeat_into_their_own_row_and_catalog_topics(settings: Settings) -> None:
    topics = catalog(settings)
    heartbeat_topics = {topics.cdc_heartbeat.name, topics.outbox_heartbeat.name}
    assert heartbeat_topics == {"__debezium-heartbeat.cdc", "__debezium-heartbeat.outbox"}
    for name, config in connect.connectors(settings).items():
        assert int(config["heartbeat.interval.ms"]) > 0, name
        query = config["heartbeat.action.query"]
        assert query.startswith("INSERT INTO public.cdc_heartbeat ")
        assert f"'{config['slot.name']}'" in query
        # Debezium names heartbeat topics <topic.heartbeat.prefix>.<topic.prefix>.
        assert f"{config['topic.heartbeat.prefix']}.{config['topic.prefix']}" in heartbeat_topics
        # Heartbeat rows are filtered by the table lists: they never reach a change topic.
        assert "cdc_heartbeat" not in config.get("table.include.list", "")
        assert config.get("table.include.list") or config.get("table.exclude.list") == ".*"


def test_outbox_connector_reads_page_events_as_messages_of_the_sinks_prefix(settings: Settings) -> None:
    config = connect.outbox_connector_config(settings)
    assert config["publication.name"] == settings.postgres.events_publication == "crawlstream_events"
    assert re.fullmatch(config["message.prefix.include.list"], settings.postgres.event_message_prefix)
    assert config["table.exclude.list"] == ".*"  # no table rows: only messages (and heartbeats)
    # The message content is decoded into a create event before the EventRouter routes it.
    transforms = config["transforms"].split(",")
    decode = transforms.index("decode")
    assert config[f"transforms.{transforms[decode]}.type"] == (
        "io.debezium.connector.postgresql.transforms.DecodeLogicalDecodingMessageContent"
    )
    assert config[f"transforms.{transforms[decode + 1]}.type"] == "io.debezium.transforms.outbox.EventRouter"
    # The payload is a JSON object already: no expansion of a JSON string.
    assert config["transforms.outbox.table.expand.json.payload"] == "false"
    # The raw connector reads the same WAL: it must not publish the messages.
    assert connect.connector_config(settings)["message.prefix.exclude.list"] == ".*"


def test_outbox_connector_for_another_message_prefix_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "o.json"
    config = json.loads(connect.OUTBOX_JSON.read_text())
    other.write_text(json.dumps({**config, "message.prefix.include.list": "elsewhere\\.events"}))
    with pytest.raises(StackError, match=r"does not match the page events' prefix 'crawlstream\.outbox'"):
        connect.outbox_connector_config(Settings(), other)


def test_connector_json_heartbeat_for_another_slot_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "c.json"
    config = json.loads(connect.CONNECTOR_JSON.read_text())
    query = config["heartbeat.action.query"].replace("crawlstream_pages", "crawlstream_outbox")
    other.write_text(json.dumps({**config, "heartbeat.action.query": query}))
    with pytest.raises(StackError, match=r"heartbeat\.action\.query must upsert the row of its slot"):
        connect.connector_config(Settings(), other)


def test_connect_status_summary() -> None:
    failed = {
        "connector": {"state": "RUNNING"},
        "tasks": [{"id": 0, "state": "FAILED", "trace": "org.postgresql.util.PSQLException: boom\n\tat x"}],
    }
    summary, trace = connect.describe(failed)
    assert summary == "connector RUNNING, task 0 FAILED"
    assert trace is not None
    assert "PSQLException" in trace
    assert not connect.running(failed)
    assert connect.running({"connector": {"state": "RUNNING"}, "tasks": [{"id": 0, "state": "RUNNING"}]})
    assert not connect.running({"connector": {"state": "RUNNING"}, "tasks": []})
    assert connect.describe(None) == ("not registered", None)


def test_postgres_conf_and_hba(settings: Settings, tmp_path: Path) -> None:
    layout = postgres.PgLayout(
        Path("/usr/lib/postgresql/15/bin"), tmp_path / "pg", tmp_path / "pg", 25432, "postgres"
    )
    conf = postgres.render_conf(layout)
    assert "listen_addresses = '127.0.0.1'" in conf
    assert "port = 25432" in conf
    assert "wal_level = logical" in conf
    assert f"unix_socket_directories = '{tmp_path / 'pg'}'" in conf
    hba = [line.split() for line in postgres.render_hba(settings).splitlines() if not line.startswith("#")]
    assert ["local", "all", "all", "peer"] in hba
    assert ["host", "all", "all", "127.0.0.1/32", "scram-sha-256"] in hba
    assert ["host", "replication", "crawlstream_cdc", "127.0.0.1/32", "scram-sha-256"] in hba


def test_bootstrap_sql_creates_least_privilege_roles(settings: Settings) -> None:
    sql = postgres.bootstrap_sql(settings, {"owner": "pw-o", "app": "pw-a", "cdc": "pw-c"})
    assert "CREATE ROLE crawlstream_cdc LOGIN REPLICATION" in sql
    assert "ALTER ROLE crawlstream_app WITH LOGIN PASSWORD 'pw-a';" in sql
    assert "CREATE DATABASE crawlstream OWNER crawlstream_owner" in sql
    assert "GRANT CONNECT ON DATABASE crawlstream TO crawlstream_app, crawlstream_cdc;" in sql
    # No CREATE for them on any schema, whatever the server version (PUBLIC had it before 15).
    assert "\\connect crawlstream" in sql
    assert "REVOKE CREATE ON SCHEMA %I FROM PUBLIC, crawlstream_app, crawlstream_cdc" in sql
    assert "REVOKE CREATE ON DATABASE crawlstream FROM crawlstream_app, crawlstream_cdc;" in sql
    assert "SUPERUSER" not in sql
    assert "CREATEDB" not in sql


def test_bootstrap_sql_refuses_odd_role_names() -> None:
    bad = Settings(postgres={"app_role": "app; DROP DATABASE x"})
    with pytest.raises(StackError, match="not a plain lower-case identifier"):
        postgres.bootstrap_sql(bad, {"owner": "a", "app": "b", "cdc": "c"})
