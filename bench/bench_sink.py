"""Page sink throughput: rows/s of one PostgresPageSink next to a raw COPY of the same rows.

Runs in a scratch schema of the running stack's PostgreSQL (migrated like the real one, with a
scratch publication that no replication slot reads, so Debezium never sees these rows; dropped at
the end). Each round writes ``--rows`` new pages (``--body-bytes`` of HTML each) in batches of
``--batch`` and measures, on the same rows:

- raw COPY: the rows COPYed into an empty (logged) table shaped like the staging table, a commit
  per batch (the floor any loader pays); same encoder as the sink (sinks.pages.copy_chunks:
  COPY text, encoded a chunk at a time while the server stores the previous one) and the same
  TOAST compression (the sink's session setting), the rows built outside the clock. The ratios
  are to this one;
- raw COPY (pages shape, PK): the same into a table like ``pages`` (its defaults and primary
  key), the floor of any loader that keeps one row per URL;
- floor (staged INSERT + outbox event): the least the issue asks of a page sink, and nothing
  else: the rows COPYed into the staging table (as the sink does), then one statement that
  INSERTs them into ``pages`` and adds each page's outbox event (the sink's payload), a commit per
  batch; no upsert, no touches, no outbox cleanup, no offsets, the rows built outside the clock
  as for raw COPY. What the sink adds shows as the gap between this row and the sink's;
- sink (COPY staging, the kept method): PostgresPageSink.write: page_row, COPY into the staging
  table, one upsert statement into pages + outbox (page_history only on changes: none here),
  outbox cleanup, offsets; every row new;
- sink (INSERT staging): the same, with a multi-row INSERT (execute_values) loading the staging
  table instead of COPY: the alternative the issue asks to measure;
- worker path: SinkWorker.run over an in-memory consumer of the same rows as Kafka messages: decoding
  (PageEvent JSON) and preparing the next batch while the COPY sink writes the previous one.

Prints rows/s per round, then medians and the ratio to raw COPY. Targets (issue 5): sink >= 30,000
rows/s and >= 0.5x raw COPY; on 2 shared cores the floor alone measures about 0.4x.
Usage: ``.venv/bin/python bench/bench_sink.py [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psycopg2  # noqa: E402
import psycopg2.extras  # noqa: E402
from confluent_kafka import TopicPartition  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from crawlstream.records import PageEvent, PageRecord  # noqa: E402
from crawlstream.settings import KafkaSettings, Settings, SinkSettings, load_settings  # noqa: E402
from sinks.base import SinkBatch, SinkRecord  # noqa: E402
from sinks.families import FAMILIES  # noqa: E402
from sinks.metrics import SinkMetrics  # noqa: E402
from sinks.migrate import upgrade  # noqa: E402
from sinks.pages import COPY_STAGE, PAYLOAD, CopyReader, PostgresPageSink, Staged, copy_chunks  # noqa: E402
from sinks.postgres import Cursor  # noqa: E402
from sinks.rows import PAGE_COLUMNS, decode_page_event, page_row  # noqa: E402
from sinks.worker import SinkWorker  # noqa: E402


class InsertStagedPageSink(PostgresPageSink):
    def stage(self, cur: Cursor, staged: Staged) -> None:
        sql = f"INSERT INTO page_stage ({', '.join(PAGE_COLUMNS)}) VALUES %s"
        psycopg2.extras.execute_values(cur, sql, staged.rows, page_size=len(staged.rows))


def with_schema(dsn: str, schema: str) -> str:
    return f"{dsn}{'&' if '?' in dsn else '?'}options=-csearch_path%3D{schema}"


def scratch_settings(settings: Settings, schema: str) -> Settings:
    pg = settings.postgres.model_copy(
        update={
            "url": SecretStr(with_schema(settings.postgres.dsn(), schema)),
            "owner_url": SecretStr(with_schema(settings.postgres.dsn(owner=True), schema)),
            "publication": schema,
        }
    )
    return settings.model_copy(update={"postgres": pg})


def messages(round_: int, rows: int, body_bytes: int) -> list[bytes]:
    filler = ("<p>" + "lorem ipsum dolor sit amet " * (body_bytes // 27 + 1))[:body_bytes]
    now = datetime.now(UTC)
    out = []
    for i in range(rows):
        url = f"https://bench.invalid/{round_}/{i}"
        record = PageRecord(
            url=url,
            canonical_url=url,
            final_url=url,
            status=200,
            fetched_at=now,
            title=f"page {i}",
            body=f"<html>{i}{filler}</html>",
            body_bytes=body_bytes,
        )
        out.append(PageEvent(change="new", page=record).to_bytes())
    return out


def batches(events: list[PageEvent], size: int, group: str) -> list[SinkBatch[PageEvent]]:
    out = []
    for start in range(0, len(events), size):
        chunk = events[start : start + size]
        records = [SinkRecord(e, "bench", 0, start + i) for i, e in enumerate(chunk)]
        out.append(SinkBatch(group, records, {("bench", 0): start + len(chunk)}))
    return out


def timed_sink(sink: PostgresPageSink, events: list[PageEvent], size: int) -> float:
    work = batches(events, size, f"bench-{uuid.uuid4().hex[:8]}")
    started = time.perf_counter()
    for batch in work:
        sink.write(batch)
    return len(events) / (time.perf_counter() - started)


class BenchMessage:
    """The confluent_kafka.Message methods SinkWorker calls (as tests/unit/sinks/conftest.py fakes them)."""

    def __init__(self, topic: str, offset: int, value: bytes) -> None:
        self._topic, self._offset, self._value = topic, offset, value

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return None

    def value(self) -> bytes:
        return self._value

    def error(self) -> None:
        return None


class BenchConsumer:
    """An in-memory sinks.worker.Consumer: assigns ``partitions`` in the first consume() (as
    librdkafka runs on_assign), serves ``messages`` as fast as asked, then nothing. Notes the time
    of the last Kafka commit, which the worker makes once the last batch is stored."""

    def __init__(self, messages: list[BenchMessage], partitions: list[Any]) -> None:
        self.messages, self.partitions, self.served = messages, partitions, 0
        self.on_assign: Any = None
        self.last_commit = 0.0

    def subscribe(self, topics: list[str], on_assign: Any = None, on_revoke: Any = None) -> None:
        self.on_assign = on_assign

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[BenchMessage]:
        if self.on_assign is not None:
            on_assign, self.on_assign = self.on_assign, None
            on_assign(self, self.partitions)
        out = self.messages[self.served : self.served + num_messages]
        self.served += len(out)
        if not out:  # a drained consumer waits in consume(), off the GIL; briefly here
            time.sleep(min(max(timeout, 0.0), 0.005))
        return out

    def assign(self, partitions: list[Any]) -> None:
        pass

    def commit(self, *, offsets: list[Any], asynchronous: bool) -> list[Any]:
        self.last_commit = time.perf_counter()
        return offsets

    def close(self) -> None:
        pass


class NoDeadLetters:
    """The producer for dead letters: the bench's records all decode and store."""

    def produce(self, topic: str, value: Any = None, key: Any = None, *, on_delivery: Any = None) -> None:
        raise AssertionError("the bench produced a dead letter")

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0


