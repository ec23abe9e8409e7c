"""A faust app with the whole stage registered and every output mocked (no broker, memory store).

The stage's librdkafka producer (:class:`streams.outputs.Outputs`) is a :class:`FakeProducer`
that records (topic, key, value) and reports each record delivered at once (or refuses records
as a test tells it: ``refuse``); ``.send`` of each stage topic (closed stats windows) records the
same way; faust's own changelog ``send_soon`` is mocked. Each test runs its own event loop and app.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any
from unittest.mock import AsyncMock, MagicMock

import faust
from confluent_kafka import KafkaError, KafkaException
from prometheus_client import REGISTRY

from crawlstream.records import DedupProbe, PageEvent, PageRecord
from crawlstream.settings import CrawlSettings, FrontierSettings, KafkaSettings, Settings, StreamsSettings
from crawlstream.topics import catalog
from streams import changes, dedup, frontier, ledger, outputs, stats, verdicts
from streams.app import new_app
from streams.recrawl import RecrawlPolicy
from streams.topology import declare_topics

FETCHED = datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC)


def page(url: str, body: str = "<p>hello</p>", **fields: Any) -> PageRecord:
    return PageRecord(
        url=url, canonical_url=url, final_url=url, status=200, fetched_at=FETCHED, body=body, **fields
    )


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class FakeMessage:
    def __init__(
        self, topic: str, partition: int, offset: int, key: bytes | None = None, value: bytes | None = None
    ) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset
        self._key, self._value = key, value

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


class FakeProducer:
    """confluent_kafka.Producer's produce/poll: records, then delivers at once.

    ``refuse``: (topic name, KafkaError code, sync) -> records to that topic are refused with that
    error, raised by ``produce`` (sync) or reported to the delivery callback.
    """

    def __init__(self, names: dict[str, str], sent: list[tuple[str, bytes, bytes]]) -> None:
        self.names, self.sent = names, sent
        self.changelog: list[tuple[str, int, bytes, bytes | None]] = []
        self.timestamps: list[tuple[str, int | None]] = []
        self.partitions: dict[str, list[int]] = {}
        self.refuse: dict[str, tuple[int, bool]] = {}
        self.refused: list[tuple[str, bytes | None]] = []

    def produce(
        self,
        topic: str,
        *,
        value: bytes | None,
        key: bytes,
        on_delivery: Any,
        partition: int = -1,
        timestamp: int | None = None,
    ) -> None:
        name = self.names.get(topic, topic)
        msg = FakeMessage(topic, max(partition, 0), len(self.changelog) + len(self.sent), key, value)
        if name in self.refuse:
            code, sync = self.refuse[name]
            if sync:
                raise KafkaException(KafkaError(code))
            self.refused.append((name, key))
            on_delivery(KafkaError(code), msg)
            return
        if topic in self.names:
            assert value is not None
            self.sent.append((name, key, value))
            self.timestamps.append((name, timestamp))
            self.partitions.setdefault(name, []).append(partition)
        else:
            self.changelog.append((topic, partition, key, value))
        on_delivery(None, msg)

    def poll(self, timeout: float = 0) -> int:
        return 0


_APPS: list[faust.App] = []


def tracked(app: faust.App) -> faust.App:
    """``app``, closed by :func:`close_apps` after the test (tests/unit/streams/conftest.py)."""
    _APPS.append(app)
    return app


def close_apps() -> None:
    """Close the event loop of each tracked app's consumer thread. An agent iterated through
    ``test_context`` builds the app's consumer, whose consumer thread (a mode ``ServiceThread``)
    creates its own event loop at once; only the thread's stop closes it, and in a test the thread
    never starts, so the loop would be left for the garbage collector (a ResourceWarning)."""
    while _APPS:
        consumer = _APPS.pop()._consumer  # None unless something built it
        thread = getattr(consumer, "_thread", None)
        if thread is not None and not thread.thread_loop.is_closed():
            thread.thread_loop.close()


class Harness:
    def __init__(
        self, settings: Settings | None = None, extra: Callable[[Any, Settings, Any], Any] | None = None
    ) -> None:
        """``extra(app, settings, topics)``: one more agent to register (kept as ``.extra``)."""
        self.settings = settings = settings or Settings(
            _env_file=None,
            kafka=KafkaSettings(topic_prefix="unit", partitions=3),
            streams=StreamsSettings(app_id="unit-streams", store="memory://"),
            # Every change of a run's progress published: tests read the latest state from it.
            frontier=FrontierSettings(progress_interval_s=0),
        )
        self.app = tracked(new_app(settings))
        self.topics = declare_topics(self.app, settings)
        self.stats = stats.register(self.app, settings, self.topics)
        self.awaiting = verdicts.AwaitingPages()
        sampler = self.stats.buffer.hold
        self.changes = changes.register(
            self.app, settings, self.topics, RecrawlPolicy(), self.awaiting, sampler
        )
        self.dedup = dedup.register(self.app, settings, self.topics)
        self.verdicts = verdicts.register(self.app, settings, self.topics, self.awaiting, sampler)
        self.frontier = frontier.register(self.app, settings, self.topics, self.changes.urls)
        self.ledger = ledger.register(self.app, settings, self.topics)
        self.extra = None if extra is None else extra(self.app, settings, self.topics)
        self.app.finalize()
        self.sent: list[tuple[str, bytes, bytes]] = []
        names = {getattr(self.topics, n).get_topic_name(): n for n in self.topics.__dataclass_fields__}
        app_id = settings.streams.app_id
        names |= {f"{app_id}-stats-by-domain": "by_domain", f"{app_id}-stats-by-run": "by_run"}
        specs = catalog(settings)
        names |= {specs.frontier_ledger.name: "ledger", specs.frontier_progress.name: "progress"}
        self.producer = FakeProducer(names, self.sent)
        outputs.of(self.app)._producer = self.producer  # type: ignore[assignment]
        for name in ("unique", "touches", "by_band", "verdicts", "dead_letter", "requests", "stats"):
            topic = getattr(self.topics, name)
            topic.send = AsyncMock(side_effect=self._sender(name))
        self.crashes: list[BaseException] = []
        self.app.crash = self._crash  # type: ignore[method-assign]
        tables = (
            self.changes.urls,
            self.dedup.index,
            self.frontier.seen,
            self.frontier.urls,
            self.ledger.runs,
            self.ledger.urls,
            self.ledger.hosts,
        )
        for table in (
            *tables,
            self.stats.domain_1m.table,
            self.stats.domain_5m.table,
            self.stats.run_progress,
        ):
            table.changelog_topic.send_soon = MagicMock()

    async def _crash(self, reason: BaseException) -> None:
        self.crashes.append(reason)

    def _sender(self, name: str) -> Callable[..., Awaitable[asyncio.Future[None]]]:
        async def send(*, key: bytes, value: bytes, force: bool = False) -> asyncio.Future[None]:
            self.sent.append((name, key, value))
            acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            acked.set_result(None)
            return acked

        return send

    def on(self, topic: str) -> list[tuple[bytes, bytes]]:
        return [(key, value) for name, key, value in self.sent if name == topic]

    def held(self) -> list[PageEvent]:
        """The page events waiting for their dedup verdict, in raw (partition, offset) order."""
        return [self.awaiting.pages[key].event for key in sorted(self.awaiting.pages)]

    def probes(self, topic: str = "by_band") -> list[DedupProbe]:
        return [DedupProbe.model_validate_json(value) for _, value in self.on(topic)]


async def put(
    agent: Any,
    value: bytes | None,
    key: bytes | None,
    *,
    partition: int = 0,
    topic: str | None = None,
    timestamp: float | None = None,
) -> None:
    """``agent.put`` with the message's topic (an agent reading several topics) and timestamp."""
    channel = agent.stream().channel
    message = agent.to_message(key, value, partition=partition, offset=agent.sent_offset, timestamp=timestamp)
    if topic is not None:
        message.topic = topic
    await channel.put(await channel.decode(message))
    agent.sent_offset += 1
    async with agent.new_value_processed:
        await agent.new_value_processed.wait()
        if agent._crash_reason:
            raise agent._crash_reason


