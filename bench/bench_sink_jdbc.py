"""The page sink next to Debezium's JDBC sink connector: same pages, same Kafka, same PostgreSQL.

Both read the same new pages from Kafka and write them into a table shaped like ``pages`` (its
columns, primary key ``url_hash``, check constraint) in a scratch schema of the running stack
(bench/sink_support.py):

- ours: SinkWorker (the real worker: a librdkafka consumer, decoding, the pipelined writer, the
  offset fence, the upsert and a page event per page as a logical decoding message) reading the
  PageEvent JSON the stream stage writes, into the scratch ``pages``;
- peer: ``io.debezium.connector.jdbc.JdbcSinkConnector`` (Debezium 3.4, deploy/maven/pom.xml) in
  the stack's Kafka Connect, one task, ``insert.mode=upsert``, ``primary.key.mode=record_value``
  (``url_hash``), ``batch.size`` = our batch, reading the same pages as JSON with schemas (the
  JsonConverter's envelope: no schema registry runs here) into ``jdbc_pages`` (LIKE pages). It
  writes rows only: no events, no offsets in the database, no touches, no versions. Two configs:
  its defaults, and what its documentation suggests for PostgreSQL throughput
  (``use.reduction.buffer`` and ``reWriteBatchedInserts``); the better one is the peer's figure.

Every topic is filled before its sink starts. Each table gets a column ``written_at DEFAULT
clock_timestamp()``: throughput = rows / (last written_at - first written_at), the steady state of
each sink without its start-up (a JVM task, Hibernate; a consumer joining its group); the time
from start to the last row is printed too. Each sink runs once on other pages first, not
counted (``--warmup-rows``): the JVM compiles its hot paths, both fill their caches. CPU: ours =
this process (all threads) and its database backend; the peer = the Connect JVM (which also
hosts the two idle CDC connectors) and its database backends. Target (issue 13): ours >= 1.5x
the peer. Writes bench/results/sink_jdbc.json.
Usage: ``.venv/bin/python bench/bench_sink_jdbc.py [--rounds 3] [--rows 20000]``.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import time
import urllib.parse
from typing import Any

import psycopg2
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import CollectorRegistry
from sink_support import (
    Row,
    Target,
    median_row,
    page_events,
    proc_cpu_s,
    scratch_schema,
    with_ratios,
    write_results,
)

from control.stack import connect
from control.stack.processes import ProcessManager
from crawlstream.records import PageEvent
from crawlstream.settings import Settings, SinkSettings, load_settings
from sinks.families import FAMILIES
from sinks.metrics import SinkMetrics
from sinks.rows import STAGE_COLUMNS, body_hash, decode_page_event, page_row
from sinks.worker import SinkWorker

OURS = "page sink worker (ours)"
JDBC_DEFAULT = "Debezium JDBC sink (defaults, batch.size = ours)"
JDBC_TUNED = "Debezium JDBC sink (reduction buffer, reWriteBatchedInserts)"
ZONED = {"name": "io.debezium.time.ZonedTimestamp", "version": 1}
# The Connect schema of a row (JSON with schemas), in pages' column types.
FIELDS: dict[str, dict[str, Any]] = {
    "url_hash": {"type": "bytes"},
    **{c: {"type": "string"} for c in ("url", "final_url", "content_type", "encoding", "title", "body")},
    "status": {"type": "int16"},
    "body_truncated": {"type": "boolean"},
    "body_bytes": {"type": "int32"},
    "fetched_at": {"type": "string", **ZONED},
    "fetch_latency_s": {"type": "double"},
    "depth": {"type": "int32"},
    "referrer": {"type": "string", "optional": True},
    **{c: {"type": "string"} for c in ("job_id", "run_id", "kind", "body_hash", "content_hash", "text")},
    "simhash": {"type": "int64", "optional": True},
    "language": {"type": "string", "optional": True},
    "word_count": {"type": "int32"},
    **{
        c: {"type": "string", "optional": True}
        for c in ("canonical_link", "duplicate_of", "near_duplicate_of")
    },
    "near_distance": {"type": "int16", "optional": True},
    "last_seen": {"type": "string", **ZONED},
    "last_changed": {"type": "string", **ZONED},
}
SCHEMA = {
    "type": "struct",
    "name": "crawlstream.bench.page",
    "optional": False,
    "fields": [{"field": name, "optional": False, **spec} for name, spec in FIELDS.items()],
}


def jdbc_record(event: PageEvent) -> bytes:
    """The page as a JsonConverter record with its schema (the peer's input)."""
    row = dict(zip(STAGE_COLUMNS, page_row(event), strict=True))
    payload = {name: row.get(name) for name in FIELDS}
    payload["url_hash"] = base64.b64encode(row["url_hash"]).decode()
    payload["body_hash"] = body_hash(event.page.body)  # ours computes it in the database
    fetched = event.page.fetched_at.isoformat()
    payload.update(fetched_at=fetched, last_seen=fetched, last_changed=fetched)
    return json.dumps({"schema": SCHEMA, "payload": payload}, separators=(",", ":")).encode()


def produce(settings: Settings, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = Producer(
        settings.kafka.librdkafka(**{"linger.ms": 5, "compression.type": "lz4", "log_level": 3})
    )
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    if producer.flush(60) != 0:
        raise RuntimeError(f"could not deliver the bench's records to {topic}")


def create_topics(settings: Settings, names: list[str], partitions: int) -> None:
    admin = AdminClient(settings.kafka.librdkafka(log_level=3))
    futures = admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    for future in futures.values():
        future.result(30)


def delete_topics(settings: Settings, names: list[str]) -> None:
    admin = AdminClient(settings.kafka.librdkafka(log_level=3))
    for future in admin.delete_topics(names).values():
        try:
            future.result(30)
        except Exception as exc:  # a leftover scratch topic is no reason to lose the figures
            print(f"warning: could not delete a scratch topic: {exc}")


def wait_rows(settings: Settings, table: str, rows: int, timeout_s: float) -> None:
    conn = psycopg2.connect(settings.postgres.dsn(owner=True))
    conn.autocommit = True
    deadline = time.monotonic() + timeout_s
    try:
        with conn.cursor() as cur:
            while time.monotonic() < deadline:
                cur.execute(f"SELECT count(*) FROM {table}")
                if cur.fetchone()[0] >= rows:
                    return
                time.sleep(0.5)  # a poll interval: the figures come from written_at
    finally:
        conn.close()
    raise RuntimeError(f"{table} did not reach {rows} rows in {timeout_s:.0f}s")


def span(settings: Settings, table: str, started_at: float) -> tuple[float, float]:
    """(rows/s between the first and last row written, seconds from started_at to the last row)."""
    conn = psycopg2.connect(settings.postgres.dsn(owner=True))
    try:
        with conn.cursor() as cur:
            cur.execute(
                f"SELECT count(*), extract(epoch FROM max(written_at) - min(written_at)), "
                f"extract(epoch FROM max(written_at)) FROM {table}"
            )
            rows, seconds, last = cur.fetchone()
    finally:
        conn.close()
    return float(rows) / float(seconds), float(last) - started_at


def run_ours(
    settings: Settings, schema: str, raw: list[bytes], batch: int, partitions: int
) -> dict[str, float]:
    prefix = f"bench.{schema}.r{time.monotonic_ns()}"
    run = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update={"topic_prefix": prefix, "partitions": partitions}),
            "sink": SinkSettings(group_id=f"{prefix}.sink", batch_size=batch),
        }
    )
    topic = FAMILIES["pages"].topic(run)
    create_topics(run, [topic], partitions)
    try:
        produce(run, topic, [(decode_page_event(m).page.canonical_url.encode(), m) for m in raw])
        worker = SinkWorker.from_settings(run, FAMILIES["pages"], SinkMetrics(CollectorRegistry()))
        sink = worker._sink  # the bench watches its database backend
        sink.open()
        conn = sink._connection()
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            backend = int(cur.fetchone()[0])
        conn.commit()
        cpu0, backend0, started = time.process_time(), proc_cpu_s(backend), time.time()
        worker.run(max_idle_s=3.0)
        client_s, backend_s = time.process_time() - cpu0, proc_cpu_s(backend) - backend0
    finally:
        delete_topics(run, [topic])
    rate, total = span(settings, "pages", started)
    return {"rate": rate, "total_s": total, "client_s": client_s, "backend_s": backend_s}


