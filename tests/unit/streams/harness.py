"""A faust app with the whole stage registered and every output mocked (no broker, memory store).

The stage's librdkafka producer (:class:`streams.outputs.Outputs`) is a :class:`FakeProducer`
that records (topic, key, value) and reports each record delivered at once; ``.send`` of each
stage topic (dead letters) records the same way; faust's own changelog ``send_soon`` is mocked.
Each test runs its own event loop and app.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from unittest.mock import AsyncMock, MagicMock

from prometheus_client import REGISTRY

from crawlstream.records import PageRecord
from crawlstream.settings import KafkaSettings, Settings, StreamsSettings
from streams import changes, content, frontier, near, outputs
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
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


class FakeProducer:
    """confluent_kafka.Producer's produce/poll: records, then delivers at once."""

    def __init__(self, names: dict[str, str], sent: list[tuple[str, bytes, bytes]]) -> None:
        self.names, self.sent = names, sent
        self.changelog: list[tuple[str, int, bytes, bytes | None]] = []

    def produce(
        self, topic: str, *, value: bytes | None, key: bytes, on_delivery: Any, partition: int = -1
    ) -> None:
        if topic in self.names:
            assert value is not None
            self.sent.append((self.names[topic], key, value))
        else:
            self.changelog.append((topic, partition, key, value))
        on_delivery(None, FakeMessage(topic, max(partition, 0), len(self.changelog) + len(self.sent)))

    def poll(self, timeout: float = 0) -> int:
        return 0


class Harness:
    def __init__(self) -> None:
        settings = Settings(
            _env_file=None,
            kafka=KafkaSettings(topic_prefix="unit", partitions=3),
            streams=StreamsSettings(app_id="unit-streams", store="memory://"),
        )
        self.app = new_app(settings)
        self.topics = declare_topics(self.app, settings)
        self.changes = changes.register(self.app, settings, self.topics, RecrawlPolicy())
        self.content = content.register(self.app, settings, self.topics)
        self.near = near.register(self.app, settings, self.topics)
        self.frontier = frontier.register(self.app, self.topics, self.changes.urls, 1 << 20)
        self.app.finalize()
        self.sent: list[tuple[str, bytes, bytes]] = []
        names = {getattr(self.topics, n).get_topic_name(): n for n in self.topics.__dataclass_fields__}
        self.producer = FakeProducer(names, self.sent)
        outputs.of(self.app)._producer = self.producer  # type: ignore[assignment]
        for name in ("unique", "touches", "by_content", "by_band", "dead_letter", "requests", "stats"):
            topic = getattr(self.topics, name)
            topic.send = AsyncMock(side_effect=self._sender(name))
        tables = (self.changes.urls, self.content.content_first, self.near.near_bands, self.frontier.seen)
        for table in tables:
            table.changelog_topic.send_soon = MagicMock()

    def _sender(self, name: str) -> Callable[..., Awaitable[asyncio.Future[None]]]:
        async def send(*, key: bytes, value: bytes, force: bool = False) -> asyncio.Future[None]:
            self.sent.append((name, key, value))
            acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            acked.set_result(None)
            return acked

        return send

    def on(self, topic: str) -> list[tuple[bytes, bytes]]:
        return [(key, value) for name, key, value in self.sent if name == topic]


def run(agent_of: Callable[[Harness], Any], scenario: Callable[[Harness, Any], Awaitable[None]]) -> Harness:
    async def main() -> Harness:
        harness = Harness()
        channel = harness.app.channel(key_type=bytes, value_type=bytes)
        async with agent_of(harness).test_context(channel=channel) as agent:
            await scenario(harness, agent)
        return harness

    return asyncio.run(main())
