"""Failed deliveries go to the dead-letter topic: a job whose output topic refuses big messages.

The output topic is created with ``max.message.bytes`` of 2 KiB, so the broker rejects every page
record larger than that (librdkafka reports MSG_SIZE_TOO_LARGE through the delivery callback).
Needs only the stack's Kafka.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from crawlstream.records import DeadLetter, PageRecord, RunEvent
from crawlstream.settings import load_settings
from crawlstream.topics import catalog, ensure_topics
from tests.integration.crawl_testsite import start_test_site
from tests.integration.kafka_read import read_topic

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

JOBS = """
[jobs.small]
start_urls = ["{base}page/1", "{base}noise", "{base}canon"]
allow_private_hosts = ["{base}"]  # that host, on its port only
max_depth = 1
output_topic = "{topic}"
"""


def test_failed_deliveries_are_dead_lettered(tmp_path: Path) -> None:
    prefix = f"test-dlv-{uuid.uuid4().hex[:8]}"
    os.environ["CRAWLSTREAM_KAFKA__TOPIC_PREFIX"] = prefix
    try:
        settings = load_settings()
    finally:
        del os.environ["CRAWLSTREAM_KAFKA__TOPIC_PREFIX"]
    topics = catalog(settings)
    ensure_topics(settings, [topics.dead_letter, topics.runs])
    small = f"{prefix}.small"
    admin = AdminClient(settings.kafka.librdkafka())
    admin.create_topics([NewTopic(small, 1, 1, config={"max.message.bytes": "2048"})])[small].result(30)
    site = start_test_site(crawl_delay=0.0)
    try:
        (tmp_path / "jobs.toml").write_text(JOBS.format(base=site.base_url, topic=small))
        env = {**os.environ, "CRAWLSTREAM_KAFKA__TOPIC_PREFIX": prefix}
        argv = [sys.executable, "-m", "control.cli", "jobs", "run", "small"]
        argv += ["--jobs", str(tmp_path / "jobs.toml"), "--no-progress", "--report", str(tmp_path / "r.json")]
        proc = subprocess.run(
            argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
        )
    finally:
        site.stop()
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]  # delivery failures
    report = json.loads((tmp_path / "r.json").read_text())
    delivered = [PageRecord.model_validate_json(v) for _, v in read_topic(settings, small)]
    letters = [DeadLetter.model_validate_json(v) for _, v in read_topic(settings, topics.dead_letter.name)]
    failed = [d for d in letters if d.reason == "delivery_failed"]
    assert report["delivery_failures"] == len(failed) > 0
    assert report["records_delivered"] == len(delivered) > 0
    assert all(d.stage == "crawl" and "MSG_SIZE_TOO_LARGE" in d.error for d in failed)
    noise = f"{site.base_url}noise"
    assert noise in {base64.b64decode(d.key_b64 or "").decode() for d in failed}
    # The broker's limit of that topic is not in the catalog: the refusal comes back as a delivery
    # failure, and its dead letter carries the whole record (it fits the dead-letter topic).
    assert all(PageRecord.model_validate_json(d.original_value() or b"").url for d in failed)
    assert all(d.error_class == "confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE" for d in failed)
    finished = [RunEvent.model_validate_json(v) for _, v in read_topic(settings, topics.runs.name)][-1]
    assert (finished.event, finished.outcome, finished.delivery_failures) == (
        "finished",
        "failed",
        len(failed),
    )
