"""What the sink benchmarks share (bench_sink.py, bench_sink_jdbc.py, bench_sink_growth.py).

- A scratch schema in the running stack's PostgreSQL, migrated like the real one, with scratch
  publications no replication slot reads and a scratch event prefix no connector publishes
  (``bench.<schema>``: the pages connector drops every message, the outbox connector reads only
  ``crawlstream.outbox``), so nothing a bench writes reaches Debezium's topics.
- Page events as the stream stage writes them (``--enriched`` adds what it extracts).
- An in-memory Kafka consumer for SinkWorker (the worker path) and CPU probes: the bench
  process, the database backend of a connection, the walsenders (the two Debezium slots decode
  every WAL record the bench writes), read from /proc, so that each figure comes with the CPU it
  cost on a machine whose wall clock is shared with others.
- Results: ``bench/results/<bench>.json`` through bench/results.py when it is there (the shared
  helper), else the same shape written here.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psycopg2  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from crawlstream.records import Enrichment, PageEvent, PageRecord  # noqa: E402
from crawlstream.settings import Settings  # noqa: E402
from sinks.migrate import upgrade  # noqa: E402


def with_schema(dsn: str, schema: str) -> str:
    return f"{dsn}{'&' if '?' in dsn else '?'}options=-csearch_path%3D{schema}"


def scratch_settings(settings: Settings, schema: str) -> Settings:
    pg = settings.postgres.model_copy(
        update={
            "url": SecretStr(with_schema(settings.postgres.dsn(), schema)),
            "owner_url": SecretStr(with_schema(settings.postgres.dsn(owner=True), schema)),
            "publication": schema,
            "events_publication": f"{schema}_events",
            "event_message_prefix": f"bench.{schema}",
        }
    )
    return settings.model_copy(update={"postgres": pg})


@contextmanager
def scratch_schema(base: Settings, prefix: str = "bench") -> Iterator[tuple[Settings, str]]:
    """A migrated scratch schema (dropped afterwards, with its publications); yields its settings."""
    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(base.postgres.dsn(owner=True))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
    try:
        settings = scratch_settings(base, schema)
        upgrade(settings)
        with admin.cursor() as cur:  # scratch only: the baselines create their own tables here
            cur.execute(f"GRANT CREATE ON SCHEMA {schema} TO {base.postgres.app_role}")
        yield settings, schema
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP PUBLICATION IF EXISTS {schema}, {schema}_events")
            cur.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


# Page bodies are windows of real HTML: the Python documentation (Debian's python3.11-doc, the
# site the e2e tests crawl), so that they compress as web pages do (lz4 about 2x) rather than as
# a repeated phrase (to almost nothing) or random words (not at all); random words when the
# documentation is not installed.
DOCS = Path("/usr/share/doc/python3.11/html")
_CORPUS: list[str] = []
_VOCABULARY = [
    "".join(random.Random(n).choices("abcdefghijklmnopqrstuvwxyz", k=3 + n % 8)) for n in range(2000)
]


def _corpus() -> str:
    if not _CORPUS:
        files = sorted(DOCS.rglob("*.html"))[:400] if DOCS.is_dir() else []
        _CORPUS.append("".join(f.read_text(errors="replace") for f in files))
    return _CORPUS[0]


def body_text(rng: random.Random, size: int) -> str:
    """About ``size`` characters of HTML: a window of the documentation's pages."""
    corpus = _corpus()
    if len(corpus) > 10 * size:
        start = rng.randrange(len(corpus) - size)
        return corpus[start : start + size]
    text = " ".join(rng.choices(_VOCABULARY, k=size // 6 + 1))[:size]
    return "".join(f"<p>{text[i : i + 400]}</p>\n" for i in range(0, len(text), 400))


def page_events(round_: int, rows: int, body_bytes: int, *, enriched: bool) -> list[bytes]:
    """``rows`` new pages as the stream stage writes them to pages.unique (PageEvent JSON); the
    same ``round_`` gives the same URLs and bodies."""
    rng = random.Random(round_)
    now = datetime.now(UTC)
    out = []
    for i in range(rows):
        url = f"https://bench.invalid/{round_}/{i}"
        body = body_text(rng, body_bytes)
        record = PageRecord(
            url=url,
            canonical_url=url,
            final_url=url,
            status=200,
            fetched_at=now,
            title=f"page {i}",
            body=f"<html><body>{body}</body></html>",
            body_bytes=len(body),
            run_id="bench-run",
            job_id="bench",
        )
        found = None
        if enriched:  # about what streams.enrich extracts from such a page
            text = body.replace("<p>", "").replace("</p>", "")
            found = Enrichment(
                text=text,
                title=f"page {i}",
                language="en",
                word_count=len(text.split()),
                outlinks=[f"https://bench.invalid/{round_}/{(i + k) % rows}" for k in range(1, 21)],
                outlinks_count=20,
                content_hash=f"{i:064x}",
                simhash=(i * 0x9E3779B97F4A7C15) % 2**64,
            )
        out.append(PageEvent(change="new", page=record, enrichment=found).to_bytes())
    return out


def proc_cpu_s(pid: int) -> float:
    """CPU seconds process ``pid`` has run so far, all its threads (0 when it is gone): the
    scheduler's nanosecond counts (/proc/<pid>/task/*/schedstat), not the 10 ms ticks of stat."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except OSError:
                continue  # a thread that ended meanwhile
    except OSError:
        return 0.0
    return total / 1e9


def backend_pid(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = int(cur.fetchone()[0])
    conn.commit()
    return pid


def walsender_pids(dsn: str) -> list[int]:
    """The walsenders of this PostgreSQL (the server hides other roles' backend types from us:
    their command lines say it), when it runs on this machine."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity")
            pids = [int(pid) for (pid,) in cur.fetchall()]
    finally:
        conn.close()
    found = []
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"postgres: walsender"):
                found.append(pid)
        except OSError:
            continue
    return found


