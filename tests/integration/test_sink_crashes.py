"""Exactly-once through crashes: kill -9 a sink worker at random points of a stream, many times.

A stream of N page events (new URLs, changed bodies, unchanged replays, one malformed record and
one that violates a constraint) is stored by `python -m sinks --family pages` subprocesses that
are killed with SIGKILL at random moments after each made progress. After the last restart,
Postgres holds exactly one row per URL with the right versions, and both bad records are in the
dead-letter topic. Static group membership lets a restarted worker take its partitions back at
once instead of waiting for the killed member's session to expire.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from crawlstream.settings import Settings
from crawlstream.topics import catalog, ensure_topics
from sinks.pages import PostgresPageSink
from tests.integration.sinks_support import (
    assert_stream_stored_exactly,
    dead_letters_of,
    end_offsets,
    event,
    owner,
    page_stream,
    produce,
    settings,
    start_worker,
    tag,
    wait_for,
)

__all__ = ["owner", "settings", "tag"]  # fixtures

pytestmark = pytest.mark.integration

N_URLS, N_CHANGED, N_REPLAYED, KILLS = 1500, 400, 300, 6


def test_kill_9_at_random_points_stores_every_record_exactly_once(
    settings: Settings, owner: Any, tag: str, tmp_path: Path
) -> None:
    topics = catalog(settings)
    unique, dead = topics.unique_pages, topics.dead_letter
    ensure_topics(settings, [unique, dead])
    stream = page_stream(tag, N_URLS, N_CHANGED, N_REPLAYED)
    bad_url = f"https://{tag}.invalid/too-big"
    stream.insert(700, ("broken", b'{"change": "new", "page": {'))
    stream.insert(900, (bad_url, event(bad_url, body_bytes=2**40).to_bytes()))  # > int4
    produce(settings, unique.name, stream)
    end = end_offsets(settings, unique.name, unique.partitions)
    sink = PostgresPageSink.from_settings(settings)
    log_path = tmp_path / "workers.log"
    static = {"CRAWLSTREAM_KAFKA__CLIENT_CONFIG": json.dumps({"group.instance.id": f"{tag}-w"})}
    rng = random.Random(tag)
    worker: subprocess.Popen[bytes] | None = None

    def stored() -> int:
        return sum(sink.stored_offsets(settings.sink.group_id, unique.name).values())

    try:
        for _ in range(KILLS):
            before = stored()
            worker = start_worker(settings, log_path, **static)
            wait_for(lambda b=before: stored() > b, 60, "the worker to store a batch", every_s=0.02)
            # A random point after some progress: inside the loop, a transaction or a commit.
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(rng.uniform(0.0, 0.25))
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
        worker = start_worker(settings, log_path, **static)
        wait_for(
            lambda: sink.stored_offsets(settings.sink.group_id, unique.name) == end,
            120,
            f"stored offsets to reach {end}",
            every_s=0.2,
        )
        assert_stream_stored_exactly(owner, tag, N_URLS, N_CHANGED)
        letters = {d.reason: d for d in dead_letters_of(settings, dead.name, unique.name, count=2)}
        assert set(letters) == {"invalid_json", "sqlstate_22003"}
        assert "out of range" in letters["sqlstate_22003"].error
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, log_path.read_text()[-3000:]
    finally:
        sink.close()
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait(10)
