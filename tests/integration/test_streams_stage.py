"""The dedup worker (``python -m streams worker``) against the running embedded stack.

Each test gets its own topic prefix and faust app id (so its own topics, consumer group and
changelog), starts the worker as a subprocess, produces with confluent-kafka and waits on
conditions (committed offsets == end offsets, metrics values) with deadlines. The stack
itself is started by ``crawlstream stack up`` / ``make test``, never here.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from crawlstream import offsets
from crawlstream.records import DeadLetter, PageRecord
from crawlstream.settings import Settings, load_settings
from crawlstream.topics import TopicCatalog, catalog, ensure_topics

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 120.0
DUPLICATES = 'streams_duplicates_total{kind="url"}'


def wait_for(what: str, condition: Callable[[], bool], worker: Worker, timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if worker.proc.poll() is not None:
            pytest.fail(f"worker exited ({worker.proc.returncode}) waiting for {what}\n{worker.log_tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}\n{worker.log_tail()}")
        time.sleep(0.2)  # poll interval, not synchronisation


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def metrics_port(self) -> int | None:
        found = re.search(
            r"metrics on http://127\.0\.0\.1:(\d+)/metrics", self.log.read_text(errors="replace")
        )
        return int(found.group(1)) if found else None

    def metric(self, sample: str) -> float:
        port = self.metrics_port()
        if port is None:
            return 0.0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(sample + " "):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


@dataclass
class Pipeline:
    settings: Settings
    topics: TopicCatalog
    env: dict[str, str]
    tmp: Path
    workers: list[Worker]

    def start_worker(self) -> Worker:
        log = self.tmp / f"worker-{len(self.workers)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "streams", "worker", "-l", "info"],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        worker = Worker(proc, log)
        self.workers.append(worker)
        return worker

    def produce(self, messages: list[tuple[bytes | None, bytes]]) -> None:
        producer = Producer(self.settings.kafka.librdkafka(**{"enable.idempotence": True}))
        for key, value in messages:
            producer.produce(self.topics.raw_pages.name, key=key, value=value)
        assert producer.flush(30) == 0

    def drained(self) -> bool:
        """The worker's group committed every raw record (the check end-to-end code uses)."""
        end = offsets.end_offsets(self.settings, self.topics.raw_pages.name)
        committed = offsets.committed_offsets(
            self.settings, self.settings.streams.app_id, self.topics.raw_pages.name
        )
        return offsets.lag(end, committed) == 0

    def read_all(self, topic: str) -> list[tuple[bytes | None, bytes | None]]:
        """Every record of ``topic`` up to its current end offsets."""
        group = f"it-reader-{uuid.uuid4().hex}"
        consumer = Consumer(
            self.settings.kafka.librdkafka(**{"group.id": group, "enable.auto.commit": False})
        )
        try:
            remaining = {p: end for p, end in offsets.end_offsets(self.settings, topic).items() if end > 0}
            consumer.assign([TopicPartition(topic, p, 0) for p in remaining])
            out: list[tuple[bytes | None, bytes | None]] = []
            deadline = time.monotonic() + 30
            while remaining and time.monotonic() < deadline:
                msg = consumer.poll(1.0)
                if msg is None or msg.error():
                    continue
                out.append((msg.key(), msg.value()))
                partition, offset = msg.partition(), msg.offset()
                if partition is not None and offset is not None and offset + 1 >= remaining.get(partition, 0):
                    remaining.pop(partition, None)
            assert not remaining, f"could not read {topic} to its end offsets {remaining}"
            return out
        finally:
            consumer.close()


