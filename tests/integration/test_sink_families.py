"""`python -m sinks` with every family over Kafka: pages, touches, stats windows, run events.

One worker process, four consumer groups (one per family), this test's topic prefix. Each family
reaches its table, bad records of any family reach the dead-letter topic, and each group's offsets
end at its topic's end.
"""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from crawlstream.records import DomainStats, PageEvent, PageTouch, RunEvent
from crawlstream.settings import Settings
from crawlstream.topics import catalog, ensure_topics
from sinks.families import FAMILIES
from sinks.pages import PostgresPageSink
from tests.integration.sinks_support import (
    dead_letters_of,
    end_offsets,
    owner,
    page,
    produce,
    settings,
    start_worker,
    tag,
    wait_for,
)

__all__ = ["owner", "settings", "tag"]  # fixtures

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def test_one_worker_stores_every_family(settings: Settings, owner: Any, tag: str, tmp_path: Path) -> None:
    t = catalog(settings)
    ensure_topics(settings, [t.unique_pages, t.page_touches, t.stats, t.runs, t.dead_letter])
    url = f"https://{tag}.invalid/p"
    later = T0 + timedelta(hours=2)
    produce(
        settings,
        t.unique_pages.name,
        [(url, PageEvent(change="new", page=page(url, fetched_at=T0)).to_bytes())],
    )
    window = DomainStats(
        domain=f"{tag}.invalid",
        window="hopping_5m_1m",
        window_start=T0,
        window_end=T0 + timedelta(minutes=5),
        pages=7,
    )
    produce(settings, t.stats.name, [(window.domain, window.to_bytes())])
    run = RunEvent(run_id=f"{tag}-run", job_id="j", event="started", started_at=T0)
    produce(settings, t.runs.name, [(run.run_id, run.to_bytes())])

    log_path = tmp_path / "worker.log"
    worker = start_worker(settings, log_path, *FAMILIES)
    sink = PostgresPageSink.from_settings(settings)
    try:
        # A touch for a URL the pages worker has not stored yet is skipped (topics are not
        # ordered with each other): touch once the page is in.
        wait_for(lambda: sink.stored_offsets(settings.sink.group_id, t.unique_pages.name), 60, "the page")
        touch = PageTouch(canonical_url=url, fetched_at=later, status=200)
        produce(settings, t.page_touches.name, [(url, touch.to_bytes()), (url, b'{"canonical_url": 1}')])
        for family in FAMILIES.values():
            topic, group = family.topic(settings), family.group(settings)
            spec = next(s for s in t.all() if s.name == topic)
            end = {p: o for p, o in end_offsets(settings, topic, spec.partitions).items() if o}
            wait_for(
                lambda g=group, tp=topic, e=end: sink.stored_offsets(g, tp) == e, 90, f"{family.name} stored"
            )
        with owner.cursor() as cur:
            cur.execute("SELECT version, last_seen, last_changed FROM pages WHERE url = %s", (url,))
            assert cur.fetchone() == (1, later, T0)
            cur.execute("SELECT pages FROM domain_stats WHERE domain = %s", (window.domain,))
            assert cur.fetchone() == (7,)
            cur.execute("SELECT outcome FROM crawl_runs WHERE run_id = %s", (run.run_id,))
            assert cur.fetchone() == ("running",)
        (letter,) = dead_letters_of(settings, t.dead_letter.name, t.page_touches.name, count=1)
        assert (letter.stage, letter.reason) == ("sink", "invalid_record")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, log_path.read_text()[-3000:]
    finally:
        sink.close()
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