def run_jdbc(
    settings: Settings, schema: str, raw: list[bytes], batch: int, partitions: int, tuned: bool
) -> dict[str, float]:
    topic = f"bench.{schema}.jdbc.{time.monotonic_ns()}"
    name = f"bench-jdbc-{schema}"
    create_topics(settings, [topic], partitions)
    pg = urllib.parse.urlsplit(settings.postgres.dsn())
    params = f"currentSchema={schema}" + ("&reWriteBatchedInserts=true" if tuned else "")
    config = {
        "connector.class": "io.debezium.connector.jdbc.JdbcSinkConnector",
        "tasks.max": "1",
        "topics": topic,
        "connection.url": f"jdbc:postgresql://{pg.hostname}:{pg.port}{pg.path}?{params}",
        "connection.username": urllib.parse.unquote(pg.username or ""),
        # Sent to the local Connect's REST API only (a PASSWORD field: Connect's logs hide it).
        "connection.password": urllib.parse.unquote(pg.password or ""),
        "insert.mode": "upsert",
        "primary.key.mode": "record_value",
        "primary.key.fields": "url_hash",
        "schema.evolution": "none",
        "collection.name.format": "jdbc_pages",
        "batch.size": str(batch),
        "use.reduction.buffer": "true" if tuned else "false",
        "consumer.override.max.poll.records": str(batch),
        "consumer.override.auto.offset.reset": "earliest",
        "key.converter": "org.apache.kafka.connect.storage.StringConverter",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter.schemas.enable": "true",
    }
    connect_pid = ProcessManager(settings.stack.state_dir.resolve()).pid("connect")
    try:
        produce(
            settings,
            topic,
            [
                (decode_page_event(m).page.canonical_url.encode(), jdbc_record(decode_page_event(m)))
                for m in raw
            ],
        )
        jvm0, started = proc_cpu_s(connect_pid) if connect_pid else 0.0, time.time()
        connect.register(settings, config, name)
        wait_rows(settings, "jdbc_pages", len(raw), timeout_s=600)
        jvm_s = (proc_cpu_s(connect_pid) if connect_pid else 0.0) - jvm0
        backend_s = jdbc_backends_cpu(settings)
    finally:
        connect._request("DELETE", f"{connect.rest_url(settings)}/connectors/{name}")
        delete_topics(settings, [topic])
    rate, total = span(settings, "jdbc_pages", started)
    return {"rate": rate, "total_s": total, "client_s": jvm_s, "backend_s": backend_s}


