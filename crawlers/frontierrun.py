"""One run of a frontier job: seed it, start its crawler processes, know exactly when it is done.

Called by ``crawlstream jobs run NAME`` for a job with ``source = "frontier"`` and by ``crawlstream
run URL --frontier``. The stream worker must run (its frontier and ledger agents plan the crawl).
In order:

1. ``RunEvent`` ``started`` on ``<prefix>.runs``; the run's ``start`` on
   ``<prefix>.frontier.ledger`` (budgets, scope); the crawler group (``<prefix>-frontier-<job>``)
   gets committed start offsets at the end of ``<prefix>.requests`` where it has none.
2. ``crawlers`` processes ``python -m crawlers requests --frontier-run RUN`` (one consumer group:
   each host belongs to one of them), and a wait until the group is stable with all of them, so
   no rebalance moves hosts while they are fetched.
3. A ``generate`` command to every partition of ``<prefix>.links`` (the job's known URLs, with
   their validators) and the seeds as links of depth 0; their offsets are noted.
4. Progress from ``<prefix>.frontier.progress`` until the run is complete (:class:`Completion`).
5. ``stop`` to the ledger (nothing more is admitted; the run's ledger entries are purged), the
   crawlers are told to finish (SIGTERM: requests in flight end, outputs are delivered, offsets
   committed), ``RunEvent`` ``finished``. The report sums the crawlers' reports.

``crawlstream jobs stop NAME`` signals the runner (its pid is in ``<state_dir>/frontier/<job>.json``,
written while it runs; a lock there allows one run per job at a time); it then stops as in 5 and
the run's outcome is ``stopped``. Nothing is left half-done: a later run of the job is a new run,
whose crawlers skip the stopped run's leftover requests, and whose frontier entries replace the
stopped run's.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from crawlers.jobrun import crawl_spec, produce_run_event
from crawlers.jobs import JobSpec
from crawlstream import offsets
from crawlstream.errors import ConfigError, CrawlstreamError
from crawlstream.kafka import admin_config, consumer_config, producer_config
from crawlstream.records import (
    Budgets,
    FrontierCommand,
    LedgerEntry,
    LinkRecord,
    RunEvent,
    RunProgress,
    Scope,
    decode_record,
    utcnow,
)
from crawlstream.settings import Settings
from crawlstream.topics import catalog, ensure_topics
from crawlstream.urls import canonical_url, host_of

log = logging.getLogger(__name__)
JOIN_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 120.0
ProgressCallback = Callable[[RunProgress, float], None]


def group_of(settings: Settings, job: str) -> str:
    """The consumer group of a frontier job's crawlers (on a secured cluster the crawler's
    principal may use the groups named ``<prefix>-frontier-*``: crawlstream/acls.py)."""
    return f"{settings.kafka.topic_prefix}-frontier-{job}"


def progress_group(settings: Settings, run_id: str) -> str:
    """The group id of a run's progress reader (it assigns partitions and commits nothing)."""
    return f"{settings.kafka.topic_prefix}-frontier-run-{run_id}"


def state_path(settings: Settings, job: str) -> Path:
    return Path(settings.stack.state_dir) / "frontier" / f"{job}.json"


def scope_of(job: JobSpec, settings: Settings) -> Scope:
    depth = settings.crawl.max_depth if job.max_depth is None else job.max_depth
    return Scope(follow=job.follow, max_depth=depth, allow=job.allow, deny=job.deny)


def budgets_of(job: JobSpec, settings: Settings) -> Budgets:
    pages = settings.crawl.max_pages if job.max_pages is None else job.max_pages
    per_host = settings.crawl.max_pages_per_host if job.max_pages_per_host is None else job.max_pages_per_host
    return Budgets(max_pages=pages, max_pages_per_host=per_host, max_hosts=job.max_hosts)


