"""The sink's own offsets: table ``sink_offsets`` in Postgres (``settings.postgres``).

The sink worker commits rows and the next offset per partition in one transaction and, on
every partition assignment, seeks to those stored offsets; the offsets it also commits to
Kafka are only a mirror for lag tools. So resetting the sink group in Kafka alone changes
nothing, and the worker's upsert (``GREATEST``) never moves a stored offset backwards. The
offsets tool therefore rewrites these rows itself (``--apply-to-store``), with the workers of
that group stopped, in one transaction. Replays are harmless: the page upsert
(``ON CONFLICT (url_hash)``) leaves a page whose body is unchanged alone, so no row changes and
no change event comes from a replay.
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
