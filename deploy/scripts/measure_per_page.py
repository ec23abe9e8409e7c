"""Per-page costs for capacity planning (docs/scaling.md): CPU per page of each stage and bytes per
page on Kafka and in PostgreSQL, from one real crawl through the embedded stack.

    .venv/bin/crawlstream stack up && .venv/bin/crawlstream workers up
    .venv/bin/python deploy/scripts/measure_per_page.py [--site DIR] [--json out.json]

It serves DIR (default: the Python documentation, /usr/share/doc/python3.11/html, 530 real pages)
on a loopback address, runs ``crawlstream run URL`` through every stage, and reads before and after:

- CPU: user + system time of every process of each service (the process and all its descendants,
  live or reaped: PostgreSQL's backends are children of the postmaster), from /proc; the crawl
  itself (the crawler process and the run command around it) from the children's rusage.
- Kafka: bytes of the log segments per topic in the broker's data directory (one replica, as
  written: after producer compression; the segment files are preallocated only in their index
  files, which are not counted).
- Kafka records: end offsets per topic (records written, whatever compaction keeps).
- Idle: before the crawl, each service's CPU over ``--idle-s`` seconds with nothing to do (timers,
  polls, heartbeats); that rate times the crawl's duration is subtracted in ``*_minus_idle``, since
  a loaded cluster does not pay it per page.
- PostgreSQL: pg_total_relation_size (heap, TOAST, indexes) of every table of the public schema.

The machine is shared and has 2 cores: CPU seconds, not wall time, are the figures to use.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import resource
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import psycopg2

from crawlstream.settings import load_settings

TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and its reaped children)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return ppid, (utime + stime + cutime + cstime) / TICKS


def tree_cpu(root: int) -> float:
    stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(int(p))) is not None}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _cpu) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
            todo += children.get(pid, [])
    return total


def services(state_dir: Path) -> dict[str, int]:
    return {p.stem: int(json.loads(p.read_text())["pid"]) for p in sorted((state_dir / "run").glob("*.pid"))}


def kafka_bytes(state_dir: Path) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for segment in (state_dir / "kafka" / "data").glob("*/*.log"):
        topic = segment.parent.name.rsplit("-", 1)[0]
        sizes[topic] = sizes.get(topic, 0) + segment.stat().st_size
    return sizes


def pg_bytes(dsn: str) -> dict[str, int]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')"
        )
        return {name: int(size) for name, size in cur.fetchall()}


def kafka_records(settings: Any) -> dict[str, int]:
    """End offsets summed per topic: records written (compacted topics included)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(settings.kafka.librdkafka(**{"group.id": "measure-per-page"}))
    try:
        topics = consumer.list_topics(timeout=20).topics
        return {
            name: sum(
                consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1]
                for p in topic.partitions
            )
            for name, topic in topics.items()
        }
    finally:
        consumer.close()


def snapshot(settings: Any) -> dict[str, Any]:
    state_dir = settings.stack.state_dir
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "at": time.monotonic(),
        "records": kafka_records(settings),
        "cpu": {name: tree_cpu(pid) for name, pid in services(state_dir).items()},
        "crawl_cpu": usage.ru_utime + usage.ru_stime,
        "kafka": kafka_bytes(state_dir),
        "postgres": pg_bytes(settings.postgres.dsn(owner=True)),
    }


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0) > 0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--site", type=Path, default=Path("/usr/share/doc/python3.11/html"))
    parser.add_argument("--host", default="127.0.10.7")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--idle-s",
        type=float,
        default=60.0,
        help="first measure each service's idle CPU this long; subtracted for the crawl's duration",
    )
    args = parser.parse_args()
    settings = load_settings()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(args.site))
    http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer((args.host, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://{args.host}:{server.server_address[1]}/index.html"

    idle_start = snapshot(settings)
    time.sleep(args.idle_s)  # a measurement window, not a synchronisation
    before = snapshot(settings)
    idle_rate = {
        k: v / (before["at"] - idle_start["at"]) for k, v in delta(before["cpu"], idle_start["cpu"]).items()
    }
    done = subprocess.run(
        [sys.executable, "-m", "control.cli", "run", url, "--json", "--job-id", "measure-per-page"],
        capture_output=True,
        text=True,
        check=False,
    )
    after = snapshot(settings)
    server.shutdown()
    if done.returncode != 0:
        sys.exit(f"crawlstream run failed ({done.returncode}): {done.stderr[-2000:]}")
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    pages = int(summary["crawl"]["pages_fetched"]) if "crawl" in summary else int(summary["pages_fetched"])
    cpu = delta(after["cpu"], before["cpu"])
    duration = after["at"] - before["at"]
    net = {k: max(0.0, v - idle_rate.get(k, 0.0) * duration) for k, v in cpu.items()}
    cpu["crawl (crawler + run command)"] = net["crawl (crawler + run command)"] = (
        after["crawl_cpu"] - before["crawl_cpu"]
    )
    records = delta(after["records"], before["records"])
    kafka = delta(after["kafka"], before["kafka"])
    postgres = delta(after["postgres"], before["postgres"])
    figures = {
        "pages": pages,
        "crawl_duration_s": round(duration, 1),
        "cpu_ms_per_page": {k: round(1000 * v / pages, 2) for k, v in sorted(cpu.items())},
        "idle_cpu_ms_per_s": {k: round(1000 * v, 2) for k, v in sorted(idle_rate.items())},
        "cpu_ms_per_page_minus_idle": {k: round(1000 * v / pages, 2) for k, v in sorted(net.items())},
        "kafka_records_per_page": {k: round(v / pages, 2) for k, v in sorted(records.items())},
        "kafka_records_per_page_total": round(sum(records.values()) / pages, 2),
        "kafka_bytes_per_page": {k: round(v / pages) for k, v in sorted(kafka.items())},
        "kafka_bytes_per_page_total": round(sum(kafka.values()) / pages),
        "postgres_bytes_per_page": {k: round(v / pages) for k, v in sorted(postgres.items())},
        "postgres_bytes_per_page_total": round(sum(postgres.values()) / pages),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
