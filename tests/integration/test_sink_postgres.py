"""The sink stage against the real embedded stack (PostgreSQL, and Kafka for the worker test).

Settings come from load_settings() (the stack's stack.env, read from the repository root). Each
test uses its own URL prefix, consumer group and topic prefix, and removes what it wrote; the
migration cycle runs in a scratch schema with its own publication, so the pipeline's tables are
never dropped.
"""

from __future__ import annotations

import random
import signal
import string
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from pydantic import SecretStr
from sqlalchemy import create_engine

from crawlstream.errors import CrawlstreamError
from crawlstream.settings import Settings
from crawlstream.topics import catalog, ensure_topics
from sinks.base import RowsRejected, SinkBatch, SinkRecord
from sinks.migrate import alembic_config, downgrade, upgrade
from sinks.pages import PostgresPageSink
from sinks.rows import url_hash
from sinks.tables import metadata
from tests.integration.sinks_support import (
    admin_watermarks,
    committed_offsets,
    count_pages,
    event,
    owner,
    page,
    read_dead_letters,
    settings,
    start_worker,
    tag,
    wait_for,
    with_options,
)

__all__ = ["owner", "settings", "tag"]  # fixtures

pytestmark = pytest.mark.integration


def test_migration_cycle_grants_and_publication_in_a_scratch_schema(settings: Settings, tag: str) -> None:
    schema = tag.replace("-", "_")
    path = f"-csearch_path%3D{schema}"
    scratch = settings.model_copy(
        update={
            "postgres": settings.postgres.model_copy(
                update={
                    "owner_url": SecretStr(with_options(settings.postgres.dsn(owner=True), path)),
                    "publication": schema,
                    "events_publication": f"{schema}_events",
                }
            )
        }
    )
    admin = psycopg2.connect(settings.postgres.dsn(owner=True))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
    try:
        upgrade(scratch)
        upgrade(scratch)  # run twice: alembic sees head and does nothing

        engine = create_engine(scratch.postgres.sqlalchemy_url(owner=True))
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
        engine.dispose()
        assert diff == [], "migrations and sinks/tables.py disagree"
        with admin.cursor() as cur:
            cur.execute(
                "SELECT tablename FROM pg_publication_tables WHERE pubname = %s AND schemaname = %s",
                (schema, schema),
            )
            assert sorted(cur.fetchall()) == [("cdc_heartbeat",), ("pages",)]
            # The outbox connector's publication: page events are messages, only heartbeats are rows.
            cur.execute(
                "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
                (f"{schema}_events",),
            )
            assert cur.fetchall() == [(schema, "cdc_heartbeat")]
            cur.execute(
                "SELECT has_table_privilege(%s, %s, 'SELECT'), has_table_privilege(%s, %s, 'INSERT')",
                (
                    settings.postgres.cdc_user,
                    f"{schema}.pages",
                    settings.postgres.cdc_user,
                    f"{schema}.pages",
                ),
            )
            assert cur.fetchone() == (True, False)
            # The CDC role writes the heartbeat table (upsert) and no other table.
            cur.execute(
                "SELECT c.relname, p.privilege FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "CROSS JOIN unnest(ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) AS p(privilege) "
                "WHERE n.nspname = %s AND c.relkind = 'r' AND has_table_privilege(%s, c.oid, p.privilege) "
                "ORDER BY 1, 2",
                (schema, settings.postgres.cdc_user),
            )
            assert cur.fetchall() == [("cdc_heartbeat", "INSERT"), ("cdc_heartbeat", "UPDATE")]

        app = psycopg2.connect(with_options(settings.postgres.dsn(), path))
        try:
            sink = PostgresPageSink(with_options(settings.postgres.dsn(), path), event_prefix=schema)
            url = f"https://{tag}.invalid/a"
            assert sink.write(SinkBatch("g", [SinkRecord(event(url), "t", 0, 0)], {("t", 0): 1})) == 1
            assert sink.stored_offsets("g", "t") == {0: 1}
            sink.close()
            for forbidden in ("CREATE TABLE evil (x int)", "DELETE FROM pages", "TRUNCATE sink_offsets"):
                with app.cursor() as cur, pytest.raises(psycopg2.errors.InsufficientPrivilege):
                    cur.execute(forbidden)
                app.rollback()
        finally:
            app.close()

        downgrade(scratch)
        with admin.cursor() as cur:
            cur.execute(
                "SELECT to_regclass(%s), to_regclass(%s), to_regclass(%s)",
                (f"{schema}.pages", f"{schema}.sink_offsets", f"{schema}.outbox"),
            )
            assert cur.fetchone() == (None, None, None)
            publications = (schema, f"{schema}_events")
            cur.execute("SELECT count(*) FROM pg_publication WHERE pubname IN %s", (publications,))
            assert cur.fetchone() == (0,)
        upgrade(scratch)  # and back up again after a downgrade
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP PUBLICATION IF EXISTS {schema}, {schema}_events")
            cur.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


