"""crawlstream.retrying: backoff with equal jitter, only the named failures, interrupted by stop."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from crawlstream.retrying import Stopped, equal_jitter, retrying


class RecordingStop(threading.Event):
    """A stop event whose waits return at once and are recorded (set() makes them say stop)."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(float(timeout or 0))
        return self.is_set()


class Outage(Exception):
    pass


def flaky(failures: int, exc: type[Exception] = Outage) -> tuple[list[int], object]:
    calls: list[int] = []

    def action() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise exc("down")
        return "ok"

    return calls, action


@pytest.mark.parametrize(("rng", "expected"), [(0.0, [0.5, 1.0, 2.0, 2.5, 2.5]), (1.0, [1, 2, 4, 5, 5])])
def test_delays_double_up_to_the_cap_with_equal_jitter(rng: float, expected: list[float]) -> None:
    stop = RecordingStop()
    calls, action = flaky(5)
    retry = retrying(retry_on=Outage, stop=stop, initial_s=1.0, max_s=5.0, rng=lambda: rng)
    assert retry(action) == "ok"  # type: ignore[operator]
    assert len(calls) == 6
    assert stop.waits == expected


def test_jitter_stays_within_half_and_full_delay() -> None:
    wait = equal_jitter(1.0, 30.0)
    for attempt in range(1, 10):
        ceiling = min(2 ** (attempt - 1), 30.0)
        state = SimpleNamespace(attempt_number=attempt)
        delays = [wait(state) for _ in range(200)]  # type: ignore[arg-type]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 10  # jittered, not constant


def test_other_exceptions_are_not_retried() -> None:
    stop = RecordingStop()
    calls, action = flaky(1, exc=ValueError)
    with pytest.raises(ValueError, match="down"):
        retrying(retry_on=Outage, stop=stop, initial_s=1.0, max_s=5.0)(action)  # type: ignore[arg-type]
    assert (len(calls), stop.waits) == (1, [])


def test_a_stop_ends_the_wait_with_stopped() -> None:
    stop = RecordingStop()
    stop.set()
    calls, action = flaky(3)
    with pytest.raises(Stopped):
        retrying(retry_on=Outage, stop=stop, initial_s=1.0, max_s=5.0)(action)  # type: ignore[arg-type]
    assert len(calls) == 1


def test_before_sleep_sees_the_failure_and_the_delay() -> None:
    seen: list[tuple[int, str, float]] = []
    _, action = flaky(2)
    retry = retrying(
        retry_on=Outage,
        stop=RecordingStop(),
        initial_s=1.0,
        max_s=5.0,
        rng=lambda: 1.0,
        before_sleep=lambda s: seen.append(
            (s.attempt_number, str(s.outcome.exception() if s.outcome else None), s.upcoming_sleep)
        ),
    )
    retry(action)  # type: ignore[operator]
    assert seen == [(1, "down", 1.0), (2, "down", 2.0)]
