"""Per-domain windowed aggregation and per-run progress: the last agents of the stage.

Reads  ``<prefix>.pages.unique`` (PageEvent: new/changed, duplicate marks) and
       ``<prefix>.pages.touches`` (PageTouch: unchanged) and turns each into a sample
       (:mod:`streams.aggregate`), sent to the app's internal topics ``<app_id>-stats-by-domain``
       (key: JSON domain, the key encoding of the windowed tables, so web views route to the
       owner) and ``<app_id>-stats-by-run`` (key: JSON run id), with the fetch time as the
       message timestamp: windows are in event time.
Tables ``domain_1m`` (tumbling 60 s) and ``domain_5m`` (hopping 300 s by 60 s), domain ->
       accumulator; ``run_progress``: run id -> accumulator (not windowed).
Writes ``<prefix>.stats`` (key: domain, DomainStats) when a window closes: faust closes it
       ``streams.stats_grace_s`` after its end (wall clock), checked every
       ``streams.stats_close_interval_s``; ``<prefix>.deadletter`` for inputs it cannot handle
       (any of the three agents, through the boundary of :mod:`streams.agent`; samples are
       checked where they are made and where they are read, :func:`streams.aggregate.check_sample`).
The sampler produces through the stage's producer (:mod:`streams.outputs`) with the partition
faust's own producer would choose (aiokafka's murmur2 partitioner), so a view's key routes to the
worker that holds it.
A late event reopens a closed window and re-emits it with the window's earlier totals (see
:class:`EveryWindowTable`); the stats sink upserts on (domain, window, window_start), so the last
emission of a window is the stored one.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka.partitioner import DefaultPartitioner  # type: ignore[import-untyped]

from crawlstream.errors import RecordError
from crawlstream.records import PageTouch, decode_record
from crawlstream.settings import Settings
from streams import aggregate, metrics
from streams.agent import Boundary, is_infrastructure
from streams.checks import MAX_FUTURE_S, check_touch
from streams.outputs import Effects
from streams.topology import RAW, StageTopics, decode_event

log = logging.getLogger(__name__)

AGENT = "sample_stats"
# Tables serialize keys as JSON (faust's default), so the internal topics are keyed by JSON
# text too: a view's key then hashes to the partition that holds it.


class EveryWindowTable:
    """Mixin for the windowed stats tables, over two faust 0.15 behaviours.

    faust skips closing a window whose start is <= the last closed start of ANY key or partition
    (``Table.last_closed_window``), losing every domain's window but the first; pinning it to
    -inf closes each (domain, window) once.

    faust also drops a window's accumulator when it closes it, so an event arriving later for
    that window (a backlog processed across a cleanup, a late fetch) reopened it empty, and its
    re-emission, the one the stats sink keeps, counted that event alone. A closed window's
    accumulator is kept (in memory) for ``reopen_s`` after its close, and a reopened window
    starts from it: the re-emission carries the whole window. Later than that, or on another
    worker after a rebalance, a reopened window starts from its late events.
    """

    reopen_s: float = 300.0

    @property
    def last_closed_window(self) -> float:
        return float("-inf")

    @last_closed_window.setter
    def last_closed_window(self, _value: float) -> None:
        pass

    def _closed_windows(self) -> OrderedDict[Any, tuple[Any, float]]:
        """Window key -> (its accumulator when it closed, when it closed), oldest close first."""
        closed: OrderedDict[Any, tuple[Any, float]] | None = self.__dict__.get("_closed")
        if closed is None:
            closed = self.__dict__["_closed"] = OrderedDict()
        return closed

    async def on_window_close(self, key: Any, value: Any) -> None:
        closed, now = self._closed_windows(), time.monotonic()
        closed[key] = (value, now)
        closed.move_to_end(key)
        while closed and now - next(iter(closed.values()))[1] > self.reopen_s:
            closed.popitem(last=False)
        await super().on_window_close(key, value)  # type: ignore[misc]

    def _apply_window_op(self, op: Callable[[Any, Any], Any], key: Any, value: Any, timestamp: float) -> None:
        closed = self._closed_windows()
        for window_range in self._window_ranges(timestamp):  # type: ignore[attr-defined]
            window_key = (key, window_range)
            kept = closed.pop(window_key, None)
            reopened = kept is not None and window_key not in self.data  # type: ignore[attr-defined]
            current = kept[0] if reopened else self._get_key(window_key)  # type: ignore[attr-defined,index]
            self._set_key(window_key, op(current, value))  # type: ignore[attr-defined]


def decode_sample(
    topic: str, touches_topic: str, raw: bytes | None, max_url_length: int = 0
) -> dict[str, Any]:
    """The aggregation sample of a unique-topic PageEvent or a PageTouch; RecordError if bad."""
    if topic != touches_topic:
        return aggregate.sample_of_event(decode_event(raw, max_url_length))
    touch = decode_record(PageTouch, raw, reason="invalid_touch")
    check_touch(touch, max_url_length)
    return aggregate.sample_of_touch(touch)


def json_key(text: str) -> bytes:
    return json.dumps(text).encode("utf-8")


def faust_partition(key: bytes, partitions: int) -> int:
    """The partition faust's producer gives ``key`` (aiokafka's DefaultPartitioner: murmur2)."""
    every = list(range(partitions))
    return int(DefaultPartitioner()(key, every, every))


def check_event_time(event: Any) -> None:
    """RecordError unless the event's timestamp (the window time) is after 1970 and not in the
    future: a window that far out would never close, or close into a date out of range."""
    at = event.message.timestamp
    if not 0 < at <= time.time() + MAX_FUTURE_S:
        raise RecordError("invalid_time", f"message timestamp {at} is before 1970 or in the future")


@dataclass(frozen=True)
class StatsAgents:
    sampler: Any
    domains: Any
    runs: Any
    domain_1m: Any
    domain_5m: Any
    run_progress: Any


def register(app: Any, settings: Settings, topics: StageTopics) -> StatsAgents:
    conf = settings.streams
    partitions = settings.kafka.partitions
    by_domain = app.topic(f"{conf.app_id}-stats-by-domain", partitions=partitions, internal=True, **RAW)
    by_run = app.topic(f"{conf.app_id}-stats-by-run", partitions=partitions, internal=True, **RAW)
    table_class = type("WindowedStatsTable", (EveryWindowTable, app.conf.Table), {})

    windows = Boundary(app, settings, "stats_windows")

    def windowed(name: str, kind: aggregate.WindowKind, help_: str) -> Any:
        async def on_close(key: Any, value: Any) -> None:
            domain, (start, end) = key
            try:
                stats = aggregate.domain_stats(domain, kind, start, end, value)
            except Exception as exc:  # a crash here would come back at every restart, at this window
                if is_infrastructure(exc):
                    raise
                windows.dead_letter_without_event(
                    exc, str(domain).encode("utf-8"), json.dumps(value).encode()
                )
                return
            await (await topics.stats.send(key=domain.encode("utf-8"), value=stats.to_bytes(), force=True))
            metrics.WINDOWS_CLOSED.labels(kind).inc()

        table = table_class(
            app, name=name, default=dict, partitions=partitions, on_window_close=on_close, help=help_
        )
        return app.tables.add(table)

    expires = conf.stats_grace_s
    domain_1m = windowed("domain_1m", "tumbling_1m", "domain -> 1 min tumbling window totals").tumbling(
        60, expires=expires
    )
    domain_5m = windowed("domain_5m", "hopping_5m_1m", "domain -> 5 min windows hopping by 1 min").hopping(
        300, 60, expires=expires
    )
    domain_1m, domain_5m = domain_1m.relative_to_stream(), domain_5m.relative_to_stream()
    run_progress = app.Table(
        "run_progress", default=dict, partitions=partitions, help="run id -> totals", key_type=str
    )
    touches_name = topics.touches.get_topic_name()
    max_url_length = settings.crawl.max_url_length
    by_domain_name, by_run_name = by_domain.get_topic_name(), by_run.get_topic_name()

    def sample_stats(event: Any) -> Effects:
        sample = decode_sample(event.message.topic, touches_name, event.value, max_url_length)
        value, at_ms = json.dumps(sample).encode("utf-8"), round(sample["t"] * 1000)
        domain, run = json_key(sample["d"]), json_key(sample["r"])
        effects = Effects()
        for topic, key in ((by_domain_name, domain), (by_run_name, run)):
            effects.send(topic, key, value, partition=faust_partition(key, partitions), timestamp_ms=at_ms)
        return effects

    def aggregate_domains(event: Any) -> Effects:
        sample = aggregate.parse_sample(event.value)
        check_event_time(event)

        def apply() -> None:
            for table in (domain_1m, domain_5m):
                table[sample["d"]].apply(lambda acc, s: aggregate.add(acc, s), sample)

        return Effects().after(apply)

    def track_runs(event: Any) -> Effects:
        sample = aggregate.parse_sample(event.value)
        run = sample["r"]
        totals = aggregate.add(run_progress[run], sample)
        return Effects().after(lambda: run_progress.__setitem__(run, totals))

    def agent(channel: Any, name: str, handle: Callable[[Any], Effects]) -> Any:
        return app.agent(channel, name=name)(Boundary(app, settings, name).agent(handle))

    return StatsAgents(
        agent(app.topic(topics.unique.get_topic_name(), touches_name, **RAW), AGENT, sample_stats),
        agent(by_domain, "aggregate_domains", aggregate_domains),
        agent(by_run, "track_runs", track_runs),
        domain_1m,
        domain_5m,
        run_progress,
    )
