"""Per-domain windows and run progress of the stream worker on the running stack.

Pages fetched 15 minutes ago fall in windows already past their grace, so faust closes them at its
first cleanup (``streams.stats_close_interval_s`` after start, by which time the worker has
processed the few input records produced before it started) and each window is emitted once.
Pages fetched now stay open and are read through the web views.
"""

from __future__ import annotations

import json
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crawlstream.records import DomainStats, PageRecord
from tests.integration.test_streams_stage import Pipeline, pipeline, wait_for  # noqa: F401

pytestmark = pytest.mark.integration

RUN = "it-stats-run"
PAST = (datetime.now(UTC) - timedelta(minutes=15)).replace(second=5, microsecond=0)


@pytest.fixture
def stats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Requested before `pipeline`, which reads the environment into its settings.
    monkeypatch.setenv("CRAWLSTREAM_STREAMS__STATS_GRACE_S", "120")
    monkeypatch.setenv("CRAWLSTREAM_STREAMS__STATS_CLOSE_INTERVAL_S", "20")
    return None


def raw(
    host: str, path: str, text: str, at: datetime, status: int = 200, latency: float = 0.1
) -> tuple[bytes, bytes]:
    url = f"https://{host}/{path}"
    body = f"<html><body><main><h1>A page</h1><p>{text}</p></main></body></html>"
    record = PageRecord(
        url=url,
        canonical_url=url,
        final_url=url,
        status=status,
        fetched_at=at,
        body=body,
        body_bytes=len(body),
        fetch_latency_s=latency,
        run_id=RUN,
    )
    return url.encode(), record.to_bytes()


def old_site() -> list[tuple[bytes, bytes]]:
    """Five fetches of old.example: 4 new pages (one an exact copy, one a 404) and a recrawl."""
    one = "The first page talks about windows and tables in stream processing systems."
    return [
        raw("old.example", "a", one, PAST, latency=0.1),
        raw(
            "old.example", "b", "A second page, about something else entirely: gardening.", PAST, latency=0.2
        ),
        raw("old.example", "c", one, PAST + timedelta(seconds=1), latency=0.3),
        raw("old.example", "gone", "Not found, sorry about that.", PAST, status=404, latency=0.4),
        raw("old.example", "a", one, PAST + timedelta(seconds=2), latency=0.5),
    ]


def view(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return json.loads(resp.read())


def test_closed_windows_are_emitted_once_with_exact_counts_and_views_show_open_ones(
    stats_env: None,
    pipeline: Pipeline,  # noqa: F811
) -> None:
    site = old_site()
    bytes_total = sum(PageRecord.model_validate_json(v).body_bytes for _, v in site)
    now = datetime.now(UTC)
    live = [raw("live.example", f"p{i}", f"Live page number {i} with its own words.", now) for i in (1, 2)]
    pipeline.produce([(key, value) for key, value in site + live])
    worker = pipeline.start_worker()
    wait_for("the stage to drain", pipeline.drained, worker)

    def emitted() -> list[DomainStats]:
        return [
            DomainStats.model_validate_json(v or b"")
            for _, v in pipeline.read_all(pipeline.topics.stats.name)
        ]

    # One tumbling minute and the five hopping windows that hold PAST.
    wait_for("old.example's six windows", lambda: len(emitted()) >= 6, worker)
    stats = emitted()
    assert all(s.domain == "old.example" for s in stats)
    assert sorted(s.window for s in stats) == ["hopping_5m_1m"] * 5 + ["tumbling_1m"]
    assert len({(s.window, s.window_start) for s in stats}) == 6  # each window exactly once
    minute = PAST.replace(second=0)
    tumbling = next(s for s in stats if s.window == "tumbling_1m")
    assert (tumbling.window_start, tumbling.window_end) == (minute, minute + timedelta(minutes=1))
    for s in stats:
        figures = s.model_dump(exclude={"schema_version", "domain", "window", "window_start", "window_end"})
        assert figures == {
            "pages": 5,
            "bytes": bytes_total,
            "status_2xx": 4,
            "status_3xx": 0,
            "status_4xx": 1,
            "status_5xx": 0,
            "duplicates": 1,
            "near_duplicates": 0,
            "new": 4,
            "changed": 0,
            "unchanged": 1,
            "latency_mean_s": pytest.approx(0.3),
            "latency_p95_s": pytest.approx(0.5, rel=0.1),
        }

    port = int(pipeline.env["CRAWLSTREAM_STREAMS__WEB_PORT"])
    run = view(port, f"/stats/run/{RUN}/")
    assert (run["known"], run["pages"], run["new"], run["unchanged"], run["duplicates"]) == (True, 7, 6, 1, 1)
    windows = view(port, "/stats/domain/live.example/")
    # Any two instants less than 4 minutes apart share a 5 min window hopping by 1 min.
    assert max(w["pages"] for w in windows["hopping_5m_1m"]) == 2
    assert view(port, "/stats/run/no-such-run/")["known"] is False
