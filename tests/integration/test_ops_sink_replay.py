"""Replaying the sink with ``crawlstream offsets reset``: the sink's Postgres-stored offsets are
the ones that count, the tool says so and rewrites them with ``--apply-to-store``, and the replay
writes every record again yet leaves Postgres unchanged: same rows (same xmin) and no change event.

Own topic prefix and sink group (``replaytest-<hex>``); the sink worker runs in this process with
its own metrics registry; the shared Debezium connector publishes the test's rows.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from control.ops import admin as kadmin
from control.ops.offsets_tool import offsets_app
from control.run.pipeline import PipelineProbe
from crawlstream.records import PageEvent, PageRecord
from crawlstream.settings import Settings, load_settings
from crawlstream.topics import catalog, ensure_topics
from sinks.families import FAMILIES
from sinks.metrics import SinkMetrics
from sinks.migrate import upgrade
from sinks.worker import SinkWorker

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PAGES = 30


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.2)  # polling interval of a condition with a deadline
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@pytest.fixture
def tag() -> str:
    return f"replaytest-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(tag: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("CRAWLSTREAM_KAFKA__TOPIC_PREFIX", tag)
    monkeypatch.setenv("CRAWLSTREAM_SINK__GROUP_ID", tag)
    monkeypatch.setenv("CRAWLSTREAM_SINK__BATCH_MAX_LATENCY_S", "0.1")
    settings = load_settings()
    upgrade(settings)
    topics = catalog(settings)
    ensure_topics(settings, [topics.unique_pages, topics.dead_letter])
    yield settings
    owner = psycopg2.connect(settings.postgres.dsn(owner=True))
    owner.autocommit = True
    with owner.cursor() as cur:
        cur.execute("DELETE FROM pages WHERE url LIKE %s", (f"https://{tag}.invalid/%",))
        cur.execute("DELETE FROM sink_offsets WHERE consumer_group = %s", (tag,))
    owner.close()
    admin = kadmin.admin_client(settings)
    admin.delete_consumer_groups([tag])[tag].result(30)
    for future in admin.delete_topics([topics.unique_pages.name, topics.dead_letter.name]).values():
        future.result(30)


def produce(settings: Settings, urls: list[str]) -> None:
    producer = Producer(settings.kafka.librdkafka(**{"enable.idempotence": True}))
    for url in urls:
        page = PageRecord(
            url=url, canonical_url=url, final_url=url, status=200, body=url, fetched_at=datetime.now(UTC)
        )
        event = PageEvent(change="new", page=page)
        producer.produce(catalog(settings).unique_pages.name, key=url.encode(), value=event.to_bytes())
    assert producer.flush(30) == 0


def drain_with_worker(settings: Settings, probe: PipelineProbe) -> SinkMetrics:
    """Run a sink worker until its stored offsets reach the topic's end, then stop it."""
    metrics = SinkMetrics(CollectorRegistry())
    worker = SinkWorker.from_settings(settings, FAMILIES["pages"], metrics)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        end = probe.end(probe.topics.unique_pages.name)
        wait_for(lambda: probe.sink_stored() == end, 60, f"stored offsets to reach {end}")
    finally:
        worker.request_stop()
        thread.join(30)
    assert not thread.is_alive()
    return metrics


def rows(settings: Settings, tag: str) -> list[tuple[str, str, Any]]:
    with psycopg2.connect(settings.postgres.dsn()) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT url, xmin::text, stored_at FROM pages WHERE url LIKE %s ORDER BY url",
            (f"https://{tag}.invalid/%",),
        )
        found: list[tuple[str, str, Any]] = cur.fetchall()
    conn.close()
    return found


def cdc_events_for(probe: PipelineProbe, tag: str, start: dict[int, int]) -> list[tuple[str, str]]:
    """(op, url) of every change event of this test's rows from ``start`` to the topic's end."""
    cdc = probe.topics.cdc_pages.name
    events = []
    for _key, value in probe.read_range(cdc, start, probe.end(cdc)):
        if value is None:
            continue
        envelope = json.loads(value)
        row = envelope.get("after") or envelope.get("before") or {}
        if str(row.get("url", "")).startswith(f"https://{tag}.invalid/"):
            events.append((envelope["op"], row["url"]))
    return events


def outbox_events_for(probe: PipelineProbe, tag: str, start: dict[int, int]) -> int:
    """Page events (outbox.event.page) that mention this test's URLs, from ``start`` on."""
    topic = probe.topics.page_events.name
    found = probe.read_range(topic, start, probe.end(topic))
    return sum(1 for key, value in found if tag.encode() in (key or b"") + (value or b""))


def labelled(metric: Any) -> float:
    return float(metric.labels(family="pages")._value.get())


def test_a_sink_replay_leaves_postgres_unchanged(settings: Settings, tag: str) -> None:
    probe = PipelineProbe(settings)
    cdc = probe.topics.cdc_pages.name
    urls = [f"https://{tag}.invalid/{i:03d}" for i in range(PAGES)]
    cdc_start = probe.end(cdc)
    outbox_start = probe.end(probe.topics.page_events.name)
    produce(settings, urls)
    first = drain_with_worker(settings, probe)
    assert labelled(first.rows_changed) == PAGES
    wait_for(lambda: len(cdc_events_for(probe, tag, cdc_start)) >= PAGES, 60, "the create events")
    assert sorted(cdc_events_for(probe, tag, cdc_start)) == [("c", u) for u in urls]
    wait_for(lambda: outbox_events_for(probe, tag, outbox_start) >= PAGES, 60, "the page events")
    assert outbox_events_for(probe, tag, outbox_start) == PAGES
    before = rows(settings, tag)
    assert len(before) == PAGES

    runner = CliRunner()
    dry = runner.invoke(offsets_app, ["reset", "--group", tag, "--to-earliest"])
    assert dry.exit_code == 0, dry.output
    assert "sink group" in dry.output
    assert "sink_offsets" in dry.output
    assert "dry run" in dry.output
    refused = runner.invoke(offsets_app, ["reset", "--group", tag, "--to-earliest", "--execute"])
    assert "Nothing was changed" in str(refused.exception)
    assert sum(probe.sink_stored().values()) == PAGES  # untouched

    done = runner.invoke(
        offsets_app, ["reset", "--group", tag, "--to-earliest", "--execute", "--apply-to-store"]
    )
    assert done.exit_code == 0, done.output
    assert probe.sink_stored() == {0: 0, 1: 0, 2: 0}
    group = kadmin.group_offsets(kadmin.admin_client(settings), tag)
    assert set(group.values()) == {0}

    replay_start = probe.end(cdc)
    outbox_replay_start = probe.end(probe.topics.page_events.name)
    sentinel = f"https://{tag}.invalid/zzz-sentinel"
    produce(settings, [sentinel])
    replay = drain_with_worker(settings, probe)
    assert labelled(replay.records_written) == PAGES + 1  # every record was written again ...
    assert labelled(replay.rows_changed) == 1  # ... and only the sentinel was new
    # The sentinel's row was committed after the replayed batches: once its event is out,
    # Debezium has read past the replay in the WAL, so no event for the replay is still to come.
    wait_for(lambda: ("c", sentinel) in cdc_events_for(probe, tag, replay_start), 60, "the sentinel's event")
    assert cdc_events_for(probe, tag, replay_start) == [("c", sentinel)]
    wait_for(lambda: outbox_events_for(probe, tag, outbox_replay_start) >= 1, 60, "the sentinel's page event")
    assert outbox_events_for(probe, tag, outbox_replay_start) == 1
    assert [r for r in rows(settings, tag) if r[0] != sentinel] == before
