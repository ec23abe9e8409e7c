"""What the stream-stage benchmarks share: isolated runs, workers, page records, bytes, lag, results.

Not a benchmark itself (``make bench`` runs ``bench/bench_*.py``). Every run gets its own topic
prefix and faust app id, so its topics, changelogs and consumer group are its own and are deleted
afterwards; workers are ``python -m streams worker`` subprocesses (or the no-op floors of
``bench_stream_stage.py``) with their own data directory. Needs the embedded stack
(``crawlstream stack up``): bytes written are read from the broker's log segments.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from crawlstream.records import PageRecord
from crawlstream.settings import Settings, load_settings
from crawlstream.topics import catalog, ensure_topics
from crawlstream.urls import canonical_url

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DOCS = Path("/usr/share/doc/python3.11/html")


def isolated_env(tag: str, **extra: str) -> dict[str, str]:
    """Settings of one isolated run: its own prefix, app id, data dir and ports."""
    run = f"bench-{tag}-{uuid.uuid4().hex[:6]}"
    return {
        "CRAWLSTREAM_KAFKA__TOPIC_PREFIX": run,
        "CRAWLSTREAM_STREAMS__APP_ID": run,
        "CRAWLSTREAM_STREAMS__WEB_PORT": str(16100 + (os.getpid() + int(uuid.uuid4().int % 400)) % 500),
        "CRAWLSTREAM_METRICS__STREAMS_PORT": "0",
        **extra,
    }


@contextmanager
def isolated(tag: str, **extra: str) -> Iterator[tuple[Settings, dict[str, str]]]:
    """Settings and environment of an isolated run; its topics are created, then deleted."""
    env = isolated_env(tag, **extra)
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        settings = load_settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    ensure_topics(settings)
    try:
        yield settings, {**saved, **env}
    finally:
        cleanup(settings)


def cleanup(settings: Settings) -> None:
    admin = AdminClient(settings.kafka.librdkafka())
    ours = (settings.kafka.topic_prefix + ".", settings.streams.app_id + "-")
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(ours)]
    if names:
        for future in admin.delete_topics(names).values():
            try:
                future.result(30)
            except Exception as exc:  # a missing topic is fine; say so for anything else
                print(f"cleanup: {exc}", file=sys.stderr)


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


@contextmanager
def worker(
    env: dict[str, str],
    entry: Sequence[str] = ("-m", "streams"),
    ready_s: float = 180,
    repo: Path = REPO,
    data_dir: Path | None = None,
) -> Iterator[Worker]:
    """A stream worker (``entry``: the module to run, from ``repo``) with its own data dir (a
    temporary one unless given), once it is ready."""
    with tempfile.TemporaryDirectory(prefix="bench-streams-") as tmp:
        env = {**env, "CRAWLSTREAM_STREAMS__DATA_DIR": str(data_dir or tmp)}
        if repo != REPO:
            env["PYTHONPATH"] = str(repo)
        for attempt in range(3):
            log = Path(tmp) / f"worker-{attempt}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, *entry, "worker", "-l", "info"],
                    cwd=repo,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            running = Worker(proc, log)
            deadline = time.monotonic() + ready_s
            while b"Worker ready" not in log.read_bytes():  # faust's line once recovery is done
                if proc.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.2)  # poll interval
            else:
                break
            running.stop()
            # A topic the worker created a moment ago may not have a leader yet: start again.
            print(f"worker did not start (attempt {attempt + 1}):\n{running.tail(5)}", file=sys.stderr)
            time.sleep(2)
        else:
            raise SystemExit(f"worker did not start:\n{running.tail()}")
        try:
            yield running
        finally:
            running.stop()


class Offsets:
    """End offsets of topics and one group's committed offsets, through one long-lived client."""

    def __init__(self, settings: Settings, group: str) -> None:
        self.settings = settings
        self.consumer = Consumer(
            settings.kafka.librdkafka(**{"group.id": group, "enable.auto.commit": False})
        )
        self._parts: dict[str, list[int]] = {}
        self.admin = AdminClient(settings.kafka.librdkafka())

    def stage_inputs(self) -> list[str]:
        return stage_inputs(self.settings, self.admin)

    def partitions(self, topic: str) -> list[int]:
        if topic not in self._parts:
            meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
            self._parts[topic] = sorted(meta.partitions)
        return self._parts[topic]

    def end(self, topic: str) -> int:
        return sum(
            self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in self.partitions(topic)
        )

    def committed(self, topic: str) -> int:
        parts = [TopicPartition(topic, p) for p in self.partitions(topic)]
        return sum(max(tp.offset, 0) for tp in self.consumer.committed(parts, timeout=10))

    def lag(self, topics: Sequence[str]) -> int:
        return sum(max(self.end(t) - self.committed(t), 0) for t in topics)

    def close(self) -> None:
        self.consumer.close()


