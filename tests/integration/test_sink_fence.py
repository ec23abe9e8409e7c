"""The page sink's offset fence and offset-row lock on the real PostgreSQL (sinks/postgres.py).

The README promises that each transaction locks its partitions' ``sink_offsets`` rows and skips
records before the stored offsets, so that a worker that lost its partitions (a zombie after a
rebalance) or a replay cannot apply a batch twice. A replay of identical bodies cannot show a
missing fence (the upsert leaves an unchanged body alone), so these tests replay a page whose
content changed later: applying the old record again would move the page back to old content.

Two sinks (two connections) write one partition at once; the order of their transactions is
forced by pausing one inside its transaction and waiting until PostgreSQL reports the other
waiting on a lock (``pg_locks``), not by sleeping.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest

from crawlstream.settings import Settings
from sinks.base import SinkBatch, SinkRecord
from sinks.pages import PostgresPageSink
from sinks.postgres import Cursor
from tests.integration.sinks_support import event, owner, settings, tag, wait_for

__all__ = ["owner", "settings", "tag"]  # fixtures

pytestmark = pytest.mark.integration


def stored(owner: Any, url: str) -> tuple[str, int]:
    with owner.cursor() as cur:
        cur.execute("SELECT body, version FROM pages WHERE url = %s", (url,))
        body, version = cur.fetchone()
    return body, version


def test_a_replay_below_the_stored_offsets_does_not_bring_old_content_back(
    settings: Settings, owner: Any, tag: str
) -> None:
    topic, group = f"{tag}.pages.unique", tag
    url = f"https://{tag}.invalid/changing"
    old = SinkBatch(group, [SinkRecord(event(url, body="<html>old</html>"), topic, 0, 0)], {(topic, 0): 1})
    new = SinkBatch(group, [SinkRecord(event(url, body="<html>new</html>"), topic, 0, 1)], {(topic, 0): 2})
    sink = PostgresPageSink.from_settings(settings)
    try:
        assert sink.write(old) == 1
        assert sink.write(new) == 1
        assert stored(owner, url) == ("<html>new</html>", 2)

        # The worker restarted from an older position (or a zombie wrote late): offset 0 again.
        assert sink.write(old) == 0
        assert sink.write(sink.prepare(old)) == 0  # prepared ahead: the same fence

        assert stored(owner, url) == ("<html>new</html>", 2)
        assert sink.stored_offsets(group, topic) == {0: 2}
    finally:
        sink.close()


def test_a_zombie_writing_the_same_partition_at_once_cannot_apply_its_batch_after_the_new_owner(
    settings: Settings, owner: Any, tag: str
) -> None:
    # Partition 0 holds the page at offset 3 (old body) and at offset 12 (new body). The zombie
    # (which lost the partition in a rebalance) is inside its transaction for offsets 0..9; the new
    # owner then writes 0..9 and 10..19. The zombie's lock must make the new owner wait, so that
    # the new owner's fence sees 0..9 stored and the page ends with the new body, version 2.
    # Without the lock both read offset 0, and the zombie's late commit brings the old body back.
    topic, group = f"{tag}.pages.unique", tag
    url = f"https://{tag}.invalid/raced"

    def records(first: int, body_at: dict[int, str]) -> list[SinkRecord[Any]]:
        return [
            SinkRecord(
                event(url if o in body_at else f"https://{tag}.invalid/{o}", body=body_at.get(o, "<p/>")),
                topic,
                0,
                o,
            )
            for o in range(first, first + 10)
        ]

    first = SinkBatch(group, records(0, {3: "<html>old</html>"}), {(topic, 0): 10})
    second = SinkBatch(group, records(10, {12: "<html>new</html>"}), {(topic, 0): 20})

    zombie = PostgresPageSink.from_settings(settings)
    owner_sink = PostgresPageSink.from_settings(settings)
    zombie.write(SinkBatch(group, [], {(topic, 0): 0}))  # the partition's offset row exists
    owner_sink.open()

    in_transaction, release = threading.Event(), threading.Event()
    real_apply = zombie.apply

    def paused_apply(cur: Cursor, todo: Sequence[SinkRecord[Any]], prepared: Any = None) -> int:
        in_transaction.set()  # the zombie's fence has run: its offset rows are locked
        assert release.wait(60), "never released"
        return real_apply(cur, todo, prepared)

    zombie.apply = paused_apply  # type: ignore[method-assign]
    results: dict[str, Any] = {}

    def run(name: str, sink: PostgresPageSink, *batches: SinkBatch[Any]) -> None:
        try:
            results[name] = [sink.write(b) for b in batches]
        except BaseException as exc:  # reported by the main thread
            results[name] = exc

    zombie_thread = threading.Thread(target=run, args=("zombie", zombie, first))
    owner_thread = threading.Thread(target=run, args=("owner", owner_sink, first, second))
    try:
        zombie_thread.start()
        assert in_transaction.wait(30), "the zombie never reached its write"
        owner_thread.start()
        owner_pid = owner_sink._connection().get_backend_pid()

        def owner_waits_on_a_lock_or_is_done() -> bool:
            if not owner_thread.is_alive():
                return True
            with owner.cursor() as cur:
                # pg_locks, not pg_stat_activity: the latter hides another role's wait events.
                cur.execute("SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted", (owner_pid,))
                return bool(cur.fetchone()[0])

        wait_for(owner_waits_on_a_lock_or_is_done, 30, "the new owner blocked on the zombie's lock")
    finally:
        release.set()
        zombie_thread.join(60)
        owner_thread.join(60)
        zombie.close()
        owner_sink.close()

    assert results["zombie"] == [10]
    assert results["owner"] == [0, 10]  # 0..9 were stored by the zombie: skipped, not written again
    assert stored(owner, url) == ("<html>new</html>", 2)
    check = PostgresPageSink.from_settings(settings)
    try:
        assert check.stored_offsets(group, topic) == {0: 20}
    finally:
        check.close()
