"""commit_start_where_absent: what a stream worker commits for a new group before faust joins."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from crawlstream import offsets
from crawlstream.settings import Settings


class FakeConsumer:
    """Topic ``t`` has partitions 0 (committed at 4) and 1 (nothing committed, log starts at 2)."""

    def __init__(self, failures: list[KafkaError], commit_error: KafkaError | None = None) -> None:
        self.failures, self.commit_error = failures, commit_error
        self.committed_offsets: list[TopicPartition] = []

    def list_topics(self, timeout: float) -> Any:
        return SimpleNamespace(topics={"t": SimpleNamespace(partitions={0: None, 1: None})})

    def committed(self, parts: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        if self.failures:
            raise KafkaException(self.failures.pop(0))
        return [TopicPartition(tp.topic, tp.partition, 4 if tp.partition == 0 else -1001) for tp in parts]

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        return 2, 9

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        if self.commit_error is not None:
            raise KafkaException(self.commit_error)
        self.committed_offsets += offsets


def use(monkeypatch: pytest.MonkeyPatch, consumer: FakeConsumer) -> None:
    @contextmanager
    def inspector(settings: Settings, group: str = "", stage: str = "admin") -> Iterator[FakeConsumer]:
        yield consumer

    monkeypatch.setattr(offsets, "_inspector", inspector)
    monkeypatch.setattr(offsets.time, "sleep", lambda _s: None)


def test_fills_only_partitions_without_an_offset_after_the_coordinator_is_ready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    consumer = FakeConsumer(
        [KafkaError(KafkaError.NOT_COORDINATOR), KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS)]
    )
    use(monkeypatch, consumer)
    assert offsets.commit_start_where_absent(Settings(_env_file=None), "g", ["t", "missing"]) == {("t", 1): 2}
    assert [(tp.topic, tp.partition, tp.offset) for tp in consumer.committed_offsets] == [("t", 1, 2)]


def test_a_group_with_members_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    consumer = FakeConsumer([], commit_error=KafkaError(KafkaError.UNKNOWN_MEMBER_ID))
    use(monkeypatch, consumer)
    assert offsets.commit_start_where_absent(Settings(_env_file=None), "g", ["t"]) == {}


def test_other_errors_and_a_coordinator_that_never_comes_are_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    use(monkeypatch, FakeConsumer([KafkaError(KafkaError._TRANSPORT)]))
    with pytest.raises(KafkaException):
        offsets.commit_start_where_absent(Settings(_env_file=None), "g", ["t"])
    use(monkeypatch, FakeConsumer([KafkaError(KafkaError.NOT_COORDINATOR)] * 3))
    with pytest.raises(KafkaException):
        offsets.commit_start_where_absent(Settings(_env_file=None), "g", ["t"], timeout_s=-1)


def test_a_topic_whose_leaders_are_not_elected_yet_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker's internal topics are created just before: their first answers lack a leader.
    consumer = FakeConsumer(
        [KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION), KafkaError(KafkaError.LEADER_NOT_AVAILABLE)]
    )
    use(monkeypatch, consumer)
    assert offsets.commit_start_where_absent(Settings(_env_file=None), "g", ["t"]) == {("t", 1): 2}