def settings_with(max_message_bytes: int = 8 * 1024 * 1024, **crawl: Any) -> Settings:
    return Settings(
        _env_file=None,
        kafka=KafkaSettings(topic_prefix="unit", partitions=3, max_message_bytes=max_message_bytes),
        streams=StreamsSettings(app_id="unit-streams", store="memory://"),
        crawl=CrawlSettings(**crawl),
    )


def run(
    agent_of: Callable[[Harness], Any],
    scenario: Callable[[Harness, Any], Awaitable[None]],
    settings: Settings | None = None,
) -> Harness:
    async def main() -> Harness:
        harness = Harness(settings)
        channel = harness.app.channel(key_type=bytes, value_type=bytes)
        async with agent_of(harness).test_context(channel=channel) as agent:
            await scenario(harness, agent)
        return harness

    return asyncio.run(main())


def run_agents(
    agents_of: list[Callable[[Harness], Any]],
    scenario: Callable[[Harness, list[Any]], Awaitable[None]],
    settings: Settings | None = None,
) -> Harness:
    """:func:`run` for a scenario that feeds several agents (each through its own test context)."""

    async def main() -> Harness:
        harness = Harness(settings)
        async with AsyncExitStack() as stack:
            agents = []
            for agent_of in agents_of:
                channel = harness.app.channel(key_type=bytes, value_type=bytes)
                agents.append(
                    await stack.enter_async_context(agent_of(harness).test_context(channel=channel))
                )
            await scenario(harness, agents)
        return harness

    return asyncio.run(main())
