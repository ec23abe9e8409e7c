"""RAM and disk per tracked URL in the ``urls`` table at 1 million URLs (target <= 150 B RAM/URL).

Writes what :mod:`streams.changes` stores per URL (JSON key: canonical URL, JSON value: fingerprint,
first/last seen, recrawl interval, source offset and change) for ``URLS`` URLs into a RocksDB
database opened with faust's own RocksDBOptions (what ``rocksdb://`` workers use), and, as the
baseline measured in the same run, into a Python dict (what ``memory://`` holds). Each store is
filled in a fresh child process; RAM is the child's peak RSS growth over its empty start, disk the
database directory after a flush and compaction. Prints the medians of ``RUNS`` runs per URL and the
ratio."""

from __future__ import annotations

import json
import multiprocessing
import resource
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

URLS = 1_000_000
RUNS = 3


def entries() -> Any:
    seen = datetime(2026, 11, 25, 10, 0, tzinfo=UTC).isoformat()
    for i in range(URLS):
        url = f"https://site{i % 5000}.example/section/{i // 5000}/page-{i}.html"
        value = {
            "h": f"{i * 2654435761 % 2**128:032x}",
            "f": seen,
            "l": seen,
            "i": 86400.0,
            "o": 3 * i,
            "c": "n",
        }
        yield json.dumps(url).encode(), json.dumps(value).encode()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def fill(kind: str, path: str, out: Any) -> None:
    before = peak_rss_bytes()
    if kind == "rocksdb":
        from faust.stores.rocksdb import RocksDBOptions

        db = RocksDBOptions().open(Path(path))
        for key, value in entries():
            db[key] = value
        db.flush()
        db.compact_range(None, None)
        disk = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
        out.put((peak_rss_bytes() - before, disk))
        db.close()
    else:
        table = dict(entries())
        out.put((peak_rss_bytes() - before, 0))
        del table


def measure(kind: str) -> tuple[int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        out: Any = multiprocessing.Queue()
        child = multiprocessing.Process(target=fill, args=(kind, str(Path(tmp) / "urls.db"), out))
        child.start()
        result: tuple[int, int] = out.get(timeout=600)
        child.join(60)
        return result


def main() -> int:
    rocks = [measure("rocksdb") for _ in range(RUNS)]
    memory = [measure("memory") for _ in range(RUNS)]
    ram = statistics.median(r for r, _ in rocks) / URLS
    disk = statistics.median(d for _, d in rocks) / URLS
    base = statistics.median(r for r, _ in memory) / URLS
    print(f"urls table at {URLS:,} URLs, median of {RUNS} runs")
    print(f"rocksdb (workers): {ram:7.1f} B RAM/URL (target <= 150)  {disk:6.1f} B disk/URL")
    print(f"memory (dict):     {base:7.1f} B RAM/URL (baseline)")
    print(f"ratio RAM rocksdb/memory: {ram / base:.3f}")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.results import Row, Target, median_row, write_result

    write_result(
        "url_state",
        f"URL state: bytes per URL in the urls table at {URLS:,} URLs",
        [
            median_row("rocksdb (workers)", [r / URLS for r, _ in rocks], "B RAM/URL", "ours", "RAM"),
            median_row("memory (dict)", [r / URLS for r, _ in memory], "B RAM/URL", "baseline", "RAM"),
            Row("rocksdb (workers)", disk, "B disk/URL", "ours", "disk", [d / URLS for _, d in rocks]),
        ],
        targets=[Target("RAM per URL (rocksdb)", ram, "<=", 150, "B")],
        params={"urls": URLS, "runs": RUNS},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