def timed_worker_path(sink: PostgresPageSink, raw: list[bytes], size: int) -> float:
    """SinkWorker.run (pages family) over an in-memory consumer of ``raw``: decoding, batching and
    the pipelined writes, to the worker's last Kafka commit (after its last stored batch)."""
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        kafka=KafkaSettings(topic_prefix="bench"),
        sink=SinkSettings(group_id=f"bench-{uuid.uuid4().hex[:8]}", batch_size=size),
    )
    family = FAMILIES["pages"]
    topic = family.topic(settings)
    consumer = BenchConsumer(
        [BenchMessage(topic, i, m) for i, m in enumerate(raw)], [TopicPartition(topic, 0)]
    )
    worker = SinkWorker(settings, family, sink, consumer, NoDeadLetters(), SinkMetrics(CollectorRegistry()))
    started = time.perf_counter()
    worker.run(max_idle_s=0.05)
    assert sink.stored_offsets(settings.sink.group_id, topic) == {0: len(raw)}
    return len(raw) / (consumer.last_commit - started)


FLOOR = f"""
WITH up AS (
    INSERT INTO pages ({", ".join(PAGE_COLUMNS)}, last_seen, last_changed)
    SELECT {", ".join(PAGE_COLUMNS)}, fetched_at, fetched_at FROM page_stage
    RETURNING url, version, status, fetched_at, body_hash, content_hash, simhash, run_id
)
INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload)
SELECT gen_random_uuid(), 'page', up.url, e.type, {PAYLOAD} FROM up, (SELECT 'created' AS type) e
"""


