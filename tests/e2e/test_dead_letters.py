"""A malformed message on the raw topic lands in the dead-letter topic; the pipeline keeps flowing."""

from __future__ import annotations

import base64
import time
import uuid
from datetime import UTC, datetime

import psycopg2
import pytest
from confluent_kafka import Producer

from control.run.pipeline import PipelineProbe
from crawlstream.records import DeadLetter, PageRecord
from crawlstream.settings import Settings

pytestmark = pytest.mark.e2e


def _wait_for(condition, timeout_s: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)  # polling interval of a deadline-bounded wait
    raise AssertionError("condition not met within the deadline")


def test_malformed_raw_record_is_dead_lettered_and_later_records_flow(stack_settings: Settings) -> None:
    probe = PipelineProbe(stack_settings)
    raw, dlq = probe.topics.raw_pages.name, probe.topics.dead_letter.name
    dlq_before = probe.end(dlq)
    url = f"http://dead-letter-test.invalid/{uuid.uuid4().hex}"
    good = PageRecord(
        url=url,
        canonical_url=url,
        final_url=url,
        status=200,
        fetched_at=datetime.now(UTC),
        content_type="text/html",
        title="after the poison record",
    )

    offsets: dict[str, list[tuple[int, int]]] = {}

    def remember(err, msg):  # type: ignore[no-untyped-def]
        assert err is None, err
        offsets.setdefault(msg.key().decode(), []).append((msg.partition(), msg.offset()))

    producer = Producer(stack_settings.kafka.librdkafka(**{"enable.idempotence": True}))
    producer.produce(raw, key=url.encode(), value=b"{this is not json", on_delivery=remember)
    producer.produce(raw, key=url.encode(), value=good.to_bytes(), on_delivery=remember)
    assert producer.flush(30) == 0

    def dead_letters() -> list[DeadLetter]:
        events = probe.read_range(dlq, dlq_before, probe.end(dlq))
        return [DeadLetter.model_validate_json(v) for _k, v in events if v is not None]

    letters = _wait_for(
        lambda: [d for d in dead_letters() if d.key_b64 == base64.b64encode(url.encode()).decode()]
    )
    letter = letters[0]
    assert letter.stage == "streams"
    assert letter.reason == "invalid_json"
    assert letter.source_topic == raw
    assert letter.original_value() == b"{this is not json"
    assert (letter.source_partition, letter.source_offset) == offsets[url][0], offsets

    def stored() -> bool:
        with psycopg2.connect(stack_settings.postgres.dsn()) as conn, conn.cursor() as cur:
            cur.execute("SELECT title FROM pages WHERE url = %s", (url,))
            row = cur.fetchone()
        conn.close()
        return row is not None and row[0] == "after the poison record"

    assert _wait_for(stored)
