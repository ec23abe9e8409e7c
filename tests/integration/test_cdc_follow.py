"""`crawlstream follow` on the stack: a page change reaches a webhook, signed, after a retry.

The page sink writes a page with this test's URL; Debezium's outbox connector publishes its
event; the follower (its own group, starting at the topic's current end) records the latency
and POSTs to a local webhook that fails once with 503, then accepts.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from crawlstream.follow import Follower, FollowMetrics, run
from crawlstream.records import PageEvent
from crawlstream.settings import Settings
from crawlstream.topics import catalog
from sinks.base import SinkBatch, SinkRecord
from sinks.pages import PostgresPageSink
from tests.integration.sinks_support import owner, page, settings, tag, wait_for

__all__ = ["owner", "settings", "tag"]  # fixtures

pytestmark = pytest.mark.integration


class Hook(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]] = []
    fail_first = True

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if Hook.fail_first:
            Hook.fail_first = False
            self.send_response(503)
        else:
            Hook.received.append((dict(self.headers), body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def start_group_at_end(settings: Settings, group: str, topic: str) -> None:
    consumer = Consumer(settings.kafka.librdkafka(**{"group.id": group, "enable.auto.commit": False}))
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = [
            TopicPartition(topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1])
            for p in parts
        ]
        consumer.commit(offsets=ends, asynchronous=False)
    finally:
        consumer.close()


def test_a_page_change_reaches_the_webhook_signed(settings: Settings, owner: Any, tag: str) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    follow = settings.follow.model_copy(
        update={
            "group_id": f"{tag}-follow-{uuid.uuid4().hex[:6]}",
            "webhook_urls": [hook_url],
            "webhook_secret": SecretStr("s3cret"),
            "webhook_backoff_initial_s": 0.05,
        }
    )
    settings = settings.model_copy(update={"follow": follow})
    start_group_at_end(settings, follow.group_id, catalog(settings).page_events.name)
    registry = CollectorRegistry()
    follower = Follower(settings, Producer(settings.kafka.librdkafka()), metrics=FollowMetrics(registry))
    url = f"https://{tag}.invalid/followed"
    done = threading.Event()

    def ours() -> list[dict[str, Any]]:
        return [json.loads(b) for _h, b in Hook.received if json.loads(b)["url"] == url]

    thread = threading.Thread(target=lambda: run(settings, follower, stop=done.is_set))
    thread.start()
    sink = PostgresPageSink.from_settings(settings)
    try:
        sink.write(
            SinkBatch(tag, [SinkRecord(PageEvent(change="new", page=page(url)), "t", 0, 0)], {("t", 0): 1})
        )
        wait_for(ours, 60, "the webhook notification of our page", every_s=0.1)
    finally:
        done.set()
        thread.join(30)
        sink.close()
        server.shutdown()

    headers, body = next((h, b) for h, b in Hook.received if json.loads(b)["url"] == url)
    assert (
        headers["X-Crawlstream-Signature"]
        == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    )
    assert headers["X-Crawlstream-Event"] == "created"
    assert ours()[0]["payload"]["version"] == 1
    assert (registry.get_sample_value("follow_end_to_end_latency_seconds_count") or 0) >= 1
    assert (registry.get_sample_value("follow_webhook_retries_total") or 0) >= 1  # the 503