def timed_floor(dsn: str, events: list[PageEvent], size: int) -> float:
    """Staged INSERT into pages plus one outbox event per page, a commit per batch, on a
    connection set up as the sink's (its staging table and compression)."""
    rows = [page_row(e) for e in events]  # built outside the clock, as for raw COPY
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        PostgresPageSink(dsn).setup(cur)
        conn.commit()
        started = time.perf_counter()
        for start in range(0, len(rows), size):
            cur.copy_expert(COPY_STAGE, CopyReader(copy_chunks(rows[start : start + size])))
            cur.execute(FLOOR)
            conn.commit()  # the staging table deletes its rows on commit
        elapsed = time.perf_counter() - started
    conn.close()
    return len(rows) / elapsed


def timed_raw_copy(dsn: str, events: list[PageEvent], size: int, *, like_pages: bool = False) -> float:
    rows = [page_row(e) for e in events]  # built outside the clock: COPY alone is the floor
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        PostgresPageSink.set_compression(cur)  # compress bodies as the sink does
        if like_pages:  # every column, default and index of pages (its primary key)
            cur.execute("CREATE TABLE IF NOT EXISTS raw_copy (LIKE pages INCLUDING ALL)")
        else:
            cur.execute("CREATE TABLE IF NOT EXISTS raw_copy AS SELECT * FROM page_stage_shape WITH NO DATA")
        cur.execute("TRUNCATE raw_copy")
        conn.commit()
        started = time.perf_counter()
        for start in range(0, len(rows), size):
            cur.copy_expert(
                COPY_STAGE.replace("page_stage", "raw_copy"),
                CopyReader(copy_chunks(rows[start : start + size])),
            )
            conn.commit()
        elapsed = time.perf_counter() - started
        cur.execute("DROP TABLE raw_copy")
        conn.commit()
    conn.close()
    return len(rows) / elapsed


