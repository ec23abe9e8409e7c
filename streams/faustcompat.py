"""The faust-streaming internals the stream stage relies on, declared and checked in one place.

The stage writes its tables' changelog records itself (:class:`streams.outputs.DeliveredTable`)
and scans RocksDB key ranges (:mod:`streams.keyscan`): for that it uses parts of faust that are
not public API (a store's key encoder, its per-partition RocksDB handle, a windowed table's key
expiry bookkeeping, a window's ranges). A faust release may rename or change any of them. Each is
declared in :data:`INTERNALS` and checked when this module is imported (:mod:`streams.app` imports
it), so an incompatible faust fails the worker at start naming the attribute, not mid-stream on
the first event; ``tests/unit/streams/test_faustcompat.py`` pins the installed version against
:data:`CHECKED` and every shim's behaviour against real faust objects, and fails when a module of
``streams/`` reaches for a faust internal that is not declared here.

The shims below are the way to call these internals; new code uses them.
Reads no settings, writes no topic.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import faust.stores.base
import faust.stores.rocksdb
import faust.tables.base
import faust.tables.manager
import faust.tables.recovery
import faust.tables.table
import faust.transport.consumer
from faust.types import TP

from crawlstream.errors import CrawlstreamError

# The faust-streaming versions whose internals were read and tested against this module: the
# range pyproject.toml allows (0.13.1 to 0.15.1 break every rebalance without opentracing).
CHECKED = ((0, 15, 2), (0, 16))  # [low, high)


class FaustIncompatible(CrawlstreamError):
    """The installed faust lacks an internal the stage relies on (or has changed its shape)."""


@dataclass(frozen=True)
class Internal:
    """A faust attribute the stage uses: its owner, name and parameters (None: not a callable)."""

    owner: type
    name: str
    params: tuple[str, ...] | None
    why: str


INTERNALS: tuple[Internal, ...] = (
    Internal(
        faust.stores.base.Store,
        "_encode_key",
        ("self", "key"),
        "DeliveredTable and keyscan encode keys as faust's changelog and restore do",
    ),
    Internal(
        faust.stores.rocksdb.Store,
        "_db_for_partition",
        ("self", "partition"),
        "DeliveredTable and keyscan read and write the event partition's RocksDB directly",
    ),
    Internal(
        faust.stores.base.Store,
        "set_persisted_offset",
        ("self", "tp", "offset"),
        "DeliveredTable records the delivered changelog offset where a restore resumes",
    ),
    Internal(
        faust.tables.base.Collection,
        "_maybe_set_key_ttl",
        ("self", "key", "partition"),
        "DeliveredTable writes keep faust's expiry bookkeeping of windowed keys",
    ),
    Internal(
        faust.tables.base.Collection,
        "_window_ranges",
        ("self", "timestamp"),
        "streams.views lists the open windows holding 'now'; streams.stats applies window ops",
    ),
    Internal(
        faust.tables.base.Collection,
        "_apply_window_op",
        ("self", "op", "key", "value", "timestamp"),
        "streams.stats overrides it to reopen a window closed moments ago by a late event",
    ),
    Internal(
        faust.tables.table.Table,
        "_get_key",
        ("self", "key"),
        "streams.stats' window op reads a window's value as faust's own op does",
    ),
    Internal(
        faust.tables.table.Table,
        "_set_key",
        ("self", "key", "value"),
        "streams.stats' window op writes a window's value as faust's own op does",
    ),
    Internal(
        faust.tables.manager.TableManager,
        "recovery",
        None,
        "streams.recoveryguard reads the table recovery's state",
    ),
    Internal(
        faust.tables.manager.TableManager,
        "changelog_queue",
        None,
        "streams.recoveryguard acts only while no changelog record waits to be applied",
    ),
    Internal(
        faust.tables.recovery.Recovery,
        "in_recovery",
        None,
        "streams.recoveryguard acts only while active changelogs are being restored",
    ),
    Internal(
        faust.tables.recovery.Recovery,
        "active_remaining",
        ("self",),
        "streams.recoveryguard: active_highwaters/active_offsets, what it subtracts, are its inputs",
    ),
    Internal(
        faust.transport.consumer.Consumer,
        "earliest_offsets",
        ("self", "partitions"),
        "streams.recoveryguard asks for a changelog partition's log start when it has no position",
    ),
    Internal(
        faust.transport.consumer.Consumer,
        "position",
        ("self", "tp"),
        "streams.recoveryguard compares a changelog partition's position with its highwater",
    ),
)


def installed_version() -> tuple[int, ...]:
    """The installed faust-streaming version as a tuple of its numeric release parts."""
    parts = []
    for part in version("faust-streaming").split("."):
        digits = "".join(c for c in part if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
        if digits != part:  # 0.16.0rc1: stop at the pre-release
            break
    return tuple(parts)


def problems() -> list[str]:
    """What the installed faust lacks of :data:`INTERNALS`, one line each (empty: all there)."""
    found = []
    for internal in INTERNALS:
        where = f"{internal.owner.__module__}.{internal.owner.__qualname__}.{internal.name}"
        attr = getattr(internal.owner, internal.name, None)
        if attr is None:
            found.append(f"{where} is missing (used because {internal.why})")
        elif internal.params is not None:
            params = tuple(inspect.signature(attr).parameters)
            if params != internal.params:
                found.append(f"{where}{params} is not {internal.params} (used because {internal.why})")
    return found


def check() -> None:
    """Raise :class:`FaustIncompatible` naming every internal the installed faust lacks."""
    missing = problems()
    if missing:
        low, high = (".".join(map(str, v)) for v in CHECKED)
        raise FaustIncompatible(
            f"faust-streaming {version('faust-streaming')} is not compatible with crawlstream's stream "
            f"stage (checked: >={low},<{high}): " + "; ".join(missing)
        )


def encode_key(store: Any, key: Any) -> bytes:
    """``key`` as faust writes it to a table's changelog and store (JSON for our tables)."""
    raw: bytes = store._encode_key(key)
    return raw