def jdbc_backends_cpu(settings: Settings) -> float:
    """CPU of the JDBC sink's database sessions (new for each connector, so all of it is its work)."""
    conn = psycopg2.connect(settings.postgres.dsn())
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'PostgreSQL JDBC Driver'")
            return sum(proc_cpu_s(int(pid)) for (pid,) in cur.fetchall())
    finally:
        conn.close()


def prepare_tables(settings: Settings) -> None:
    conn = psycopg2.connect(settings.postgres.dsn(owner=True))
    with conn.cursor() as cur:
        cur.execute("ALTER TABLE pages ADD COLUMN written_at timestamptz DEFAULT clock_timestamp()")
        cur.execute("CREATE TABLE jdbc_pages (LIKE pages INCLUDING ALL)")
        cur.execute(f"GRANT SELECT, INSERT, UPDATE ON jdbc_pages TO {settings.postgres.app_role}")
    conn.commit()
    conn.close()


def clear(settings: Settings) -> None:
    conn = psycopg2.connect(settings.postgres.dsn(owner=True))
    with conn.cursor() as cur:
        cur.execute("TRUNCATE pages, page_history, page_touches_pending, sink_offsets, jdbc_pages")
    conn.commit()
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--body-bytes", type=int, default=2048)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--enriched", action="store_true")
    parser.add_argument(
        "--warmup-rows", type=int, default=5000, help="a first run of each sink, not counted (JIT, caches)"
    )
    args = parser.parse_args()
    base = load_settings()
    runs: dict[str, list[dict[str, float]]] = {OURS: [], JDBC_DEFAULT: [], JDBC_TUNED: []}
    with scratch_schema(base) as (settings, schema):
        prepare_tables(settings)
        print(
            f"{args.rows} new pages of ~{args.body_bytes} B per round, batches of {args.batch}, "
            f"schema {schema}"
        )
        if args.warmup_rows:
            warm = page_events(-1, args.warmup_rows, args.body_bytes, enriched=args.enriched)
            for name in runs:
                clear(settings)
                if name == OURS:
                    run_ours(settings, schema, warm, args.batch, args.partitions)
                else:
                    run_jdbc(settings, schema, warm, args.batch, args.partitions, name == JDBC_TUNED)
            print(f"warmed up: each sink ran once on {args.warmup_rows} other pages")
        for round_ in range(args.rounds):
            raw = page_events(round_, args.rows, args.body_bytes, enriched=args.enriched)
            order = list(runs) if round_ % 2 == 0 else list(reversed(runs))
            figures = {}
            for name in order:
                clear(settings)
                if name == OURS:
                    figures[name] = run_ours(settings, schema, raw, args.batch, args.partitions)
                else:
                    figures[name] = run_jdbc(
                        settings, schema, raw, args.batch, args.partitions, name == JDBC_TUNED
                    )
                runs[name].append(figures[name])
            clear(settings)
            print(
                f"round {round_ + 1}: "
                + ", ".join(
                    f"{n} {f['rate']:,.0f} rows/s ({f['total_s']:.1f}s to the last row)"
                    for n, f in figures.items()
                )
            )
    report(args, runs)


