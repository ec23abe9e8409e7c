"""Offset reads ask again while partition leadership moves (a topic just created, a broker that
died or came back), and fail at once on anything else."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from crawlstream.offsets import Offsets, _retrying


def test_a_read_answered_not_leader_is_asked_again_until_it_answers() -> None:
    answers: list[KafkaError | Offsets] = [
        KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION),
        KafkaError(KafkaError.LEADER_NOT_AVAILABLE),
        {0: 5, 1: 7},
    ]

    def read() -> Offsets:
        answer = answers.pop(0)
        if isinstance(answer, KafkaError):
            raise KafkaException(answer)
        return answer

    assert _retrying("end offsets of t", read, timeout_s=10) == {0: 5, 1: 7}
    assert answers == []


def test_other_errors_are_raised_at_once() -> None:
    calls = []

    def read() -> Offsets:
        calls.append(1)
        raise KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))

    with pytest.raises(KafkaException):
        _retrying("end offsets of t", read, timeout_s=10)
    assert calls == [1]


def test_leadership_that_never_settles_fails_after_the_deadline() -> None:
    calls = []

    def read() -> Offsets:
        calls.append(1)
        raise KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))

    with pytest.raises(KafkaException):
        _retrying("end offsets of t", read, timeout_s=0.5)
    assert len(calls) >= 2
