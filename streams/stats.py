"""Per-domain windowed aggregation and per-run progress: the last agents of the stage.

Samples   each page event and touch the stage outputs is a sample (:mod:`streams.aggregate`),
       made where its outcome is known (:mod:`streams.changes`, :mod:`streams.verdicts`) and
       given to the worker's :class:`SampleBuffer`, which holds its event unacked; every
       ``streams.stats_flush_interval_s`` (or sooner, once no sample came for
       ``FLUSH_TICK_S``: the input paused, e.g. a crawl ended) the buffer sends the samples of
       each (domain, run, minute) summed as one to the app's internal topic
       ``<app_id>-stats-by-domain`` (key: JSON domain, the key encoding of the windowed tables, so
       web views route to the owner) and those of each (run, minute) to ``<app_id>-stats-by-run``
       (key: JSON run id), with the earliest fetch time as the message timestamp (windows are in
       event time, and a minute lies in the same windows whatever its second), and releases the
       events once all are delivered. So the aggregation agents see about one sample per domain
       (run) and minute per flush instead of one per event, and the windowed tables write that
       many changelog records: on a broad crawl (hundreds of hosts, a few pages each per flush)
       the flush interval decides how many samples are summed. A crash before a flush loses
       nothing: the held events were not acked, so they come again.
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
from crawlstream.settings import Settings
from streams import aggregate, metrics
from streams import outputs as streams_outputs
from streams.agent import Boundary, is_infrastructure
from streams.checks import MAX_FUTURE_S
from streams.outputs import Effects, Pending
from streams.topology import RAW, StageTopics

log = logging.getLogger(__name__)
# How often the sample buffer checks whether to flush (see SampleBuffer.tick).
FLUSH_TICK_S = 0.5

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


class SampleBuffer:
    """The samples of a worker's events since the last flush, each holding its event unacked.

    :meth:`hold` (an :meth:`Effects.hold <streams.outputs.Effects.hold>` callback) keeps a sample
    with its event's pending deliveries; :meth:`flush` (a timer, and when ``max_samples`` are
    waiting) sums them per (domain, run, minute) and sends each sum to both stats topics; once all
    are delivered the events are released. Samples of abandoned events (their partition was
    revoked: the next owner replays them) are left out.
    """

    def __init__(
        self, app: Any, settings: Settings, by_domain: str, by_run: str, max_samples: int = 10_000
    ) -> None:
        self.outputs = streams_outputs.of(app)
        self.by_domain, self.by_run = by_domain, by_run
        self.partitions, self.max_samples = settings.kafka.partitions, max_samples
        self.samples: list[tuple[dict[str, Any], Pending]] = []
        self.app = app
        self.interval_s = settings.streams.stats_flush_interval_s
        self.first_at = 0.0  # when the oldest waiting sample came (monotonic)
        self.count_at_tick = 0  # samples waiting at the previous tick

        async def flush_timer() -> None:
            try:
                self.tick(time.monotonic())
            except Exception as exc:  # the producer failed: stop, the held events are replayed
                log.exception("stats: could not send the summed samples; stopping")
                await app.crash(exc)

        tick_s = min(FLUSH_TICK_S, self.interval_s)
        app.timer(tick_s, name="streams.stats.flush")(flush_timer)

    def hold(self, sample: dict[str, Any]) -> Callable[[Pending], object]:
        def held(pending: Pending) -> None:
            if not self.samples:
                self.first_at = time.monotonic()
            self.samples.append((sample, pending))
            if len(self.samples) >= self.max_samples:
                self.flush()

        return held

    def tick(self, now: float) -> None:
        """Flush when the oldest sample waited ``interval_s``, or when none came since the last
        tick (the input paused: nothing more to sum, and the held events should be acked now)."""
        waiting = len(self.samples)
        if waiting and (waiting == self.count_at_tick or now - self.first_at >= self.interval_s):
            self.flush()
        self.count_at_tick = len(self.samples)

    def flush(self) -> None:
        if not self.samples:
            return
        samples, self.samples = self.samples, []
        by_domain: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        by_run: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for sample, pending in samples:
            if not pending.abandoned:
                minute = int(sample["t"] // 60)
                by_domain.setdefault((sample["d"], sample["r"], minute), []).append(sample)
                by_run.setdefault((sample["r"], minute), []).append(sample)
        released = Pending("stats_flush", _Release([pending for _, pending in samples]), None)
        # A run's totals do not need the domain: one sum per run and minute (its "d" is the first
        # sample's, which track_runs ignores), not one per domain.
        for topic, groups, field in ((self.by_domain, by_domain, "d"), (self.by_run, by_run, "r")):
            for group in groups.values():
                summed = aggregate.summed(group)
                key = json_key(summed[field])
                value = json.dumps(summed, separators=(",", ":")).encode("utf-8")
                partition = faust_partition(key, self.partitions)
                at_ms = round(summed["t"] * 1000)
                self.outputs.send(topic, key, value, partition, timestamp_ms=at_ms, pending=released)
        released.closed = True
        if released.count == 0:
            released.finish()


class _Release:
    """The 'event' of a flush: its ack releases the held events whose samples it sent."""

    def __init__(self, held: list[Pending]) -> None:
        self.held = held

    def ack(self) -> None:
        for pending in self.held:
            pending.release()


@dataclass(frozen=True)
class StatsAgents:
    buffer: SampleBuffer
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
    buffer = SampleBuffer(app, settings, by_domain.get_topic_name(), by_run.get_topic_name())

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
        buffer,
        agent(by_domain, "aggregate_domains", aggregate_domains),
        agent(by_run, "track_runs", track_runs),
        domain_1m,
        domain_5m,
        run_progress,
    )