def rocksdb_for_partition(store: Any, partition: int) -> Any | None:
    """The RocksDB of ``partition`` (opened on first use), or None for a store that is not RocksDB."""
    opener = (
        getattr(store, "_db_for_partition", None) if isinstance(store, faust.stores.rocksdb.Store) else None
    )
    return None if opener is None else opener(partition)


def set_key_ttl(table: Any, key: Any, partition: int) -> None:
    """faust's expiry bookkeeping for a key written outside its own ``__setitem__``."""
    table._maybe_set_key_ttl(key, partition)


def window_ranges(table: Any, timestamp: float) -> Iterator[tuple[float, float]]:
    """The (start, end) ranges of a windowed table's windows holding ``timestamp``."""
    yield from table._window_ranges(timestamp)


@dataclass(frozen=True)
class RecoveryState:
    """Active changelog partitions a recovery still waits on: tp -> (read offset, highwater)."""

    behind: dict[TP, tuple[int, int]]


def recovery_state(app: Any) -> RecoveryState | None:
    """What ``app``'s table recovery still waits for, or None when it is not restoring active
    changelogs or a changelog record is still queued (the recovery is making progress)."""
    recovery = app.tables.recovery
    if not recovery.in_recovery or not app.tables.changelog_queue.empty():
        return None
    offsets = recovery.active_offsets
    behind = {
        tp: (offsets[tp], highwater)
        for tp, highwater in recovery.active_highwaters.items()
        if highwater is not None and offsets[tp] is not None and offsets[tp] < highwater
    }
    return RecoveryState(behind)


def mark_recovered(app: Any, tp: TP, highwater: int) -> None:
    """Count ``tp`` as read to ``highwater`` (what faust's ``detect_aborted_tx`` does)."""
    app.tables.recovery.active_offsets[tp] = highwater


check()
