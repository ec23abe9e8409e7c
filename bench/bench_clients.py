"""Python Kafka clients, producing and consuming 100-byte messages, next to the 2016 figures.

Reproduces the client table the project started from: the "Python Kafka Client Benchmarking"
post by John Dennison (Activision Game Science, 15 June 2016,
http://activisiongamescience.github.io/2016/06/15/Kafka-Client-Benchmarking/, notebook in
github.com/ActivisionGameScience/python-kafka-benchmark): one Kafka 0.9 broker, one partition,
1,000,000 messages of 100 bytes, ``acks=1``, each client's defaults otherwise, MB/s computed as
bytes / 2^20 (MiB/s, as here). Its figures are printed beside ours (role ``published``).

Here: the embedded stack's broker (Kafka 4.x, started if needed), the same message count for
every client (``--messages``), ``acks=1`` set explicitly on every producer, one partition.
Clients: confluent-kafka, kafka-python, aiokafka and pykafka (the ``bench`` extra installs it;
a client that does not install or cannot talk to this broker is reported with the exact reason).

- produce: a fresh topic per client and run; the clock runs from the first send to the end of
  the flush (every message acknowledged), after the client has connected;
- consume: every client reads the same pre-produced topic (written once per run by
  confluent-kafka), assigned partition 0 from the beginning without a consumer group, with its
  usual per-message API (``poll()``, the iterator, ``async for``, ``consume()``); the clock runs
  from the assignment to the last message, whose values' bytes are summed to check the count.
  confluent-kafka's batch API (``consume(1000)``, what crawlstream's sinks use) is a row too.

Each measurement runs in a fresh process (``--worker``); CPU seconds of that process are
recorded as well. Runs alternate the clients' order; medians of ``--runs``.
Usage: ``.venv/bin/python bench/bench_clients.py [--messages 1000000] [--runs 3]``
(about 10 minutes here at the defaults; ``--messages 200000`` takes about two).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.results import Row, median_row, with_ratios, write_result  # noqa: E402

SIZE = 100
PAYLOAD = (b"kafkatest" * 20)[:SIZE]  # the 2016 notebook's payload
MIB = 1024 * 1024
CLIENTS = ("confluent-kafka", "kafka-python", "aiokafka", "pykafka", "pykafka (rdkafka)")
# pykafka's newest protocol knowledge; its own requests stay at the versions it knows, but its
# librdkafka backend negotiates them (with the default "0.9.0" it pins librdkafka to old ones).
PYKAFKA_BROKER_VERSION = "2.0.0"
NO_RDKAFKA = (
    "pykafka's librdkafka extension is not built: its source distribution builds it only where "
    "librdkafka's headers are installed (Debian: apt-get install librdkafka-dev, then pip install "
    "--no-cache-dir --force-reinstall --no-binary pykafka pykafka==2.8.0)"
)
CONSUMERS = (*CLIENTS, "confluent-kafka consume(1000)")
# The 2016 post (1,000,000 messages, Kafka 0.9, MacBook Pro 2.2 GHz i7 in Vagrant): msgs/s.
PUBLISHED_PRODUCE = {
    "confluent-kafka": 183_456.28,
    "kafka-python": 14_737.12,
    "pykafka": 17_446.37,
    "pykafka (rdkafka)": 63_595.38,
}
PUBLISHED_CONSUME = {
    "confluent-kafka": 261_407.91,
    "kafka-python": 37_667.97,
    "pykafka": 33_976.94,
    "pykafka (rdkafka)": 164_311.50,
}
URL = "http://activisiongamescience.github.io/2016/06/15/Kafka-Client-Benchmarking/"
SOURCE = "Dennison, Python Kafka Client Benchmarking, Activision Game Science, 2016-06-15"


# ---- the measured side: one client, one direction, in its own process ------------------------


def produce_confluent(bootstrap: str, topic: str, count: int) -> float:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": 1})
    producer.list_topics(topic, timeout=30)  # connected, metadata known
    started = time.perf_counter()
    for i in range(count):
        while True:
            try:
                producer.produce(topic, PAYLOAD)
                break
            except BufferError:  # local queue full: serve delivery reports, retry
                producer.poll(0.01)
        if i % 1000 == 0:
            producer.poll(0)
    if producer.flush(120) != 0:
        raise RuntimeError("confluent-kafka: messages left after flush")
    return time.perf_counter() - started


def produce_kafka_python(bootstrap: str, topic: str, count: int) -> float:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1)
    producer.partitions_for(topic)  # connected, metadata known
    started = time.perf_counter()
    for _ in range(count):
        producer.send(topic, PAYLOAD)
    producer.flush(120)
    elapsed = time.perf_counter() - started
    producer.close()
    return elapsed


def produce_aiokafka(bootstrap: str, topic: str, count: int) -> float:
    from aiokafka import AIOKafkaProducer

    async def run() -> float:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1)
        await producer.start()
        try:
            await producer.partitions_for(topic)
            started = time.perf_counter()
            for _ in range(count):
                await producer.send(topic, PAYLOAD)  # queued; waits only when the buffer is full
            await producer.flush()
            return time.perf_counter() - started
        finally:
            await producer.stop()

    return asyncio.run(run())


def pykafka_client(bootstrap: str, rdkafka: bool) -> Any:
    from pykafka import KafkaClient

    if rdkafka:
        try:
            from pykafka.rdkafka import _rd_kafka  # noqa: F401
        except ImportError:
            raise RuntimeError(NO_RDKAFKA) from None
    return KafkaClient(hosts=bootstrap, broker_version=PYKAFKA_BROKER_VERSION)


def produce_pykafka(bootstrap: str, topic: str, count: int, rdkafka: bool = False) -> float:
    client = pykafka_client(bootstrap, rdkafka)
    producer = client.topics[topic.encode()].get_producer(required_acks=1, use_rdkafka=rdkafka)
    started = time.perf_counter()
    for _ in range(count):
        producer.produce(PAYLOAD)
    producer.stop()  # flushes the queue
    return time.perf_counter() - started


def consume_confluent(bootstrap: str, topic: str, count: int, batch: int = 0) -> tuple[float, int]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-clients-{uuid.uuid4().hex}",  # required; no offset is committed
            "enable.auto.commit": False,
        }
    )
    consumer.list_topics(topic, timeout=30)
    seen = size = 0
    started = time.perf_counter()
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    while seen < count:
        if batch:
            for msg in consumer.consume(batch, 1.0):
                if msg.error() is None:
                    seen += 1
                    size += len(msg.value())
        else:
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                seen += 1
                size += len(msg.value())
    elapsed = time.perf_counter() - started
    consumer.close()
    return elapsed, size


def consume_kafka_python(bootstrap: str, topic: str, count: int) -> tuple[float, int]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, consumer_timeout_ms=60_000
    )
    consumer.partitions_for_topic(topic)
    size = 0
    started = time.perf_counter()
    partition = TopicPartition(topic, 0)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    for seen, msg in enumerate(consumer, 1):
        size += len(msg.value)
        if seen >= count:
            break
    elapsed = time.perf_counter() - started
    consumer.close()
    return elapsed, size


def consume_aiokafka(bootstrap: str, topic: str, count: int) -> tuple[float, int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run() -> tuple[float, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            seen = size = 0
            started = time.perf_counter()
            partition = TopicPartition(topic, 0)
            consumer.assign([partition])
            await consumer.seek_to_beginning(partition)
            async for msg in consumer:
                seen += 1
                size += len(msg.value or b"")
                if seen >= count:
                    break
            return time.perf_counter() - started, size
        finally:
            await consumer.stop()

    return asyncio.run(run())


def consume_pykafka(bootstrap: str, topic: str, count: int, rdkafka: bool = False) -> tuple[float, int]:
    from pykafka.common import OffsetType

    client = pykafka_client(bootstrap, rdkafka)
    kafka_topic = client.topics[topic.encode()]
    seen = size = 0
    started = time.perf_counter()
    consumer = kafka_topic.get_simple_consumer(
        auto_offset_reset=OffsetType.EARLIEST,
        reset_offset_on_start=True,
        consumer_timeout_ms=60_000,
        use_rdkafka=rdkafka,
    )
    while seen < count:
        msg = consumer.consume()
        if msg is None:
            raise RuntimeError(f"pykafka: nothing more after {seen} messages")
        seen += 1
        size += len(msg.value)
    elapsed = time.perf_counter() - started
    consumer.stop()
    return elapsed, size


PRODUCERS: dict[str, Callable[[str, str, int], float]] = {
    "confluent-kafka": produce_confluent,
    "kafka-python": produce_kafka_python,
    "aiokafka": produce_aiokafka,
    "pykafka": produce_pykafka,
    "pykafka (rdkafka)": lambda b, t, n: produce_pykafka(b, t, n, rdkafka=True),
}
READERS: dict[str, Callable[[str, str, int], tuple[float, int]]] = {
    "confluent-kafka": consume_confluent,
    "confluent-kafka consume(1000)": lambda b, t, n: consume_confluent(b, t, n, batch=1000),
    "kafka-python": consume_kafka_python,
    "aiokafka": consume_aiokafka,
    "pykafka": consume_pykafka,
    "pykafka (rdkafka)": lambda b, t, n: consume_pykafka(b, t, n, rdkafka=True),
}


def worker(direction: str, client: str, bootstrap: str, topic: str, count: int) -> None:
    """One measurement in this process; prints one JSON line (figures, or the error)."""
    cpu = time.process_time()
    try:
        if direction == "produce":
            seconds, size = PRODUCERS[client](bootstrap, topic, count), count * SIZE
        else:
            seconds, size = READERS[client](bootstrap, topic, count)
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__module__}.{type(exc).__name__}: {exc}"}))
        return
    if size != count * SIZE:
        print(json.dumps({"error": f"{size} bytes read, {count * SIZE} expected"}))
        return
    print(json.dumps({"seconds": seconds, "cpu_s": time.process_time() - cpu}))


# ---- the driver ---------------------------------------------------------------------------


class Failed(Exception):
    pass


def broker_log_lines(log: Path | None, start: int) -> list[str]:
    """What the broker logged about refused requests since ``start`` (byte offset)."""
    if log is None or not log.exists():
        return []
    with log.open("rb") as f:
        f.seek(start)
        text = f.read().decode("utf-8", errors="replace")
    keys = ("unsupported version", "not enabled", "invalid request", "unexpected error")
    found = [line for line in text.splitlines() if any(k in line.lower() for k in keys)]
    # The broker's own words, without its timestamp and logger prefix, each once.
    return sorted({"broker: " + line.split("Exception: ")[-1].strip()[:300] for line in found})[:5]


def measure(
    direction: str, client: str, bootstrap: str, topic: str, count: int, timeout_s: float, log: Path | None
) -> tuple[float, float]:
    """(seconds, CPU seconds) of one measurement in a fresh process; raises Failed with the reason
    (the client's error, or a produce that did not reach the topic) and what the broker logged."""
    start = log.stat().st_size if log is not None and log.exists() else 0
    argv = [sys.executable, __file__, "--worker", direction, client, bootstrap, topic, str(count)]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, cwd=REPO)
        lines = out.stdout.strip().splitlines()
        data = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {"error": out.stderr[-600:]}
        if "error" in data:
            raise Failed(str(data["error"]))
        stored = topic_messages(bootstrap, topic) if direction == "produce" else count
        if stored != count:  # a client that reports success must have delivered
            raise Failed(
                f"the client returned without error, but the topic holds {stored:,} of {count:,} messages"
            )
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-600:]
        raise Failed(
            "; ".join(
                [f"no result after {timeout_s:.0f} s (stderr: {tail!r})", *broker_log_lines(log, start)]
            )
        ) from None
    except Failed as exc:
        raise Failed("; ".join([str(exc), *broker_log_lines(log, start)])) from None
    return float(data["seconds"]), float(data["cpu_s"])


