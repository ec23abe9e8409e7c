"""Page sink throughput: the real worker path next to the floor of a page sink's work, same rows.

Runs in a scratch schema of the running stack's PostgreSQL (bench/sink_support.py: migrated like
the real one; scratch publications and a scratch event prefix, so Debezium publishes nothing of
it). Each round writes ``--rows`` new pages (``--body-bytes`` of HTML each; ``--enriched`` adds
what the stream stage extracts: text, 20 outlinks, hashes) in batches of ``--batch``, and
measures on the same pages, in an order that rotates from round to round:

- raw COPY: the pages' staging rows COPYed into an empty logged table of the same shape, a commit
  per batch: the floor of any loader. Encoded inside the clock with the sink's encoder
  (sinks.rows.page_copy_line: the row, its url_hash, its event parts), a chunk at a time while the
  server stores the previous one; the same TOAST compression (the sink's session setting);
- raw COPY (pages shape, PK): the same into a table like ``pages`` (its defaults, its primary key
  and check constraint), the floor of any loader that keeps one row per URL;
- floor: the least a page sink must do, given decoded pages, and nothing else: encode them as
  above, COPY them into the staging table, then one statement that INSERTs them into ``pages`` and
  emits one page event per page (the sink's event, a transactional logical decoding message),
  a commit per batch. No decoding of Kafka records, no upsert (every page is new), no touches, no
  offsets, no pipelining. What the worker path adds shows as the gap between the two rows;
- floor + decoding the records: the same, each batch first decoded from its Kafka records (the
  project's decoder), serially: the least a page sink reading Kafka must do, for comparison (the
  target is set against the floor above, which leaves decoding to the sink);
- floor with outbox rows: the same with an ``outbox`` row per event instead of a message, as
  the sink wrote events before migration 0007 (a scratch table; the sink deleted the rows again
  by ctid, which this row leaves out): why events are messages now;
- sink: PostgresPageSink.write on the decoded pages: fence, encoding, COPY staging, the upsert
  with its events, offsets; INSERT staging: the same loading the staging table with a multi-row
  INSERT instead of COPY (the alternative COPY was chosen over);
- worker path: SinkWorker.run over an in-memory consumer of the same pages as Kafka messages:
  decoding, batching, preparing the next batch while the writer thread stores the previous one,
  the Kafka offset commit (the target's row).

Prints rows/s per round, then medians, the ratio to the floor, and the CPU each row cost per
1,000 pages: this process (all threads), the database backend, and the walsenders of the two
Debezium slots, which decode every WAL record the bench writes (read from /proc: the wall clock
is shared with other work on this machine, CPU time much less so). Target (issue 13): worker
path >= 0.8x the floor. Writes bench/results/sink.json.
Usage: ``.venv/bin/python bench/bench_sink.py [--rounds 5] [--enriched]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from functools import partial

import psycopg2
import psycopg2.extras
from confluent_kafka import TopicPartition
from prometheus_client import CollectorRegistry
from sink_support import (
    BenchConsumer,
    BenchMessage,
    Cpu,
    NoDeadLetters,
    Target,
    backend_pid,
    median_row,
    page_events,
    scratch_schema,
    walsender_pids,
    with_ratios,
    write_results,
)

from crawlstream.records import PageEvent
from crawlstream.settings import KafkaSettings, Settings, SinkSettings, load_settings
from sinks.base import SinkBatch, SinkRecord
from sinks.families import FAMILIES
from sinks.metrics import SinkMetrics
from sinks.pages import (
    COPY_STAGE,
    CREATE_STAGE,
    RETURNED,
    STAGED,
    CopyReader,
    PostgresPageSink,
    Staged,
    copy_chunks,
    emit_events,
)
from sinks.postgres import Cursor
from sinks.rows import PAGE_COLUMNS, STAGE_COLUMNS, decode_page_event, page_row
from sinks.worker import SinkWorker

RAW, RAW_PK, FLOOR, DECODED, OUTBOX, SINK, INSERT, WORKER = (
    "raw COPY",
    "raw COPY (pages shape, PK)",
    "floor (staged INSERT + event)",
    "floor + decoding the records",
    "floor with outbox rows (before 0007)",
    "sink (COPY staging)",
    "sink (INSERT staging)",
    "worker path (decode + sink, pipelined)",
)


class InsertStagedPageSink(PostgresPageSink):
    def stage(self, cur: Cursor, staged: Staged) -> None:
        sql = f"INSERT INTO page_stage ({', '.join(STAGE_COLUMNS)}) VALUES %s"
        rows = [page_row(e) for e in staged.events]
        psycopg2.extras.execute_values(cur, sql, rows, page_size=len(rows))


def batches(events: list[PageEvent], size: int, group: str) -> list[SinkBatch[PageEvent]]:
    out = []
    for start in range(0, len(events), size):
        chunk = events[start : start + size]
        records = [SinkRecord(e, "bench", 0, start + i) for i, e in enumerate(chunk)]
        out.append(SinkBatch(group, records, {("bench", 0): start + len(chunk)}))
    return out


def floor_sql(prefix: str, outbox: bool) -> str:
    """One statement: INSERT the staged pages into pages (the body hash computed as the sink's
    upsert computes it) and emit each page's event, built as the sink builds it from the stored
    row and its staged parts (every page is new: version 1, type created)."""
    insert = (
        f"INSERT INTO pages AS p (url_hash, {', '.join(PAGE_COLUMNS)}, last_seen, last_changed) "
        f"SELECT s.url_hash, {STAGED}, s.fetched_at, s.fetched_at FROM page_stage s"
    )
    if not outbox:
        events = emit_events(prefix, "up JOIN page_stage s ON s.url_hash = up.url_hash", "'created'")
        return f"WITH up AS ({insert} RETURNING {RETURNED}) SELECT {events}"
    payload = (  # the sink's payload before 0007
        "jsonb_build_object('url', up.url, 'version', up.version, 'status', up.status, "
        "'fetched_at', up.fetched_at, 'body_hash', up.body_hash, 'content_hash', up.content_hash, "
        "'simhash', lpad(to_hex(up.simhash), 16, '0'), 'run_id', up.run_id, 'type', e.type)"
    )
    return (
        f"WITH up AS ({insert} RETURNING url, version, status, fetched_at, body_hash, content_hash, "
        "simhash, run_id) INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) "
        f"SELECT gen_random_uuid(), 'page', up.url, e.type, {payload} FROM up, (SELECT 'created' AS type) e"
    )


def timed_floor(
    settings: Settings,
    events: list[PageEvent],
    size: int,
    cpu: Cpu,
    *,
    outbox: bool = False,
    raw: list[bytes] | None = None,
) -> float:
    """Staged INSERT into pages plus one event per page, a commit per batch, on a connection set
    up as the sink's (its staging table and compression); given ``raw``, each batch is decoded
    from the Kafka records first, inside the clock."""
    dsn = settings.postgres.dsn()
    sql = floor_sql(settings.postgres.event_message_prefix, outbox)
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        PostgresPageSink(dsn).setup(cur)
        conn.commit()
        cpu.backend = backend_pid(conn)
        cpu.start()
        started = time.perf_counter()
        for start in range(0, len(events), size):
            batch = events[start : start + size]
            if raw is not None:
                batch = [decode_page_event(m) for m in raw[start : start + size]]
            cur.copy_expert(COPY_STAGE, CopyReader(copy_chunks(batch)))
            cur.execute(sql)
            conn.commit()  # the staging table deletes its rows on commit
        elapsed = time.perf_counter() - started
        cpu.stop()
    conn.close()
    return len(events) / elapsed


def timed_raw_copy(
    settings: Settings, events: list[PageEvent], size: int, cpu: Cpu, *, like_pages: bool = False
) -> float:
    conn = psycopg2.connect(settings.postgres.dsn())
    with conn.cursor() as cur:
        PostgresPageSink.set_compression(cur)  # compress bodies as the sink does
        if like_pages:  # every column, default, constraint and index of pages, and the event parts
            cur.execute("CREATE TABLE raw_copy (LIKE pages INCLUDING ALL, event_key text, event_tail text)")
        else:
            temporary = "TEMPORARY TABLE IF NOT EXISTS page_stage ON COMMIT DELETE ROWS"
            cur.execute(CREATE_STAGE.replace(temporary, "TABLE raw_copy"))  # the staging rows' shape
        conn.commit()
        cpu.backend = backend_pid(conn)
        cpu.start()
        started = time.perf_counter()
        for start in range(0, len(events), size):
            copy = COPY_STAGE.replace("page_stage", "raw_copy")
            cur.copy_expert(copy, CopyReader(copy_chunks(events[start : start + size])))
            conn.commit()
        elapsed = time.perf_counter() - started
        cpu.stop()
        cur.execute("DROP TABLE raw_copy")
        conn.commit()
    conn.close()
    return len(events) / elapsed


def timed_sink(
    settings: Settings, sink_type: type[PostgresPageSink], events: list[PageEvent], size: int, cpu: Cpu
) -> float:
    sink = sink_type.from_settings(settings)
    sink.open()
    cpu.backend = backend_pid(sink._connection())  # the bench watches its backend
    work = batches(events, size, f"bench-{uuid.uuid4().hex[:8]}")
    cpu.start()
    started = time.perf_counter()
    for batch in work:
        sink.write(batch)
    elapsed = time.perf_counter() - started
    cpu.stop()
    sink.close()
    return len(events) / elapsed


def timed_worker_path(settings: Settings, raw: list[bytes], size: int, cpu: Cpu) -> float:
    """SinkWorker.run (pages family) over an in-memory consumer of ``raw``: decoding, batching and
    the pipelined writes, to the worker's last Kafka commit (after its last stored batch)."""
    run = Settings(
        _env_file=None,  # type: ignore[call-arg]
        kafka=KafkaSettings(topic_prefix="bench"),
        sink=SinkSettings(group_id=f"bench-{uuid.uuid4().hex[:8]}", batch_size=size),
    )
    family = FAMILIES["pages"]
    topic = family.topic(run)
    consumer = BenchConsumer(
        [BenchMessage(topic, i, m) for i, m in enumerate(raw)], [TopicPartition(topic, 0)]
    )
    sink = PostgresPageSink.from_settings(settings)
    sink.open()
    cpu.backend = backend_pid(sink._connection())  # the bench watches its backend
    worker = SinkWorker(run, family, sink, consumer, NoDeadLetters(), SinkMetrics(CollectorRegistry()))
    cpu.start()
    started = time.perf_counter()
    worker.run(max_idle_s=0.05)
    elapsed = consumer.last_commit - started
    cpu.stop()
    stored = PostgresPageSink.from_settings(settings)
    assert stored.stored_offsets(run.sink.group_id, topic) == {0: len(raw)}
    stored.close()
    return len(raw) / elapsed


