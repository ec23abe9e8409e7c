"""``crawlstream exporter`` and ``crawlstream status`` against the real stack: lag in kafka_exporter's
names, the sink's Postgres-stored lag, CDC slot gauges; the status snapshot's topics and groups.

Own topic prefix, group and sink_offsets rows (``exptest-<hex>``), removed afterwards.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from confluent_kafka import Producer
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from control.cli import app
from control.ops import admin as kadmin
from control.ops.exporter import registry_for
from crawlstream.settings import Settings, load_settings
from crawlstream.topics import catalog, ensure_topics
from sinks.probe import write_stored_offsets

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("CRAWLSTREAM_KAFKA__TOPIC_PREFIX", f"exptest-{uuid.uuid4().hex[:10]}")
    settings = load_settings()
    raw = catalog(settings).raw_pages
    ensure_topics(settings, [raw])
    producer = Producer(settings.kafka.librdkafka())
    for i in range(9):
        producer.produce(raw.name, value=b"x", key=f"k{i}".encode(), partition=i % 3)
    assert producer.flush(30) == 0
    yield settings
    prefix = settings.kafka.topic_prefix
    owner = psycopg2.connect(settings.postgres.dsn(owner=True))
    owner.autocommit = True
    with owner.cursor() as cur:
        cur.execute("DELETE FROM sink_offsets WHERE consumer_group LIKE %s", (f"{prefix}%",))
    owner.close()
    admin = kadmin.admin_client(settings)
    existing = kadmin.list_groups(admin)
    for group in {f"{prefix}-kafka", f"{prefix}-sink"} & set(existing):
        admin.delete_consumer_groups([group])[group].result(30)
    for future in admin.delete_topics([raw.name]).values():
        future.result(30)


def scrape(settings: Settings) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = generate_latest(registry_for(settings, groups=f"{settings.kafka.topic_prefix}.*")).decode()
    return {
        family.name: {tuple(sorted(s.labels.items())): s.value for s in family.samples}
        for family in text_string_to_metric_families(text)
    }


def test_exporter_serves_lag_the_way_kafka_exporter_does(settings: Settings) -> None:
    prefix, topic = settings.kafka.topic_prefix, catalog(settings).raw_pages.name
    admin = kadmin.admin_client(settings)
    kadmin.alter_group_offsets(admin, f"{prefix}-kafka", {(topic, 0): 1, (topic, 1): 3, (topic, 2): 0})
    kadmin.alter_group_offsets(admin, f"{prefix}-sink", {(topic, 0): 3, (topic, 1): 3, (topic, 2): 3})
    write_stored_offsets(settings, f"{prefix}-sink", {(topic, 0): 2, (topic, 1): 3, (topic, 2): 0})

    metrics = scrape(settings)
    lag = metrics["kafka_consumergroup_lag"]
    key = (("consumergroup", f"{prefix}-kafka"), ("partition", "0"), ("topic", topic))
    assert lag[key] == 2
    assert sum(v for k, v in lag.items() if dict(k)["consumergroup"] == f"{prefix}-kafka") == 5
    assert metrics["kafka_consumergroup_members"][(("consumergroup", f"{prefix}-kafka"),)] == 0
    assert metrics["kafka_topic_partition_current_offset"][(("partition", "1"), ("topic", topic))] == 3
    assert metrics["kafka_topic_partition_oldest_offset"][(("partition", "1"), ("topic", topic))] == 0
    # Kafka's mirror says the sink caught up; the offsets stored with the rows say otherwise.
    assert sum(v for k, v in lag.items() if dict(k)["consumergroup"] == f"{prefix}-sink") == 0
    sink_lag = {
        dict(labels)["partition"]: value
        for labels, value in metrics["crawlstream_sink_lag"].items()
        if dict(labels)["consumergroup"] == f"{prefix}-sink"
    }
    assert sink_lag == {"0": 1, "1": 0, "2": 3}
    assert all(
        metrics["crawlstream_exporter_source_up"][(("source", s),)] == 1
        for s in ("kafka", "postgres", "connect")
    )
    slots = {dict(labels)["slot"] for labels in metrics["crawlstream_cdc_slot_lag_bytes"]}
    assert settings.postgres.slot_name in slots
    assert (
        metrics["crawlstream_cdc_connector_running"][(("connector", settings.connect.connector_name),)] == 1
    )
    assert metrics["crawlstream_table_rows"][(("table", "pages"),)] >= 0


def test_status_json_shows_topics_and_lag(settings: Settings) -> None:
    prefix, topic = settings.kafka.topic_prefix, catalog(settings).raw_pages.name
    admin = kadmin.admin_client(settings)
    kadmin.alter_group_offsets(admin, f"{prefix}-kafka", {(topic, 0): 1, (topic, 1): 1, (topic, 2): 1})
    result = CliRunner().invoke(app, ["status", "--json", "--interval", "0.2"])
    status = json.loads(result.output)
    assert status["topics"][topic]["partitions"] == 3
    assert status["topics"][topic]["end"] == 9
    assert status["topics"][topic]["records_per_s"] == 0
    groups = [g for g in status["groups"] if g["group"] == f"{prefix}-kafka"]
    assert groups == [
        {"group": f"{prefix}-kafka", "topic": topic, "lag": 6, "members": 0, "offsets_from": "kafka"}
    ]
    assert status["services"]["kafka"]["healthy"] is True
    assert {c["connector"] for c in status["cdc"]} >= {settings.connect.connector_name}