def stage_inputs(settings: Settings, admin: AdminClient | None = None) -> list[str]:
    """Every topic the stream stage consumes: the raw topic and each topic its consumer group has
    committed offsets on (whatever version of the stage runs: its agents commit what they read)."""
    admin = admin or AdminClient(settings.kafka.librdkafka())
    group = settings.streams.app_id
    try:
        answer = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(10)
        committed = {tp.topic for tp in answer.topic_partitions or []}
    except Exception:  # no group yet
        committed = set()
    return sorted({catalog(settings).raw_pages.name, *committed})


def wait_drained(settings: Settings, offsets: Offsets, events: int, timeout_s: float, proc: Worker) -> float:
    """Seconds until the raw topic holds ``events`` records and every stage input is committed."""
    raw = catalog(settings).raw_pages.name
    started = time.perf_counter()
    deadline = time.monotonic() + timeout_s
    while True:
        if offsets.end(raw) >= events and offsets.lag(offsets.stage_inputs()) == 0:
            return time.perf_counter() - started
        if proc.proc.poll() is not None:
            raise SystemExit(f"worker exited:\n{proc.tail()}")
        if time.monotonic() > deadline:
            lag = offsets.lag(offsets.stage_inputs())
            raise SystemExit(f"not drained after {timeout_s}s (lag {lag}):\n{proc.tail()}")
        time.sleep(0.05)  # poll interval


# ---------------------------------------------------------------------------------------- pages


def docs_pages() -> list[tuple[str, str]]:
    """(URL, HTML) of every page of the Python documentation, as docs.python.org serves them."""
    files = sorted(DOCS.rglob("*.html"))
    return [
        (f"https://docs.python.org/3/{f.relative_to(DOCS)}", f.read_text(encoding="utf-8", errors="replace"))
        for f in files
    ]


def demo_pages(pages: int) -> list[tuple[str, str]]:
    """(URL, HTML) of each public HTML file of a generated demo site of ``pages`` pages."""
    from control.demosite import generate_demo_site

    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        root = Path(tmp)
        generate_demo_site(root, pages=pages)
        files = sorted(p for p in root.rglob("*.html") if "/private/" not in str(p))
        return [(f"http://demo.example/{f.relative_to(root)}", f.read_text(encoding="utf-8")) for f in files]


def page_record(url: str, body: str, fetched_at: datetime | None = None) -> PageRecord:
    canonical = canonical_url(url)
    return PageRecord(
        url=url,
        canonical_url=canonical,
        final_url=url,
        status=200,
        content_type="text/html",
        encoding="utf-8",
        body=body,
        body_bytes=len(body.encode("utf-8")),
        fetched_at=fetched_at or datetime.now(UTC),
        fetch_latency_s=0.01,
        job_id="bench",
        run_id="bench-run",
    )


def produce_pages(settings: Settings, records: Sequence[PageRecord]) -> int:
    """Produce ``records`` to the run's raw topic (as the crawler does: key canonical URL, zstd)."""
    producer = Producer(
        settings.kafka.librdkafka(
            **{
                "linger.ms": 20,
                "compression.type": "zstd",
                "enable.idempotence": True,
                "message.max.bytes": settings.kafka.max_message_bytes,
            }
        )
    )
    topic = catalog(settings).raw_pages.name
    for record in records:
        while True:
            try:
                producer.produce(topic, key=record.canonical_url.encode(), value=record.to_bytes())
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(120) == 0, "raw records not delivered"
    return len(records)


# ------------------------------------------------------------------------------------ bytes, lag