def topic_messages(bootstrap: str, topic: str) -> int:
    """How many messages partition 0 of ``topic`` holds (its high watermark)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-clients-watermarks"})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)
        return int(high - low)
    finally:
        consumer.close()


def make_topic(settings: Any, name: str) -> None:
    from crawlstream.topics import TopicSpec, ensure_topics

    ensure_topics(settings, [TopicSpec(name, 1, "none", "bench_clients")])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", default=",".join(CLIENTS), help="comma-separated subset")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        direction, client, bootstrap, topic, count = args.worker
        worker(direction, client, bootstrap, topic, int(count))
        return 0

    from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]
    from rich.console import Console
    from rich.table import Table

    from control.cli import migrate
    from control.stack.supervisor import up
    from crawlstream.settings import load_settings

    settings = load_settings()
    up(settings, migrate=migrate)  # the embedded stack's broker (idempotent, as `make up`)
    bootstrap = settings.kafka.bootstrap_servers
    log = Path(settings.stack.state_dir) / "logs" / "kafka.log"
    chosen = [c for c in args.clients.split(",") if c]
    consumers = [c for c in CONSUMERS if c.removesuffix(" consume(1000)") in chosen]
    timeout_s = 120 + args.messages / 2000  # the slowest client here did ~10k msgs/s
    tag = f"bench-clients-{uuid.uuid4().hex[:8]}"
    produced: dict[str, list[tuple[float, float]]] = {c: [] for c in chosen}
    consumed: dict[str, list[tuple[float, float]]] = {c: [] for c in consumers}
    failures: dict[str, str] = {}
    topics: list[str] = []
    print(f"{args.messages:,} messages of {SIZE} B per client and run, {args.runs} runs, broker {bootstrap}")
    try:
        for run in range(1, args.runs + 1):
            source = f"{tag}-source-{run}"
            make_topic(settings, source)
            topics.append(source)
            measure("produce", "confluent-kafka", bootstrap, source, args.messages, timeout_s, log)
            if topic_messages(bootstrap, source) != args.messages:
                raise SystemExit(f"the consumers' topic {source} does not hold {args.messages:,} messages")
            for direction, names, into in (("produce", chosen, produced), ("consume", consumers, consumed)):
                order = names if run % 2 else list(reversed(names))
                for client in order:
                    key = f"{direction} {client}"
                    if key in failures:
                        continue  # a client that cannot talk to this broker is not retried every run
                    topic = source
                    if direction == "produce":
                        topic = f"{tag}-{re.sub(r'[^a-z0-9]+', '-', client).strip('-')}-{run}"
                        make_topic(settings, topic)
                        topics.append(topic)
                    try:
                        seconds, cpu_s = measure(
                            direction, client, bootstrap, topic, args.messages, timeout_s, log
                        )
                    except Failed as exc:
                        failures[key] = str(exc)
                        print(f"run {run}: {key}: FAILED: {exc}", flush=True)
                        continue
                    into[client].append((args.messages / seconds, cpu_s))
                    print(
                        f"run {run}: {key:38s} {args.messages / seconds:>10,.0f} msgs/s "
                        f"{args.messages * SIZE / seconds / MIB:6.2f} MiB/s  "
                        f"{cpu_s * 1e6 / args.messages:6.1f} CPU us/msg",
                        flush=True,
                    )
    finally:
        if topics:
            AdminClient({"bootstrap.servers": bootstrap}).delete_topics(topics)

    def med(values: list[tuple[float, float]]) -> float | None:
        return statistics.median(v for v, _ in values) if values else None

    def mib(rate: float | None) -> str:
        return "-" if rate is None else f"{rate * SIZE / MIB:.2f}"

    def rate(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f}"

    def cpu(values: list[tuple[float, float]]) -> str:
        return f"{statistics.median(c for _, c in values) * 1e6 / args.messages:.1f}" if values else "-"

    table = Table(
        title=f"Python Kafka clients, {args.messages:,} x {SIZE} B, one partition, median of {args.runs} "
        f"(2016: {SOURCE}; 1,000,000 messages, Kafka 0.9)"
    )
    for column in (
        "client",
        "produce msgs/s",
        "MiB/s",
        "CPU us/msg",
        "2016",
        "2016 MiB/s",
        "consume msgs/s",
        "MiB/s",
        "CPU us/msg",
        "2016",
        "2016 MiB/s",
    ):
        table.add_column(column, justify="left" if column == "client" else "right")
    published_only = [c for c in PUBLISHED_PRODUCE if c not in chosen]
    for client in [*chosen, "confluent-kafka consume(1000)", *published_only]:
        ours_p = med(produced.get(client, []))
        ours_c = med(consumed.get(client, []))
        pub_p, pub_c = PUBLISHED_PRODUCE.get(client), PUBLISHED_CONSUME.get(client)
        if client in ("confluent-kafka consume(1000)",) and client not in consumed:
            continue
        table.add_row(
            client,
            "FAILED" if f"produce {client}" in failures else rate(ours_p),
            mib(ours_p),
            cpu(produced.get(client, [])),
            rate(pub_p),
            mib(pub_p),
            "FAILED" if f"consume {client}" in failures else rate(ours_c),
            mib(ours_c),
            cpu(consumed.get(client, [])),
            rate(pub_c),
            mib(pub_c),
        )
    Console(width=180).print(table)
    for key, reason in failures.items():
        print(f"{key}: {reason}")

    # Each client's row next to its 2016 row, producing then consuming; CPU per message apart.
    rows: list[Row] = []
    for direction, measured, published in (
        ("produce", produced, PUBLISHED_PRODUCE),
        ("consume", consumed, PUBLISHED_CONSUME),
    ):
        for client in [*measured, *(c for c in published if c not in measured)]:
            values = measured.get(client) or []
            if values:
                role = "baseline" if client == "confluent-kafka" else "peer"
                rows.append(median_row(client, [v for v, _ in values], "msgs/s", role, direction))
            if client in published:
                rows.append(
                    Row(f"{client} (2016)", published[client], "msgs/s", "published", direction, note=SOURCE)
                )
    for direction, measured in (("produce", produced), ("consume", consumed)):
        for client, values in measured.items():
            if values:
                cpu_us = [c * 1e6 / args.messages for _, c in values]
                role = "baseline" if client == "confluent-kafka" else "peer"
                rows.append(median_row(client, cpu_us, "CPU us/msg", role, f"{direction}, CPU per message"))
    write_result(
        "clients",
        f"Python Kafka clients: {args.messages:,} messages of {SIZE} B produced and consumed "
        "(next to the 2016 table)",
        with_ratios(rows, "confluent-kafka"),
        params={
            "messages": args.messages,
            "message_bytes": SIZE,
            "runs": args.runs,
            "partitions": 1,
            "acks": 1,
        },
        notes=[
            f"2016 figures: {SOURCE} ({URL}): "
            "one Kafka 0.9 broker, one partition, 1,000,000 messages, acks=1, consumers timed on a second, "
            "warm pass; MB/s there is MiB/s.",
            "Ratios are to confluent-kafka measured in the same run.",
            *[f"{key} failed: {reason}" for key, reason in failures.items()],
        ],
        extra={"failures": failures},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
