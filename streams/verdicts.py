"""Pages waiting for their dedup verdict, and the agent that completes them.

:mod:`streams.changes` keeps each new or changed page with text here (:class:`AwaitingPages`,
by its raw partition and offset), with its raw event held unacked, and sends only a
:class:`~crawlstream.records.DedupProbe` through the dedup hops (:mod:`streams.dedup`).

Reads  ``<prefix>.streams.dedup-verdicts`` (key: URL, value: the probe after its last hop, in
       partition p when its page came from partition p of the raw topic; faust assigns partition
       p of every topic with the same partition count to one worker, so the verdict comes to the
       worker holding its page).
Writes ``<prefix>.pages.unique`` (key: canonical URL, PageEvent) with the verdict's marks
       (``duplicate_of``, ``near_duplicate_of``, ``near_distance``), on behalf of the raw event,
       which is acked once that is delivered; its stats sample goes to the sample buffer
       (:mod:`streams.stats`). ``<prefix>.deadletter`` for records it cannot handle.

A verdict without a waiting page (its worker restarted or lost the partition: the raw event is
replayed and probes again) is ignored and counted. A page waiting longer than
``streams.dedup_timeout_s`` (its verdict lost: nothing in the stage drops one, but a partition
must never stall on it) is sent without marks, counted and logged. When partitions are revoked,
their waiting pages are forgotten: their raw events were not acked, so the next owner replays them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crawlstream.deadletters import fits
from crawlstream.records import DedupProbe, PageEvent
from crawlstream.settings import Settings
from streams import metrics
from streams import outputs as streams_outputs
from streams.agent import Boundary
from streams.outputs import Effects, Pending
from streams.topology import StageTopics, decode_probe

log = logging.getLogger(__name__)
AGENT = "apply_verdicts"
Sampler = Callable[[dict[str, Any]], Callable[[Pending], object]]


@dataclass
class Awaiting:
    """A page held for its verdict: the event, its encoding without marks, its stats sample."""

    event: PageEvent
    value: bytes
    sample: dict[str, Any] | None
    pending: Pending
    since: float


class AwaitingPages:
    """The pages of this worker waiting for their verdict, by raw (partition, offset)."""

    def __init__(self) -> None:
        self.pages: dict[tuple[int, int], Awaiting] = {}
        self.bytes = 0

    def hold(
        self, partition: int, offset: int, event: PageEvent, value: bytes, sample: dict[str, Any] | None
    ) -> Callable[[Pending], None]:
        """An :meth:`Effects.hold <streams.outputs.Effects.hold>` keeping the page until its verdict."""

        def held(pending: Pending) -> None:
            replaced = self.pages.pop((partition, offset), None)
            if replaced is not None:  # the same event again: only the newer attempt may ack it
                self.bytes -= len(replaced.value)
                replaced.pending.abandoned = True
                replaced.pending.release()
            self.pages[(partition, offset)] = Awaiting(event, value, sample, pending, time.monotonic())
            self.bytes += len(value)

        return held

    def take(self, verdict: DedupProbe) -> Awaiting | None:
        """The page this verdict is for, if it waits here (same partition, offset and URL)."""
        key = (verdict.partition, verdict.offset)
        waiting = self.pages.get(key)
        if waiting is None or waiting.event.page.canonical_url != verdict.url:
            return None
        del self.pages[key]
        self.bytes -= len(waiting.value)
        return waiting

    def expired(self, timeout_s: float) -> list[Awaiting]:
        """Remove and return the pages that have waited longer than ``timeout_s``."""
        now, out = time.monotonic(), []
        for key, waiting in list(self.pages.items()):
            if now - waiting.since > timeout_s:
                out.append(self.pages.pop(key))
                self.bytes -= len(waiting.value)
        return out

    def forget(self, raw_partitions: set[int]) -> int:
        """Drop the pages of revoked raw partitions (their events are replayed elsewhere)."""
        gone = [key for key in self.pages if key[0] in raw_partitions]
        for key in gone:
            self.bytes -= len(self.pages.pop(key).value)
        return len(gone)


def marked(event: PageEvent, verdict: DedupProbe) -> PageEvent:
    """The page event with the verdict's marks (the event itself when there are none)."""
    marks = {
        "duplicate_of": verdict.duplicate_of,
        "near_duplicate_of": verdict.near_duplicate_of,
        "near_distance": verdict.near_distance,
    }
    if not any(value is not None for value in marks.values()):
        return event
    return event.model_copy(update=marks)


