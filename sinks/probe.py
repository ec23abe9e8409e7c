"""The sink's probe: its own offsets (table ``sink_offsets``) and its rows (table ``pages``) in
Postgres (``settings.postgres``).

What the sink stage exposes to the control plane: ``crawlstream offsets`` (control/ops/offsets_tool.py),
``crawlstream status`` and the lag exporter read the stored offsets here, and the offsets tool
rewrites them; a pipeline run (:mod:`control.run.pipeline`) asks :class:`SinkProbe` for the page
sink's stored offsets and lag on ``<prefix>.pages.unique`` and for the rows of a run's URLs. So
the SQL of the sink's tables stays in the sink's package.

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

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg2

from crawlstream import offsets
from crawlstream.errors import StackError
from crawlstream.offsets import Offsets
from crawlstream.settings import Settings
from crawlstream.topics import catalog

TP = tuple[str, int]

STORED_OFFSETS = 'SELECT "partition", next_offset FROM sink_offsets WHERE consumer_group = %s AND topic = %s'
# Rows are keyed by url_hash (sha256 of the URL's UTF-8, as the sink computes it): an index
# lookup per URL, where ``url = ANY`` would scan the table. ``first_seen`` is set when the row
# is inserted, never updated.
RUN_ROWS = "SELECT count(*) FROM pages WHERE run_id = %s"
ROWS_SINCE = (
    "SELECT url, first_seen < %s FROM pages WHERE url_hash = ANY("
    "ARRAY(SELECT sha256(convert_to(u, 'UTF8')) FROM unnest(%s::text[]) AS u))"
)


def _connect(settings: Settings, timeout_s: int = 10) -> Any:
    try:
        return psycopg2.connect(settings.postgres.dsn(), connect_timeout=timeout_s)
    except psycopg2.Error as exc:
        raise StackError(f"cannot connect to Postgres (settings.postgres.url): {exc}") from exc


def fetch_all(conn: Any, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The rows of one statement on ``conn``, which is closed afterwards."""
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            rows: list[tuple[Any, ...]] = cur.fetchall()
            return rows
    finally:
        conn.close()


def query(
    settings: Settings, sql: str, params: tuple[Any, ...] = (), timeout_s: int = 10
) -> list[tuple[Any, ...]]:
    """The rows of one statement on a connection of its own (the app role)."""
    return fetch_all(_connect(settings, timeout_s), sql, params)


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


@dataclass(frozen=True)
class SinkProbe:
    """The page sink as a pipeline run sees it: stored offsets, lag, the rows of a run's URLs.

    ``connect`` opens a DB-API connection (default: :func:`_connect` on ``settings.postgres``,
    giving up after ``connect_timeout_s``); ``end_offsets`` reads a topic's high watermarks
    (default: the kernel's)."""

    settings: Settings
    connect: Callable[[], Any] | None = None
    connect_timeout_s: int = 10
    end_offsets: Callable[[Settings, str], Offsets] = field(default=offsets.end_offsets)

    @property
    def topic(self) -> str:
        return catalog(self.settings).unique_pages.name

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = self.connect() if self.connect is not None else _connect(self.settings, self.connect_timeout_s)
        return fetch_all(conn, sql, params)

    def stored(self) -> Offsets:
        """Next offset per partition of ``pages.unique`` the page sink's group stored."""
        rows = self._query(STORED_OFFSETS, (self.settings.sink.group_id, self.topic))
        return {int(p): int(o) for p, o in rows}

    def lag(self) -> int:
        """Records of ``pages.unique`` past the stored offsets."""
        return offsets.lag(self.end_offsets(self.settings, self.topic), self.stored())

    def now(self) -> datetime:
        """The database's clock: the time ``first_seen`` is compared with."""
        now: datetime = self._query("SELECT now()")[0][0]
        return now

    def run_rows(self, run_id: str) -> int:
        """Rows of ``pages`` a run wrote last (``run_id``: the run that last stored the row)."""
        rows = self._query(RUN_ROWS, (run_id,))
        return int(rows[0][0]) if rows else 0

    def rows_of(self, urls: Iterable[str], since: datetime) -> tuple[frozenset[str], frozenset[str]]:
        """(URLs whose row existed before ``since``, URLs whose row was created since), among
        ``urls``; a URL without a row is in neither."""
        wanted = sorted(set(urls))
        if not wanted:
            return frozenset(), frozenset()
        rows = self._query(ROWS_SINCE, (since, wanted))
        return (
            frozenset(str(u) for u, before in rows if before),
            frozenset(str(u) for u, before in rows if not before),
        )