def topic_bytes(settings: Settings) -> dict[str, int]:
    """On-disk bytes of each topic of this run (log segments in the embedded broker's data dir)."""
    data = Path(settings.stack.state_dir) / "kafka" / "data"
    ours = (settings.kafka.topic_prefix + ".", settings.streams.app_id + "-")
    sizes: dict[str, int] = {}
    for directory in data.iterdir():
        topic = directory.name.rsplit("-", 1)[0]
        if directory.is_dir() and topic.startswith(ours):
            logs = sum(f.stat().st_size for f in directory.glob("*.log"))
            sizes[topic] = sizes.get(topic, 0) + logs
    return sizes


def stage_written(settings: Settings, sizes: dict[str, int]) -> dict[str, int]:
    """The topics the stream stage writes (every topic of the run but the crawler's and the
    dead-letter topic's), by size, largest first."""
    t = catalog(settings)
    not_stage = {t.raw_pages.name, t.links.name, t.runs.name, t.dead_letter.name}
    written = {name: size for name, size in sizes.items() if name not in not_stage}
    return dict(sorted(written.items(), key=lambda kv: -kv[1]))


class LagRecorder:
    """Samples, about every ``interval_s``: the raw topic's end offset, the stream group's committed
    offset on it, and the lag summed over every stage input, from a background thread."""

    def __init__(self, settings: Settings, interval_s: float = 1.0, sizes: bool = False) -> None:
        self.settings, self.interval_s, self.with_sizes = settings, interval_s, sizes
        self.samples: list[dict[str, float]] = []
        self.sizes: dict[str, int] = {}  # the largest on-disk size seen per topic
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.monotonic()

    def __enter__(self) -> LagRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        offsets = Offsets(self.settings, self.settings.streams.app_id)
        raw = catalog(self.settings).raw_pages.name
        try:
            while not self._stop.is_set():
                at = time.monotonic() - self.started
                try:
                    inputs = offsets.stage_inputs()
                    sample = {
                        "t": round(at, 2),
                        "raw_end": offsets.end(raw),
                        "raw_committed": offsets.committed(raw),
                        "stage_lag": offsets.lag(inputs),
                    }
                    self.samples.append(sample)
                    if self.with_sizes:
                        for topic, size in topic_bytes(self.settings).items():
                            self.sizes[topic] = max(self.sizes.get(topic, 0), size)
                except Exception as exc:  # a topic created meanwhile, a slow answer: next time
                    print(f"lag sample skipped: {exc}", file=sys.stderr)
                self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - self.started - at)))
        finally:
            offsets.close()


# ------------------------------------------------------------------- the sink and CDC stages


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for an isolated worker's /metrics)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def sink_worker(env: dict[str, str], ready_s: float = 120) -> Iterator[tuple[Worker, int]]:
    """One ``python -m sinks`` (every family, one thread each) of an isolated run: its own consumer
    groups (``sink.group_id`` = the run's app id) and metrics port; yields it and that port once
    its /metrics answers and every family has logged its subscription."""
    import urllib.request

    port = free_port()
    env = {
        **env,
        "CRAWLSTREAM_SINK__GROUP_ID": env["CRAWLSTREAM_STREAMS__APP_ID"] + "-sink",
        "CRAWLSTREAM_METRICS__SINK_PORT": str(port),
    }
    with tempfile.TemporaryDirectory(prefix="bench-sink-") as tmp:
        log = Path(tmp) / "sink.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sinks"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        running = Worker(proc, log)
        deadline = time.monotonic() + ready_s
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2):
                    pass
                if log.read_bytes().count(b"assigned") >= 4:  # one per family (sinks.families)
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                running.stop()
                raise SystemExit(f"sink worker did not start:\n{running.tail()}")
            time.sleep(0.2)  # poll interval
        try:
            yield running, port
        finally:
            running.stop()


