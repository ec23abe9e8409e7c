"""``python -m sinks``: run the Postgres page sink worker until SIGTERM/SIGINT.

Uses load_settings() (sink, kafka, postgres sections), logs with crawlstream.logs and serves
/metrics on ``settings.metrics.host:sink_port``. Run migrations first (``python -m sinks.migrate
upgrade``; ``crawlstream stack up`` does it).
"""

from __future__ import annotations

import argparse
import signal
from types import FrameType

from crawlstream.logs import setup_logging
from crawlstream.metrics import serve_metrics
from crawlstream.settings import load_settings
from sinks.worker import PageSinkWorker


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sinks", description=__doc__)
    parser.add_argument("--max-idle-s", type=float, default=None, help="exit after this long idle")
    args = parser.parse_args(argv)
    settings = load_settings()
    setup_logging(settings.log_level, json_lines=settings.log_json)
    serve_metrics(settings.metrics.host, settings.metrics.sink_port)
    worker = PageSinkWorker.from_settings(settings)

    def stop(signum: int, _frame: FrameType | None) -> None:
        worker.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.run(max_idle_s=args.max_idle_s)


if __name__ == "__main__":
    main()
