"""URL-dedup throughput of one stream worker next to a plain confluent-kafka loop (same run).

Needs the running stack (``crawlstream stack up``). Each run gets its own topic prefix and app id,
first produces ``--events`` raw page records (metadata records: no body, so no enrichment; half of
them recrawls of a URL already seen, which become touches), then measures how fast each consumer
drains that backlog: events/s from its partitions being assigned until all are processed (faust:
committed by its consumer group):
  faust     ``python -m streams worker`` (stats agents off), the ``detect_changes`` agent:
            RocksDB ``urls`` table with its changelog, outputs and changelog records through
            librdkafka, each event acked once they are delivered;
  baseline  a confluent-kafka consumer loop with the same decisions (``streams.changes``
            functions), a dict for the table, one changelog record per update, outputs produced
            asynchronously and offsets committed every 1,000 events after a flush;
  noop      the same faust app with an agent that only iterates the raw events: the floor the
            framework itself sets on this machine.
Prints medians of ``--runs`` runs and the ratios (targets >= 20,000 events/s and >= 0.5x).
``--profile FILE`` records the first faust run with py-spy (speedscope JSON).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from rich.console import Console
from rich.table import Table

from crawlstream import offsets
from crawlstream.records import PageRecord
from crawlstream.settings import Settings, load_settings
from crawlstream.topics import catalog, ensure_topics
from streams.changes import Change, classify, decode_keyed_page, fingerprint, touch_for
from streams.recrawl import RecrawlPolicy

EVENTS = 50_000
RUNS = 3
PROFILE: str | None = None  # --profile FILE: py-spy the first faust run (speedscope JSON)
REPO = Path(__file__).resolve().parents[1]


def isolated(tag: str) -> dict[str, str]:
    run = f"bench-dedup-{tag}-{uuid.uuid4().hex[:6]}"
    return {
        "CRAWLSTREAM_KAFKA__TOPIC_PREFIX": run,
        "CRAWLSTREAM_STREAMS__APP_ID": run,
        "CRAWLSTREAM_STREAMS__STATS_ENABLED": "false",
        "CRAWLSTREAM_STREAMS__WEB_PORT": str(16100 + os.getpid() % 500),
        "CRAWLSTREAM_METRICS__STREAMS_PORT": "0",
    }


def settings_for(env: dict[str, str]) -> Settings:
    os.environ.update(env)
    settings = load_settings()
    ensure_topics(settings)
    return settings


def produce(settings: Settings) -> None:
    producer = Producer(settings.kafka.librdkafka(**{"linger.ms": 20}))
    now = datetime.now(UTC)
    for i in range(EVENTS):
        url = f"https://bench{i % 50}.example/page/{i % (EVENTS // 2)}"
        record = PageRecord(
            url=url, canonical_url=url, final_url=url, status=200, fetched_at=now, kind="metadata"
        )
        producer.produce(catalog(settings).raw_pages.name, key=url.encode(), value=record.to_bytes())
        producer.poll(0)
    producer.flush(60)


def drained(settings: Settings, group: str) -> bool:
    raw = catalog(settings).raw_pages.name
    return (
        offsets.lag(offsets.end_offsets(settings, raw), offsets.committed_offsets(settings, group, raw)) == 0
    )


def cleanup(settings: Settings) -> None:
    admin = AdminClient(settings.kafka.librdkafka())
    ours = (settings.kafka.topic_prefix + ".", settings.streams.app_id + "-")
    admin.delete_topics([t for t in admin.list_topics(timeout=10).topics if t.startswith(ours)])


def faust_rate(noop: bool = False) -> float:
    env = isolated("noop" if noop else "faust")
    settings = settings_for(env)
    produce(settings)  # the backlog first: the worker does not share the CPU with the producer
    with tempfile.TemporaryDirectory() as tmp:
        env["CRAWLSTREAM_STREAMS__DATA_DIR"] = tmp
        log = Path(tmp) / "worker.log"
        with log.open("wb") as out:
            entry = ["-m", "bench.bench_dedup", "--noop-worker"] if noop else ["-m", "streams"]
            proc = subprocess.Popen(
                [sys.executable, *entry, "worker", "-l", "info"],
                cwd=REPO,
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 120
            while b"[^Worker]: Ready" not in log.read_bytes():  # faust's line once partitions are assigned
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"worker did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.2)  # poll interval
            global PROFILE
            spy = None
            if PROFILE and not noop:
                spy_cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(proc.pid)]
                spy = subprocess.Popen(
                    [*spy_cmd, "-o", PROFILE, "-f", "speedscope", "-r", "200"],
                    stdout=subprocess.DEVNULL,
                )
                PROFILE = None
            started = time.perf_counter()
            while not drained(settings, settings.streams.app_id):
                if time.monotonic() > deadline + 300:
                    raise SystemExit("worker did not drain the bench records")
                time.sleep(0.05)  # poll interval
            rate = EVENTS / (time.perf_counter() - started)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
            return rate
        finally:
            proc.terminate()
            proc.wait(30)
            cleanup(settings)


def plain_rate() -> float:
    env = isolated("plain")
    settings = settings_for(env)
    topics = catalog(settings)
    changelog = f"{settings.streams.app_id}-urls-changelog"
    admin = AdminClient(settings.kafka.librdkafka())  # kept alive until the futures resolve
    created = admin.create_topics(
        [NewTopic(changelog, num_partitions=settings.kafka.partitions, replication_factor=1)]
    )
    for future in created.values():
        future.result(30)
    group = settings.streams.app_id
    consumer = Consumer(
        settings.kafka.librdkafka(
            **{"group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False}
        )
    )
    producer = Producer(settings.kafka.librdkafka(**{"linger.ms": 5}))
    table: dict[str, Any] = {}
    policy = RecrawlPolicy()
    try:
        produce(settings)  # the backlog first, as for the faust worker
        assigned: list[float] = []
        consumer.subscribe(
            [topics.raw_pages.name], on_assign=lambda _c, _p: assigned.append(time.perf_counter())
        )
        done = 0
        while done < EVENTS:
            for msg in consumer.consume(500, timeout=0.5):
                if msg.error():
                    continue
                record = decode_keyed_page(msg.key(), msg.value())
                print_ = fingerprint(record, None)
                result = classify(table.get(record.canonical_url), print_, record.fetched_at, policy)
                if result.change is Change.UNCHANGED:
                    producer.produce(
                        topics.page_touches.name, key=msg.key(), value=touch_for(record, print_).to_bytes()
                    )
                else:
                    producer.produce(topics.unique_pages.name, key=msg.key(), value=msg.value())
                table[record.canonical_url] = result.entry
                producer.produce(changelog, key=msg.key(), value=str(result.entry).encode())
                producer.poll(0)
                done += 1
                if done % 1000 == 0:
                    producer.flush(30)  # outputs acknowledged before their offsets are committed
                    consumer.commit(asynchronous=False)
        producer.flush(30)
        if done % 1000:
            consumer.commit(asynchronous=False)
        return EVENTS / (time.perf_counter() - assigned[0])
    finally:
        consumer.close()
        cleanup(settings)


def main() -> int:
    global EVENTS, RUNS, PROFILE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=EVENTS)
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--profile", help="write a py-spy profile of the first faust run here")
    args = parser.parse_args()
    EVENTS, RUNS, PROFILE = args.events, args.runs, args.profile
    base_env = dict(os.environ)
    plain: list[float] = []
    ours: list[float] = []
    floor: list[float] = []
    for _ in range(RUNS):
        for rates, measure in (
            (plain, plain_rate),
            (ours, faust_rate),
            (floor, lambda: faust_rate(noop=True)),
        ):
            rates.append(measure())
            os.environ.clear()
            os.environ.update(base_env)
    plain_median = statistics.median(plain)
    table = Table(title=f"URL dedup, {EVENTS:,} events per run (half recrawls), one worker, median of {RUNS}")
    for column in ("variant", "events/s", "ratio to plain", "runs", "target"):
        table.add_column(column, justify="left" if column in ("variant", "runs") else "right")
    for name, rates, target in (
        ("faust detect_changes (RocksDB)", ours, ">= 20,000/s, >= 0.5x"),
        ("faust no-op agent (framework floor)", floor, ""),
        ("plain confluent-kafka loop", plain, "baseline"),
    ):
        median = statistics.median(rates)
        runs = " ".join(str(round(r)) for r in rates)
        table.add_row(name, f"{median:,.0f}", f"{median / plain_median:.2f}", runs, target)
    Console(width=140).print(table)
    sys.path.insert(0, str(REPO))
    from bench.results import Headline, Target, median_row, with_ratios, write_result

    noop = statistics.median(floor)
    write_result(
        "dedup",
        f"URL dedup: one stream worker on a {EVENTS:,}-event backlog, next to faust's no-op agent",
        with_ratios(
            [
                median_row("faust detect_changes (RocksDB)", ours, "events/s", "ours", "events/s"),
                median_row("faust no-op agent", floor, "events/s", "floor", "events/s"),
                median_row("plain confluent-kafka loop", plain, "events/s", "baseline", "events/s"),
            ],
            "faust no-op agent",
        ),
        targets=[
            Target(
                "detect_changes over the no-op agent (issue 13)",
                statistics.median(ours) / noop,
                ">=",
                0.6,
                "x",
            ),
            Target("detect_changes events/s (issue 5)", statistics.median(ours), ">=", 20_000, "events/s"),
        ],
        headline=[
            Headline(
                "dedup hop",
                statistics.median(ours),
                noop,
                "events/s",
                "detect_changes",
                "faust no-op",
                target=0.6,
            )
        ],
        params={"events": EVENTS, "runs": RUNS},
        notes=["Ratios are to faust's own no-op agent on the same records (the floor of issue 13)."],
    )
    return 0


def noop_worker() -> None:
    """The framework floor: the stage's faust app with one agent that only acks each raw event."""
    from streams.app import new_app
    from streams.topology import declare_topics

    settings = load_settings()
    app = new_app(settings)
    topics = declare_topics(app, settings)

    async def noop(stream: Any) -> None:
        async for _event in stream.events():
            pass

    app.agent(topics.raw, name="noop")(noop)
    sys.argv = [sys.argv[0], *sys.argv[2:]]
    app.main()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--noop-worker"]:
        noop_worker()
    else:
        raise SystemExit(main())