def clear(settings: Settings) -> None:
    conn = psycopg2.connect(settings.postgres.dsn(owner=True))
    with conn.cursor() as cur:
        cur.execute("TRUNCATE pages, page_history, page_touches_pending, sink_offsets, outbox")
    conn.commit()
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--body-bytes", type=int, default=2048)
    parser.add_argument(
        "--enriched", action="store_true", help="page events carry the stream stage's enrichment"
    )
    args = parser.parse_args()
    base = load_settings()
    names = [RAW, RAW_PK, FLOOR, DECODED, OUTBOX, SINK, INSERT, WORKER]
    rates: dict[str, list[float]] = {n: [] for n in names}
    cpus: dict[str, list[Cpu]] = {n: [] for n in names}
    with scratch_schema(base) as (settings, schema):
        owner = psycopg2.connect(settings.postgres.dsn(owner=True))
        with owner.cursor() as cur:  # the pre-0007 outbox, for the "floor with outbox rows" row
            cur.execute(
                "CREATE TABLE outbox (id uuid PRIMARY KEY, aggregatetype text NOT NULL, "
                "aggregateid text NOT NULL, type text NOT NULL, payload jsonb NOT NULL, "
                "created_at timestamptz NOT NULL DEFAULT now())"
            )
            cur.execute(f"GRANT SELECT, INSERT, DELETE ON outbox TO {base.postgres.app_role}")
        owner.commit()
        owner.close()
        walsenders = walsender_pids(settings.postgres.dsn())
        enriched = " with enrichment" if args.enriched else ""
        print(
            f"{args.rows} pages of ~{args.body_bytes} B{enriched} per round, batches of {args.batch}, "
            f"schema {schema}, {len(walsenders)} walsenders"
        )
        for round_ in range(args.rounds):
            raw = page_events(round_, args.rows, args.body_bytes, enriched=args.enriched)
            events = [decode_page_event(m) for m in raw]
            runs: dict[str, Callable[[Cpu], float]] = {
                RAW: partial(timed_raw_copy, settings, events, args.batch),
                RAW_PK: partial(timed_raw_copy, settings, events, args.batch, like_pages=True),
                FLOOR: partial(timed_floor, settings, events, args.batch),
                DECODED: partial(timed_floor, settings, events, args.batch, raw=raw),
                OUTBOX: partial(timed_floor, settings, events, args.batch, outbox=True),
                SINK: partial(timed_sink, settings, PostgresPageSink, events, args.batch),
                INSERT: partial(timed_sink, settings, InsertStagedPageSink, events, args.batch),
                WORKER: partial(timed_worker_path, settings, raw, args.batch),
            }
            order = names[round_ % len(names) :] + names[: round_ % len(names)]  # drift spreads evenly
            figures = {}
            for name in order:
                clear(settings)
                cpu = Cpu(walsenders=walsenders)
                figures[name] = runs[name](cpu)
                rates[name].append(figures[name])
                cpus[name].append(cpu)
            clear(settings)
            print(f"round {round_ + 1}: " + ", ".join(f"{n} {figures[n]:,.0f}" for n in names) + " rows/s")
    report(args, rates, cpus)