def test_stack_database_is_at_head_with_pages_published(settings: Settings, owner: Any) -> None:
    with owner.cursor() as cur:
        cur.execute("SELECT version_num FROM alembic_version")
        head = ScriptDirectory.from_config(alembic_config(settings)).get_current_head()
        assert cur.fetchall() == [(head,)]
        cur.execute(
            "SELECT 1 FROM pg_publication_tables WHERE pubname = %s AND tablename = 'pages'",
            (settings.postgres.publication,),
        )
        assert cur.fetchone() == (1,)


@pytest.mark.parametrize("prepared", [False, True], ids=["encoded-in-write", "prepared-ahead"])
def test_batches_are_exactly_once_across_a_crash_before_commit(
    settings: Settings, owner: Any, tag: str, monkeypatch: pytest.MonkeyPatch, prepared: bool
) -> None:
    topic, group = f"{tag}.pages.unique", tag
    urls = [f"https://{tag}.invalid/{i}" for i in range(50)]
    records = [SinkRecord(event(u), topic, i % 3, i // 3) for i, u in enumerate(urls)]
    records.append(SinkRecord(event(urls[0], title="later duplicate"), topic, 0, 17))  # same URL twice
    batch = SinkBatch(group, records, {(topic, 0): 18, (topic, 1): 17, (topic, 2): 16})
    sink = PostgresPageSink.from_settings(settings)
    if prepared:
        batch = sink.prepare(batch)
        assert batch.prepared is not None
    sink.open()

    def crash(*_args: Any) -> None:
        raise KeyboardInterrupt("killed between the page insert and the commit")

    with monkeypatch.context() as patch:
        patch.setattr(sink, "_store_offsets", crash)
        with pytest.raises(KeyboardInterrupt):
            sink.write(batch)
    assert count_pages(owner, tag) == 0
    assert sink.stored_offsets(group, topic) == {}

    assert sink.write(batch) == 50
    assert count_pages(owner, tag) == 50
    assert sink.stored_offsets(group, topic) == {0: 18, 1: 17, 2: 16}
    with owner.cursor() as cur:
        cur.execute("SELECT title, xmin::text FROM pages WHERE url = %s", (urls[0],))
        title, xmin = cur.fetchone()
    assert title == "t"  # the first record of the URL in the batch won

    assert sink.write(batch) == 0  # a replay inserts nothing ...
    with owner.cursor() as cur:
        cur.execute("SELECT xmin::text FROM pages WHERE url = %s", (urls[0],))
        assert cur.fetchone() == (xmin,)  # ... and touches no row, so Debezium sees no change
    assert count_pages(owner, tag) == 50

    older = SinkBatch(group, [], {(topic, 0): 5})
    sink.write(older)
    assert sink.stored_offsets(group, topic)[0] == 18  # a stale writer cannot move offsets back
    sink.close()


def test_a_prepared_batch_is_written_from_its_prepared_rows(
    settings: Settings, owner: Any, tag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic, group = f"{tag}.pages.unique", tag
    sink = PostgresPageSink.from_settings(settings)
    records = [SinkRecord(event(f"https://{tag}.invalid/{i}"), topic, 0, i) for i in range(3)]
    batch = sink.prepare(SinkBatch(group, records, {(topic, 0): 3}))

    def encode_again(*_args: Any) -> None:
        raise AssertionError("rows encoded again in write()")

    monkeypatch.setattr(sink, "_rounds", encode_again)
    assert sink.write(batch) == 3
    assert count_pages(owner, tag) == 3
    sink.close()


def test_a_prepared_batch_partly_stored_already_writes_only_the_rest(
    settings: Settings, owner: Any, tag: str
) -> None:
    # A replay after a restart: the fence skips what is stored, so what was prepared for the whole
    # batch must not be written; the records after the stored offset are.
    topic, group = f"{tag}.pages.unique", tag
    sink = PostgresPageSink.from_settings(settings)
    first = [SinkRecord(event(f"https://{tag}.invalid/{i}", title="first"), topic, 0, i) for i in range(10)]
    assert sink.write(SinkBatch(group, first, {(topic, 0): 10})) == 10
    replay = [
        SinkRecord(event(f"https://{tag}.invalid/{i}", title="replay"), topic, 0, i) for i in range(5, 15)
    ]
    batch = sink.prepare(SinkBatch(group, replay, {(topic, 0): 15}))

    assert sink.write(batch) == 5

    with owner.cursor() as cur:
        cur.execute(
            "SELECT title, count(*) FROM pages WHERE url LIKE %s GROUP BY title",
            (f"https://{tag}.invalid/%",),
        )
        assert dict(cur.fetchall()) == {"first": 10, "replay": 5}
    assert sink.stored_offsets(group, topic) == {0: 15}
    sink.close()


@pytest.mark.parametrize("prepared", [False, True], ids=["encoded-in-write", "prepared-ahead"])
def test_rows_violating_constraints_are_named_and_nothing_is_stored(
    settings: Settings, owner: Any, tag: str, prepared: bool
) -> None:
    topic, group = f"{tag}.pages.unique", tag
    good = SinkRecord(event(f"https://{tag}.invalid/good"), topic, 0, 0)
    too_big = SinkRecord(event(f"https://{tag}.invalid/big", body_bytes=2**40), topic, 0, 1)  # > int4
    # text has no NUL: in content it is stored as U+FFFD (test_sink_hostile), in a URL it is a bad row
    nul = SinkRecord(event(f"https://{tag}.invalid/n\x00ul"), topic, 0, 2)
    # A lone surrogate (JSON "\ud800") is not UTF-8: a bad row, not an aborted COPY retried forever.
    surrogate = SinkRecord(event(f"https://{tag}.invalid/sur", body="a\ud800b"), topic, 0, 3)
    sink = PostgresPageSink.from_settings(settings)
    batch = SinkBatch(group, [good, too_big, nul, surrogate], {(topic, 0): 4})

    with pytest.raises(RowsRejected) as caught:
        sink.write(sink.prepare(batch) if prepared else batch)

    rejected = caught.value.rejected
    assert [(r.record.offset, r.reason) for r in rejected] == [
        (1, "sqlstate_22003"),  # numeric_value_out_of_range
        (2, "sqlstate_22021"),  # character_not_in_repertoire: NUL
        (3, "sqlstate_22021"),  # and invalid UTF-8
    ]
    assert "out of range" in rejected[0].detail
    assert rejected[0].error_class == "psycopg2.errors.NumericValueOutOfRange"
    assert "invalid byte sequence" in rejected[2].detail
    assert count_pages(owner, tag) == 0
    assert sink.stored_offsets(group, topic) == {}
    # As the worker retries: the same batch without the rejected records (what was prepared for
    # all four is not used).
    kept = [r for r in batch.records if r.offset not in {r.record.offset for r in rejected}]
    assert sink.write(replace(sink.prepare(batch) if prepared else batch, records=kept)) == 1
    assert count_pages(owner, tag) == 1
    sink.close()


# --- the worker, with Kafka --------------------------------------------------------------


def test_worker_survives_kill_9_mid_batch_with_exactly_once_rows(
    settings: Settings, owner: Any, tag: str, tmp_path: Path
) -> None:
    topics = catalog(settings)
    unique, dead = topics.unique_pages, topics.dead_letter
    ensure_topics(settings, [unique, dead])
    group = settings.sink.group_id
    admin = AdminClient(settings.kafka.librdkafka())
    log_path = tmp_path / "worker.log"
    workers: list[subprocess.Popen[bytes]] = []
    try:
        # 40 distinct URLs, 15 repeats of some of them, one malformed record.
        urls = [f"https://{tag}.invalid/{i}" for i in range(40)]
        producer = Producer(settings.kafka.librdkafka(**{"enable.idempotence": True}))
        malformed_at: list[tuple[int, int]] = []
        for url in urls + urls[:15]:
            producer.produce(unique.name, key=url.encode(), value=page(url).to_bytes())
        producer.produce(
            unique.name,
            key=b"broken",
            value=b'{"url": "x"',
            on_delivery=lambda err, msg: malformed_at.append((msg.partition(), msg.offset())),
        )
        assert producer.flush(30) == 0
        assert len(malformed_at) == 1

        # Hold this group's offset rows locked so the first worker blocks inside its first
        # transaction (pages inserted, offsets not yet stored) and can be killed right there.
        locker = psycopg2.connect(settings.postgres.dsn(owner=True))
        with locker.cursor() as cur:
            for partition in range(unique.partitions):
                cur.execute(
                    'INSERT INTO sink_offsets (consumer_group, topic, "partition", next_offset) '
                    "VALUES (%s, %s, %s, 0)",
                    (group, unique.name, partition),
                )
            locker.commit()
            cur.execute("SELECT 1 FROM sink_offsets WHERE consumer_group = %s FOR UPDATE", (group,))
            cur.execute("SELECT pg_current_xact_id()::text")
            holder = cur.fetchone()[0]

        def worker_blocked_on_lock() -> bool:
            with owner.cursor() as cur:
                cur.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' "
                    "AND transactionid::text = %s AND NOT granted",
                    (holder,),
                )
                return bool(cur.fetchone()[0])

        workers.append(start_worker(settings, log_path))
        wait_for(worker_blocked_on_lock, 60, "the first worker to block in its first transaction")
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait(10)
        locker.rollback()
        locker.close()
        assert count_pages(owner, tag) == 0  # the killed batch never committed

        workers.append(start_worker(settings, log_path))
        end = {}
        for partition in range(unique.partitions):
            _low, high = admin_watermarks(settings, unique.name, partition)
            end[partition] = high
        sink = PostgresPageSink.from_settings(settings)
        wait_for(
            lambda: sink.stored_offsets(group, unique.name) == end,
            90,
            f"stored offsets to reach {end}",
            every_s=0.2,
        )
        sink.close()

        assert count_pages(owner, tag) == 40
        letters = read_dead_letters(settings, dead.name, unique.name, malformed_at[0])
        assert [(d.stage, d.reason) for d in letters] == [("sink", "invalid_json")]
        assert letters[0].original_value() == b'{"url": "x"'
        committed = committed_offsets(settings, unique.name, unique.partitions)
        assert committed == end  # Kafka sees the same progress, for lag tools

        workers[1].send_signal(signal.SIGTERM)
        assert workers[1].wait(30) == 0, log_path.read_text()
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        admin.delete_topics([unique.name, dead.name], operation_timeout=30)


def test_migration_0004_moves_current_versions_out_of_the_history_and_back(
    settings: Settings, tag: str
) -> None:
    """Pages and versions written under 0003 (each body twice) keep every version through the
    upgrade (current ones in pages, superseded ones in page_history, all in the view) and the
    downgrade (all back in the page_versions table)."""
    schema = tag.replace("-", "_")
    path = f"-csearch_path%3D{schema}"
    pg = settings.postgres
    scratch = settings.model_copy(
        update={
            "postgres": pg.model_copy(
                update={
                    "url": SecretStr(with_options(pg.dsn(), path)),
                    "owner_url": SecretStr(with_options(pg.dsn(owner=True), path)),
                    "publication": schema,
                    "events_publication": f"{schema}_events",  # never the stack's own
                }
            )
        }
    )
    admin = psycopg2.connect(pg.dsn(owner=True))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
    versions = "SELECT url, version, body FROM page_versions ORDER BY 1, 2"
    try:
        upgrade(scratch, "0003")
        with admin.cursor() as cur:
            cur.execute(f"SET search_path = {schema}")
            cur.execute(
                "INSERT INTO pages (url, final_url, status, content_type, encoding, title, body, "
                "body_truncated, body_bytes, fetched_at, fetch_latency_s, depth, job_id, run_id, version) "
                "VALUES ('a', 'a', 200, '', '', '', 'a2', false, 2, now(), 0, 0, 'j', 'r', 2), "
                "('b', 'b', 200, '', '', '', 'b1', false, 2, now(), 0, 0, 'j', 'r', 1)"
            )
            cur.execute(
                "INSERT INTO page_versions (url, version, status, title, body, text, body_hash, "
                "content_hash, fetched_at, run_id) SELECT url, v, 200, '', body, '', '', '', now(), 'r' "
                "FROM (VALUES ('a', 1, 'a1'), ('a', 2, 'a2'), ('b', 1, 'b1')) AS t(url, v, body)"
            )
            everything = [("a", 1, "a1"), ("a", 2, "a2"), ("b", 1, "b1")]
            upgrade(scratch)
            cur.execute("SELECT url, version, body FROM page_history ORDER BY 1, 2")
            assert cur.fetchall() == [("a", 1, "a1")]
            cur.execute(versions)
            assert cur.fetchall() == everything
            cur.execute("UPDATE pages SET body = 'a3', version = 3 WHERE url = 'a'")  # the trigger
            cur.execute("UPDATE pages SET last_seen = now() WHERE url = 'b'")  # no new version: no copy
            cur.execute(versions)
            assert cur.fetchall() == [*everything[:2], ("a", 3, "a3"), ("b", 1, "b1")]
            downgrade(scratch, "0003")
            cur.execute("SELECT relkind FROM pg_class WHERE oid = 'page_versions'::regclass")
            assert cur.fetchone() == ("r",)  # a table again
            cur.execute(versions)
            assert cur.fetchall() == [*everything[:2], ("a", 3, "a3"), ("b", 1, "b1")]
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP PUBLICATION IF EXISTS {schema}, {schema}_events")
            cur.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


def test_migration_0006_keys_rows_by_url_hash_on_data_of_0005_and_back(settings: Settings, tag: str) -> None:
    """Pages, their history and parked touches written under 0005 get their url_hash (sha256 of
    the URL) as key through the upgrade; a URL too long for a btree is then stored; the downgrade
    refuses, changing nothing, while such a URL is stored, and restores the URL keys once not."""
    schema = tag.replace("-", "_")
    path = f"-csearch_path%3D{schema}"
    pg = settings.postgres
    scratch = settings.model_copy(
        update={
            "postgres": pg.model_copy(
                update={
                    "url": SecretStr(with_options(pg.dsn(), path)),
                    "owner_url": SecretStr(with_options(pg.dsn(owner=True), path)),
                    "publication": schema,
                    "events_publication": f"{schema}_events",  # never the stack's own
                }
            )
        }
    )
    admin = psycopg2.connect(pg.dsn(owner=True))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
    versions = "SELECT url, version, body FROM page_versions ORDER BY 1, 2"
    keys = (
        "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE contype IN ('p', 'f') AND connamespace = %s::regnamespace "
        "AND conrelid::regclass::text IN ('pages', 'page_history', 'page_touches_pending') ORDER BY 1, 2"
    )
    try:
        upgrade(scratch, "0005")
        with admin.cursor() as cur:
            cur.execute(f"SET search_path = {schema}")
            cur.execute(
                "INSERT INTO pages (url, final_url, status, content_type, encoding, title, body, "
                "body_truncated, body_bytes, fetched_at, fetch_latency_s, depth, job_id, run_id) "
                "VALUES ('a', 'a', 200, '', '', '', 'a1', false, 2, now(), 0, 0, 'j', 'r'), "
                "('b', 'b', 200, '', '', '', 'b1', false, 2, now(), 0, 0, 'j', 'r')"
            )
            cur.execute("UPDATE pages SET body = 'a2', version = 2 WHERE url = 'a'")  # archives a1
            cur.execute("INSERT INTO page_touches_pending (url, seen) VALUES ('c', now())")
            everything = [("a", 1, "a1"), ("a", 2, "a2"), ("b", 1, "b1")]
            cur.execute(keys, (schema,))
            before = cur.fetchall()

            upgrade(scratch)

            for table in ("pages", "page_history", "page_touches_pending"):
                cur.execute(f"SELECT url, url_hash FROM {table}")
                found = cur.fetchall()
                assert found
                assert all(bytes(h) == url_hash(u) for u, h in found), table
            cur.execute(keys, (schema,))
            assert cur.fetchall() == [
                ("page_history", "FOREIGN KEY (url_hash) REFERENCES pages(url_hash) ON DELETE CASCADE"),
                ("page_history", "PRIMARY KEY (url_hash, version)"),
                ("page_touches_pending", "PRIMARY KEY (url_hash)"),
                ("pages", "PRIMARY KEY (url_hash)"),
            ]
            cur.execute(versions)
            assert cur.fetchall() == everything
            cur.execute("SELECT count(*) FROM page_versions WHERE url_hash = %s", (url_hash("a"),))
            assert cur.fetchone() == (2,)
            with pytest.raises(psycopg2.errors.CheckViolation):  # a url_hash that is not the URL's
                cur.execute("UPDATE pages SET url_hash = %s WHERE url = 'b'", (url_hash("a"),))
            long_url = f"https://{tag}.invalid/" + "".join(random.choices(string.ascii_letters, k=3000))
            sink = PostgresPageSink(scratch.postgres.dsn(), event_prefix=schema)  # not the stack's
            records = [SinkRecord(event(long_url), "t", 0, 0), SinkRecord(event("b", body="b2"), "t", 0, 1)]
            assert sink.write(SinkBatch("g", records, {("t", 0): 2})) == 2
            sink.close()
            cur.execute("SELECT url, version FROM pages WHERE url_hash = %s", (url_hash(long_url),))
            assert cur.fetchall() == [(long_url, 1)]

            cur.execute("SELECT version_num FROM alembic_version")
            head = cur.fetchall()
            with pytest.raises(CrawlstreamError, match="too long to be a btree key"):
                downgrade(scratch, "0005")
            cur.execute("SELECT version_num FROM alembic_version")
            assert cur.fetchall() == head  # one transaction: nothing changed
            cur.execute("DELETE FROM pages WHERE url = %s", (long_url,))

            downgrade(scratch, "0005")

            cur.execute(keys, (schema,))
            assert cur.fetchall() == before
            cur.execute(versions)
            assert cur.fetchall() == [*everything, ("b", 2, "b2")]
            cur.execute("SELECT url FROM page_touches_pending")
            assert cur.fetchall() == [("c",)]
            cur.execute("UPDATE pages SET body = 'a3', version = 3 WHERE url = 'a'")  # 0005's trigger
            cur.execute("SELECT count(*) FROM page_history WHERE url = 'a'")
            assert cur.fetchone() == (2,)
            upgrade(scratch)  # and up again
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP PUBLICATION IF EXISTS {schema}, {schema}_events")
            cur.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()
