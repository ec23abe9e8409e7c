"""Retries of infrastructure failures, in one place: capped exponential backoff with jitter, on tenacity.

Only outages are retried (a database or broker unreachable, a dead letter the broker has not
taken); what a record causes is dead-lettered, never retried. Every long-running loop waits on
its stop event, so ``stop`` ends a wait at once: :func:`retrying` sleeps through
``stop.wait(delay)`` and raises :class:`Stopped` when the event is set.

The backoff is tenacity's exponential wait with "equal jitter" (half the delay fixed, half
random): many workers that failed together do not retry in step. Used by the sink worker
(:mod:`sinks.worker`), the follower's dead letters (:mod:`follow.follow`), and for its delays
by the webhooks (:mod:`follow.webhooks.delivery`, whose loop also honours Retry-After and a
deadline). Reads no settings itself: callers pass their ``*_backoff_*`` values.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import tenacity
from tenacity.wait import wait_base

from crawlstream.errors import CrawlstreamError


class Stopped(CrawlstreamError):
    """The stop event was set while waiting to retry."""


class equal_jitter(wait_base):
    """Exponential backoff from ``initial_s`` doubling up to ``max_s``; each delay is drawn from
    [delay / 2, delay]."""

    def __init__(self, initial_s: float, max_s: float, rng: Callable[[], float] = random.random) -> None:
        self.initial_s, self.max_s, self.rng = initial_s, max_s, rng

    def ceiling(self, attempt: int) -> float:
        """The delay after ``attempt`` failed attempts, before jitter."""
        return float(min(self.initial_s * 2 ** (attempt - 1), self.max_s))

    def delay(self, attempt: int) -> float:
        """The wait after ``attempt`` failed attempts, jittered."""
        return self.ceiling(attempt) * (0.5 + 0.5 * self.rng())

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return self.delay(retry_state.attempt_number)


def retrying(
    *,
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    stop: threading.Event,
    initial_s: float,
    max_s: float,
    before_sleep: Callable[[tenacity.RetryCallState], None] | None = None,
    rng: Callable[[], float] = random.random,
) -> tenacity.Retrying:
    """A ``Retrying`` that retries ``retry_on`` forever with :class:`equal_jitter` backoff until
    ``stop`` is set (then :class:`Stopped`); any other exception propagates at once."""

    def sleep(delay: float) -> None:
        if stop.wait(delay):
            raise Stopped(f"stopped while waiting {delay:.1f}s to retry")

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(retry_on),
        wait=equal_jitter(initial_s, max_s, rng),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
