"""Per-domain windows and run progress of the stream worker on the running stack.

Pages fetched 15 minutes ago fall in windows already past their grace, so faust closes them at its
first cleanup (``streams.stats_close_interval_s`` after start, by which time the worker has
processed the few input records produced before it started) and each window is emitted once.
Pages fetched now stay open and are read through the web views.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka.partitioner import murmur2

from crawlstream import offsets
from crawlstream.records import DomainStats, PageRecord
from streams.stats import json_key
from tests.integration.test_streams_stage import Pipeline, Worker, pipeline, wait_for  # noqa: F401

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
    host: str,
    path: str,
    text: str,
    at: datetime,
    status: int = 200,
    latency: float = 0.1,
    run: str = RUN,
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
        run_id=run,
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


def emitted(pipe: Pipeline) -> list[DomainStats]:
    return [DomainStats.model_validate_json(v or b"") for _, v in pipe.read_all(pipe.topics.stats.name)]


def stored(stats: list[DomainStats]) -> dict[tuple[str, str, datetime], DomainStats]:
    """The last emission of each window: what the stats sink keeps (it upserts on these keys)."""
    return {(s.domain, s.window, s.window_start): s for s in stats}


FIGURES = {"schema_version", "domain", "window", "window_start", "window_end", "latency_p95_s"}


def test_a_late_event_reopens_a_closed_window_with_its_earlier_totals(
    stats_env: None,
    pipeline: Pipeline,  # noqa: F811
) -> None:
    site = old_site()
    pipeline.produce(site)
    worker = pipeline.start_worker()
    wait_for("old.example's six windows", lambda: len(emitted(pipeline)) >= 6, worker)
    assert {s.pages for s in emitted(pipeline)} == {5}
    # A fetch of the same minute arrives after its windows closed (a backlog, a slow producer).
    late = raw("old.example", "late", "A page delivered long after it was fetched, in Kafka.", PAST)
    pipeline.produce([late])
    wait_for("the six windows again", lambda: len(emitted(pipeline)) >= 12, worker)
    stats = emitted(pipeline)
    assert len(stats) == 12
    windows = stored(stats)
    assert len(windows) == 6
    bytes_total = sum(PageRecord.model_validate_json(v).body_bytes for _, v in [*site, late])
    for s in windows.values():
        assert (s.pages, s.new, s.unchanged, s.status_4xx, s.bytes) == (6, 5, 1, 1, bytes_total)
        assert s.latency_mean_s == pytest.approx((0.1 + 0.2 + 0.3 + 0.4 + 0.5 + 0.1) / 6)


def words(*seed: object) -> str:
    """A text no other page shares, nor nearly (so no page is a duplicate or near-duplicate)."""
    return " ".join(hashlib.sha256(f"{seed}{n}".encode()).hexdigest()[:10] for n in range(20))


def partition_of(key: str, partitions: int) -> int:
    """The partition faust's producer (aiokafka, murmur2) gives a stats key (JSON text)."""
    return (murmur2(json_key(key)) & 0x7FFFFFFF) % partitions


def settle(what: str, wrong: Callable[[], str | None], workers: list[Worker], timeout_s: float) -> None:
    """Poll ``wrong`` (None once the outcome is reached, else what is still missing) until a deadline."""
    deadline = time.monotonic() + timeout_s
    while (missing := wrong()) is not None:
        for n, worker in enumerate(workers):
            if worker.proc.poll() is not None:
                pytest.fail(f"worker {n} exited waiting for {what}\n{worker.log_tail()}")
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- worker {n}\n{w.log_tail(15)}" for n, w in enumerate(workers))
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}: {missing}\n{logs}")
        time.sleep(0.5)  # poll interval, not synchronisation


def lag(pipe: Pipeline) -> str | None:
    """None once the group committed every stage input, else each topic's (end, committed)."""
    if pipe.drained():
        return None
    t, group = pipe.topics, pipe.settings.streams.app_id
    names = [t.raw_pages, t.pages_by_band, t.dedup_verdicts]
    return "(end, committed) " + str(
        {
            spec.name: (
                offsets.end_offsets(pipe.settings, spec.name),
                offsets.committed_offsets(pipe.settings, group, spec.name),
            )
            for spec in names
        }
    )


def ready(worker: Worker) -> bool:
    """The worker finished the recovery of its latest partition assignment."""
    log = worker.log.read_text(errors="replace")
    return log.rfind("[^---Recovery]: Worker ready") > log.rfind("Executing _on_partitions_assigned") >= 0


def web_port(worker: Worker) -> int:
    found = re.search(r"\| web\s+\| http://127\.0\.0\.1:(\d+)", worker.log.read_text(errors="replace"))
    assert found, worker.log_tail()
    return int(found.group(1))