def clear(owner_dsn: str) -> None:
    conn = psycopg2.connect(owner_dsn)
    with conn.cursor() as cur:
        cur.execute("TRUNCATE pages, page_history, page_touches_pending, outbox, sink_offsets")
    conn.commit()
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--body-bytes", type=int, default=2048)
    args = parser.parse_args()
    base = load_settings()
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(base.postgres.dsn(owner=True))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
    settings = scratch_settings(base, schema)
    results: dict[str, list[float]] = {
        "raw COPY": [],
        "raw COPY (pages shape, PK)": [],
        "floor (staged INSERT + outbox event)": [],
        "sink (COPY staging)": [],
        "sink (INSERT staging)": [],
        "worker path (decode + sink)": [],
    }
    try:
        upgrade(settings)
        with admin.cursor() as cur:  # the raw COPY baseline's table shape, owned by the owner
            cur.execute(
                f"CREATE TABLE {schema}.page_stage_shape AS "
                f"SELECT {', '.join(PAGE_COLUMNS)} FROM {schema}.pages WITH NO DATA"
            )
            cur.execute(f"GRANT SELECT ON {schema}.page_stage_shape TO {base.postgres.app_role}")
            cur.execute(f"GRANT CREATE ON SCHEMA {schema} TO {base.postgres.app_role}")  # scratch only
        owner_dsn = settings.postgres.dsn(owner=True)
        print(f"{args.rows} rows of ~{args.body_bytes} B per round, batches of {args.batch}, schema {schema}")
        for round_ in range(args.rounds):
            raw = messages(round_, args.rows, args.body_bytes)
            events = [decode_page_event(m) for m in raw]
            figures = {
                "raw COPY": timed_raw_copy(settings.postgres.dsn(), events, args.batch),
                "raw COPY (pages shape, PK)": timed_raw_copy(
                    settings.postgres.dsn(), events, args.batch, like_pages=True
                ),
            }
            clear(owner_dsn)
            figures["floor (staged INSERT + outbox event)"] = timed_floor(
                settings.postgres.dsn(), events, args.batch
            )
            for name, sink_type in (
                ("sink (COPY staging)", PostgresPageSink),
                ("sink (INSERT staging)", InsertStagedPageSink),
            ):
                clear(owner_dsn)
                sink = sink_type.from_settings(settings)
                figures[name] = timed_sink(sink, events, args.batch)
                sink.close()
            clear(owner_dsn)
            sink = PostgresPageSink.from_settings(settings)
            figures["worker path (decode + sink)"] = timed_worker_path(sink, raw, args.batch)
            sink.close()
            clear(owner_dsn)
            for name, value in figures.items():
                results[name].append(value)
            print(f"round {round_ + 1}: " + ", ".join(f"{k} {v:,.0f} rows/s" for k, v in figures.items()))
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP PUBLICATION IF EXISTS {schema}")
            cur.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()
    copy = statistics.median(results["raw COPY"])
    print(f"\nmedians of {args.rounds} rounds (ratio to raw COPY of the same rows in the same run):")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"  {name:38} {median:>10,.0f} rows/s  {median / copy:5.2f}x")
    kept = statistics.median(results["sink (COPY staging)"])
    print(
        f"targets: sink >= 30,000 rows/s: {'met' if kept >= 30000 else 'NOT met'}; "
        f">= 0.5x raw COPY: {'met' if kept >= 0.5 * copy else 'NOT met'}"
    )
    floor = statistics.median(results["floor (staged INSERT + outbox event)"])
    print(f"the sink runs at {kept / floor:.2f}x the floor of its work ({floor / copy:.2f}x raw COPY)")
    from bench.results import Headline, Target, median_row, with_ratios, write_result

    worker = statistics.median(results["worker path (decode + sink)"])
    roles = {"raw COPY": "baseline", "raw COPY (pages shape, PK)": "baseline"}
    roles["floor (staged INSERT + outbox event)"] = "floor"
    write_result(
        "sink",
        f"Page sink: {args.rows:,} new pages of ~{args.body_bytes} B, batches of {args.batch}",
        with_ratios(
            [median_row(n, v, "rows/s", roles.get(n, "ours"), "rows/s") for n, v in results.items()],
            "floor (staged INSERT + outbox event)",
        ),
        targets=[
            Target("worker path over the floor (issue 13)", worker / floor, ">=", 0.8, "x"),
            Target("sink rows/s (issue 5)", kept, ">=", 30_000, "rows/s"),
            Target("sink over raw COPY (issue 5)", kept / copy, ">=", 0.5, "x"),
        ],
        headline=[Headline("sink", worker, floor, "rows/s", "worker path", "floor", target=0.8)],
        params={"rounds": args.rounds, "rows": args.rows, "batch": args.batch, "body_bytes": args.body_bytes},
        notes=["Ratios are to the floor row (staged INSERT + outbox event), as issue 13 judges the sink."],
    )


if __name__ == "__main__":
    main()
