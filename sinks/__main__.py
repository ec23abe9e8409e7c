"""``python -m sinks``: run the sink workers (one thread per topic family) until SIGTERM/SIGINT.

``--family`` picks families (default: all of :data:`sinks.families.FAMILIES`). Uses
load_settings() (sink, kafka, postgres sections), logs with crawlstream.logs and serves /metrics
on ``settings.metrics.host:sink_port``. Run migrations first (``crawlstream db upgrade``;
``crawlstream stack up`` does it). Exits 1 when any worker fails.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

from crawlstream.logs import setup_logging
from crawlstream.metrics import serve_metrics
from crawlstream.settings import load_settings
from sinks.families import FAMILIES
from sinks.metrics import SinkMetrics
from sinks.worker import SinkWorker

log = logging.getLogger("sinks")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sinks",
        description="Run the sink workers, one thread per topic family, until SIGTERM/SIGINT. "
        "Run the migrations first (crawlstream db upgrade; crawlstream stack up does it). "
        "Exits 1 when any worker fails.",
    )
    parser.add_argument("--max-idle-s", type=float, default=None, help="exit after this long idle")
    parser.add_argument("--family", action="append", choices=sorted(FAMILIES), help="repeatable")
    args = parser.parse_args(argv)
    settings = load_settings()
    setup_logging(settings.log_level, json_lines=settings.log_json, worker=f"sink-worker:{os.getpid()}")
    serve_metrics(settings.metrics.host, settings.metrics.sink_port)
    metrics = SinkMetrics()
    workers: list[SinkWorker[Any]] = [
        SinkWorker.from_settings(settings, FAMILIES[name], metrics) for name in args.family or FAMILIES
    ]
    failed: list[str] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        for worker in workers:
            worker.request_stop()

    def run(worker: SinkWorker[Any]) -> None:
        try:
            worker.run(max_idle_s=args.max_idle_s)
        except Exception:
            log.exception("sink worker %s failed", worker.family.name)
            failed.append(worker.family.name)
            stop(signal.SIGTERM, None)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threads = [threading.Thread(target=run, args=(w,), name=f"sink-{w.family.name}") for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.5)  # short joins keep the main thread responsive to signals
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