def sink_rows_changed(port: int) -> float:
    """``sink_rows_changed_total{family="pages"}`` of the sink worker on ``port``: pages rows
    inserted or changed, one page event (and one pages change event) each."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sink_rows_changed_total" and sample.labels.get("family") == "pages":
                return float(sample.value)
    return 0.0


class CdcReader:
    """Reads Debezium's two topics from where they ended when it was made, keeping the URLs of one
    run (those starting with ``prefix``, the run's site): the URLs of page rows created or changed
    on ``cdc.public.pages`` (op c, u or r; tombstones skipped) and the keys (canonical URLs) of the
    page events on ``outbox.event.page``. Other writers to ``pages`` meanwhile (other benches, the
    stack's own workers) do not count."""

    def __init__(self, settings: Settings, prefix: str) -> None:
        import json

        self._json = json
        self.prefix = prefix
        self._prefix_bytes = prefix.encode()
        t = catalog(settings)
        self.topics = {"cdc pages": t.cdc_pages.name, "cdc events": t.page_events.name}
        self.urls: dict[str, set[str]] = {name: set() for name in self.topics}
        self.consumer = Consumer(
            settings.kafka.librdkafka(
                **{"group.id": f"bench-cdc-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}
            )
        )
        assignment = []
        for topic in self.topics.values():
            meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
            for p in sorted(meta.partitions):
                end = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                assignment.append(TopicPartition(topic, p, end))
        self.consumer.assign(assignment)
        self._names = {topic: name for name, topic in self.topics.items()}

    def poll(self) -> None:
        while messages := self.consumer.consume(1000, timeout=0.05):
            for msg in messages:
                if msg.error() is not None:
                    continue
                name = self._names[str(msg.topic())]
                url = self._url(name, msg.key(), msg.value())
                if url is not None and url.startswith(self.prefix):
                    self.urls[name].add(url)

    def _url(self, name: str, key: bytes | None, value: bytes | None) -> str | None:
        if name == "cdc events":
            return key.decode("utf-8", "replace") if key else None
        if value is None or self._prefix_bytes not in value:  # a tombstone, another run's row
            return None
        try:
            envelope = self._json.loads(value)
            if envelope.get("op") in ("c", "u", "r") and envelope.get("after"):
                return str(envelope["after"]["url"])
        except (ValueError, TypeError, KeyError, AttributeError):
            pass
        return None

    def close(self) -> None:
        self.consumer.close()


class PipelineLag:
    """Every stage's lag at a moment, for one isolated run with its stream and sink workers.

    - streams: records of every topic the stream group reads not yet committed (raw topic,
      repartition and verdict topics: :func:`stage_inputs`);
    - sink: records of the sink's topics (pages.unique, pages.touches, stats, runs) past the
      offsets it stored in Postgres with its batches (``sink_offsets``, groups ``<group>*``);
    - cdc: pages rows the sink inserted or changed (its ``sink_rows_changed_total``; on a crawl
      of new URLs, one per URL) whose URL is not yet on Debezium's topics: per connector
      (``cdc.public.pages`` for the table connector, ``outbox.event.page`` for the page events
      decoded from the sink's transactional messages), read by :class:`CdcReader` for the run's
      URLs (``prefix``); the larger of the two.
    """

    def __init__(self, settings: Settings, sink_group: str, sink_port: int, prefix: str) -> None:
        import psycopg2

        self.settings, self.sink_group, self.sink_port = settings, sink_group, sink_port
        self.offsets = Offsets(settings, settings.streams.app_id)
        t = catalog(settings)
        self.sink_topics = [t.unique_pages.name, t.page_touches.name, t.stats.name, t.runs.name]
        self.cdc = CdcReader(settings, prefix)
        self.db = psycopg2.connect(settings.postgres.dsn())
        self.db.autocommit = True

    def sink_stored(self) -> dict[str, int]:
        with self.db.cursor() as cur:
            cur.execute(
                "SELECT topic, sum(next_offset) FROM sink_offsets WHERE consumer_group LIKE %s "
                "GROUP BY topic",
                (self.sink_group + "%",),
            )
            return {str(topic): int(n) for topic, n in cur.fetchall()}

    def sample(self) -> dict[str, float]:
        streams = self.offsets.lag(self.offsets.stage_inputs())
        stored = self.sink_stored()
        sink = sum(max(self.offsets.end(t) - stored.get(t, 0), 0) for t in self.sink_topics)
        # The run's URLs on the CDC topics first, then the rows changed: a row committed in
        # between counts as lag (never the other way round, which would hide lag).
        self.cdc.poll()
        changed = sink_rows_changed(self.sink_port)
        cdc = {name: max(changed - len(urls), 0.0) for name, urls in self.cdc.urls.items()}
        return {
            "streams": float(streams),
            "sink": float(sink),
            "cdc": max(cdc.values()),
            **cdc,
            "rows_changed": changed,
        }

    def close(self) -> None:
        self.offsets.close()
        self.cdc.close()
        self.db.close()
