"""The sink's probe: its own offsets, table ``sink_offsets`` in Postgres (``settings.postgres``).

What the sink stage exposes to the control plane: ``crawlstream offsets`` (control/ops/offsets_tool.py),
``crawlstream status`` and the lag exporter read the stored offsets here, and the offsets tool
rewrites them, so the SQL of the sink's table stays in the sink's package.

Read and written by the ops tools (:mod:`control.ops.offsets_tool`: ``offsets show``,
``reset --apply-to-store``, ``delete``'s warning; :mod:`control.ops.exporter`: the sink's own
lag), never by the sink worker, whose SQL is in :mod:`sinks.postgres`.

The sink worker commits rows and the next offset per partition in one transaction (its offset
update takes ``GREATEST``, so it never moves a stored offset backwards) and, on every partition
assignment, seeks to those stored offsets; the offsets it also commits to Kafka are only a
mirror for lag tools. So resetting or deleting the sink group's offsets in Kafka alone changes
nothing: the offsets tool rewrites these rows itself (``--apply-to-store``), exactly (backwards
too), in one transaction, and refuses while the group has active members. Replays are harmless:
the page sink leaves a page whose body is unchanged alone (see :mod:`sinks.pages`), so no row
changes and no page event comes from a replay.
"""

from __future__ import annotations

from typing import Any

import psycopg2

from crawlstream.errors import StackError
from crawlstream.settings import Settings

TP = tuple[str, int]


def _connect(settings: Settings) -> Any:
    try:
        return psycopg2.connect(settings.postgres.dsn(), connect_timeout=10)
    except psycopg2.Error as exc:
        raise StackError(f"cannot connect to Postgres (settings.postgres.url): {exc}") from exc


def stored_offsets(settings: Settings, group: str) -> dict[TP, int]:
    """Next offset per partition the sink stored for ``group`` (empty for non-sink groups)."""
    conn = _connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute(
                'SELECT topic, "partition", next_offset FROM sink_offsets WHERE consumer_group = %s',
                (group,),
            )
            return {(t, int(p)): int(o) for t, p, o in cur.fetchall()}
    except psycopg2.errors.UndefinedTable:
        return {}
    finally:
        conn.close()


def all_stored_offsets(settings: Settings) -> dict[str, dict[TP, int]]:
    """Every group's stored offsets (used by the exporter for the sink's own lag)."""
    conn = _connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute('SELECT consumer_group, topic, "partition", next_offset FROM sink_offsets')
            result: dict[str, dict[TP, int]] = {}
            for group, topic, partition, offset in cur.fetchall():
                result.setdefault(group, {})[(topic, int(partition))] = int(offset)
            return result
    except psycopg2.errors.UndefinedTable:
        return {}
    finally:
        conn.close()


def write_stored_offsets(settings: Settings, group: str, offsets: dict[TP, int]) -> None:
    """Set the stored offsets of ``group`` exactly (backwards too), in one transaction."""
    conn = _connect(settings)
    try:
        with conn, conn.cursor() as cur:
            for (topic, partition), offset in sorted(offsets.items()):
                cur.execute(
                    'INSERT INTO sink_offsets (consumer_group, topic, "partition", next_offset) '
                    'VALUES (%s, %s, %s, %s) ON CONFLICT (consumer_group, topic, "partition") '
                    "DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()",
                    (group, topic, partition, offset),
                )
    except psycopg2.Error as exc:
        raise StackError(f"cannot rewrite sink_offsets of group {group}: {exc}") from exc
    finally:
        conn.close()