def merged(*maps: dict[int, int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for each in maps:
        for partition, offset in each.items():
            out[partition] = max(out.get(partition, -1), offset)
    return out


@dataclass
class Completion:
    """Whether a run is done, from its progress and the stream group's offsets.

    The ledger says every admitted request is closed and every partition generated (``quiet``).
    Links may still be on their way to the frontier: the outcomes' ``links_through`` (and the
    seeds' offsets) bound them, so first the stream group must have committed past those offsets
    on ``<prefix>.links`` (the frontier commits a link once its candidate reached the ledger);
    then the group must have committed the ledger topic up to its end as read after that (the
    ledger handled those candidates); then, if the progress is still the same version, nothing
    was admitted meanwhile: done. Any change starts the check again. Reads go through
    ``committed``/``end`` (topic -> offsets) so the rule is testable without Kafka.
    """

    links_topic: str
    ledger_topic: str
    seeds_through: dict[int, int]
    committed: Callable[[str], dict[int, int]]
    end: Callable[[str], dict[int, int]]
    candidate: int = -1  # the progress version being checked
    ledger_target: dict[int, int] = field(default_factory=dict)

    def check(self, progress: RunProgress) -> bool:
        if not progress.quiet or progress.state == "stopped":
            self.candidate, self.ledger_target = -1, {}
            return False
        if progress.version != self.candidate:
            self.candidate, self.ledger_target = progress.version, {}
        if not self.ledger_target:
            through = merged(progress.links_through, self.seeds_through)
            committed = self.committed(self.links_topic)
            if any(committed.get(p, 0) <= offset for p, offset in through.items()):
                return False
            self.ledger_target = self.end(self.ledger_topic)
        committed = self.committed(self.ledger_topic)
        # True: the caller confirms the version did not move meanwhile.
        return all(committed.get(p, 0) >= end for p, end in self.ledger_target.items())


class ProgressReader:
    """Tails ``<prefix>.frontier.progress`` from a start position, keeping one run's latest."""

    def __init__(self, settings: Settings, run_id: str) -> None:
        self.topic = catalog(settings).frontier_progress.name
        self.run_id = run_id.encode()
        self.latest: RunProgress | None = None
        self.consumer = Consumer(
            consumer_config(
                settings, "crawler", progress_group(settings, run_id), **{"enable.auto.commit": False}
            )
        )
        ends = offsets.end_offsets(settings, self.topic)
        self.consumer.assign([TopicPartition(self.topic, p, o) for p, o in ends.items()])

    def read(self, timeout_s: float = 0.0) -> RunProgress | None:
        """What arrived so far (waiting up to ``timeout_s`` for a first record)."""
        wait = timeout_s
        while True:
            batch = self.consumer.consume(1000, timeout=wait)
            wait = 0.0
            self._apply(batch)
            if not batch:
                return self.latest

    def read_to_end(self, timeout_s: float = 30.0) -> RunProgress | None:
        """Everything written up to now: the topic is read to the end offsets it has now."""
        ends = {p: o for p, o in offsets.end_offsets_of(self.consumer, self.topic).items()}
        deadline = time.monotonic() + timeout_s
        while True:
            positions = {tp.partition: tp.offset for tp in self.consumer.position(
                [TopicPartition(self.topic, p) for p in ends])}  # fmt: skip
            if all(positions.get(p, -1) >= end for p, end in ends.items()):
                return self.latest
            if time.monotonic() > deadline:
                raise CrawlstreamError(f"could not read {self.topic} to its end in {timeout_s:.0f}s")
            self._apply(self.consumer.consume(1000, timeout=0.1))

    def _apply(self, batch: list[Any]) -> None:
        for message in batch:
            value = message.value()
            if message.error() is None and message.key() == self.run_id and value:
                self.latest = decode_record(RunProgress, value)

    def close(self) -> None:
        self.consumer.close()


@dataclass
class FrontierRun:
    settings: Settings
    job: JobSpec
    run_id: str
    crawlers: int
    log_dir: Path
    allow_private_hosts: list[str] = field(default_factory=list)
    extra_scrapy: dict[str, Any] = field(default_factory=dict)
    on_progress: ProgressCallback | None = None
    stop_requested: threading.Event = field(default_factory=threading.Event)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    progress: RunProgress | None = None
    # Seconds from the run's start to each step (``crawlers_joined``, ``seeded``, ``complete``,
    # ``stopped``): where a run's time goes (bench/bench_frontier.py reports them).
    marks: dict[str, float] = field(default_factory=dict)

    # Steps.
    def run(self, report_path: Path) -> dict[str, Any]:
        settings, job = self.settings, self.job
        topics = catalog(settings)
        lock = self._lock()
        started_at = utcnow()
        started = time.monotonic()
        try:
            ensure_topics(
                settings,
                [topics.requests, topics.links, topics.raw_pages, topics.dead_letter, topics.runs,
                 topics.frontier_ledger, topics.frontier_progress, topics.hosts],
            )  # fmt: skip
            self._check_stream_worker()
            group = group_of(settings, job.name)
            commit_latest_where_absent(settings, group, topics.requests.name)
            reader = ProgressReader(settings, self.run_id)
            produce_run_event(
                settings,
                RunEvent(run_id=self.run_id, job_id=job.name, event="started", started_at=started_at),
            )
            scope = scope_of(job, settings)
            links_partitions = len(offsets.end_offsets(settings, topics.links.name))
            start = LedgerEntry(
                type="start",
                run_id=self.run_id,
                job_id=job.name,
                scope=scope,
                budgets=budgets_of(job, settings),
                partitions=links_partitions,
            )
            _produce(settings, [(topics.frontier_ledger.name, start.run_id.encode(), start.to_bytes(), None)])
            self._start_crawlers(group)
            self._wait_for_group(group)
            self.marks["crawlers_joined"] = time.monotonic() - started
            seeds_through = self._seed(scope, links_partitions)
            self.marks["seeded"] = time.monotonic() - started
            completion = Completion(
                topics.links.name,
                topics.frontier_ledger.name,
                seeds_through,
                committed=lambda topic: offsets.committed_offsets(settings, settings.streams.app_id, topic),
                end=lambda topic: offsets.end_offsets(settings, topic),
            )
            outcome = self._watch(reader, completion, started)
            self.marks["complete"] = time.monotonic() - started
            reader.close()
            _produce(
                settings,
                [
                    (
                        topics.frontier_ledger.name,
                        self.run_id.encode(),
                        LedgerEntry(type="stop", run_id=self.run_id).to_bytes(),
                        None,
                    )
                ],
            )
            codes = self._stop_crawlers()
            self.marks["stopped"] = time.monotonic() - started
            report = self._report(report_path, started, outcome, codes)
            progress = self.progress or RunProgress(run_id=self.run_id, job_id=job.name)
            produce_run_event(
                settings,
                RunEvent(
                    run_id=self.run_id,
                    job_id=job.name,
                    event="finished",
                    started_at=started_at,
                    finished_at=utcnow(),
                    pages=progress.fetched + progress.not_modified,
                    errors=progress.failed,
                    delivery_failures=int(report["delivery_failures"]),
                    outcome=("succeeded" if outcome == "finished" and not report["delivery_failures"] else
                             "stopped" if outcome == "stopped" else "failed"),
                    detail=f"finish_reason={outcome}; admitted={progress.admitted}, closed={progress.closed}",
                ),
            )  # fmt: skip
            return report
        finally:
            self._kill_crawlers()
            state_path(settings, job.name).unlink(missing_ok=True)
            lock.close()

    def _lock(self) -> IO[str]:
        path = state_path(self.settings, self.job.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = path.with_suffix(".lock").open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise CrawlstreamError(
                f"job {self.job.name} is running already (see {path}); one run per job at a time"
            ) from None
        path.write_text(json.dumps({"pid": os.getpid(), "run_id": self.run_id, "job": self.job.name}) + "\n")
        return lock

    def _check_stream_worker(self, wait_s: float = 60.0) -> None:
        """A stream worker is a member of the stream group, or one joins within ``wait_s`` (a worker
        started a moment ago, e.g. by `crawlstream workers up`, joins in seconds)."""
        admin = AdminClient(admin_config(self.settings, "crawler"))
        group = self.settings.streams.app_id
        deadline = time.monotonic() + wait_s
        while not admin.describe_consumer_groups([group])[group].result(30).members:
            if time.monotonic() < deadline:
                log.info("waiting for a stream worker to join %s", group)
                time.sleep(1.0)  # poll interval while a worker starts
                continue
            raise CrawlstreamError(
                f"no stream worker is running (consumer group {group} has no member): the frontier "
                "plans the crawl there; start it with `crawlstream workers up`"
            )

    def _start_crawlers(self, group: str) -> None:
        spec = crawl_spec(self.settings, self.job, self.run_id)
        scrapy = {**spec.scrapy_settings, **self.extra_scrapy}
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for n in range(self.crawlers):
            argv = [sys.executable, "-m", "crawlers", "requests", "--group-id", group]
            argv += ["--frontier-run", self.run_id, "--job-id", self.job.name, "--run-id", self.run_id]
            argv += ["--parent-pid", str(os.getpid()), "--report", str(self._report_file(n))]
            for host in [*self.job.allow_private_hosts, *self.allow_private_hosts]:
                argv += ["--allow-private-host", host]
            if self.job.allow_private_addresses:
                argv.append("--allow-private-addresses")
            for name, value in scrapy.items():
                argv += ["--set", f"{name}={json.dumps(value)}"]
            out = (self.log_dir / f"frontier-{self.job.name}-{self.run_id}-{n}.log").open("wb")
            self.procs.append(
                subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            )
            out.close()

    def _report_file(self, n: int) -> Path:
        return self.log_dir / f"frontier-{self.job.name}-{self.run_id}-{n}.json"

    def _wait_for_group(self, group: str) -> None:
        admin = AdminClient(admin_config(self.settings, "crawler"))
        partitions = catalog(self.settings).requests.partitions
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while True:
            description = admin.describe_consumer_groups([group])[group].result(30)
            owned = [len(m.assignment.topic_partitions) for m in description.members]
            if len(owned) == self.crawlers and sum(owned) == partitions and min(owned) > 0:
                return
            dead = [p.returncode for p in self.procs if p.poll() is not None]
            if dead:
                raise CrawlstreamError(
                    f"a crawler process exited ({dead}) before the crawl began; see {self.log_dir}"
                )
            if time.monotonic() > deadline:
                raise CrawlstreamError(
                    f"the {self.crawlers} crawlers did not join group {group} in {JOIN_TIMEOUT_S:.0f}s"
                )
            time.sleep(0.2)  # poll interval of a deadline-bounded wait

    def _seed(self, scope: Scope, links_partitions: int) -> dict[int, int]:
        topics = catalog(self.settings)
        records: list[tuple[str, bytes | None, bytes, int | None]] = []
        for partition in range(links_partitions):
            command = FrontierCommand(
                job_id=self.job.name, run_id=self.run_id, scope=scope, forget_after_s=self.job.forget_after_s
            )
            records.append((topics.links.name, None, command.to_bytes(), partition))
        for url in self.job.start_urls:
            canonical = canonical_url(url)
            seed = LinkRecord(
                url=url,
                canonical_url=canonical,
                host=host_of(url),
                source_url="",
                depth=0,
                job_id=self.job.name,
                run_id=self.run_id,
                scope=scope,
            )
            records.append((topics.links.name, canonical.encode(), seed.to_bytes(), None))
        return _produce(self.settings, records)

    def _watch(self, reader: ProgressReader, completion: Completion, started: float) -> str:
        interval = self.settings.frontier.poll_interval_s
        while True:
            if self.stop_requested.is_set():
                return "stopped"
            if all(p.poll() is not None for p in self.procs):
                return "crawlers_exited"
            progress = reader.read(interval)
            if progress is None:
                continue
            self.progress = progress
            if self.on_progress is not None:
                self.on_progress(progress, time.monotonic() - started)
            if completion.check(progress):
                confirmed = reader.read_to_end()
                if confirmed is not None and confirmed.version == progress.version:
                    return "finished"

    def _stop_crawlers(self) -> list[int]:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout=max(deadline - time.monotonic(), 1)))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait(timeout=30))
        return codes

    def _kill_crawlers(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)

    def _report(self, report_path: Path, started: float, outcome: str, codes: list[int]) -> dict[str, Any]:
        reports = []
        for n in range(len(self.procs)):
            path = self._report_file(n)
            if path.exists():
                reports.append(json.loads(path.read_text()))
        report = aggregate(reports)
        report.update(
            duration_s=round(time.monotonic() - started, 3),
            finish_reason=outcome,
            job_id=self.job.name,
            run_id=self.run_id,
            crawler_exit_codes=codes,
            crawler_reports=len(reports),
            marks={name: round(at, 3) for name, at in self.marks.items()},
            frontier=(self.progress.model_dump(mode="json") if self.progress else {}),
        )
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        return report