def test_two_workers_close_every_domain_window_as_one_and_answer_views_for_any_key(
    stats_env: None,
    pipeline: Pipeline,  # noqa: F811
) -> None:
    partitions = pipeline.settings.kafka.partitions
    old = [f"old-{n}.example" for n in range(6)]
    live = [f"live-{n}.example" for n in range(4)]
    runs = [f"it-stats-run-{n}" for n in range(6)]
    # Keys on every partition: whichever partitions each worker owns, each serves keys it owns
    # and keys it must route to the other.
    for keys in (old, live, runs):
        assert {partition_of(k, partitions) for k in keys} == set(range(partitions)), keys
    workers = [pipeline.start_worker(), pipeline.start_worker()]
    # Both in the group and done with the recovery of their last assignment before data arrives
    # (faust can skip records that reach a retained partition with no committed offset while
    # its worker recovers from a rebalance; see the report of this test's commit).
    wait_for(
        "two workers in the group, each ready",
        lambda: pipeline.group_members() == 2 and all(map(ready, workers)),
        workers[0],
    )

    now = datetime.now(UTC)
    pages: list[tuple[bytes, bytes]] = []
    expected: dict[str, dict[str, Any]] = {}
    for n, (domain, run) in enumerate(zip(old, runs, strict=True)):
        fetched = [
            raw(domain, f"p{j}", words(domain, j), PAST, latency=0.1 * (j + 1), run=run) for j in range(n + 1)
        ]
        if n % 2 == 0:
            fetched.append(
                raw(domain, "gone", words(domain, "gone"), PAST, status=404, latency=0.05, run=run)
            )
        records = [PageRecord.model_validate_json(v) for _, v in fetched]
        latencies = [r.fetch_latency_s or 0.0 for r in records]
        expected[domain] = {
            "pages": len(records),
            "bytes": sum(r.body_bytes for r in records),
            "status_2xx": n + 1,
            "status_3xx": 0,
            "status_4xx": len(records) - n - 1,
            "status_5xx": 0,
            "duplicates": 0,
            "near_duplicates": 0,
            "new": len(records),
            "changed": 0,
            "unchanged": 0,
            "latency_mean_s": pytest.approx(sum(latencies) / len(latencies)),
        }
        pages += fetched
    for n, domain in enumerate(live):
        pages += [raw(domain, f"p{j}", words(domain, j), now, run="it-stats-live") for j in range(n + 1)]
    pipeline.produce(pages)
    settle("the stage to drain", lambda: lag(pipeline), workers, timeout_s=120)

    # Each old domain: one tumbling minute and the five hopping windows that hold PAST.
    def incomplete() -> str | None:
        windows = stored(emitted(pipeline))
        wrong = {k: s.model_dump(exclude=FIGURES) for k, s in windows.items()}
        wrong = {k: v for k, v in wrong.items() if v != expected[k[0]]}
        if len(windows) == 6 * len(old) and not wrong:
            return None
        return f"{len(windows)} of {6 * len(old)} windows stored, wrong: {wrong}"

    settle("every old domain's windows with their totals", incomplete, workers, timeout_s=180)
    windows = stored(emitted(pipeline))
    assert sorted((d, w) for d, w, _ in windows) == sorted(
        (d, w) for d in old for w in ["tumbling_1m"] + ["hopping_5m_1m"] * 5
    )
    for s in windows.values():
        assert s.model_dump(exclude=FIGURES) == expected[s.domain]
    closed_by = [
        sum(
            w.metric(f'streams_windows_closed_total{{window="{kind}"}}')
            for kind in ("tumbling_1m", "hopping_5m_1m")
        )
        for w in workers
    ]
    assert min(closed_by) > 0, closed_by  # both workers closed windows: the domains were split

    ports = [web_port(w) for w in workers]
    for n, domain in enumerate(live):

        def agree(domain: str = domain, pages: int = n + 1) -> bool:
            # Both workers at about the same instant; a minute boundary between the two reads
            # moves the open windows, so read again until they agree.
            answers = [view(port, f"/stats/domain/{domain}/") for port in ports]
            return answers[0] == answers[1] and max(w["pages"] for w in answers[0]["hopping_5m_1m"]) == pages

        wait_for(f"both workers' views of {domain}", agree, workers[0], timeout_s=30)
    for domain in old:  # closed windows only: nothing open
        for port in ports:
            assert view(port, f"/stats/domain/{domain}/") == {
                "domain": domain,
                "tumbling_1m": [],
                "hopping_5m_1m": [],
            }
    for domain, run in zip(old, runs, strict=True):
        answers = [view(port, f"/stats/run/{run}/") for port in ports]
        assert answers[0] == answers[1]
        assert (answers[0]["known"], answers[0]["pages"], answers[0]["new"]) == (
            True,
            expected[domain]["pages"],
            expected[domain]["pages"],
        )