@pytest.fixture
def pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    run = uuid.uuid4().hex[:8]
    isolated = {
        "CRAWLSTREAM_KAFKA__TOPIC_PREFIX": f"it-streams-{run}",
        "CRAWLSTREAM_STREAMS__APP_ID": f"it-streams-{run}",
        "CRAWLSTREAM_STREAMS__WEB_PORT": str(free_port()),
        "CRAWLSTREAM_STREAMS__DATA_DIR": str(tmp_path / "streams"),
        "CRAWLSTREAM_METRICS__STREAMS_PORT": "0",
    }
    for name, value in isolated.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    topics = catalog(settings)
    ensure_topics(settings, [topics.raw_pages, topics.unique_pages, topics.dead_letter])
    pipe = Pipeline(settings, topics, dict(os.environ), tmp_path, [])
    try:
        yield pipe
    finally:
        for worker in pipe.workers:
            if worker.proc.poll() is None:
                worker.kill9()
        changelog = f"{settings.streams.app_id}-seen_urls-changelog"
        AdminClient(settings.kafka.librdkafka()).delete_topics(
            [topics.raw_pages.name, topics.unique_pages.name, topics.dead_letter.name, changelog]
        )


def page_bytes(url: str) -> bytes:
    return PageRecord(
        url=url,
        canonical_url=url,
        final_url=url,
        status=200,
        fetched_at=datetime.now(UTC),
        body="<html>hi</html>",
    ).to_bytes()


def test_dedup_worker_forwards_once_dead_letters_and_survives_kill9(pipeline: Pipeline) -> None:
    a, b, c = (f"https://example.org/{name}" for name in "abc")
    page_a, page_b, page_c = page_bytes(a), page_bytes(b), page_bytes(c)
    worker = pipeline.start_worker()
    pipeline.produce(
        [
            (a.encode(), page_a),
            (b.encode(), page_b),
            (a.encode(), page_bytes(a)),  # same URL fetched again: a duplicate
            (b"https://example.org/bad", b"{not json"),
            (b"https://example.org/wrong-key", page_c),
        ]
    )
    wait_for("the worker to commit every raw record", pipeline.drained, worker)

    # Output partitions interleave arbitrarily: compare as sorted lists (exact bytes, no extras).
    unique = pipeline.read_all(pipeline.topics.unique_pages.name)
    assert sorted(unique) == sorted([(a.encode(), page_a), (b.encode(), page_b)])
    letters = {}
    for key, value in pipeline.read_all(pipeline.topics.dead_letter.name):
        assert value is not None
        letter = DeadLetter.model_validate_json(value)
        letters[letter.reason] = (key, letter)
    assert sorted(letters) == ["invalid_json", "key_mismatch"]
    key, bad = letters["invalid_json"]
    assert key == b"https://example.org/bad"
    assert (bad.stage, bad.source_topic, bad.original_value()) == (
        "streams",
        pipeline.topics.raw_pages.name,
        b"{not json",
    )
    assert bad.source_offset is not None
    assert letters["key_mismatch"][1].original_value() == page_c
    wait_for("the duplicate counter", lambda: worker.metric(DUPLICATES) == 1.0, worker)

    # faust created the changelog, co-partitioned with the raw topic.
    changelog = f"{pipeline.settings.streams.app_id}-seen_urls-changelog"
    meta = AdminClient(pipeline.settings.kafka.librdkafka()).list_topics(changelog, timeout=10)
    assert len(meta.topics[changelog].partitions) == pipeline.topics.raw_pages.partitions

    # kill -9 and restart: the table comes back from the changelog, so A is still "seen".
    worker.kill9()
    restarted = pipeline.start_worker()
    pipeline.produce([(a.encode(), page_bytes(a)), (c.encode(), page_c)])
    wait_for("the restarted worker to commit every raw record", pipeline.drained, restarted)
    unique = pipeline.read_all(pipeline.topics.unique_pages.name)
    assert sorted(unique) == sorted([(a.encode(), page_a), (b.encode(), page_b), (c.encode(), page_c)])
    # At least A was a duplicate for the restarted worker (the unique topic above already proves A
    # was not forwarded again). After kill -9, at-least-once may replay records whose processing
    # was not yet committed, which can count more duplicates, never fewer.
    wait_for(
        "the restarted worker's duplicate counter", lambda: restarted.metric(DUPLICATES) >= 1.0, restarted
    )
