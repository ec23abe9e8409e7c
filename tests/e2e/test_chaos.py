"""Chaos: kill -9 every process of the pipeline in turn during a 5,000-page crawl.

The generated demo site (5,000 pages, 5,6xx HTML fetches) is crawled through the running stack
while, one after another, the crawler, the stream worker, the sink worker, the follower
(``crawlstream follow``), the Kafka broker, Kafka Connect and PostgreSQL are killed with SIGKILL
and restarted the way an operator would: a crawl process is run again for the same run and
job (it re-fetches what its predecessor had fetched: at-least-once), workers with
``control.workers.start_workers`` and services with the stack's ``up``, each of which
starts only what is missing. The next kill waits until the previous victim's stage is making
progress again (or has nothing left to do), and the time to get there is its recovery time.

Afterwards the run must reconcile on distinct keys (control.run.reconcile): every page in
Postgres exactly once with version 1, one Debezium create event per new row, exactly one
distinct outbox event id per new row; repeats of the same event are Debezium replays and are
reported as such. The follower must have consumed every page event, and no process may have
died except the ones killed. The recovery table is printed and written as JSON to
``<state_dir>/logs/chaos-<run id>.json``.

Size: CRAWLSTREAM_CHAOS_PAGES (default 5,000, as the issue asks) pages; on this 2-core
machine the test takes about 4 to 6 minutes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from rich.console import Console

from control.cli import migrate
from control.demosite import generate_demo_site, serve_directory
from control.run.pipeline import CrawlArgs, PipelineProbe, RunReader, crawl_argv, crawl_counts, wait_caught_up
from control.run.reconcile import reconcile
from control.stack import supervisor
from control.stack.processes import ProcessManager, read_cmdline
from control.workers import FOLLOWER, start_workers
from crawlstream import offsets
from crawlstream.errors import CrawlstreamError
from crawlstream.settings import Settings
from tests.e2e.isolated import commit_end

pytestmark = pytest.mark.e2e

PAGES = int(os.environ.get("CRAWLSTREAM_CHAOS_PAGES", "5000"))
# Scrapy's DOWNLOAD_DELAY for the crawl: about 30 pages/s, so the crawl (about 190 s) lasts
# through every kill and recovery instead of ending before the services are killed.
DOWNLOAD_DELAY_S = os.environ.get("CRAWLSTREAM_CHAOS_DOWNLOAD_DELAY", "0.03")
# The next victim is killed once this many more pages reached the raw topic since the last
# recovery (or at once when the crawl is over): spreads the kills over the crawl.
STEP = max(50, PAGES // 14)
RECOVERY_TIMEOUT_S = 300.0
VICTIMS = ("crawler", "streams-worker", "sink-worker", FOLLOWER, "kafka", "connect", "postgres")
WORKERS = ("streams-worker", "sink-worker", FOLLOWER)
SERVICES = ("kafka", "connect", "postgres")
# A probe fails while the broker or the database is down: that is "not yet", not an error.
TRANSIENT = (KafkaException, CrawlstreamError, psycopg2.Error, OSError)


@dataclass
class Recovery:
    victim: str
    stage: str
    killed_at_raw_records: int  # records of this run on the raw topic when it was killed
    restart_s: float  # kill -> the process (or its replacement) is up again
    recovered_s: float  # kill -> its stage makes progress again, or has nothing left to do
    note: str = ""


@dataclass
class Marks:
    """Where each stage stands: totals of offsets, and whether it has a backlog."""

    raw: int
    streams: int
    streams_lag: int
    sink: int
    sink_lag: int
    events: int
    follow: int
    follow_lag: int


class Chaos:
    def __init__(self, settings: Settings, args: CrawlArgs, workdir: Path) -> None:
        self.settings = settings
        self.args = args
        self.workdir = workdir
        self.pm = ProcessManager(settings.stack.state_dir.resolve())
        self.probe = PipelineProbe(settings)
        self.crawls: list[subprocess.Popen[bytes]] = []
        self.reports: list[Path] = []
        self.collateral: list[str] = []
        self.console = Console(quiet=True)
        self.last_raw = 0
        self.first_raw = 0  # raw topic total when the run started

    # --- the crawl processes --------------------------------------------------------------------
    def start_crawl(self) -> None:
        report = self.workdir / f"report-{len(self.reports)}.json"
        log = self.settings.stack.state_dir / "logs" / f"crawl-{self.args.run_id}-{len(self.reports)}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                crawl_argv(self.args, report), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.crawls.append(proc)
        self.reports.append(report)

    def crawl_running(self) -> bool:
        return self.crawls[-1].poll() is None

    def step_done(self) -> bool:
        """STEP more pages on the raw topic since the last recovery, or the crawl is over."""
        if not self.crawl_running():
            return True
        now = self.try_marks()
        return now is not None and now.raw >= self.last_raw + STEP

    # --- probes ---------------------------------------------------------------------------------
    def marks(self) -> Marks:
        probe, t, s = self.probe, self.probe.topics, self.settings
        raw = offsets.total(probe.end(t.raw_pages.name))
        streams = 0
        for spec in (t.raw_pages, t.pages_by_band, t.dedup_verdicts):
            streams += offsets.total(offsets.committed_offsets(s, s.streams.app_id, spec.name))
        events_end = probe.end(t.page_events.name)
        follow = offsets.committed_offsets(s, s.follow.group_id, t.page_events.name)
        return Marks(
            raw=raw,
            streams=streams,
            streams_lag=probe.streams_lag(),
            sink=offsets.total(probe.sink_stored()),
            sink_lag=probe.sink_lag(),
            events=offsets.total(events_end),
            follow=offsets.total(follow),
            follow_lag=offsets.lag(events_end, follow),
        )

    def try_marks(self) -> Marks | None:
        try:
            return self.marks()
        except TRANSIENT:
            return None

    def alive(self) -> dict[str, int | None]:
        return {name: self.pm.pid(name) for name in (*WORKERS, *SERVICES)}

    # --- kill and restart -----------------------------------------------------------------------
    def kill(self, victim: str) -> None:
        if victim == "crawler":
            proc = self.crawls[-1]
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            return
        pid = self.pm.pid(victim)
        assert pid is not None, f"{victim} is not running before its kill"
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while read_cmdline(pid) is not None:  # dead (a zombie counts as dead)
            assert time.monotonic() < deadline, f"{victim} (pid {pid}) survived SIGKILL"
            self.pm.running(victim)  # reaps it when it is our child
            time.sleep(0.05)  # polling interval of a deadline-bounded wait

    def restart(self, victim: str) -> None:
        if victim == "crawler":
            self.start_crawl()
        elif victim in WORKERS:
            start_workers(self.settings, self.console, timeout_s=120, follower=True)
        else:
            supervisor.up(self.settings, migrate=migrate, console=self.console, timeout_s=RECOVERY_TIMEOUT_S)
            # Clients that lost the broker or the database keep retrying; a process that died
            # meanwhile is collateral damage: recorded (the test fails on it), then restarted.
            for name in self.dead_workers():
                self.collateral.append(f"{name} died when {victim} was killed")
            start_workers(self.settings, self.console, timeout_s=120, follower=True)

    def dead_workers(self) -> list[str]:
        return [name for name in WORKERS if not self.pm.running(name)]

    def group_of(self, victim: str) -> tuple[str, str] | None:
        """The consumer group and input topic of a worker (None for the others)."""
        s, t = self.settings, self.probe.topics
        return {
            "streams-worker": (s.streams.app_id, t.raw_pages.name),
            "sink-worker": (s.sink.group_id, t.unique_pages.name),
            FOLLOWER: (s.follow.group_id, t.page_events.name),
        }.get(victim)

    def owners(self, group: str, topic: str) -> dict[str, set[int]]:
        """Member id -> partitions of ``topic`` it is assigned, as the group coordinator sees it."""
        admin = AdminClient(self.settings.kafka.librdkafka())
        desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
        return {
            m.member_id: {tp.partition for tp in m.assignment.topic_partitions if tp.topic == topic}
            for m in desc.members
        }

    def taken_over(self, victim: str, dead_members: set[str]) -> bool:
        """Every partition of the worker's input is assigned to a member the kill did not end
        (a killed member keeps its partitions until its session times out)."""
        group, topic = self.group_of(victim) or ("", "")
        owned = {
            p
            for member, parts in self.owners(group, topic).items()
            if member not in dead_members
            for p in parts
        }
        return len(owned) == len(self.probe.end(topic))

    def recovered(self, victim: str, at_kill: Marks, now: Marks, dead_members: set[str]) -> bool:
        crawl_over = not self.crawl_running()
        if victim == "crawler":
            return now.raw > at_kill.raw
        # A worker is back when its replacement owns the partitions (work the killed process had
        # in flight may still land after the kill) and its stage moves or has nothing to do.
        if victim == "streams-worker":
            moving = now.streams > at_kill.streams or now.streams_lag == 0
            return moving and self.taken_over(victim, dead_members)
        if victim == FOLLOWER:
            moving = now.follow > at_kill.follow or now.follow_lag == 0
            return moving and self.taken_over(victim, dead_members)
        if victim == "connect":
            return now.events > at_kill.events or (now.sink_lag == 0 and now.streams_lag == 0 and crawl_over)
        # sink, kafka, postgres: pages reach Postgres again (or there is nothing left to store).
        sink_moving = now.sink > at_kill.sink or (now.sink_lag == 0 and now.streams_lag == 0 and crawl_over)
        if victim == "sink-worker":
            return sink_moving and self.taken_over(victim, dead_members)
        if victim == "kafka":
            return sink_moving and (now.raw > at_kill.raw or crawl_over)
        return sink_moving

    def wait(self, what: str, condition: Callable[[], bool], timeout_s: float = RECOVERY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, f"{what} not within {timeout_s:.0f}s"
            time.sleep(0.25)  # polling interval of a deadline-bounded wait

    def connectors_failed(self) -> bool:
        try:
            return self.probe.connector_failure() is not None
        except TRANSIENT:
            return False

    def attack(self, victim: str, reader: RunReader) -> Recovery:
        """Kill ``victim``, restart it, wait until its stage moves again; return the timings."""
        at_kill = self.try_marks()
        assert at_kill is not None, "the stack must be healthy before a kill"
        before = self.alive()
        group = self.group_of(victim)
        dead_members = set(self.owners(*group)) if group else set()
        killed = time.monotonic()
        self.kill(victim)
        self.restart(victim)
        restart_s = time.monotonic() - killed
        note = ""

        def moving() -> bool:
            nonlocal note
            now = self.try_marks()
            if now is None:
                return False
            if self.connectors_failed():
                # A connector task that lost its database for good: `stack up` restarts it.
                note = "a connector task had failed: stack up restarted it"
                supervisor.up(self.settings, migrate=migrate, console=self.console)
            try:
                return self.recovered(victim, at_kill, now, dead_members)
            except TRANSIENT:
                return False

        self.wait(f"{victim}'s stage moving again after its kill", moving)
        recovered_s = time.monotonic() - killed
        reader.poll()  # read as we go: less to read at the end
        for name, pid in before.items():
            if name != victim and pid is not None and self.pm.pid(name) != pid:
                self.collateral.append(f"{name} (pid {pid}) was replaced after {victim} was killed")
        stage = {"crawler": "crawl", FOLLOWER: "follow", "connect": "cdc"}.get(victim, victim.split("-")[0])
        at = at_kill.raw - self.first_raw
        return Recovery(victim, stage, at, round(restart_s, 1), round(recovered_s, 1), note)


def _pages_table(settings: Settings, urls: list[str]) -> tuple[int, int, int]:
    """(rows, rows with a version other than 1, page_history rows) of ``urls``."""
    with psycopg2.connect(settings.postgres.dsn()) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*), count(*) FILTER (WHERE version <> 1) FROM pages WHERE url = ANY(%s)", (urls,)
        )
        rows, versions = cur.fetchone()
        cur.execute("SELECT count(*) FROM page_history WHERE url = ANY(%s)", (urls,))
        (history,) = cur.fetchone()
    conn.close()
    return int(rows), int(versions), int(history)


def _print_table(recoveries: list[Recovery], figures: dict[str, Any]) -> str:
    lines = [
        f"chaos: {figures['pages']} pages, {figures['kills']} kills survived, rows lost "
        f"{figures['rows_lost']}, rows duplicated {figures['rows_duplicated']}",
        f"{'victim':16} {'stage':8} {'killed at':>10} {'restart':>9} {'recovered':>10}  note",
    ]
    for r in recoveries:
        lines.append(
            f"{r.victim:16} {r.stage:8} {r.killed_at_raw_records:>10} {r.restart_s:>8.1f}s "
            f"{r.recovered_s:>9.1f}s  {r.note}"
        )
    lines += [replay for replay in figures["replays"]]
    return "\n".join(lines)


def test_kill_9_each_process_in_turn_during_a_crawl_loses_and_duplicates_nothing(
    stack_settings: Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The follower reads this run's page events as a group of its own, from the topic's end now:
    # the shared topic may hold what other tests wrote to it (tests/e2e/test_garbage_topics.py).
    group = f"chaos-follow-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("CRAWLSTREAM_FOLLOW__GROUP_ID", group)  # for the follower processes
    settings = stack_settings.model_copy(
        update={"follow": stack_settings.follow.model_copy(update={"group_id": group})}
    )
    ProcessManager(settings.stack.state_dir.resolve()).stop(FOLLOWER)
    commit_end(settings, group, f"{settings.connect.outbox_topic_prefix}.event.page")
    start_workers(settings, follower=True)
    manifest = generate_demo_site(tmp_path / "site", pages=PAGES)
    server, served = serve_directory(tmp_path / "site")
    base_url = served.rstrip("/")
    args = CrawlArgs(
        start_urls=[f"{base_url}/index.html"],
        allow_private_hosts=[base_url],  # that host, on its port only
        job_id="e2e-chaos",
        run_id=uuid.uuid4().hex,
        scrapy_settings={"DOWNLOAD_DELAY": DOWNLOAD_DELAY_S},
    )
    chaos = Chaos(settings, args, tmp_path)
    chaos.probe.wait_drained(300, lambda _m: None)
    reader = RunReader(chaos.probe)
    started = time.monotonic()
    recoveries: list[Recovery] = []
    try:
        chaos.last_raw = chaos.first_raw = chaos.marks().raw
        chaos.start_crawl()
        for victim in VICTIMS:
            chaos.wait(f"{STEP} more pages before killing {victim}", chaos.step_done, timeout_s=600)
            recoveries.append(chaos.attack(victim, reader))
            chaos.last_raw = chaos.marks().raw
            with capsys.disabled():
                r = recoveries[-1]
                print(
                    f"\nchaos: {r.victim} killed at {r.killed_at_raw_records} raw records, up again after "
                    f"{r.restart_s:.1f}s, its stage moving after {r.recovered_s:.1f}s {r.note}",
                    flush=True,
                )
        chaos.wait("the last crawl process to finish", lambda: not chaos.crawl_running(), timeout_s=900)
    finally:
        for proc in chaos.crawls:
            if proc.poll() is None:
                proc.kill()
        server.shutdown()
        server.server_close()  # shutdown stops serving; this closes its socket

    assert chaos.crawls[-1].returncode == 0, f"the last crawl exited with {chaos.crawls[-1].returncode}"
    reports = [json.loads(p.read_text()) for p in chaos.reports if p.exists()]
    killed = len(chaos.reports) - len(reports)
    assert killed == 1, "exactly the killed crawl process wrote no report"
    crawl = crawl_counts(reports, killed=killed)
    caught_up: dict[str, float] = {}
    note = wait_caught_up(reader, crawl, started=started, timeout_s=600, caught_up_s=caught_up)
    assert note is None, note
    reader.poll()
    counts = reader.counts(crawl, expected_urls=manifest.expected_distinct_canonical_urls)
    result = reconcile(counts)

    urls = sorted(crawl.urls)
    rows, versions, history = _pages_table(settings, urls)
    # The follower read every page event (at-least-once, it may have seen some twice).
    chaos.wait(
        "the follower to consume every page event", lambda: chaos.marks().follow_lag == 0, timeout_s=120
    )
    follow_letters = reader.dead_letters("follow")
    figures = {
        "pages": PAGES,
        "run_id": args.run_id,
        "kills": len(recoveries),
        "distinct_urls": len(crawl.urls),
        "rows": rows,
        "rows_lost": manifest.expected_distinct_canonical_urls - rows,
        "rows_duplicated": versions + history,
        "page_events_distinct": sum(len(ids) for ids in counts.page_events.values()),
        "page_event_records": counts.page_event_records,
        "replays": [r.line() for r in result.replays],
        "caught_up_s": caught_up,
        "recoveries": [asdict(r) for r in recoveries],
        "collateral": chaos.collateral,
        "failed_checks": [
            f"{c.stage}: {c.what}: expected {c.expected_text}, got {c.actual}"
            for c in result.checks
            if not c.ok
        ],
    }
    out = settings.stack.state_dir / "logs" / f"chaos-{args.run_id}.json"
    out.write_text(json.dumps(figures, indent=2) + "\n")
    with capsys.disabled():
        print("\n" + _print_table(recoveries, figures) + f"\nfigures: {out}")

    assert [r.victim for r in recoveries] == list(VICTIMS)
    assert result.ok, figures["failed_checks"]
    assert figures["rows_lost"] == 0
    assert figures["rows_duplicated"] == 0
    assert len(crawl.urls) == manifest.expected_distinct_canonical_urls
    # Exactly one page event per new row, by distinct outbox event id.
    assert counts.rows_new_urls == crawl.urls
    assert all(len(counts.page_events.get(u, ())) == 1 for u in urls)
    assert not follow_letters, follow_letters[:5]
    assert chaos.collateral == [], chaos.collateral
    assert chaos.dead_workers() == []
