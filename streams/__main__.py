"""``python -m streams worker -l info``: run the stream stage's faust worker.

Reads settings once, serves our Prometheus metrics on ``metrics.host:metrics.streams_port`` (port 0
picks a free one) and faust's own (``faust_*``, in ms) on the faust web server's ``/metrics``, then
hands the command line to faust (``worker``, ``tables``, ...). A worker's garbage collector is
tuned first (``streams.gc_gen0_threshold``, :mod:`crawlstream.gctuning`).
A worker creates the stage's missing repartition topics and the internal topics its agents read
(:func:`streams.topology.internal_inputs`) first, as the streams principal (``crawlstream.topics.
ensure_topics``); faust creates its changelog topics; the other catalog topics are created by
``crawlstream topics create`` (``stack up`` does it).
"""

from __future__ import annotations

import os
import sys

from faust.sensors.prometheus import setup_prometheus_sensors
from prometheus_client import CollectorRegistry

from crawlstream import gctuning
from crawlstream.logs import setup_logging
from crawlstream.metrics import serve_metrics
from crawlstream.offsets import commit_start_where_absent
from crawlstream.settings import load_settings
from crawlstream.topics import catalog, ensure_topics
from streams.app import create_app
from streams.topology import internal_inputs


def main() -> None:
    settings = load_settings()
    setup_logging(settings.log_level, json_lines=settings.log_json, worker=f"streams-worker:{os.getpid()}")
    app = create_app(settings)
    # faust creates datadir itself but not its parents.
    settings.streams.data_dir.mkdir(parents=True, exist_ok=True)
    # Only a worker is long-running; `python -m streams tables` must not hold the metrics port.
    if "worker" in sys.argv[1:]:
        # The stage's repartition topics are catalog topics a stack created before them may lack;
        # the stage's own principal creates them (it may not touch other stages' topics)...
        specs = catalog(settings)
        ensure_topics(settings, [specs.pages_by_band, specs.dedup_verdicts], stage="streams")
        # ...and the internal topics its agents read, before faust's consumer looks them up.
        ensure_topics(settings, internal_inputs(app), stage="streams")
        # A new group starts from committed offsets, never from faust's position (see the function).
        inputs = sorted({t for agent in app.agents.values() for t in getattr(agent.channel, "topics", ())})
        commit_start_where_absent(settings, settings.streams.app_id, inputs, stage="streams")
        # faust's own sensor too (consumer offsets, commits, rebalances, sends), on its own registry
        # served by the faust web server's /metrics (streams.web_port): its latencies are in ms, so
        # its names break the conventions our port keeps (promtool-clean, seconds).
        setup_prometheus_sensors(app, registry=CollectorRegistry(), name_prefix="faust")
        serve_metrics(settings.metrics.host, settings.metrics.streams_port)
    if "worker" in sys.argv[1:] and not any(arg in ("-L", "--loop") for arg in sys.argv):
        sys.argv[1:1] = ["--loop", settings.streams.event_loop]  # a global option: before the command
    if "worker" in sys.argv[1:] and settings.streams.gc_gen0_threshold:
        # Everything imported and registered by now stays: freeze it, collect less often.
        gctuning.tune(settings.streams.gc_gen0_threshold)
    app.main()


if __name__ == "__main__":
    main()
