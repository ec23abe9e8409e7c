"""The embedded stack end to end: real Postgres, Kafka (KRaft) and Connect + Debezium.

Runs a private stack (own state dir and ports) so the shared default stack on 19092/15432/18083
is left alone: up (cold) -> a row inserted in ``pages`` arrives on ``cdc.public.pages`` ->
up again is a no-op -> status -> down stops every process.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from confluent_kafka import Consumer
from rich.console import Console

from control.stack import supervisor
from control.stack.processes import ProcessManager, read_cmdline
from crawlstream.settings import Settings, load_settings
from crawlstream.topics import catalog

pytestmark = pytest.mark.integration


def minimal_migration(settings: Settings) -> None:
    """Stand-in for sinks.migrations.upgrade: the pages table, its publication and the CDC grant,
    the heartbeat table the connectors' heartbeat.action.query writes (migration 0003), and the
    page events' publication the outbox connector reads (migration 0007)."""
    with psycopg2.connect(settings.postgres.dsn(owner=True)) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS pages (url text PRIMARY KEY, title text)")
        cur.execute(
            "CREATE TABLE IF NOT EXISTS cdc_heartbeat (slot_name text PRIMARY KEY, beat_at timestamptz)"
        )
        cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (settings.postgres.publication,))
        if cur.fetchone() is None:
            cur.execute(f"CREATE PUBLICATION {settings.postgres.publication} FOR TABLE pages, cdc_heartbeat")
        cur.execute(
            "SELECT 1 FROM pg_publication WHERE pubname = %s", (settings.postgres.events_publication,)
        )
        if cur.fetchone() is None:
            cur.execute(f"CREATE PUBLICATION {settings.postgres.events_publication} FOR TABLE cdc_heartbeat")
        cur.execute(f"GRANT SELECT ON pages TO {settings.postgres.cdc_user}")
        cur.execute(f"GRANT SELECT, INSERT, UPDATE ON cdc_heartbeat TO {settings.postgres.cdc_user}")
    conn.close()


def _free_ports(count: int) -> list[int]:
    # Ports the kernel hands out now; other engineers' services may hold any fixed choice.
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture
def private_stack(tmp_path: Path) -> Any:
    kafka_port, controller_port, postgres_port, connect_port = _free_ports(4)
    settings = load_settings(
        stack={
            "state_dir": tmp_path / "state",
            "kafka_port": kafka_port,
            "controller_port": controller_port,
            "postgres_port": postgres_port,
            "connect_port": connect_port,
            "start_timeout_s": 240,
        }
    )
    yield settings
    supervisor.down(settings, console=Console(quiet=True))
    location = settings.stack.state_dir / "postgres.location"
    if location.is_file():  # root fallback puts the cluster under /var/lib/postgresql
        shutil.rmtree(location.read_text().strip(), ignore_errors=True)


def _change_event_for(settings: Settings, url: str, timeout_s: float = 120) -> dict[str, Any]:
    consumer = Consumer(
        settings.kafka.librdkafka(
            **{
                "group.id": f"test-stack-{uuid.uuid4()}",
                "auto.offset.reset": "earliest",
            }
        )
    )
    consumer.subscribe([catalog(settings).cdc_pages.name])
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error() or msg.value() is None:
                continue
            event: dict[str, Any] = json.loads(msg.value())
            if (event.get("after") or {}).get("url") == url:
                return event
    finally:
        consumer.close()
    raise AssertionError(f"no change event for {url} within {timeout_s}s")


def test_up_streams_changes_then_down_stops_everything(private_stack: Settings) -> None:
    quiet = Console(quiet=True)
    started = time.monotonic()
    ready = supervisor.up(private_stack, minimal_migration, console=quiet)
    cold_s = time.monotonic() - started

    env_file = private_stack.stack.state_dir / "stack.env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert "CRAWLSTREAM_POSTGRES__URL='postgresql://crawlstream_app:" in env_file.read_text()

    url = f"https://example.org/{uuid.uuid4()}"
    with psycopg2.connect(ready.postgres.dsn(owner=True)) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO pages (url, title) VALUES (%s, %s)", (url, "hello"))
    conn.close()
    event = _change_event_for(ready, url)
    assert event["op"] == "c"
    assert event["after"] == {"url": url, "title": "hello"}

    pm = ProcessManager(private_stack.stack.state_dir.resolve())
    pids = {name: pm.pid(name) for name in supervisor.SERVICES}
    started = time.monotonic()
    supervisor.up(private_stack, minimal_migration, console=quiet)
    warm_s = time.monotonic() - started
    assert {name: pm.pid(name) for name in supervisor.SERVICES} == pids, "a healthy service was restarted"
    print(f"cold up {cold_s:.1f}s, warm up {warm_s:.1f}s")

    report = supervisor.status(private_stack)
    assert all(svc["healthy"] for svc in report["services"].values()), report
    assert "RUNNING" in report["services"]["connect"]["detail"]
    secrets = json.loads((private_stack.stack.state_dir / "secrets.json").read_text())
    assert not any(secret in json.dumps(report) for secret in secrets.values())

    assert supervisor.down(private_stack, console=quiet) == ["connect", "kafka", "postgres"]
    assert all(pid is not None and read_cmdline(pid) is None for pid in pids.values())
    assert pm.names() == []
