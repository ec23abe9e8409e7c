"""RAM and disk per URL of the frontier's tables at 10 million URLs, and what expiry gives back.

Writes what a frontier job keeps per URL (:mod:`streams.frontier` ``frontier_urls``: JSON key
``<job>|<canonical URL>``, JSON value run, depth, candidate offset, ETag, Last-Modified, status,
last fetch time, offset) and what its run's ledger keeps while the run lasts
(:mod:`streams.ledger` ``ledger_urls``: ``<run>|<canonical URL>`` -> ``c``) into RocksDB databases
opened with faust's own RocksDBOptions (what ``rocksdb://`` workers use), each in a fresh child
process: RAM is the child's peak RSS growth over its empty start, disk the database directory
after a flush and a compaction. Then the expiry the frontier applies: a run's ledger entries are
deleted when it stops (a range of keys, ``streams.keyscan``), and a job's URLs no run reached for
``forget_after_s`` are deleted when the job runs again; the bench deletes the ledger range and
half of the job's URLs (as when half of a site went away) and measures the disk again.

``.venv/bin/python bench/bench_frontier_state.py [--urls 10000000]`` (about 5 minutes at 10 M).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

JOB, RUN = "open-web", "5f0c3e9d8b7a4c21a1e2d3f4b5c6d7e8"


def url(i: int) -> str:
    return f"https://site{i % 50_000}.example/section/{i // 50_000}/page-{i}.html"


def frontier_entries(urls: int) -> Any:
    fetched = datetime(2026, 11, 25, 10, 0, tzinfo=UTC).isoformat()
    for i in range(urls):
        value = {
            "r": RUN,
            "d": i % 9,
            "c": 3 * i,
            "o": 3 * i + 1,
            "t": fetched,
            "e": f'"{i * 2654435761 % 2**64:016x}"',
            "m": "Wed, 25 Nov 2026 09:00:00 GMT",
            "s": 200,
        }
        yield json.dumps(f"{JOB}|{url(i)}").encode(), json.dumps(value, separators=(",", ":")).encode()


def ledger_entries(urls: int) -> Any:
    for i in range(urls):
        yield json.dumps(f"{RUN}|{url(i)}").encode(), b'"c"'


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def fill(kind: str, urls: int, path: str, out: Any) -> None:
    from faust.stores.rocksdb import RocksDBOptions

    before = peak_rss_bytes()
    db = RocksDBOptions().open(Path(path))
    rows = frontier_entries(urls) if kind == "frontier_urls" else ledger_entries(urls)
    for key, value in rows:
        db[key] = value
    db.flush()
    db.compact_range(None, None)
    ram, disk = peak_rss_bytes() - before, disk_bytes(Path(path))
    # Expiry: the ledger's whole run; half of the job's URLs (every other site).
    if kind == "ledger_urls":
        db.delete_range(json.dumps(f"{RUN}|").encode()[:-1], json.dumps(f"{RUN}}}").encode()[:-1])
    else:
        for i in range(0, urls):
            if (i % 50_000) % 2:
                db.delete(json.dumps(f"{JOB}|{url(i)}").encode())
    db.flush()
    db.compact_range(None, None)
    out.put((ram, disk, disk_bytes(Path(path))))
    db.close()


def measure(kind: str, urls: int) -> tuple[int, int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        out: Any = multiprocessing.Queue()
        child = multiprocessing.Process(target=fill, args=(kind, urls, str(Path(tmp) / f"{kind}.db"), out))
        child.start()
        result: tuple[int, int, int] = out.get(timeout=3600)
        child.join(60)
        return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--urls", type=int, default=10_000_000)
    urls = parser.parse_args().urls
    print(f"frontier tables at {urls:,} URLs (RocksDB, faust's options)")
    for kind, expiry in (("frontier_urls", "half the job's URLs forgotten"), ("ledger_urls", "run stopped")):
        ram, disk, after = measure(kind, urls)
        print(
            f"{kind:14s} {ram / urls:7.1f} B RAM/URL  {disk / urls:6.1f} B disk/URL  "
            f"after expiry ({expiry}): {after / urls:6.1f} B disk/URL"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
