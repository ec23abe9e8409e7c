"""Garbage on every topic the pipeline consumes, written with kcat (a Kafka client nobody here wrote).

For each input topic (the raw pages, links, requests, unique pages, touches, stats and runs
topics, the stream stage's repartition topics, catalog and faust-internal, and the page events
topic that ``crawlstream follow`` reads), kcat writes: bytes that are not JSON, JSON of the
wrong shape (an array, an object with wrong fields), a null value (a tombstone, ``kcat -Z``),
deeply nested JSON, and a key and a value near the topic's limit
(``TopicSpec.max_message_bytes``). A key or a value over that limit must be refused by the
broker itself (kcat reports "Broker: Message size too large"). Two records of valid shape
ride along on the raw topic: a page whose body is near the limit (its derived event is larger
still) and a page with a 3,000-character URL (the original wedge of the page sink).

Then: every garbage record is dead-lettered exactly once by each stage that consumes its
topic, with its origin (topic, partition, offset) and an error class; a tombstone on the page
events topic is a legitimate delete, not garbage; no worker died; and an ordinary crawl of the
demo site through the same running workers reconciles exactly.

Isolation: the garbage goes to a topic prefix of its own (``garbage<hex>.*``), read by workers
started for this test with that prefix and their own groups, ports and state, so that records
no stage may be able to handle yet cannot wedge the shared pipeline of the other tests.
``outbox.event.page`` is the exception (Debezium's topic has one name): this test's follower
reads it as a group of its own from the offsets it had when the test began.

The test collects every problem and fails once, listing each with its topic, record and stage.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from control.demosite import generate_demo_site, serve_directory
from control.run.pipeline import CrawlArgs, PipelineProbe, run_pipeline
from control.stack.processes import wait_until
from crawlstream import offsets
from crawlstream.errors import CrawlstreamError
from crawlstream.records import DeadLetter, PageRecord
from crawlstream.settings import Settings
from tests.e2e.isolated import IsolatedPipeline

pytestmark = pytest.mark.e2e

KEY_DELIM, MSG_DELIM = b"\x1f", b"\x1e"  # never inside a garbage record
NEAR_MARGIN = 4096  # near the limit: this far below it (record and batch headers fit in it)
OVER_MARGIN = 4096  # over the limit: this far above it
LETTER_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Target:
    """An input topic, its limit, and the stages whose consumers read it."""

    topic: str
    limit: int
    stages: tuple[str, ...]
    tombstones_are_data: bool = False  # outbox.event.page: a null value means "deleted"


@dataclass
class Garbage:
    target: Target
    kind: str
    key: bytes
    value: bytes | None
    partition: int = -1
    offset: int = -1

    @property
    def origin(self) -> tuple[str, int, int]:
        return (self.target.topic, self.partition, self.offset)

    def expected_stages(self) -> tuple[str, ...]:
        if self.value is None and self.target.tombstones_are_data:
            return ()
        return self.target.stages

    def name(self) -> str:
        return f"{self.target.topic} [{self.kind}] at {self.partition}:{self.offset}"


@dataclass
class Problems:
    found: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.found.append(text)


def kcat(settings: Settings, topic: str, key: bytes, value: bytes | None, workdir: Path) -> tuple[int, str]:
    """Produce one record with kcat to partition 0; (exit code, stderr)."""
    assert KEY_DELIM not in key
    assert value is None or (KEY_DELIM not in value and MSG_DELIM not in value)
    record = workdir / f"record-{uuid.uuid4().hex}.bin"
    record.write_bytes(key + KEY_DELIM + (value or b""))
    argv = [
        "kcat", "-P", "-b", settings.kafka.bootstrap_servers, "-t", topic, "-p", "0",
        "-K", "\\x1f", "-D", "\\x1e", "-Z", "-l", str(record), "-m", "30",
        # The client takes what the broker may refuse: the refusal must come from the broker.
        "-X", f"message.max.bytes={64 * 1024 * 1024}",
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, timeout=120, check=False)
    record.unlink()
    return proc.returncode, proc.stderr.decode("utf-8", "replace")


def effective_limit(settings: Settings, topic: str) -> int:
    admin = AdminClient(settings.kafka.librdkafka())
    [future] = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)]).values()
    return int(future.result()["max.message.bytes"].value)


def read_origins(
    settings: Settings, topic: str, start: offsets.Offsets, tags: tuple[bytes, ...]
) -> dict[bytes, tuple[int, int]]:
    """(partition, offset) of each record since ``start`` whose key starts with one of ``tags``,
    by the first 200 bytes of its key."""
    end = offsets.end_offsets(settings, topic)
    wanted = {p: o for p, o in end.items() if o > start.get(p, 0)}
    consumer = Consumer(
        settings.kafka.librdkafka(
            **{
                "group.id": "garbage-inspector",
                "enable.auto.commit": False,
                "fetch.max.bytes": 64 * 1024 * 1024,
            }
        )
    )
    consumer.assign([TopicPartition(topic, p, start.get(p, 0)) for p in wanted])
    found: dict[bytes, tuple[int, int]] = {}
    deadline = time.monotonic() + 60
    try:
        while wanted and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            p, o, key = msg.partition() or 0, msg.offset() or 0, msg.key() or b""
            if key.startswith(tags):
                found[key[:200]] = (p, o)
            if o + 1 >= wanted.get(p, 0):
                wanted.pop(p, None)
    finally:
        consumer.close()
    assert not wanted, f"could not read {topic} back to its end {end}"
    return found


def garbage_for(target: Target, tag: str) -> Iterator[tuple[str, bytes, bytes | None]]:
    """(kind, key, value) of each garbage record for ``target``; keys start with ``tag``."""

    def key(kind: str) -> bytes:
        return f"{tag}-{kind}".encode()

    yield "not-json", key("not-json"), b"\x00\xff\xfe this is not JSON {{{ \x7f"
    yield "wrong-shape-array", key("wrong-shape-array"), b"[1, 2, 3]"
    yield (
        "wrong-shape-object",
        key("wrong-shape-object"),
        b'{"url": 12, "schema_version": "x", "unexpected": [null]}',
    )
    yield "null-value", key("null-value"), None
    depth = 20_000
    yield "deep-json", key("deep-json"), b'{"a":' * depth + b"1" + b"}" * depth
    near = target.limit - NEAR_MARGIN
    filler = b'{"filler": "' + b"x" * (near - 64) + b'"}'
    yield "near-limit-value", key("near-limit-value"), filler
    yield "near-limit-key", key("near-limit-key-") + b"k" * (near - 64), b"{}"


def valid_but_hostile_pages(tag: str, limit: int) -> Iterator[tuple[str, bytes, bytes]]:
    """Pages of the right shape that stress the stages: a body near the topic limit (every
    control character is 6 bytes of JSON, and the stream stage adds its own copies) and a
    URL of 3,000 characters (a btree index entry holds about 2,700 bytes)."""
    now = datetime.now(UTC)
    huge_url = f"http://{tag}.invalid/huge-body"
    body = "\x01" * ((limit - 64 * 1024) // 6)
    page = PageRecord(
        url=huge_url, canonical_url=huge_url, final_url=huge_url, status=200, fetched_at=now,
        content_type="text/html", body=body, body_bytes=len(body),
    )  # fmt: skip
    yield "valid-huge-body", huge_url.encode(), page.to_bytes()
    long_url = f"http://{tag}.invalid/" + "l" * 3000
    page = PageRecord(
        url=long_url, canonical_url=long_url, final_url=long_url, status=200, fetched_at=now,
        content_type="text/html", body="<html><title>long</title><p>a long URL</p></html>",
    )  # fmt: skip
    yield "valid-long-url", long_url.encode(), page.to_bytes()


def test_garbage_on_every_topic_is_dead_lettered_once_and_the_pipeline_carries_on(
    isolated: Settings, pipeline: IsolatedPipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = isolated
    assert shutil.which("kcat"), "kcat is installed by .ci/run and `make prereqs` (Debian package kcat)"
    problems = Problems()
    pipeline.start()
    probe = PipelineProbe(settings)
    t = probe.topics
    app = settings.streams.app_id
    internal = [f"{app}-stats-by-domain", f"{app}-stats-by-run"]  # created by faust at start
    admin = AdminClient(settings.kafka.librdkafka())
    wait_until(
        lambda: None if set(internal) <= set(admin.list_topics(timeout=10).topics) else "no stats topics yet",
        service="streams-worker",
        log_path=pipeline.pm.log_path("streams-worker"),
        timeout_s=120,
    )
    targets = [
        Target(t.raw_pages.name, t.raw_pages.max_message_bytes, ("streams",)),
        Target(t.links.name, t.links.max_message_bytes, ("streams",)),
        Target(t.requests.name, t.requests.max_message_bytes, ("crawl",)),
        # The stream stage writes these and no longer reads them (its stats are sampled in
        # process, streams/stats.py): the sink is their one reader.
        Target(t.unique_pages.name, t.unique_pages.max_message_bytes, ("sink",)),
        Target(t.page_touches.name, t.page_touches.max_message_bytes, ("sink",)),
        Target(t.stats.name, t.stats.max_message_bytes, ("sink",)),
        Target(t.runs.name, t.runs.max_message_bytes, ("sink",)),
        Target(t.dedup_verdicts.name, t.dedup_verdicts.max_message_bytes, ("streams",)),
        Target(t.pages_by_band.name, t.pages_by_band.max_message_bytes, ("streams",)),
        *(Target(name, effective_limit(settings, name), ("streams",)) for name in internal),
        Target(t.page_events.name, t.page_events.max_message_bytes, ("follow",), tombstones_are_data=True),
    ]
    tag = f"garbage-{uuid.uuid4().hex[:8]}"
    dead_topic = t.dead_letter.name
    letters_start = probe.end(dead_topic)
    records: list[Garbage] = []
    refused = 0
    started = {target.topic: probe.end(target.topic) for target in targets}

    # --- write the garbage ----------------------------------------------------------------------
    for target in targets:
        broker_limit = effective_limit(settings, target.topic)
        if broker_limit != target.limit:
            problems.add(
                f"{target.topic}: TopicSpec.max_message_bytes is {target.limit:,} but the broker takes "
                f"{broker_limit:,} (crawlstream/topics.py declares no max.message.bytes for it)"
            )
        for kind, key, value in garbage_for(target, tag):
            code, err = kcat(settings, target.topic, key, value, tmp_path)
            assert code == 0, f"kcat could not write {kind} to {target.topic}: {err}"
            records.append(Garbage(target, kind, key, value))
        over_key = f"{tag}-over-limit-value".encode()
        for kind, key, value in (
            ("over-limit-value", over_key, b"v" * (target.limit + OVER_MARGIN)),
            (
                "over-limit-key",
                f"{tag}-over-limit-key-".encode() + b"k" * (target.limit + OVER_MARGIN),
                b"{}",
            ),
        ):
            code, err = kcat(settings, target.topic, key, value, tmp_path)
            if code != 0 and "Broker: Message size too large" in err:
                refused += 1
                continue
            problems.add(
                f"{target.topic}: a record {len(key) + len(value):,} bytes long ({kind}, over the "
                f"{target.limit:,} of TopicSpec.max_message_bytes) was not refused by the broker "
                f"(kcat exit {code}: {err.strip()[:200]})"
            )
            if code == 0:  # it is on the topic now, garbage like the rest
                records.append(Garbage(target, kind, key, value))
    raw = next(target for target in targets if target.topic == t.raw_pages.name)
    valid: list[Garbage] = []
    for kind, key, value in valid_but_hostile_pages(tag, raw.limit):
        code, err = kcat(settings, raw.topic, key, value, tmp_path)
        assert code == 0, f"kcat could not write {kind}: {err}"
        valid.append(Garbage(raw, kind, key, value))

    # Where each record landed, read back from the broker: the origin its letters must name.
    for target in targets:
        tags = (tag.encode(), b"http://" + tag.encode())  # garbage keys, and the valid pages' URLs
        landed = read_origins(settings, target.topic, started[target.topic], tags)
        for record in [*records, *valid]:
            if record.target is target:
                assert record.key[:200] in landed, f"{record.kind} written by kcat is not on {target.topic}"
                record.partition, record.offset = landed[record.key[:200]]

    # --- every garbage record is dead-lettered by each stage that reads its topic -------------------
    letters: list[DeadLetter] = []
    cursor = dict(letters_start)

    def read_letters() -> None:
        nonlocal cursor
        end = probe.end(dead_topic)
        for _key, value, _headers in probe.read_records(dead_topic, cursor, end, timeout_s=120):
            if value is not None:
                letters.append(DeadLetter.model_validate_json(value))
        cursor = end

    def by_origin() -> Counter[tuple[str | None, int | None, int | None, str]]:
        return Counter((d.source_topic, d.source_partition, d.source_offset, d.stage) for d in letters)

    expected = {(*r.origin, stage) for r in records for stage in r.expected_stages()}

    def all_arrived() -> bool:
        read_letters()
        return expected <= set(by_origin())

    _wait(all_arrived, LETTER_TIMEOUT_S)
    dead = pipeline.dead()
    for name in dead:
        problems.add(f"{name} died during the garbage; last lines of its log:\n{pipeline.log_tail(name)}")

    # --- an ordinary crawl through the same running workers reconciles exactly ---------------------
    manifest = generate_demo_site(tmp_path / "site", pages=100)
    server, served = serve_directory(tmp_path / "site")
    base_url = served.rstrip("/")
    try:
        args = CrawlArgs(
            start_urls=[f"{base_url}/index.html"],
            allow_private_hosts=[base_url],  # that host, on its port only
            job_id="e2e-garbage",
            run_id=uuid.uuid4().hex,
            expected_pages=manifest.expected_html_responses,
        )
        summary = run_pipeline(settings, args, timeout_s=180)
        for check in summary.checks:
            if not check.ok:
                problems.add(
                    f"the ordinary crawl after the garbage does not reconcile: {check.stage}: {check.what}: "
                    f"expected {check.expected_text}, got {check.actual}"
                )
        problems.found += [f"the ordinary crawl: {note}" for note in summary.notes]
    except CrawlstreamError as exc:
        problems.add(f"the ordinary crawl after the garbage failed: {exc}")
    finally:
        server.shutdown()
        server.server_close()  # shutdown stops serving; this closes its socket
    for name in pipeline.dead():
        if name not in dead:
            problems.add(f"{name} died after the garbage; last lines of its log:\n{pipeline.log_tail(name)}")

    # --- exactly once, with origin and error class -----------------------------------------------------
    read_letters()
    counted = by_origin()
    for record in records:
        for stage in record.expected_stages():
            n = counted[(*record.origin, stage)]
            if n != 1:
                problems.add(f"{record.name()}: {n} dead letters from stage {stage}, expected exactly 1")
        if not record.expected_stages() and any(k[:3] == record.origin for k in counted):
            problems.add(f"{record.name()}: a tombstone on the page events topic was dead-lettered")
    origins = {r.origin: r for r in records}
    for letter in letters:
        record = origins.get(
            (letter.source_topic or "", letter.source_partition or 0, letter.source_offset or 0)
        )
        if record is not None and not letter.error_class:
            problems.add(f"{record.name()}: the {letter.stage} stage's dead letter has no error class")
    for record in valid:
        handled = [k for k in counted if k[:3] == record.origin]
        stored = _has_row(probe, record)
        if not stored and not handled:
            problems.add(f"{record.name()}: neither stored in pages nor dead-lettered")
        for k in handled:
            if counted[k] != 1:
                problems.add(f"{record.name()}: {counted[k]} dead letters from stage {k[3]}, expected 1")

    summary_line = (
        f"garbage: {len(records)} garbage records on {len(targets)} topics, "
        f"{len(valid)} hostile valid pages, "
        f"{refused} over-limit writes refused by the broker, {len(letters)} dead letters, "
        f"{len(problems.found)} problems"
    )
    with capsys.disabled():
        print("\n" + summary_line + "".join(f"\n  - {p}" for p in problems.found), flush=True)
    assert not problems.found, summary_line + "\n" + "\n".join(problems.found)


def _has_row(probe: PipelineProbe, record: Garbage) -> bool:
    """Whether a valid page (keyed by its URL) has its row in ``pages``."""
    before, new = probe.rows_of([record.key.decode()], datetime(1970, 1, 1, tzinfo=UTC))
    return bool(before or new)


def _wait(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Wait for ``condition`` until ``timeout_s``; False when it never held (the caller reports)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(1.0)  # polling interval of a deadline-bounded wait
    return False
