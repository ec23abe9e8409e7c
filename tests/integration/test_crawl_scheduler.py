"""The scheduler for real: a one-minute cron job starts on time, once, and its run events arrive.

Waits for a real minute boundary (up to ~60 s). The scheduler runs in a thread of the test and
starts real ``crawlstream jobs run`` processes on its own topic prefix and state directory.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from control.demosite import generate_demo_site, serve_directory
from crawlers.jobs import load_jobs
from crawlers.scheduler import ProcessLauncher, Scheduler
from crawlstream.records import PageRecord, RunEvent
from crawlstream.settings import load_settings
from crawlstream.topics import catalog, ensure_topics
from tests.integration.kafka_read import read_topic

pytestmark = pytest.mark.integration

JOBS = """
[jobs.minutely]
start_urls = ["{base}index.html"]
allow_private_hosts = ["{base}"]  # that host, on its port only
max_pages = 5
schedule = "* * * * *"
"""


def test_one_minute_job_runs_on_time_once_with_run_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRAWLSTREAM_KAFKA__TOPIC_PREFIX", f"test-sched-{uuid.uuid4().hex[:8]}")
    settings = load_settings()
    topics = catalog(settings)
    ensure_topics(settings, [topics.raw_pages, topics.dead_letter, topics.runs])
    generate_demo_site(tmp_path / "site", pages=20)
    server, base = serve_directory(tmp_path / "site")
    jobs_file = tmp_path / "jobs.toml"
    jobs_file.write_text(JOBS.format(base=base))
    state_dir = tmp_path / "state"
    scheduler = Scheduler(load_jobs(jobs_file), state_dir, ProcessLauncher(jobs_file, state_dir / "logs"))
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run_forever, args=(stop, 0.2), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 80
        while (state := scheduler.state.get("minutely")) is None or state.run_id is None:
            assert time.monotonic() < deadline, "the job was not started within 80 s"
            time.sleep(0.2)  # poll interval
        run_id = state.run_id
        assert state.started_at is not None
        due = datetime.fromisoformat(state.last_due)
        assert due.second == 0
        assert (datetime.fromisoformat(state.started_at) - due).total_seconds() < 5  # on time
        # A restarted scheduler (same state) does not start the same due time again.
        restarted = Scheduler(load_jobs(jobs_file), state_dir, ProcessLauncher(jobs_file, state_dir / "logs"))
        assert restarted.tick() == []

        def events() -> list[RunEvent]:
            raw = read_topic(settings, topics.runs.name)
            return [e for e in (RunEvent.model_validate_json(v) for _, v in raw) if e.job_id == "minutely"]

        deadline = time.monotonic() + 90
        while [e.event for e in events()] != ["started", "finished"]:
            log = (state_dir / "logs" / f"job-minutely-{run_id}.log").read_text(errors="replace")
            assert time.monotonic() < deadline, f"run events missing: {events()}\n{log[-3000:]}"
            time.sleep(0.5)  # poll interval
        started, finished = events()
        assert started.run_id == finished.run_id == run_id
        assert finished.outcome == "succeeded"
        # max_pages caps HTML pages; non-HTML metadata records (the demo's image, PDF) come on top.
        pages = [PageRecord.model_validate_json(v) for _, v in read_topic(settings, topics.raw_pages.name)]
        assert len([p for p in pages if p.kind == "html"]) == 5
        assert finished.pages == len(pages)
        assert {p.run_id for p in pages} == {run_id}
        assert scheduler.state["minutely"].run_id == run_id  # one run only (the next is a minute away)
    finally:
        stop.set()
        thread.join(10)
        server.shutdown()
        server.server_close()
        os.environ.pop("CRAWLSTREAM_KAFKA__TOPIC_PREFIX", None)
