"""The secured 3-node cluster (``crawlstream stack up --brokers 3 --secure``): SASL_SSL with
SCRAM-SHA-512, a local CA, ``StandardAuthorizer`` ACLs with one principal per stage.

On a stack of its own (``.crawlstream-secure/``, tests/e2e/ownstack.py): the demo site's crawl
reconciles through every stage, each stage logging in as its own principal (the streams stage
through aiokafka/faust, Kafka Connect through the Java client); the crawler's principal is
refused when it reads ``pages.unique``; no password appears in a log, a process's arguments or
``stack status``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer

from control.demosite import generate_demo_site, serve_directory
from control.run.pipeline import CrawlArgs, run_pipeline
from control.stack import security, supervisor
from crawlstream.kafka import consumer_config, producer_config
from crawlstream.settings import Settings
from crawlstream.topics import catalog
from tests.e2e.ownstack import own_stack

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.secure]


@pytest.fixture(scope="module")
def secure_settings() -> Iterator[Settings]:
    with own_stack("secure", secure=True) as settings:
        yield settings


def _topic_error(settings: Settings, stage: str, topic: str) -> int | None:
    """The error code a stage's principal gets for ``topic``'s metadata (None: allowed)."""
    group = f"{settings.kafka.topic_prefix}-crawl-probe"
    consumer = Consumer(consumer_config(settings, stage, group, log_level=0))  # type: ignore[arg-type]
    try:
        error = consumer.list_topics(topic, timeout=30).topics[topic].error
        return None if error is None else int(error.code())
    finally:
        consumer.close()


def _secrets(settings: Settings) -> dict[str, str]:
    """Every password of the stack: Kafka's (keystore, one per stage) and PostgreSQL's."""
    found = {f"kafka {k}": v for k, v in security.load_or_create_credentials(settings).items()}
    env = settings.stack.state_dir / "stack.env"
    for line in env.read_text().splitlines():
        key, _, value = line.partition("=")
        if "PASSWORD" in key:
            found[key] = value.strip("'\"")
    return {k: v for k, v in found.items() if len(v) >= 8}


def test_the_demo_reconciles_on_the_secured_cluster_with_least_privilege(
    secure_settings: Settings, tmp_path: Path
) -> None:
    settings = secure_settings
    assert settings.kafka.security_protocol == "SASL_SSL"
    topics = catalog(settings)
    unique = topics.unique_pages.name

    # Least privilege: the crawler writes its topics and may not read what the stream stage wrote.
    assert _topic_error(settings, "crawler", unique) == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert _topic_error(settings, "sinks", unique) is None
    assert _topic_error(settings, "admin", unique) is None
    refused: list[KafkaError | None] = []
    producer = Producer(producer_config(settings, "crawler", log_level=0))
    producer.produce(unique, b"{}", b"probe", on_delivery=lambda err, _msg: refused.append(err))
    producer.flush(30)
    assert [e.code() if e else None for e in refused] == [KafkaError.TOPIC_AUTHORIZATION_FAILED]

    # The whole pipeline on it: every stage with its own principal.
    manifest = generate_demo_site(tmp_path / "site", pages=100)
    server, served = serve_directory(tmp_path / "site")
    base_url = served.rstrip("/")
    try:
        run = run_pipeline(
            settings,
            CrawlArgs(
                start_urls=[f"{base_url}/index.html"],
                allow_private_hosts=[base_url],
                job_id="e2e-secure",
                run_id=uuid.uuid4().hex,
                expected_pages=manifest.expected_html_responses,
                expected_urls=manifest.expected_distinct_canonical_urls,
            ),
            timeout_s=300,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert run.ok, [
        f"{c.stage}: {c.what}: expected {c.expected_text}, got {c.actual}" for c in run.checks if not c.ok
    ]
    assert run.rows_new == run.cdc_creates == run.page_events == manifest.expected_distinct_canonical_urls

    # No secret in a log, a process's arguments or `stack status` (text and JSON).
    secrets = _secrets(settings)
    assert len(secrets) >= 8, sorted(secrets)
    status_text = subprocess.run(
        [sys.executable, "-m", "control.cli", "stack", "status"],
        capture_output=True,
        text=True,
        check=False,
    )
    texts = {"stack status": status_text.stdout + status_text.stderr}
    texts["stack status --json"] = json.dumps(supervisor.status(settings), default=str)
    for log in (settings.stack.state_dir / "logs").iterdir():
        texts[f"log {log.name}"] = log.read_text(errors="replace")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            texts[f"argv of {pid}"] = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
    assert "SASL_SSL" in texts["stack status"]
    leaks = [
        (where, name) for where, text in texts.items() for name, value in secrets.items() if value in text
    ]
    assert not leaks
