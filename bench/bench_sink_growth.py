"""Does the page sink's cost stay flat as the crawl grows? And what does a stored page cost?

Measures the worker path (SinkWorker over an in-memory consumer, as bench_sink.py) writing
``--rows`` pages into:

- an empty ``pages`` (a fresh scratch schema), then recrawls of those same pages with new bodies
  (updates: the archive trigger copies each replaced version to ``page_history``);
- a ``pages`` that already holds ``--prefill`` pages (1,000,000 by default), new pages and then
  recrawls of as many of the prefilled pages.

The prefilled schema (``bench_growth``) is kept for the next run: a marker row says how many
pages of what size it holds; ``--rebuild`` fills it again, ``--drop`` removes it. Filling it
COPYs the pages straight into ``pages`` (about 2.5 GB of WAL that the two Debezium slots decode
and skip: minutes on 2 cores, once). Its publications are scratch ones, which no slot reads.

Reports rows/s of each (medians of ``--rounds``), the ratio prefilled / empty (target, issue 13:
>= 0.8 for new pages), the CPU of this process and of the backend per 1,000 pages, WAL bytes per
page written (pg_current_wal_lsn before and after), PostgreSQL bytes per stored page (heap,
TOAST, indexes; ``page_history`` apart) and Kafka bytes per page: the pages as the stream stage
produces them to ``pages.unique`` (zstd, as streams/outputs.py), measured from a scratch topic's
log segments, and the stack's own ``outbox.event.page`` and ``cdc.public.pages`` (bytes on disk
per record) when the embedded Kafka runs here. Writes bench/results/sink_growth.json.
Usage: ``.venv/bin/python bench/bench_sink_growth.py [--rounds 3] [--prefill 1000000]``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import random
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
from bench_sink import timed_worker_path
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from sink_support import (
    Cpu,
    Row,
    Target,
    body_text,
    median_row,
    page_events,
    scratch_schema,
    scratch_settings,
    walsender_pids,
    write_results,
)

from control.stack.kafka import kafka_dir
from crawlstream.records import PageEvent
from crawlstream.settings import Settings, load_settings
from crawlstream.topics import catalog
from sinks.base import SinkBatch, SinkRecord
from sinks.migrate import upgrade
from sinks.pages import PostgresPageSink
from sinks.rows import PAGE_COLUMNS, body_hash, copy_text, decode_page_event

SCHEMA = "bench_growth"
PREFILL_CHUNK = 20000


def wal_lsn(settings: Settings) -> int:
    conn = psycopg2.connect(settings.postgres.dsn())
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def prefilled(base: Settings, pages: int, body_bytes: int, rebuild: bool) -> Settings:
    """The kept schema holding ``pages`` prefilled pages, filled now when it does not."""
    settings = scratch_settings(base, SCHEMA)
    admin = psycopg2.connect(base.postgres.dsn(owner=True))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.prefill_marker",))
        marker = None
        if cur.fetchone()[0] is not None:
            cur.execute(f"SELECT pages, body_bytes FROM {SCHEMA}.prefill_marker")
            marker = cur.fetchone()
        if marker == (pages, body_bytes) and not rebuild:
            print(f"reusing {SCHEMA}: {pages:,} pages of ~{body_bytes} B (its marker row; --rebuild refills)")
            admin.close()
            return settings
        cur.execute(f"DROP PUBLICATION IF EXISTS {SCHEMA}, {SCHEMA}_events")
        cur.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        cur.execute(f"CREATE SCHEMA {SCHEMA}")
    upgrade(settings)
    with admin.cursor() as cur:
        cur.execute(f"GRANT CREATE ON SCHEMA {SCHEMA} TO {base.postgres.app_role}")
        cur.execute(f"CREATE TABLE {SCHEMA}.prefill_marker (pages int, body_bytes int, done_at timestamptz)")
    print(f"filling {SCHEMA}.pages with {pages:,} pages of ~{body_bytes} B (once; kept for later runs)")
    started = time.monotonic()
    conn = psycopg2.connect(settings.postgres.dsn(owner=True))
    columns = ("url_hash", *PAGE_COLUMNS, "last_seen", "last_changed")
    rng = random.Random(20261203)
    with conn.cursor() as cur:
        cur.execute("SET default_toast_compression = lz4")
        for start in range(0, pages, PREFILL_CHUNK):
            rows = [prefill_row(i, rng, body_bytes) for i in range(start, min(pages, start + PREFILL_CHUNK))]
            text = io.BytesIO(copy_text(rows).encode())
            cur.copy_expert(f"COPY pages ({', '.join(columns)}) FROM STDIN", text)
            conn.commit()
            if (start // PREFILL_CHUNK) % 10 == 9:
                print(f"  {start + PREFILL_CHUNK:,} pages, {time.monotonic() - started:.0f}s")
        cur.execute("ANALYZE pages")
        cur.execute("INSERT INTO prefill_marker VALUES (%s, %s, now())", (pages, body_bytes))
        conn.commit()
    conn.close()
    admin.close()
    print(f"filled in {time.monotonic() - started:.0f}s")
    return settings


def prefill_row(i: int, rng: random.Random, body_bytes: int) -> tuple[Any, ...]:
    url = f"https://prefill.invalid/{i // 1000}/{i}"
    body = f"<html><body>{body_text(rng, body_bytes)}</body></html>"
    now = datetime.now(UTC)
    values = {
        "url": url,
        "final_url": url,
        "status": 200,
        "content_type": "text/html",
        "encoding": "utf-8",
        "title": f"page {i}",
        "body": body,
        "body_truncated": False,
        "body_bytes": len(body),
        "fetched_at": now,
        "fetch_latency_s": 0.05,
        "depth": 2,
        "referrer": None,
        "job_id": "prefill",
        "run_id": "prefill",
        "kind": "html",
        "body_hash": body_hash(body),
        "content_hash": "",
        "simhash": None,
        "text": "",
        "language": None,
        "word_count": 0,
        "canonical_link": None,
        "duplicate_of": None,
        "near_duplicate_of": None,
        "near_distance": None,
    }
    key = hashlib.sha256(url.encode()).digest()
    return (key, *(values[c] for c in PAGE_COLUMNS), now, now)


def recrawls(urls: list[str], round_: int, body_bytes: int) -> list[bytes]:
    """The pages at ``urls`` fetched again with new bodies (PageEvent JSON)."""
    template = decode_page_event(page_events(round_, 1, body_bytes, enriched=False)[0])
    rng = random.Random(time.monotonic_ns() + round_)  # bodies no earlier run gave these pages
    out = []
    for url in urls:
        body = f"<html><body>{body_text(rng, body_bytes)}</body></html>"
        page = template.page.model_copy(
            update={"url": url, "canonical_url": url, "final_url": url, "body": body}
        )
        out.append(PageEvent(change="changed", page=page).to_bytes())
    return out


def sizes(settings: Settings) -> dict[str, float]:
    """Bytes per stored page of pages (heap, TOAST, indexes) and page_history, and the counts,
    after a VACUUM (space of replaced versions is reused, as autovacuum makes it)."""
    conn = psycopg2.connect(settings.postgres.dsn(owner=True))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("VACUUM pages, page_history")  # dead versions reclaimed, as autovacuum would
            cur.execute(
                "SELECT (SELECT count(*) FROM pages), pg_relation_size('pages'), "
                "pg_table_size('pages') - pg_relation_size('pages'), pg_indexes_size('pages'), "
                "(SELECT count(*) FROM page_history), pg_total_relation_size('page_history')"
            )
            count, heap, toast, indexes, history, history_bytes = cur.fetchone()
    finally:
        conn.close()
    return {
        "pages": count,
        "heap_per_page": heap / count,
        "toast_per_page": toast / count,
        "indexes_per_page": indexes / count,
        "total_per_page": (heap + toast + indexes) / count,
        "history_versions": history,
        "history_per_version": history_bytes / history if history else 0.0,
    }


def measure(settings: Settings, raw: list[bytes], batch: int, walsenders: list[int]) -> dict[str, float]:
    cpu = Cpu(walsenders=walsenders)
    before = wal_lsn(settings)
    rate = timed_worker_path(settings, raw, batch, cpu)
    wal = wal_lsn(settings) - before
    rows = len(raw)
    return {
        "rate": rate,
        "client_ms": cpu.client_s / rows * 1e6,
        "backend_ms": cpu.backend_s / rows * 1e6,
        "walsenders_ms": cpu.walsenders_s / rows * 1e6,
        "wal_per_page": wal / rows,
    }


def prefill_urls(prefill: int, count: int, round_: int) -> list[str]:
    """``count`` URLs of prefilled pages spread over the whole table, another set each round."""
    stride = max(1, prefill // count)
    ids = sorted({(round_ + k * stride) % prefill for k in range(count)})
    return [f"https://prefill.invalid/{i // 1000}/{i}" for i in ids]


def kafka_bytes(base: Settings, raw: list[bytes]) -> dict[str, float]:
    """Bytes on disk per record: the pages as the stream stage produces them to pages.unique
    (a scratch topic, zstd, as streams/outputs.py), and what Debezium writes for them on
    outbox.event.page and cdc.public.pages: the pages are stored through the real page sink into
    the stack's own ``pages`` (URLs under https://bench-kafka.invalid/), the topics' growth is
    read, and the rows are deleted again (their delete events come after the measurement)."""
    data = kafka_dir(base) / "data"
    if not data.is_dir():
        return {}
    topic = f"bench.growth.{time.monotonic_ns()}.pages.unique"
    admin = AdminClient(base.kafka.librdkafka(log_level=3))
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    try:
        producer = Producer(
            base.kafka.librdkafka(**{"linger.ms": 5, "compression.type": "zstd", "log_level": 3})
        )
        for value in raw:
            producer.produce(topic, value, decode_page_event(value).page.canonical_url.encode())
            producer.poll(0)
        producer.flush(60)
        out = {"pages.unique (zstd)": on_disk(data, topic) / len(raw)}
    finally:
        admin.delete_topics([topic])[topic].result(30)
    topics = catalog(base)
    names = [topics.page_events.name, topics.cdc_pages.name]
    before = {n: (on_disk(data, n), record_count(base, n)) for n in names}
    stamp = time.monotonic_ns()
    pages = [
        decode_page_event(
            m.replace(b"https://bench.invalid/", f"https://bench-kafka.invalid/{stamp}/".encode())
        )
        for m in raw
    ]
    sink = PostgresPageSink.from_settings(base)
    batch = [SinkRecord(p, "bench-kafka", 0, i) for i, p in enumerate(pages)]
    sink.write(SinkBatch(f"bench-kafka-{stamp}", batch, {("bench-kafka", 0): len(batch)}))
    sink.close()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and any(record_count(base, n) - before[n][1] < len(raw) for n in names):
        time.sleep(0.5)  # a poll interval while Debezium publishes
    for name in names:
        records = record_count(base, name) - before[name][1]
        out[name] = (on_disk(data, name) - before[name][0]) / records if records else float("nan")
    owner = psycopg2.connect(base.postgres.dsn(owner=True))
    with owner.cursor() as cur:
        cur.execute("DELETE FROM pages WHERE url LIKE %s", (f"https://bench-kafka.invalid/{stamp}/%",))
        cur.execute("DELETE FROM sink_offsets WHERE consumer_group = %s", (f"bench-kafka-{stamp}",))
    owner.commit()
    owner.close()
    return out


def on_disk(data: Path, topic: str) -> int:
    return sum(f.stat().st_size for d in data.glob(f"{topic}-*") if d.is_dir() for f in d.glob("*.log"))


def record_count(base: Settings, topic: str) -> int:
    consumer = Consumer(base.kafka.librdkafka(**{"group.id": "bench-growth-probe", "log_level": 3}))
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        total = 0
        for partition in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--prefill", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--body-bytes", type=int, default=2048)
    parser.add_argument("--rebuild", action="store_true", help="fill the prefilled schema again")
    parser.add_argument("--drop", action="store_true", help="drop the prefilled schema and stop")
    args = parser.parse_args()
    base = load_settings()
    if args.drop:
        admin = psycopg2.connect(base.postgres.dsn(owner=True))
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f"DROP PUBLICATION IF EXISTS {SCHEMA}, {SCHEMA}_events")
            cur.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        admin.close()
        print(f"dropped {SCHEMA}")
        return
    full = prefilled(base, args.prefill, args.body_bytes, args.rebuild)
    walsenders = walsender_pids(base.postgres.dsn())
    names = ("new pages, empty table", "new pages, prefilled", "recrawls, small table", "recrawls, prefilled")
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    with scratch_schema(base) as (empty, _schema):
        for round_ in range(args.rounds):
            raw = page_events(1000 + round_, args.rows, args.body_bytes, enriched=False)
            urls = [decode_page_event(m).page.canonical_url for m in raw]
            stamp = time.monotonic_ns()  # new URLs in the prefilled table each run
            raw_full = [
                m.replace(b"https://bench.invalid/", f"https://bench.invalid/{stamp}/".encode()) for m in raw
            ]
            order = [0, 1] if round_ % 2 == 0 else [1, 0]
            for which in order:
                if which == 0:
                    runs[names[0]].append(measure(empty, raw, args.batch, walsenders))
                    runs[names[2]].append(
                        measure(empty, recrawls(urls, round_, args.body_bytes), args.batch, walsenders)
                    )
                else:
                    runs[names[1]].append(measure(full, raw_full, args.batch, walsenders))
                    old = prefill_urls(args.prefill, args.rows, round_)
                    runs[names[3]].append(
                        measure(full, recrawls(old, round_, args.body_bytes), args.batch, walsenders)
                    )
            print(
                f"round {round_ + 1}: "
                + ", ".join(f"{n} {runs[n][-1]['rate']:,.0f}" for n in names)
                + " rows/s"
            )
        small = sizes(empty)
    large = sizes(full)
    kafka = kafka_bytes(base, page_events(9999, 2000, args.body_bytes, enriched=False))
    report(args, runs, small, large, kafka)


def report(
    args: argparse.Namespace,
    runs: dict[str, list[dict[str, float]]],
    small: dict[str, float],
    large: dict[str, float],
    kafka: dict[str, float],
) -> None:
    rows: list[Row] = []
    for name, results in runs.items():
        row = median_row(name, [r["rate"] for r in results], "rows/s", "ours", name.split(",")[0])
        med = {k: statistics.median(r[k] for r in results) for k in results[0]}
        row.note = (
            f"per 1,000 pages: client {med['client_ms']:.1f} ms, backend {med['backend_ms']:.1f} ms, "
            f"walsenders {med['walsenders_ms']:.1f} ms; WAL {med['wal_per_page']:,.0f} B/page"
        )
        rows.append(row)
    by = {r.name: r for r in rows}
    new_ratio = by["new pages, prefilled"].value / by["new pages, empty table"].value
    recrawl_ratio = by["recrawls, prefilled"].value / by["recrawls, small table"].value
    by["new pages, prefilled"].ratio = new_ratio
    by["recrawls, prefilled"].ratio = recrawl_ratio
    print(f"\nmedians of {args.rounds} rounds, {args.rows:,} pages each, pages prefilled: {args.prefill:,}")
    for row in rows:
        print(f"  {row.name:26} {row.value:>9,.0f} rows/s   {row.note}")
    print(f"prefilled / empty: new pages {new_ratio:.2f}x, recrawls {recrawl_ratio:.2f}x")
    print("PostgreSQL bytes per stored page (pages: heap + TOAST + indexes; page_history per version):")
    for label, s in (("small table", small), ("prefilled", large)):
        print(
            f"  {label:12} {s['pages']:>9,} pages: heap {s['heap_per_page']:,.0f} + TOAST "
            f"{s['toast_per_page']:,.0f} + indexes {s['indexes_per_page']:,.0f} = "
            f"{s['total_per_page']:,.0f} B; history {s['history_versions']:,} versions, "
            f"{s['history_per_version']:,.0f} B each"
        )
    for topic, per in kafka.items():
        print(f"Kafka bytes per page, {topic}: {per:,.0f} B on disk")
    target = Target("sink rows/s prefilled / empty (new pages)", new_ratio, ">=", 0.8)
    verdict = "met" if target.met else "NOT met"
    print(f"target: >= 0.8x with {args.prefill:,} pages already stored: {new_ratio:.2f}x, {verdict}")
    write_results(
        "sink_growth",
        f"Page sink with {args.prefill:,} pages stored vs an empty table; bytes per page",
        rows,
        targets=[target],
        headline=[
            {
                "stage": f"sink with {args.prefill:,} pages stored",
                "ours": by["new pages, prefilled"].value,
                "floor": by["new pages, empty table"].value,
                "unit": "rows/s",
                "ours_name": "new pages, prefilled",
                "floor_name": "empty table",
                "target": 0.8,
            }
        ],
        # Cost against crawl size: throughput relative to the small table, at 0 and at the prefill.
        series=[
            {
                "name": f"sink, {kind}: rows/s relative to the small table",
                "kind": "cost",
                "x": [0.0, float(args.prefill)],
                "y": [1.0, by[f"{kind}, prefilled"].value / by[small_name].value],
                "x_label": "rows already in the table (pages, URLs)",
                "y_label": "throughput / small tables",
            }
            for kind, small_name in (
                ("new pages", "new pages, empty table"),
                ("recrawls", "recrawls, small table"),
            )
        ],
        params=vars(args),
        extra={
            "postgres_bytes_small": small,
            "postgres_bytes_prefilled": large,
            "kafka_bytes_per_page": kafka,
        },
        notes=["WAL per page includes the page event (a logical decoding message) and the offsets"],
    )


if __name__ == "__main__":
    main()
