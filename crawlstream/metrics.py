"""Prometheus helpers shared by every long-running process.

Each process serves its own ``/metrics`` (one endpoint per process, no multiprocess mode) on
the port its section of :class:`~crawlstream.settings.MetricsSettings` names. Metric names
follow Prometheus conventions: base units, ``_total`` counters, bounded labels (never a URL).
"""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

log = logging.getLogger(__name__)


def serve_metrics(host: str, port: int) -> int:
    """Start the /metrics endpoint in a daemon thread; port 0 picks a free port. Returns the port."""
    server, _thread = start_http_server(port, addr=host)
    bound = int(server.server_address[1])
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return bound
