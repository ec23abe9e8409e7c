"""Page versions, touches, stats windows and run events against the stack's PostgreSQL.

What the page sink must do per event: a new URL inserts the row and version 1; a changed body
updates the row and adds the next version; the same body again changes nothing (the row's xmin
stays, so Debezium sees no event); a replayed batch (offsets already stored) is skipped whole.
A touch that comes before its page is parked and folded into the page's ``last_seen`` when the
page comes, also when the two race (each order forced with a sink paused before its commit).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import pytest

from crawlstream.records import DomainStats, Enrichment, PageEvent, PageTouch, RunEvent
from crawlstream.settings import Settings
from sinks.base import RowsRejected, SinkBatch, SinkRecord
from sinks.pages import PostgresPageSink
from sinks.postgres import PostgresSink
from sinks.touches import PostgresTouchSink
from sinks.upserts import PostgresDomainStatsSink, PostgresRunSink
from tests.integration.sinks_support import owner, page, settings, tag, wait_for

__all__ = ["owner", "settings", "tag"]  # fixtures

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
R = TypeVar("R")


def query(owner: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with owner.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall())


def batch(group: str, values: list[Any], topic: str = "t", start: int = 0) -> SinkBatch[Any]:
    records = [SinkRecord(v, topic, 0, start + i) for i, v in enumerate(values)]
    return SinkBatch(group, records, {(topic, 0): start + len(values)})


def test_new_changed_unchanged_and_replayed_page_events(settings: Settings, owner: Any, tag: str) -> None:
    a, b = f"https://{tag}.invalid/a", f"https://{tag}.invalid/b"
    sink = PostgresPageSink.from_settings(settings)
    enriched = Enrichment(text="hello", language="en", content_hash="h1", simhash=2**64 - 2)
    first = [
        PageEvent(change="new", page=page(a, body="<p>1</p>", fetched_at=T0), enrichment=enriched),
        PageEvent(change="new", page=page(b, body="<p>b</p>", fetched_at=T0)),
    ]
    batch1 = batch(tag, first)
    assert sink.write(batch1) == 2
    (xmin_b,) = query(owner, "SELECT xmin::text FROM pages WHERE url = %s", b)[0]

    later = T0 + timedelta(hours=1)
    second = [
        PageEvent(change="changed", page=page(a, body="<p>2</p>", fetched_at=later)),
        PageEvent(change="new", page=page(b, body="<p>b</p>", fetched_at=later)),  # same body
        PageEvent(change="changed", page=page(a, body="<p>3</p>", fetched_at=later)),  # twice in a batch
    ]
    assert sink.write(batch(tag, second, start=2)) == 2
    assert sink.write(batch(tag, second, start=2)) == 0  # a replay: the fence skips it whole

    rows = query(
        owner,
        "SELECT url, version, body, simhash, last_changed FROM pages WHERE url LIKE %s ORDER BY url",
        f"https://{tag}.invalid/%",
    )
    assert [(u, v, body) for u, v, body, _s, _c in rows] == [(a, 3, "<p>3</p>"), (b, 1, "<p>b</p>")]
    assert rows[1][4] == T0  # b never changed
    versions = query(
        owner,
        "SELECT url, version, body FROM page_versions WHERE url LIKE %s ORDER BY url, version",
        f"https://{tag}.invalid/%",
    )
    assert versions == [(a, 1, "<p>1</p>"), (a, 2, "<p>2</p>"), (a, 3, "<p>3</p>"), (b, 1, "<p>b</p>")]
    assert query(owner, "SELECT xmin::text FROM pages WHERE url = %s", b) == [(xmin_b,)]  # no UPDATE
    first_simhash = query(owner, "SELECT simhash FROM page_versions WHERE url = %s AND version = 1", a)
    assert first_simhash == [(-2,)]  # 2**64 - 2 as a signed bigint
    sink.close()


def test_touches_move_last_seen_forward_only(settings: Settings, owner: Any, tag: str) -> None:
    url = f"https://{tag}.invalid/t"
    pages_sink = PostgresPageSink.from_settings(settings)
    pages_sink.write(batch(tag, [PageEvent(change="new", page=page(url, fetched_at=T0))], topic="p"))
    touches = PostgresTouchSink.from_settings(settings)

    def touch(at: datetime, target: str = url) -> PageTouch:
        return PageTouch(canonical_url=target, fetched_at=at, status=200)

    later = T0 + timedelta(days=1)
    values = [touch(later), touch(T0 + timedelta(hours=1)), touch(later, f"https://{tag}.invalid/unknown")]
    assert touches.write(batch(tag, values)) == 1
    assert touches.write(batch(tag, [touch(T0)], start=3)) == 0  # older than last_seen
    assert query(owner, "SELECT last_seen, last_changed, version FROM pages WHERE url = %s", url) == [
        (later, T0, 1)
    ]
    assert query(owner, "SELECT count(*) FROM page_versions WHERE url = %s", url) == [(1,)]
    pages_sink.close()
    touches.close()


def test_stats_windows_and_runs_are_idempotent_upserts(settings: Settings, owner: Any, tag: str) -> None:
    stats = PostgresDomainStatsSink.from_settings(settings)
    window = DomainStats(
        domain=f"{tag}.invalid",
        window="tumbling_1m",
        window_start=T0,
        window_end=T0 + timedelta(minutes=1),
        pages=3,
        bytes=2**40,
    )
    assert stats.write(batch(tag, [window, window.model_copy(update={"pages": 4})])) == 1
    assert stats.write(batch(tag, [window.model_copy(update={"pages": 4})], start=2)) == 0
    assert query(owner, "SELECT pages, bytes FROM domain_stats WHERE domain = %s", f"{tag}.invalid") == [
        (4, 2**40)
    ]

    runs = PostgresRunSink.from_settings(settings)
    started = RunEvent(run_id=f"{tag}-r1", job_id="j", event="started", started_at=T0)
    finished = started.model_copy(
        update={
            "event": "finished",
            "finished_at": T0 + timedelta(minutes=5),
            "pages": 9,
            "outcome": "succeeded",
        }
    )
    assert runs.write(batch(tag, [started], topic="r")) == 1
    assert runs.write(batch(tag, [finished], topic="r", start=1)) == 1
    assert runs.write(batch(tag, [started], topic="r", start=2)) == 0  # a late start never reopens a run
    assert query(owner, "SELECT outcome, pages FROM crawl_runs WHERE run_id = %s", f"{tag}-r1") == [
        ("succeeded", 9)
    ]
    stats.close()
    runs.close()


def test_a_touch_before_its_page_is_parked_then_folded_into_last_seen(
    settings: Settings, owner: Any, tag: str
) -> None:
    url = f"https://{tag}.invalid/early"
    touches, pages_sink = PostgresTouchSink.from_settings(settings), PostgresPageSink.from_settings(settings)
    seen = T0 + timedelta(hours=2)

    assert touches.write(batch(tag, [PageTouch(canonical_url=url, fetched_at=seen, status=200)])) == 0
    assert touches.write(batch(tag, [PageTouch(canonical_url=url, fetched_at=T0, status=200)], start=1)) == 0
    assert touches.take_counts() == {"touches_parked": 1}  # the older touch changed nothing
    assert query(owner, "SELECT url, seen FROM page_touches_pending WHERE url = %s", url) == [(url, seen)]

    first = batch(tag, [PageEvent(change="new", page=page(url, body="<p>1</p>", fetched_at=T0))], topic="p")
    assert pages_sink.write(first) == 1  # one outbox event: created
    assert pages_sink.write(first) == 0  # a replay
    assert pages_sink.take_counts() == {"touches_folded": 1}
    assert query(owner, "SELECT last_seen, last_changed, version FROM pages WHERE url = %s", url) == [
        (seen, T0, 1)
    ]
    assert query(owner, "SELECT count(*) FROM page_touches_pending WHERE url = %s", url) == [(0,)]
    assert query(owner, "SELECT version FROM page_versions WHERE url = %s", url) == [(1,)]

    later = T0 + timedelta(hours=3)
    change = PageEvent(change="changed", page=page(url, body="<p>2</p>", fetched_at=later))
    assert pages_sink.write(batch(tag, [change], topic="p", start=1)) == 1
    older = PageTouch(canonical_url=url, fetched_at=seen, status=200)
    assert touches.write(batch(tag, [older], start=2)) == 0
    assert query(owner, "SELECT last_seen, last_changed, version FROM pages WHERE url = %s", url) == [
        (later, later, 2)
    ]
    # Each body once: version 1 in page_history, version 2 in pages; the view shows both.
    assert query(owner, "SELECT version, body FROM page_history WHERE url = %s", url) == [(1, "<p>1</p>")]
    assert query(owner, "SELECT version, body FROM page_versions WHERE url = %s ORDER BY 1", url) == [
        (1, "<p>1</p>"),
        (2, "<p>2</p>"),
    ]
    assert touches.take_counts() == {}
    assert pages_sink.take_counts() == {}
    touches.close()
    pages_sink.close()


class _Paused(Generic[R]):
    """Runs ``sink.write`` in a thread that stops after apply(), before the commit, until resumed."""

    def __init__(self, sink: PostgresSink[R]) -> None:
        self.applied, self.resume, self.sink = threading.Event(), threading.Event(), sink
        apply = sink.apply

        def paused_apply(cur: Any, records: Any, prepared: Any = None) -> int:
            changed = apply(cur, records, prepared)
            self.applied.set()
            assert self.resume.wait(30), "never resumed"
            return changed

        sink.apply = paused_apply  # type: ignore[method-assign]
        self.result: list[int] = []

    def start(self, write: SinkBatch[R]) -> threading.Thread:
        thread = threading.Thread(target=lambda: self.result.append(self.sink.write(write)))
        thread.start()
        assert self.applied.wait(30), "apply() did not finish"
        return thread


def waiting_for_pending_lock(owner: Any, mode: str) -> bool:
    """Whether a session waits for ``mode`` on page_touches_pending (pg_locks: visible to all roles)."""
    rows = query(
        owner,
        "SELECT count(*) FROM pg_locks WHERE relation = 'page_touches_pending'::regclass "
        "AND mode = %s AND NOT granted",
        mode,
    )
    return bool(rows[0][0])


def test_a_touch_racing_the_insert_of_its_page_waits_for_it_and_updates_it(
    settings: Settings, owner: Any, tag: str
) -> None:
    url = f"https://{tag}.invalid/race1"
    pages_sink, touches = PostgresPageSink.from_settings(settings), PostgresTouchSink.from_settings(settings)
    paused = _Paused(pages_sink)
    writing = paused.start(batch(tag, [PageEvent(change="new", page=page(url, fetched_at=T0))], topic="p"))
    # The page row is inserted, not committed: the touch sees no row, so it must wait, not park.
    seen = T0 + timedelta(hours=1)
    touching = threading.Thread(
        target=touches.write, args=(batch(tag, [PageTouch(canonical_url=url, fetched_at=seen, status=200)]),)
    )
    touching.start()
    wait_for(lambda: waiting_for_pending_lock(owner, "ShareRowExclusiveLock"), 30, "the touch to wait")
    paused.resume.set()
    writing.join(30)
    touching.join(30)

    assert query(owner, "SELECT last_seen, version FROM pages WHERE url = %s", url) == [(seen, 1)]
    assert query(owner, "SELECT count(*) FROM page_touches_pending WHERE url = %s", url) == [(0,)]
    assert touches.take_counts() == {}
    assert paused.result == [1]
    pages_sink.close()
    touches.close()


def test_a_page_racing_the_parking_of_its_touch_waits_for_it_and_folds_it(
    settings: Settings, owner: Any, tag: str
) -> None:
    url = f"https://{tag}.invalid/race2"
    pages_sink, touches = PostgresPageSink.from_settings(settings), PostgresTouchSink.from_settings(settings)
    seen = T0 + timedelta(hours=1)
    paused = _Paused(touches)
    parking = paused.start(batch(tag, [PageTouch(canonical_url=url, fetched_at=seen, status=200)]))
    # The touch is parked, not committed: the page's upsert must wait for it, then fold it.
    written: list[int] = []
    first = batch(tag, [PageEvent(change="new", page=page(url, fetched_at=T0))], topic="p")
    writing = threading.Thread(target=lambda: written.append(pages_sink.write(first)))
    writing.start()
    wait_for(lambda: waiting_for_pending_lock(owner, "RowExclusiveLock"), 30, "the page to wait")
    paused.resume.set()
    parking.join(30)
    writing.join(30)

    assert query(owner, "SELECT last_seen, version FROM pages WHERE url = %s", url) == [(seen, 1)]
    assert query(owner, "SELECT count(*) FROM page_touches_pending WHERE url = %s", url) == [(0,)]
    assert touches.take_counts() == {"touches_parked": 1}
    assert pages_sink.take_counts() == {"touches_folded": 1}
    assert written == [1]
    pages_sink.close()
    touches.close()


def test_a_rejected_batch_neither_folds_nor_counts_a_parked_touch(
    settings: Settings, owner: Any, tag: str
) -> None:
    url = f"https://{tag}.invalid/kept"
    touches, pages_sink = PostgresTouchSink.from_settings(settings), PostgresPageSink.from_settings(settings)
    seen = T0 + timedelta(hours=1)
    touches.write(batch(tag, [PageTouch(canonical_url=url, fetched_at=seen, status=200)]))
    good = PageEvent(change="new", page=page(url, fetched_at=T0))
    bad = PageEvent(change="new", page=page(f"https://{tag}.invalid/big", body_bytes=2**40))  # > int4

    with pytest.raises(RowsRejected):
        pages_sink.write(batch(tag, [good, bad], topic="p"))

    assert pages_sink.take_counts() == {}  # the isolation pass folded it, then rolled back
    assert query(owner, "SELECT seen FROM page_touches_pending WHERE url = %s", url) == [(seen,)]
    assert pages_sink.write(batch(tag, [good], topic="p")) == 1
    assert pages_sink.take_counts() == {"touches_folded": 1}
    assert query(owner, "SELECT last_seen FROM pages WHERE url = %s", url) == [(seen,)]
    touches.close()
    pages_sink.close()
