"""Failover on a 3-node Kafka cluster (``crawlstream stack up --brokers 3``): kill -9 the broker
that leads the raw topic's partitions in the middle of a crawl, then the active controller.

For each kill: the partitions it led get a new leader and the crawl's records reach them again
(failover), every stage moves on, ``stack up`` restarts only the killed node, and that node
catches up: every partition of every topic is back to 3 in-sync replicas. The crawl finishes
without a failed delivery, no worker dies, and the run reconciles with no row lost or duplicated.
The figures are printed and written to ``<state_dir>/logs/failover-<run id>.json``.

Then, on the same cluster, ``workers up --streams 2 --sinks 2``: a crawl of the demo site gives
exactly the stage counts that one worker per stage gave for the same site, with both workers of
each stage owning partitions.

The module starts a whole stack of its own (three Kafka nodes, PostgreSQL, Kafka Connect with
Debezium, one stream and one sink worker) in ``.crawlstream-cluster/`` on free ports, so it runs
in ``make test`` next to the single-node stack the other tests use, and stops it at the end (its
logs stay there). ``CRAWLSTREAM_FAILOVER_PAGES`` sets the demo site's size (default 3,000 pages,
fetched at about 20 pages/s so that the crawl outlasts both kills). Measured at a load of
about 30 on 2 cores: the failover test took 12 minutes, its crawl 6.5 of them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg2
import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from rich.console import Console

from control.cli import migrate
from control.demosite import DemoSiteManifest, generate_demo_site, serve_directory
from control.run.pipeline import (
    CrawlArgs,
    PipelineProbe,
    RunReader,
    RunSummary,
    crawl_argv,
    crawl_counts,
    run_pipeline,
    wait_caught_up,
)
from control.run.reconcile import reconcile
from control.stack import kafka, supervisor
from control.stack.processes import ProcessManager, read_cmdline
from control.workers import start_workers
from crawlstream import offsets
from crawlstream.errors import CrawlstreamError
from crawlstream.settings import Settings
from tests.e2e.ownstack import own_stack

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

PAGES = int(os.environ.get("CRAWLSTREAM_FAILOVER_PAGES", "3000"))
DOWNLOAD_DELAY_S = os.environ.get("CRAWLSTREAM_FAILOVER_DOWNLOAD_DELAY", "0.05")
WORKERS_PAGES = 300  # the demo site of the N-workers test (crawled at full speed)
STEP = max(100, PAGES // 10)  # raw records between the start, the first kill and the second
TIMEOUT_S = 300.0
WORKERS = ("streams-worker", "sink-worker")
TRANSIENT = (KafkaException, CrawlstreamError, psycopg2.Error, OSError)


@dataclass
class Failover:
    victim: str
    node_id: int
    role: str  # what made it the victim
    killed_at_raw_records: int
    partitions_led: list[int]  # raw topic partitions it led
    new_leaders_s: float  # kill -> every partition it led has a leader again
    crawl_resumed_s: float  # kill -> records reach those partitions again
    stages_moving_s: float  # kill -> streams and sink have moved on (or had nothing to do)
    stack_up_s: float  # how long `stack up` took to restart the node (JVM start, log recovery)
    in_sync_s: float  # `stack up` started -> every partition of every topic has all replicas in sync
    new_controller: int | None = None
    new_controller_s: float | None = None


def wait(what: str, condition: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except TRANSIENT:
            pass  # a probe fails while the cluster elects: that is "not yet"
        assert time.monotonic() < deadline, f"{what} not within {timeout_s:.0f}s"
        time.sleep(0.2)  # polling interval of a deadline-bounded wait


class Cluster:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pm = ProcessManager(settings.stack.state_dir.resolve())
        self.nodes = {node.node_id: node for node in kafka.nodes(settings)}
        self.admin = AdminClient(settings.kafka.librdkafka(log_level=0))

    def partitions(self, topic: str) -> dict[int, tuple[int, list[int], list[int]]]:
        """partition -> (leader, replicas, in-sync replicas)."""
        meta = self.admin.list_topics(topic, timeout=5).topics[topic]
        return {p.id: (p.leader, list(p.replicas), list(p.isrs)) for p in meta.partitions.values()}

    def lagging(self) -> list[str]:
        """Partitions of any topic with a replica out of sync, or without a leader."""
        meta = self.admin.list_topics(timeout=5)
        return [
            f"{name}[{p.id}]"
            for name, topic in meta.topics.items()
            for p in topic.partitions.values()
            if p.leader < 0 or len(p.isrs) < len(p.replicas)
        ]

    def kill(self, node_id: int) -> None:
        name = self.nodes[node_id].name
        pid = self.pm.pid(name)
        assert pid is not None, f"{name} is not running before its kill"
        os.kill(pid, signal.SIGKILL)
        wait(f"{name} (pid {pid}) to die", lambda: read_cmdline(pid) is None or not self.pm.running(name), 30)

    def alive(self) -> set[int]:
        return {i for i, node in self.nodes.items() if self.pm.running(node.name)}


def _rows(settings: Settings, urls: list[str]) -> tuple[int, int, int]:
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


@pytest.fixture(scope="module")
def cluster_settings() -> Iterator[Settings]:
    """A fresh 3-node stack of its own with its workers; stopped (and its processes gone) after."""
    with own_stack("cluster", keep_env="CRAWLSTREAM_FAILOVER_") as settings:
        yield settings


def test_killing_the_raw_leader_then_the_active_controller_loses_and_duplicates_nothing(
    cluster_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = cluster_settings
    cluster = Cluster(settings)
    probe = PipelineProbe(settings)
    raw = probe.topics.raw_pages.name
    wait("every replica in sync before the test", lambda: not cluster.lagging())
    assert cluster.alive() == set(cluster.nodes)
    probe.wait_drained(TIMEOUT_S, lambda _m: None)
    workers = {name: cluster.pm.pid(name) for name in WORKERS}
    assert all(workers.values()), workers

    manifest = generate_demo_site(tmp_path / "site", pages=PAGES)
    server, served = serve_directory(tmp_path / "site")
    base_url = served.rstrip("/")
    args = CrawlArgs(
        start_urls=[f"{base_url}/index.html"],
        allow_private_hosts=[base_url],
        job_id="e2e-failover",
        run_id=uuid.uuid4().hex,
        scrapy_settings={"DOWNLOAD_DELAY": DOWNLOAD_DELAY_S},
    )
    reader = RunReader(probe)
    report = tmp_path / "report.json"
    log = settings.stack.state_dir / "logs" / f"crawl-{args.run_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    failovers: list[Failover] = []
    quiet = Console(quiet=True)

    def raw_total() -> int:
        return offsets.delta(reader.raw_end(), reader.start["raw"])

    def streams_done() -> int:
        s, t = settings, probe.topics
        return sum(
            offsets.total(offsets.committed_offsets(s, s.streams.app_id, spec.name))
            for spec in (t.raw_pages, t.pages_by_band, t.dedup_verdicts)
        )

    def attack(victim: int, role: str) -> Failover:
        leaders = cluster.partitions(raw)
        led = sorted(p for p, (leader, _r, _i) in leaders.items() if leader == victim)
        at_kill = {p: probe.end(raw)[p] for p in led}
        raw_at_kill = raw_total()
        streams_at, sink_at = streams_done(), offsets.total(probe.sink_stored())
        killed = time.monotonic()
        cluster.kill(victim)
        figures: dict[str, float] = {}

        def new_leaders() -> bool:
            now = cluster.partitions(raw)
            return all(now[p][0] not in (victim, -1) for p in led)

        def resumed() -> bool:
            end = probe.end(raw)
            return all(end[p] > at_kill[p] for p in led) or crawl.poll() is not None

        def stages_moving() -> bool:
            done = crawl.poll() is not None and probe.streams_lag() == 0 and probe.sink_lag() == 0
            return done or (streams_done() > streams_at and offsets.total(probe.sink_stored()) > sink_at)

        pending = {"new_leaders": new_leaders, "crawl_resumed": resumed, "stages_moving": stages_moving}
        controller: int | None = None
        if role == "active controller":

            def elected() -> bool:
                nonlocal controller
                controller = kafka.active_controller(settings, cluster.alive() - {victim})
                return controller is not None and controller != victim

            pending["new_controller"] = elected

        def all_seen() -> bool:
            for name, check in list(pending.items()):
                try:
                    if check():
                        figures[name] = time.monotonic() - killed
                        del pending[name]
                except TRANSIENT:
                    pass
            return not pending

        wait(f"failover after killing node {victim} ({role})", all_seen)
        # The operator's restart: `stack up` starts only what is missing (this node).
        others = {i: cluster.pm.pid(cluster.nodes[i].name) for i in cluster.nodes if i != victim}
        restarting = time.monotonic()
        supervisor.up(settings, migrate=migrate, console=quiet, timeout_s=TIMEOUT_S)
        stack_up_s = time.monotonic() - restarting
        assert cluster.alive() == set(cluster.nodes)
        assert {i: cluster.pm.pid(cluster.nodes[i].name) for i in others} == others, (
            "a live node was restarted"
        )
        wait(f"node {victim} to catch up (every replica in sync)", lambda: not cluster.lagging())
        return Failover(
            victim=cluster.nodes[victim].name,
            node_id=victim,
            role=role,
            killed_at_raw_records=raw_at_kill,
            partitions_led=led,
            new_leaders_s=round(figures["new_leaders"], 1),
            crawl_resumed_s=round(figures["crawl_resumed"], 1),
            stages_moving_s=round(figures["stages_moving"], 1),
            stack_up_s=round(stack_up_s, 1),
            in_sync_s=round(time.monotonic() - restarting, 1),
            new_controller=controller,
            new_controller_s=round(figures["new_controller"], 1) if "new_controller" in figures else None,
        )

    with log.open("wb") as out:
        crawl = subprocess.Popen(
            crawl_argv(args, report), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        wait(f"{STEP} raw records", lambda: raw_total() >= STEP)
        leaders = [leader for leader, _r, _i in cluster.partitions(raw).values()]
        raw_leader = max(set(leaders), key=lambda n: (leaders.count(n), -n))
        assert crawl.poll() is None, "the crawl ended before the first kill: raise CRAWLSTREAM_FAILOVER_PAGES"
        failovers.append(attack(raw_leader, "raw topic leader"))
        with capsys.disabled():
            print(f"\nfailover: {asdict(failovers[-1])}", flush=True)
        mark = raw_total()
        wait(f"{STEP} more raw records", lambda: raw_total() >= mark + STEP or crawl.poll() is not None)
        assert crawl.poll() is None, (
            "the crawl ended before the second kill: raise CRAWLSTREAM_FAILOVER_PAGES"
        )
        controller = kafka.active_controller(settings, cluster.alive())
        assert controller is not None
        failovers.append(attack(controller, "active controller"))
        with capsys.disabled():
            print(f"\nfailover: {asdict(failovers[-1])}", flush=True)
        wait("the crawl to finish", lambda: crawl.poll() is not None, timeout_s=900)
    finally:
        if crawl.poll() is None:
            crawl.kill()
        server.shutdown()
        server.server_close()

    assert crawl.returncode == 0, f"the crawl exited with {crawl.returncode}; see {log}"
    crawl_report = json.loads(report.read_text())
    assert crawl_report["delivery_failures"] == 0
    counts_in = crawl_counts([crawl_report])
    caught_up: dict[str, float] = {}
    note = wait_caught_up(reader, counts_in, started=started, timeout_s=600, caught_up_s=caught_up)
    assert note is None, note
    reader.poll()
    counts = reader.counts(counts_in, expected_urls=manifest.expected_distinct_canonical_urls)
    result = reconcile(counts)
    rows, versions, history = _rows(settings, sorted(counts_in.urls))
    figures = {
        "pages": PAGES,
        "run_id": args.run_id,
        "distinct_urls": len(counts_in.urls),
        "rows": rows,
        "rows_lost": manifest.expected_distinct_canonical_urls - rows,
        "rows_duplicated": versions + history,
        "replays": [r.line() for r in result.replays],
        "caught_up_s": {k: round(v, 1) for k, v in caught_up.items()},
        "failovers": [asdict(f) for f in failovers],
        "workers_replaced": [n for n, pid in workers.items() if cluster.pm.pid(n) != pid],
        "failed_checks": [
            f"{c.stage}: {c.what}: expected {c.expected_text}, got {c.actual}"
            for c in result.checks
            if not c.ok
        ],
    }
    written = settings.stack.state_dir / "logs" / f"failover-{args.run_id}.json"
    written.write_text(json.dumps(figures, indent=2) + "\n")
    with capsys.disabled():
        print(f"\nfailover figures ({written}):\n{json.dumps(figures, indent=2)}", flush=True)

    assert [f.role for f in failovers] == ["raw topic leader", "active controller"]
    assert all(f.partitions_led for f in failovers[:1]), "the raw leader led no raw partition"
    assert failovers[1].new_controller not in (None, failovers[1].node_id), "no new active controller"
    assert not figures["workers_replaced"], f"workers died: {figures['workers_replaced']}"
    assert result.ok, figures["failed_checks"]
    assert figures["rows_lost"] == 0
    assert figures["rows_duplicated"] == 0


def _members(settings: Settings, group: str) -> dict[str, int]:
    """Static member id (the worker's name) -> partitions it owns, of a consumer group."""
    admin = AdminClient(settings.kafka.librdkafka(log_level=0))
    description = admin.describe_consumer_groups([group])[group].result(30)
    return {
        str(m.group_instance_id or m.client_id): len(m.assignment.topic_partitions)
        for m in description.members
    }


def _demo_run(settings: Settings, root: Path, pages: int) -> tuple[RunSummary, DemoSiteManifest]:
    manifest = generate_demo_site(root, pages=pages)
    server, served = serve_directory(root)
    base_url = served.rstrip("/")
    args = CrawlArgs(
        start_urls=[f"{base_url}/index.html"],
        allow_private_hosts=[base_url],
        job_id="e2e-workers",
        run_id=uuid.uuid4().hex,
        expected_pages=manifest.expected_html_responses,
        expected_urls=manifest.expected_distinct_canonical_urls,
    )
    try:
        return run_pipeline(settings, args, timeout_s=TIMEOUT_S), manifest
    finally:
        server.shutdown()
        server.server_close()


def _figures(run: RunSummary) -> dict[str, int]:
    """The stage table of a run: what one worker per stage gives for the demo site."""
    return {
        "raw_records": run.raw_records,
        "unique_new": run.unique_new,
        "duplicates_dropped": run.duplicates_dropped,
        "dead_letters": run.dead_letters,
        "touches": run.touches,
        "rows_new": run.rows_new,
        "cdc_creates": run.cdc_creates,
        "page_events": run.page_events,
    }


def test_two_stream_and_two_sink_workers_give_exactly_the_counts_of_one(
    cluster_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = cluster_settings
    quiet = Console(quiet=True)
    streams_group, sink_group = settings.streams.app_id, settings.sink.group_id
    start_workers(settings, console=quiet, streams=1, sinks=1, timeout_s=120)
    one, manifest = _demo_run(settings, tmp_path / "one", WORKERS_PAGES)
    assert one.ok, [f"{c.stage}: {c.what}" for c in one.checks if not c.ok]

    # `workers up --streams 2 --sinks 2`: a second worker of each stage joins the groups.
    started = start_workers(settings, console=quiet, streams=2, sinks=2, timeout_s=120)
    assert sorted(started) == ["sink-worker-2", "streams-worker-2"]

    def spread() -> bool:
        groups = (_members(settings, streams_group), _members(settings, sink_group))
        return all(len(owned) == 2 and min(owned.values()) > 0 for owned in groups)

    wait("both workers of each stage to own partitions", spread)
    assert set(_members(settings, sink_group)) == {"sink-worker", "sink-worker-2"}
    assert set(_members(settings, streams_group)) == {"streams-worker", "streams-worker-2"}
    two, same_site = _demo_run(settings, tmp_path / "two", WORKERS_PAGES)
    with capsys.disabled():
        print(f"\none worker per stage: {_figures(one)}\ntwo workers per stage: {_figures(two)}", flush=True)
    assert two.ok, [
        f"{c.stage}: {c.what}: expected {c.expected_text}, got {c.actual}" for c in two.checks if not c.ok
    ]
    assert same_site.expected_distinct_canonical_urls == manifest.expected_distinct_canonical_urls
    assert _figures(two) == _figures(one)
    assert two.rows_new == two.cdc_creates == two.page_events == manifest.expected_distinct_canonical_urls
    assert spread(), "a worker left its group during the run"
