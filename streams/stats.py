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
       ``streams.stats_close_interval_s``; ``<prefix>.deadletter`` for undecodable inputs.
A late event reopens a closed window and re-emits it with the window's earlier totals (see
:class:`EveryWindowTable`); the stats sink upserts on (domain, window, window_start), so the last
emission of a window is the stored one.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from crawlstream.errors import RecordError
from crawlstream.records import PageTouch
from crawlstream.settings import Settings
from streams import aggregate, metrics
from streams.deadletters import send_dead_letter
from streams.topology import RAW, StageTopics, decode_event

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


def decode_sample(topic: str, touches_topic: str, raw: bytes | None) -> dict[str, Any]:
    """The aggregation sample of a unique-topic PageEvent or a PageTouch; RecordError if bad."""
    if topic != touches_topic:
        return aggregate.sample_of_event(decode_event(raw))
    if raw is None:
        raise RecordError("null_value", "message has no value")
    try:
        return aggregate.sample_of_touch(PageTouch.model_validate_json(raw))
    except ValidationError as exc:
        raise RecordError("invalid_touch", str(exc.errors()[0]["msg"])[:500]) from None


def json_key(text: str) -> bytes:
    return json.dumps(text).encode("utf-8")


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

    def windowed(name: str, kind: aggregate.WindowKind, help_: str) -> Any:
        async def on_close(key: Any, value: Any) -> None:
            domain, (start, end) = key
            stats = aggregate.domain_stats(domain, kind, start, end, value)
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
    max_bytes = settings.kafka.max_message_bytes
    touches_name = topics.touches.get_topic_name()

    async def sample_stats(stream: Any) -> None:
        async for event in stream.events():
            metrics.EVENTS.labels(AGENT).inc()
            try:
                sample = decode_sample(event.message.topic, touches_name, event.value)
            except RecordError as exc:
                await send_dead_letter(topics.dead_letter, AGENT, event, exc, max_bytes)
                continue
            value, at = json.dumps(sample).encode("utf-8"), sample["t"]
            sent = [
                await by_domain.send(key=json_key(sample["d"]), value=value, timestamp=at, force=True),
                await by_run.send(key=json_key(sample["r"]), value=value, timestamp=at, force=True),
            ]
            for acked in sent:
                await acked

    async def aggregate_domains(stream: Any) -> None:
        async for value in stream:
            sample = json.loads(value)
            for table in (domain_1m, domain_5m):
                table[sample["d"]].apply(lambda acc, s: aggregate.add(acc, s), sample)

    async def track_runs(stream: Any) -> None:
        async for value in stream:
            sample = json.loads(value)
            run_progress[sample["r"]] = aggregate.add(run_progress[sample["r"]], sample)

    return StatsAgents(
        app.agent(app.topic(topics.unique.get_topic_name(), touches_name, **RAW), name=AGENT)(sample_stats),
        app.agent(by_domain, name="aggregate_domains")(aggregate_domains),
        app.agent(by_run, name="track_runs")(track_runs),
        domain_1m,
        domain_5m,
        run_progress,
    )
