"""The one way a benchmark records its figures: ``bench/results/<bench>.json``.

Every ``bench/bench_*.py`` ends with one :func:`write_result` call; ``bench/report.py`` reads the
files back and draws the plots and ``SUMMARY.md``. A result holds what a reader needs to trust a
figure without rerunning it: the medians and every run behind them, the floor or peer measured in
the same run with the ratio to it, the targets, the command, the git commit, the date and the
machine (CPU, cores, memory, load before and after: the machines are shared and noisy).

Shapes (plain dataclasses, written as JSON):

- :class:`Row`: one figure. ``group`` names the comparison it belongs to (rows of a group share a
  unit and are plotted together), ``role`` says what it is: ``ours`` (the project's code),
  ``floor`` (the least any implementation pays here, e.g. plain Scrapy, raw COPY, a no-op agent),
  ``peer`` (another tool doing the same job), ``baseline`` (a reference measured in the same run
  that is neither), ``published`` (a figure quoted from elsewhere, not measured here).
  ``ratio`` is the value over the group's reference row (:func:`with_ratios`).
- :class:`Target`: a goal of an issue, checked on a measured value (``op`` ``>=`` or ``<=``).
- :class:`Headline`: a stage's figure next to its floor for the summary plot (``report.py``'s
  ``headline.png``): ``ours`` and ``floor`` in one unit, ``better`` says which way is good,
  ``ratio`` what is judged (ours/floor unless given) and ``target`` the goal for it (for
  ``lower`` a ceiling, else a floor).
- :class:`Series`: a curve, e.g. consumer lag per stage over a crawl (``kind="lag"``, x in
  seconds) or cost against crawl size (``kind="cost"``); ``report.py`` draws each kind in one plot.

Where results go: ``CRAWLSTREAM_BENCH_RESULTS`` (a directory) or ``bench/results``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_ENV = "CRAWLSTREAM_BENCH_RESULTS"
SCHEMA_VERSION = 1
ROLES = ("ours", "floor", "peer", "baseline", "published")
# Versions worth knowing when comparing figures across machines and months.
PACKAGES = (
    "confluent-kafka",
    "kafka-python",
    "aiokafka",
    "pykafka",
    "faust-streaming",
    "scrapy",
    "twisted",
    "pydantic",
    "psycopg2-binary",
)


def _process_started() -> float:
    """When this process started (Linux /proc; else now): benches may import this module last."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


_STARTED = _process_started()
# The load when this module was imported: a bench that imports it only to write its result gets
# the load at its end here (the 5- and 15-minute averages still cover most of a long run).
_LOAD_AT_START = os.getloadavg()


@dataclass
class Row:
    name: str
    value: float  # the median of ``runs`` (or the one figure)
    unit: str
    role: str = "ours"
    group: str = ""
    runs: list[float] = field(default_factory=list)
    ratio: float | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"row {self.name!r}: role {self.role!r} is not one of {ROLES}")


@dataclass
class Target:
    name: str
    value: float
    op: str  # ">=" or "<="
    target: float
    unit: str = ""

    def __post_init__(self) -> None:
        if self.op not in (">=", "<="):
            raise ValueError(f"target {self.name!r}: op must be '>=' or '<=', not {self.op!r}")

    @property
    def met(self) -> bool:
        return self.value >= self.target if self.op == ">=" else self.value <= self.target


@dataclass
class Headline:
    stage: str
    ours: float
    floor: float
    unit: str
    ours_name: str
    floor_name: str
    better: str = "higher"  # "higher" or "lower"
    target: float | None = None  # the goal for ours/floor
    # What is judged against the target: ours/floor unless given (e.g. the median of per-round
    # ratios, steadier than the ratio of the medians on a shared machine).
    ratio: float | None = None

    def __post_init__(self) -> None:
        if self.better not in ("higher", "lower"):
            raise ValueError(f"headline {self.stage!r}: better must be 'higher' or 'lower'")
        if self.ratio is None:
            self.ratio = self.ours / self.floor if self.floor else float("nan")

    @property
    def met(self) -> bool | None:
        if self.target is None or self.ratio is None or not math.isfinite(self.ratio):
            return None
        return self.ratio <= self.target if self.better == "lower" else self.ratio >= self.target


@dataclass
class Series:
    name: str
    kind: str  # "lag", "cost", ...: report.py plots each kind on its own axes
    x: list[float]
    y: list[float]
    x_label: str
    y_label: str


def median_row(name: str, runs: Sequence[float], unit: str, role: str = "ours", group: str = "") -> Row:
    """A row whose value is the median of ``runs``."""
    return Row(name, statistics.median(runs), unit, role, group, [float(r) for r in runs])


def with_ratios(rows: Iterable[Row], reference: str) -> list[Row]:
    """``rows`` with ``ratio`` = value / the value of the row named ``reference`` in the same group
    (groups without that row, and ``published`` rows, measured elsewhere, are left as they are)."""
    rows = list(rows)
    refs = {row.group: row.value for row in rows if row.name == reference}
    for row in rows:
        ref = refs.get(row.group)
        if ref and row.role != "published":
            row.ratio = row.value / ref
    return rows


def results_dir() -> Path:
    return Path(os.environ.get(RESULTS_ENV) or REPO / "bench" / "results")


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def git_facts() -> dict[str, Any]:
    # Changes under bench/results are the results themselves, not a change to what was measured.
    dirty = [line for line in _git("status", "--porcelain").splitlines() if "bench/results/" not in line]
    return {
        "commit": _git("rev-parse", "HEAD"),
        "branch": _git("rev-parse", "--abbrev-ref", "HEAD"),
        "dirty": bool(dirty),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine_facts() -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        import confluent_kafka

        versions["librdkafka"] = confluent_kafka.libversion()[0]
    except ImportError:
        pass
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_at_start": [round(x, 2) for x in _LOAD_AT_START],
        "load_at_end": [round(x, 2) for x in os.getloadavg()],
        "packages": versions,
    }


def command() -> str:
    """How this run was started, relative to the repository when it can be."""
    argv = list(sys.argv)
    with contextlib.suppress(ValueError):  # a script outside the repository keeps its path
        argv[0] = str(Path(argv[0]).resolve().relative_to(REPO))
    return shlex.join([".venv/bin/python", *argv])


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_result(
    bench: str,
    title: str,
    rows: Sequence[Row],
    *,
    targets: Sequence[Target] = (),
    headline: Sequence[Headline] = (),
    series: Sequence[Series] = (),
    params: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``<results>/<bench>.json`` (replacing an earlier one) and return its path.

    ``bench`` is the file's name (``crawl`` for bench_crawl.py); ``params`` what the run was
    (rounds, sizes), ``notes`` sentences a reader needs next to the figures, ``extra`` anything else.
    """
    doc = {
        "schema_version": SCHEMA_VERSION,
        "bench": bench,
        "title": title,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - _STARTED, 1),
        "command": command(),
        "git": git_facts(),
        "machine": machine_facts(),
        "params": params or {},
        "rows": [asdict(r) for r in rows],
        "targets": [{**asdict(t), "met": t.met} for t in targets],
        "headline": [{**asdict(h), "met": h.met} for h in headline],
        "series": [asdict(s) for s in series],
        "notes": list(notes),
        "extra": extra or {},
    }
    doc = _finite(doc)
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{bench}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    tmp.replace(path)
    print(f"results: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return path
