"""The dedup agent through faust's ``agent.test_context()``: memory store, no broker.

What leaves the process is mocked: ``.send`` of the unique and dead-letter topics and the
table's changelog ``send_soon``. Each test runs its own event loop and app.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from unittest.mock import AsyncMock, MagicMock

import pytest
from prometheus_client import REGISTRY

from crawlstream.records import DeadLetter, PageRecord
from crawlstream.settings import KafkaSettings, Settings, StreamsSettings
from streams import dedup
from streams.app import new_app

URL = "https://example.org/docs/"


def page(url: str = URL) -> PageRecord:
    return PageRecord(url=url, canonical_url=url, final_url=url, status=200, fetched_at=datetime.now(UTC))


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Harness:
    """An app with the dedup stage registered and its outputs mocked."""

    def __init__(self) -> None:
        settings = Settings(
            _env_file=None,
            kafka=KafkaSettings(topic_prefix="unit", partitions=3),
            streams=StreamsSettings(app_id="unit-streams", store="memory://"),
        )
        self.app = new_app(settings)
        self.stage = dedup.register(self.app, settings)
        self.app.finalize()
        self.forwarded: list[tuple[bytes, bytes]] = []
        # True when the URL was already in the table at the moment its forward was sent.
        self.table_had_url_at_send: list[bool] = []
        self.stage.unique_topic.send = AsyncMock(side_effect=self._forward)
        self.stage.dead_letter_topic.send = AsyncMock()
        self.changelog = MagicMock()
        self.stage.seen_urls.changelog_topic.send_soon = self.changelog

    async def _forward(self, *, key: bytes, value: bytes, force: bool) -> asyncio.Future[None]:
        assert force, "a forward must be sent now, not attached to the commit"
        self.table_had_url_at_send.append(key.decode() in self.stage.seen_urls)
        self.forwarded.append((key, value))
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        acked.set_result(None)
        return acked

    def dead_letters(self) -> list[tuple[bytes | None, DeadLetter]]:
        return [
            (c.kwargs["key"], DeadLetter.model_validate_json(c.kwargs["value"]))
            for c in self.stage.dead_letter_topic.send.call_args_list
        ]


def run(scenario: Callable[[Harness, Any], Awaitable[None]]) -> Harness:
    async def main() -> Harness:
        harness = Harness()
        channel = harness.app.channel(key_type=bytes, value_type=bytes)
        async with harness.stage.agent.test_context(channel=channel) as agent:
            await scenario(harness, agent)
        return harness

    return asyncio.run(main())


@pytest.fixture
def counters() -> Callable[[], dict[str, float]]:
    def read() -> dict[str, float]:
        return {
            "events": sample("streams_events_total", agent="dedup_pages"),
            "unique": sample("streams_unique_total"),
            "duplicates": sample("streams_duplicates_total", kind="url"),
            "invalid_json": sample("streams_dead_letters_total", reason="invalid_json"),
            "key_mismatch": sample("streams_dead_letters_total", reason="key_mismatch"),
        }

    before = read()
    return lambda: {k: v - before[k] for k, v in read().items()}


def test_new_url_is_forwarded_with_original_bytes_and_key(counters: Callable[[], dict[str, float]]) -> None:
    # Bytes a re-encode would not reproduce (key order, spacing): the forward must be byte-identical.
    original = json.dumps(json.loads(page().to_bytes()), indent=1, sort_keys=True).encode()

    async def scenario(h: Harness, agent: Any) -> None:
        await agent.put(original, key=URL.encode(), partition=1)

    h = run(scenario)
    assert h.forwarded == [(URL.encode(), original)]
    assert h.table_had_url_at_send == [False], "table written before the forward was acknowledged"
    assert URL in h.stage.seen_urls
    assert h.changelog.call_args.kwargs["key"] == URL
    assert h.changelog.call_args.kwargs["partition"] == 1  # co-partitioned with the raw event
    assert h.dead_letters() == []
    assert counters() == {"events": 1, "unique": 1, "duplicates": 0, "invalid_json": 0, "key_mismatch": 0}


def test_repeat_url_is_dropped_and_counted(counters: Callable[[], dict[str, float]]) -> None:
    async def scenario(h: Harness, agent: Any) -> None:
        for _ in range(3):
            await agent.put(page().to_bytes(), key=URL.encode())

    h = run(scenario)
    assert [key for key, _ in h.forwarded] == [URL.encode()]
    assert h.changelog.call_count == 1
    assert counters()["duplicates"] == 2
    assert counters()["unique"] == 1


def test_malformed_json_goes_to_dead_letter_with_origin(counters: Callable[[], dict[str, float]]) -> None:
    async def scenario(h: Harness, agent: Any) -> None:
        await agent.put(b"{oops", key=b"some-key", partition=2)

    h = run(scenario)
    [(key, letter)] = h.dead_letters()
    assert key == b"some-key"
    assert (letter.stage, letter.reason) == ("streams", "invalid_json")
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("unit.pages.raw", 2, 0)
    assert letter.original_value() == b"{oops"
    assert letter.key_b64 == base64.b64encode(b"some-key").decode()
    assert h.forwarded == []
    assert counters()["invalid_json"] == 1


def test_key_mismatch_goes_to_dead_letter(counters: Callable[[], dict[str, float]]) -> None:
    value = page().to_bytes()

    async def scenario(h: Harness, agent: Any) -> None:
        await agent.put(value, key=b"https://example.org/other")

    h = run(scenario)
    [(key, letter)] = h.dead_letters()
    assert key == b"https://example.org/other"
    assert letter.reason == "key_mismatch"
    assert letter.original_value() == value
    assert h.forwarded == []
    assert URL not in h.stage.seen_urls
    assert counters()["key_mismatch"] == 1


def test_agent_continues_after_bad_records(counters: Callable[[], dict[str, float]]) -> None:
    other = "https://example.org/other"

    async def scenario(h: Harness, agent: Any) -> None:
        await agent.put(b"\xff\xfe not utf-8", key=URL.encode())
        await agent.put(page().to_bytes(), key=b"wrong")
        await agent.put(page().to_bytes(), key=URL.encode())
        await agent.put(page(other).to_bytes(), key=other.encode())

    h = run(scenario)
    assert [key for key, _ in h.forwarded] == [URL.encode(), other.encode()]
    assert [letter.reason for _, letter in h.dead_letters()] == ["invalid_json", "key_mismatch"]
    assert counters()["events"] == 4