def page_output(
    effects: Effects,
    unique: str,
    event: PageEvent,
    value: bytes,
    sample: dict[str, Any] | None,
    sampler: Sampler | None,
) -> Effects:
    """``event`` (encoded as ``value``) to the unique topic, and its sample to the buffer."""
    effects.send(unique, event.page.canonical_url.encode("utf-8"), value)
    if sample is not None and sampler is not None:
        if event.duplicate_of is not None:
            sample = {**sample, "duplicates": 1}
        if event.near_duplicate_of is not None:
            sample = {**sample, "near_duplicates": 1}
        effects.hold(sampler(sample))
    return effects


@dataclass(frozen=True)
class VerdictsAgent:
    agent: Any
    awaiting: AwaitingPages


def register(
    app: Any, settings: Settings, topics: StageTopics, awaiting: AwaitingPages, sampler: Sampler | None
) -> VerdictsAgent:
    outputs = streams_outputs.of(app)
    unique = topics.unique.get_topic_name()
    raw = topics.raw.get_topic_name()
    max_url_length = settings.crawl.max_url_length
    timeout_s = settings.streams.dedup_timeout_s
    metrics.watch_awaiting(app, awaiting)

    def finish(waiting: Awaiting, verdict: DedupProbe | None) -> Effects:
        """The page's outputs on behalf of its held raw event, which they then release."""
        event = waiting.event if verdict is None else marked(waiting.event, verdict)
        value = waiting.value
        if event is not waiting.event:
            value = event.to_bytes()
            if not fits(event.page.canonical_url.encode("utf-8"), value, outputs.limit(unique)):
                # detect_changes kept room for the marks; should it not suffice, the page goes
                # out as it was checked there rather than being lost.
                log.error("%s: %s too large with its marks; sent without", AGENT, event.page.canonical_url)
                metrics.VERDICTS.labels("too_large").inc()
                event, value = waiting.event, waiting.value
        effects = Effects(behalf=waiting.pending)
        return page_output(effects, unique, event, value, waiting.sample, sampler).release(waiting.pending)

    def complete(event: Any) -> Effects:
        verdict = decode_probe(event.value, max_url_length)
        waiting = awaiting.take(verdict)
        if waiting is None:
            return Effects().after(metrics.VERDICTS.labels("stale").inc)
        return finish(waiting, verdict).after(metrics.VERDICTS.labels("applied").inc)

    async def expire() -> None:
        for waiting in awaiting.expired(timeout_s):
            log.error(
                "%s: no verdict for %s (raw offset %s) after %ss; sending it without dedup marks",
                AGENT,
                waiting.event.page.canonical_url,
                waiting.pending.event.message.offset,
                timeout_s,
            )
            metrics.VERDICTS.labels("timed_out").inc()
            try:
                outputs.apply(finish(waiting, None))
            except Exception as exc:
                await app.crash(exc)

    async def on_revoked(sender: Any, revoked: Any, **_kwargs: Any) -> None:
        awaiting.forget({tp.partition for tp in revoked if tp.topic == raw})

    app.timer(max(1.0, min(timeout_s / 4, 30.0)), name="streams.verdicts.expire")(expire)
    app.on_partitions_revoked.connect(on_revoked)
    boundary = Boundary(app, settings, AGENT)
    return VerdictsAgent(app.agent(topics.verdicts, name=AGENT)(boundary.agent(complete)), awaiting)
