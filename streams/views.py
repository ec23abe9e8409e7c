"""faust web views (JSON) over the stats tables, on ``127.0.0.1:streams.web_port``.

``GET /stats/domain/{domain}/`` -> the open windows of the domain: the current 1 min tumbling
window and the 5 min hopping windows holding "now", with counters and latency figures.
``GET /stats/run/{run_id}/``     -> that run's totals so far.
Each is routed (``app.table_route``) to the worker holding the key's partition, so any worker
answers for any key. Tables: :mod:`streams.stats`.
"""

from __future__ import annotations

import time
from typing import Any

from streams import aggregate
from streams.stats import StatsAgents


def open_windows(table: Any, domain: str, now: float) -> list[dict[str, Any]]:
    """The windows of ``domain`` in a windowed table that contain ``now``, oldest first."""
    out = []
    for start, end in table.table._window_ranges(now):
        acc = table.table.data.get((domain, (start, end)))
        if acc:
            out.append({"window_start": start, "window_end": round(end), **aggregate.summary(acc)})
    return out


def register(app: Any, agents: StatsAgents) -> None:
    domain_table = agents.domain_1m.table

    async def domain_view(view: Any, request: Any, domain: str) -> Any:
        now = time.time()
        return view.json(
            {
                "domain": domain,
                "tumbling_1m": open_windows(agents.domain_1m, domain, now),
                "hopping_5m_1m": open_windows(agents.domain_5m, domain, now),
            }
        )

    async def run_view(view: Any, request: Any, run_id: str) -> Any:
        # `in`, not .get: the table has a default, so .get would never say "unknown".
        acc = agents.run_progress[run_id] if run_id in agents.run_progress else None  # noqa: SIM401
        return view.json({"run_id": run_id, "known": acc is not None, **aggregate.summary(acc or {})})

    # Plain calls, not decorators: app is untyped, and mypy strict rejects untyped decorators.
    app.page("/stats/domain/{domain}/")(app.table_route(table=domain_table, match_info="domain")(domain_view))
    app.page("/stats/run/{run_id}/")(
        app.table_route(table=agents.run_progress, match_info="run_id")(run_view)
    )