CPU_ATTRS = ("client_s", "backend_s", "walsenders_s")


def per_1000(cpus: list[Cpu], rows: int, attr: str) -> float:
    return statistics.median(getattr(c, attr) for c in cpus) / rows * 1000 * 1000


def report(args: argparse.Namespace, rates: dict[str, list[float]], cpus: dict[str, list[Cpu]]) -> None:
    roles = dict.fromkeys((RAW, RAW_PK, DECODED, OUTBOX, INSERT), "baseline") | {
        FLOOR: "floor",
        SINK: "ours",
        WORKER: "ours",
    }
    rows = with_ratios([median_row(n, v, "rows/s", roles[n], "sink") for n, v in rates.items()], FLOOR)
    for row in rows:
        c = cpus[row.name]
        client, backend, walsenders = (per_1000(c, args.rows, a) for a in CPU_ATTRS)
        row.note = (
            f"CPU per 1,000 pages: client {client:.1f} ms, backend {backend:.1f} ms, "
            f"walsenders {walsenders:.1f} ms"
        )
    floor = statistics.median(rates[FLOOR])
    print(f"\nmedians of {args.rounds} rounds (ratio to the floor, same pages, same run)")
    print("and CPU ms per 1,000 pages (this process, its database backend, the walsenders):")
    print(f"  {'':40} {'rows/s':>9} {'ratio':>6}   {'client':>7} {'backend':>7} {'walsend':>7}")
    for row in rows:
        c = cpus[row.name]
        print(
            f"  {row.name:40} {row.value:>9,.0f} {row.value / floor:5.2f}x   "
            f"{per_1000(c, args.rows, 'client_s'):7.1f} {per_1000(c, args.rows, 'backend_s'):7.1f} "
            f"{per_1000(c, args.rows, 'walsenders_s'):7.1f}"
        )
    worker = statistics.median(rates[WORKER])
    target = Target("worker path / floor", worker / floor, ">=", 0.8)
    verdict = "met" if target.met else "NOT met"
    print(f"target: worker path >= 0.8x the floor: {worker / floor:.2f}x, {verdict}")
    decoded = statistics.median(rates[DECODED])
    print(f"worker path / floor + decoding the records: {worker / decoded:.2f}x (pipelined vs serial)")
    write_results(
        "sink",
        "Page sink: worker path vs the floor of a page sink's work",
        rows,
        targets=[target],
        headline=[
            {
                "stage": "sink (worker path)",
                "ours": worker,
                "floor": floor,
                "unit": "rows/s",
                "ours_name": "worker path",
                "floor_name": "staged INSERT + page event",
                "target": 0.8,
            }
        ],
        params={k: v for k, v in vars(args).items()},
        notes=[
            "floor: given decoded pages: encode, COPY into the staging table, one INSERT into pages plus one "
            "page event per page (logical decoding message), a commit per batch",
            "CPU from /proc: client = this process (all threads), backend = its database connection, "
            "walsenders = the two Debezium slots decoding the bench's WAL",
        ],
    )


if __name__ == "__main__":
    main()
