"""Ends a table recovery that waits for changelog records the broker has deleted meanwhile.

Where it sits: in every stream worker, beside faust's table recovery (faust/tables/recovery.py),
which a worker runs after each rebalance before its agents may process their partitions.

faust notes, when recovery starts, each active changelog partition's last offset (its highwater)
and leaves recovery only once it has read the record at that offset. The windowed stats tables'
changelogs delete records (``cleanup.policy=compact,delete``, ``retention.ms`` = the windows'
expiry, ``streams.stats_grace_s``): when the broker's retention check deletes a changelog's tail
while a worker is reading it, the worker's fetch is out of range, it resets to the new log start,
past the highwater, and the record at the highwater never comes. The worker then stays in
recovery for good: its stream partitions stay paused and no record of them is processed (the
2+2 workers e2e saw a joining worker wait 5 minutes on ``domain_5m-changelog`` "need 18692, have
16962" while its share of the crawl sat unprocessed). faust fixes this up only for transactional
apps (``detect_aborted_tx`` in ``Recovery._slurp_changelogs``).

:class:`DeletedTailGuard` applies the same fix-up here, checked every ``CHECK_INTERVAL_S``: when
the changelog queue was empty at two checks in a row and a partition's consumer position is past
its highwater with neither its read offset nor its position moving in between, every record up to
the highwater was either read or deleted, so the partition counts as read to its highwater and
faust's own recovery loop ends the recovery at its next idle check (about 5 s). Nothing is
skipped that still exists: a record still in the queue or the fetch buffer keeps the queue busy or
the offset moving.

The consumer may also have no position at all for such a partition (aiokafka waits on the offset
reset after the out-of-range fetch; the 2+2 workers e2e saw a joining worker make no progress on
``domain_5m-changelog`` and ``domain_1m-changelog`` for 5 minutes): then the broker is asked for
the partition's log start, and when that is past the highwater every record up to the highwater is
deleted, and the same two idle checks release it. Reads the faust internals through
:mod:`streams.faustcompat`; no settings.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import TP

from streams import faustcompat

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 5.0
POSITION_TIMEOUT_S = 5.0


@dataclass
class DeletedTailGuard:
    """Releases active changelog partitions whose unread tail no longer exists (see module)."""

    app: Any
    # tp -> (read offset, consumer position) at the previous check that saw an idle queue.
    _previous: dict[TP, tuple[int, int]] = field(default_factory=dict)

    async def check(self) -> list[TP]:
        """One check; returns the partitions it marked read to their highwater."""
        state = faustcompat.recovery_state(self.app)
        if state is None:
            self._previous = {}
            return []
        now: dict[TP, tuple[int, int]] = {}
        released: list[TP] = []
        for tp, (offset, highwater) in state.behind.items():
            position = await self._position(tp)
            if position is None or position <= highwater:
                # No position past the highwater: the records up to it may still come, unless the
                # broker has deleted them all (its log start is past the highwater).
                position = await self._log_start(tp)
                if position is None or position <= highwater:
                    continue
            if self._previous.get(tp) == (offset, position):
                faustcompat.mark_recovered(self.app, tp, highwater)
                released.append(tp)
                log.warning(
                    "changelog %s[%d]: records %d..%d were deleted while this worker restored them "
                    "(position or log start %d is past them); counting the partition as restored",
                    tp.topic,
                    tp.partition,
                    offset + 1,
                    highwater,
                    position,
                )
            else:
                now[tp] = (offset, position)
        self._previous = now
        return released

    async def _position(self, tp: TP) -> int | None:
        try:
            return await asyncio.wait_for(self.app.consumer.position(tp), POSITION_TIMEOUT_S)
        except Exception as exc:  # not assigned any more, rebalancing, timeout: ask next time
            log.debug("no position for %s: %r", tp, exc)
            return None

    async def _log_start(self, tp: TP) -> int | None:
        try:
            earliest = await asyncio.wait_for(self.app.consumer.earliest_offsets(tp), POSITION_TIMEOUT_S)
        except Exception as exc:  # broker unreachable, timeout: ask next time
            log.debug("no log start for %s: %r", tp, exc)
            return None
        start: int | None = earliest.get(tp)
        return start


def register(app: faust.App) -> DeletedTailGuard:
    """Run the guard on ``app``'s timer."""
    guard = DeletedTailGuard(app)

    async def check_recovery_tails() -> None:
        await guard.check()

    app.timer(CHECK_INTERVAL_S, name="streams.recoveryguard")(check_recovery_tails)
    return guard