def report(args: argparse.Namespace, runs: dict[str, list[dict[str, float]]]) -> None:
    rows: list[Row] = []
    for name, results in runs.items():
        row = median_row(
            name, [r["rate"] for r in results], "rows/s", "ours" if name == OURS else "peer", "sink_jdbc"
        )
        client = statistics.median(r["client_s"] for r in results) / args.rows * 1e6
        backend = statistics.median(r["backend_s"] for r in results) / args.rows * 1e6
        total = statistics.median(r["total_s"] for r in results)
        who = "this process" if name == OURS else "Connect JVM"
        row.note = (
            f"start to last row {total:.1f}s; CPU per 1,000 pages: {who} {client:.0f} ms, "
            f"database {backend:.0f} ms"
        )
        rows.append(row)
    peer = max((r for r in rows if r.role == "peer"), key=lambda r: r.value)
    rows = with_ratios(rows, peer.name)
    ours = next(r for r in rows if r.name == OURS)
    print(f"\nmedians of {args.rounds} rounds (ratio to the better JDBC sink config, same pages, same run):")
    for row in rows:
        print(f"  {row.name:62} {row.value:>8,.0f} rows/s {row.value / peer.value:5.2f}x   {row.note}")
    target = Target("worker / Debezium JDBC sink", ours.value / peer.value, ">=", 1.5)
    print(f"target: ours >= 1.5x the JDBC sink: {target.value:.2f}x, {'met' if target.met else 'NOT met'}")
    write_results(
        "sink_jdbc",
        "Page sink worker vs Debezium's JDBC sink connector (upsert), same pages",
        rows,
        targets=[target],
        headline=[
            {
                "stage": "sink vs Debezium JDBC sink",
                "ours": ours.value,
                "floor": peer.value,
                "unit": "rows/s",
                "ours_name": "sink worker",
                "floor_name": "JDBC sink (upsert)",
                "target": 1.5,
            }
        ],
        params=vars(args),
        notes=[
            "throughput = rows / (last - first written_at): steady state, start-up excluded for both",
            "the JDBC sink writes rows only (no events, offsets, touches or versions); ours does all of it",
        ],
    )


if __name__ == "__main__":
    main()