@dataclass
class Cpu:
    """CPU seconds spent between start() and stop(): this process (every thread), one database
    backend, the walsenders."""

    backend: int | None = None
    walsenders: list[int] = field(default_factory=list)
    client_s: float = 0.0
    backend_s: float = 0.0
    walsenders_s: float = 0.0

    def start(self) -> Cpu:
        self._t = (
            time.process_time(),
            proc_cpu_s(self.backend) if self.backend else 0.0,
            sum(proc_cpu_s(p) for p in self.walsenders),
        )
        return self

    def stop(self) -> Cpu:
        client, backend, walsenders = self._t
        self.client_s = time.process_time() - client
        self.backend_s = (proc_cpu_s(self.backend) if self.backend else 0.0) - backend
        self.walsenders_s = sum(proc_cpu_s(p) for p in self.walsenders) - walsenders
        return self


class BenchMessage:
    """The confluent_kafka.Message methods SinkWorker calls (as tests/unit/sinks/conftest.py fakes
    them; a benchmark does not import test fixtures)."""

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


# Results, in the shape of bench/results.py (perf-bench's shared helper), which is used when present.


@dataclass
class Row:
    name: str
    value: float
    unit: str
    role: str = "ours"  # ours | floor | peer | baseline | published
    group: str = ""
    runs: list[float] = field(default_factory=list)
    ratio: float | None = None
    note: str = ""


@dataclass
class Target:
    name: str
    value: float
    op: str
    target: float
    unit: str = ""

    @property
    def met(self) -> bool:
        return self.value >= self.target if self.op == ">=" else self.value <= self.target


def median_row(name: str, runs: Sequence[float], unit: str, role: str = "ours", group: str = "") -> Row:
    return Row(name, statistics.median(runs), unit, role, group, [float(r) for r in runs])


def with_ratios(rows: Sequence[Row], reference: str) -> list[Row]:
    refs = {row.group: row.value for row in rows if row.name == reference}
    for row in rows:
        if refs.get(row.group):
            row.ratio = row.value / refs[row.group]
    return list(rows)


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def write_results(
    bench: str,
    title: str,
    rows: Sequence[Row],
    *,
    targets: Sequence[Target] = (),
    params: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
    headline: Sequence[dict[str, Any]] = (),
    series: Sequence[dict[str, Any]] = (),
) -> Path:
    """``bench/results/<bench>.json``: through bench/results.py when it exists, else alike.
    ``headline`` and ``series`` are the keyword arguments of bench/results.py's ``Headline`` and
    ``Series`` (plain dicts: this module also runs where that one is not importable)."""
    try:
        import results as shared  # type: ignore[import-not-found]  # bench/results.py
    except ImportError:
        shared = None
    if shared is not None and hasattr(shared, "write_result"):  # not the results/ directory
        return Path(
            shared.write_result(
                bench,
                title,
                [shared.Row(**asdict(r)) for r in rows],
                targets=[shared.Target(t.name, t.value, t.op, t.target, t.unit) for t in targets],
                headline=[shared.Headline(**h) for h in headline],
                series=[shared.Series(**c) for c in series],
                params=params,
                notes=notes,
                extra=extra,
            )
        )
    doc = {
        "schema_version": 1,
        "bench": bench,
        "title": title,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join([".venv/bin/python", *sys.argv]),
        "git": {"commit": _git("rev-parse", "HEAD"), "branch": _git("rev-parse", "--abbrev-ref", "HEAD")},
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "params": params or {},
        "rows": [asdict(r) for r in rows],
        "targets": [{**asdict(t), "met": t.met} for t in targets],
        "headline": list(headline),
        "series": list(series),
        "notes": list(notes),
        "extra": extra or {},
    }
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{bench}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"results: {path.relative_to(REPO)}")
    return path
