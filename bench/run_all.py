"""``make bench``: every ``bench/bench_*.py`` in turn, then the report (``bench/report.py``).

Starts the embedded stack first (``crawlstream stack up``, idempotent) and, around the benches
that need them (:data:`NEEDS_WORKERS`), the stream and sink workers, stopping again only what it
started. Each bench writes ``bench/results/<bench>.json`` through :mod:`bench.results`; its output
is shown as it runs, under a ``[i/n]`` header with the time taken. A bench that fails is reported
and the others still run; the exit status is 1 when any failed.

Modes: full (default; each bench's own defaults, about an hour here; results in ``bench/results``)
and ``--quick`` (smaller sizes and fewer rounds, :data:`QUICK`; about 15 minutes: figures to look
at, not to quote, so they go to ``bench/results/quick`` and never replace a full run's). A new
bench gets ``--quick`` passed in quick mode when it accepts that option.
Usage: ``.venv/bin/python bench/run_all.py [--quick] [--only crawl,clients] [--skip url_state]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Smaller runs of the benches that take arguments (see each bench's --help).
QUICK: dict[str, list[str]] = {
    "bench_crawl": ["--rounds", "3", "--pages", "300"],
    "bench_clients": ["--messages", "200000", "--runs", "3"],
    "bench_sink": ["--rounds", "1", "--rows", "5000"],
    "bench_cdc": ["--rounds", "1", "--seconds", "4", "--pages", "100"],
    "bench_dedup": ["--events", "10000", "--runs", "1"],
}
# Benches whose end-to-end part crawls through the running workers.
NEEDS_WORKERS = {"bench_cdc"}


def benches() -> list[Path]:
    return sorted((REPO / "bench").glob("bench_*.py"))


def bench_args(path: Path, quick: bool) -> list[str]:
    if not quick:
        return []
    if path.stem in QUICK:
        return QUICK[path.stem]
    return ["--quick"] if '"--quick"' in path.read_text() else []


def crawlstream(*args: str) -> None:
    subprocess.run([str(Path(sys.executable).parent / "crawlstream"), *args], check=True, cwd=REPO)


def workers_running() -> bool:
    from control.stack.processes import ProcessManager
    from control.workers import worker_specs
    from crawlstream.settings import load_settings

    settings = load_settings()
    manager = ProcessManager(settings.stack.state_dir)
    return all(manager.running(w.name) for w in worker_specs(settings))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds (minutes)")
    parser.add_argument("--only", default="", help="comma-separated benches, e.g. crawl,clients")
    parser.add_argument("--skip", default="", help="comma-separated benches to leave out")
    parser.add_argument("--no-stack", action="store_true", help="do not run `crawlstream stack up`")
    parser.add_argument("--no-report", action="store_true", help="do not run bench/report.py at the end")
    args = parser.parse_args()

    def names(raw: str) -> set[str]:
        return {f"bench_{n.strip().removeprefix('bench_')}" for n in raw.split(",") if n.strip()}

    only, skip = names(args.only), names(args.skip)
    chosen = [p for p in benches() if (not only or p.stem in only) and p.stem not in skip]
    unknown = only - {p.stem for p in benches()}
    if unknown:
        print(f"no such bench: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if not args.no_stack:
        crawlstream("stack", "up")
    mode = "quick" if args.quick else "full"
    from bench.results import RESULTS_ENV, results_dir

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.quick and RESULTS_ENV not in os.environ:
        env[RESULTS_ENV] = str(results_dir() / "quick")
    print(f"\n{len(chosen)} benches, {mode} mode: {', '.join(p.stem for p in chosen)}\n", flush=True)
    outcomes: list[tuple[str, str, float]] = []
    for i, path in enumerate(chosen, 1):
        argv = [sys.executable, str(path.relative_to(REPO)), *bench_args(path, args.quick)]
        print(f"==== [{i}/{len(chosen)}] {' '.join(argv[1:])}", flush=True)
        started_workers = False
        started = time.monotonic()
        try:
            if path.stem in NEEDS_WORKERS and not workers_running():
                crawlstream("workers", "up")
                started_workers = True
            code = subprocess.run(argv, cwd=REPO, env=env).returncode
        except (subprocess.CalledProcessError, OSError) as exc:
            print(f"{path.stem}: {exc}", file=sys.stderr)
            code = -1
        finally:
            if started_workers:
                crawlstream("workers", "down")
        elapsed = time.monotonic() - started
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        outcomes.append((path.stem, status, elapsed))
        print(f"==== [{i}/{len(chosen)}] {path.stem}: {status} after {elapsed / 60:.1f} min\n", flush=True)
    print(f"{'bench':26s} {'status':20s} {'minutes':>7s}")
    for name, status, elapsed in outcomes:
        print(f"{name:26s} {status:20s} {elapsed / 60:7.1f}")
    if not args.no_report:
        subprocess.run([sys.executable, "bench/report.py"], cwd=REPO, env=env, check=False)
    return 0 if all(status == "ok" for _, status, _ in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