SUMMED = (
    "responses_total",
    "non_html",
    "records_delivered",
    "delivery_failures",
    "fetch_errors",
    "robots_denied",
    "private_refused",
    "metadata_records",
    "dead_letters",
    "cpu_s",
)


def aggregate(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report for the run from its crawlers' (:class:`crawlers.runner.CrawlReport` fields):
    ``pages_fetched`` counts every page record (HTML and metadata, 304s included), so that it
    reconciles with the records delivered."""
    out: dict[str, Any] = {name: sum(r.get(name, 0) for r in reports) for name in SUMMED}
    out["cpu_s"] = round(out["cpu_s"], 3)
    out["html_pages"] = sum(int(r.get("pages_fetched", 0)) for r in reports)
    # How the work split between the crawlers (each owns the hosts of its requests partitions).
    out["pages_per_crawler"] = [
        int(r.get("pages_fetched", 0)) + int(r.get("metadata_records", 0)) for r in reports
    ]
    out["pages_fetched"] = out["html_pages"] + out["metadata_records"]
    urls = sorted({u for r in reports for u in r.get("canonical_urls", [])})
    out["canonical_urls"], out["distinct_canonical_urls"] = urls, len(urls)
    refused: dict[str, int] = {}
    for r in reports:
        for reason, n in r.get("refused", {}).items():
            refused[reason] = refused.get(reason, 0) + int(n)
    out["refused"] = dict(sorted(refused.items()))
    out["peak_rss_bytes"] = max((int(r.get("peak_rss_bytes", 0)) for r in reports), default=0)
    return out


def _produce(
    settings: Settings, records: list[tuple[str, bytes | None, bytes, int | None]]
) -> dict[int, int]:
    """Deliver records synchronously; returns the highest offset per partition they got."""
    producer = Producer(producer_config(settings, "crawler"))
    through: dict[int, int] = {}
    errors: list[Any] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(err)
        else:
            through[msg.partition()] = max(through.get(msg.partition(), -1), msg.offset())

    for topic, key, value, partition in records:
        if partition is None:
            producer.produce(topic, value, key, on_delivery=delivered)
        else:
            producer.produce(topic, value, key, partition=partition, on_delivery=delivered)
    left = producer.flush(30)
    if left or errors:
        raise CrawlstreamError(f"could not deliver {left or len(errors)} record(s): {errors[:3]}")
    return through


def commit_latest_where_absent(settings: Settings, group: str, topic: str) -> None:
    """Commit the end offsets of ``topic`` for ``group`` where it has none (its first run starts
    with what is produced from now on, not with the history of other jobs' requests)."""
    consumer = Consumer(consumer_config(settings, "crawler", group, **{"enable.auto.commit": False}))
    try:
        ends = offsets.end_offsets(settings, topic)
        wanted = [TopicPartition(topic, p) for p in ends]
        absent = [tp for tp in consumer.committed(wanted, timeout=30) if tp.offset < 0]
        if absent:
            consumer.commit(
                offsets=[TopicPartition(topic, tp.partition, ends[tp.partition]) for tp in absent],
                asynchronous=False,
            )
    finally:
        consumer.close()


def stop_job(settings: Settings, job: str) -> tuple[int, str]:
    """Signal the runner of ``job``'s run; returns (pid, run id). ConfigError when none runs."""
    path = state_path(settings, job)
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ConfigError(f"no run of job {job} is running here (no {path})") from None
    pid = int(state["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        raise ConfigError(f"the runner of job {job} (pid {pid}) is gone") from None
    return pid, str(state.get("run_id", ""))


def install_stop_handler(run: FrontierRun) -> None:
    """SIGTERM/SIGINT ask the run to stop (it then ends as a normal run would, outcome stopped)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: run.stop_requested.set())
