"""Sinks of the small topic families: closed stats windows and run events, as idempotent upserts.

:class:`PostgresDomainStatsSink` stores ``<prefix>.stats`` (DomainStats) in ``domain_stats``, one
row per (domain, window, window_start); :class:`PostgresRunSink` stores ``<prefix>.runs``
(RunEvent) in ``crawl_runs``, one row per run, where a late ``started`` never overwrites a
finished run. An upsert that would not change a row is skipped (``IS DISTINCT FROM``), so a
replay writes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Generic, TypeVar

import psycopg2.extras
from pydantic import BaseModel

from crawlstream.records import DomainStats, RunEvent
from sinks.base import SinkRecord
from sinks.postgres import Cursor, PostgresSink

M = TypeVar("M", bound=BaseModel)


class _UpsertSink(PostgresSink[M], Generic[M]):
    table: ClassVar[str]
    keys: ClassVar[tuple[str, ...]]
    columns: ClassVar[tuple[str, ...]]
    guard: ClassVar[str] = "TRUE"  # extra condition for updating an existing row

    def row(self, record: M) -> tuple[Any, ...]:
        data = record.model_dump()
        return tuple(data[c] for c in self.columns)

    def apply(self, cur: Cursor, records: Sequence[SinkRecord[M]], prepared: Any = None) -> int:
        last: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        for record in records:  # the last record per key wins, as it would one batch later
            row = self.row(record.value)
            last[tuple(row[self.columns.index(k)] for k in self.keys)] = row
        q = {c: f'"{c}"' for c in self.columns}  # "window" is a reserved word
        rest = [c for c in self.columns if c not in self.keys]
        sql = (
            f"INSERT INTO {self.table} AS t ({', '.join(q.values())}) VALUES %s "  # noqa: S608
            f"ON CONFLICT ({', '.join(q[k] for k in self.keys)}) DO UPDATE SET "
            f"{', '.join(f'{q[c]} = EXCLUDED.{q[c]}' for c in rest)} "
            f"WHERE ({self.guard}) AND ({', '.join(f't.{q[c]}' for c in rest)}) "
            f"IS DISTINCT FROM ({', '.join(f'EXCLUDED.{q[c]}' for c in rest)}) RETURNING 1"
        )
        rows = [row for _key, row in sorted(last.items())]  # a fixed lock order between workers
        return len(psycopg2.extras.execute_values(cur, sql, rows, fetch=True))


class PostgresDomainStatsSink(_UpsertSink[DomainStats]):
    application_name = "crawlstream-sink-stats"
    table = "domain_stats"
    keys = ("domain", "window", "window_start")
    columns = tuple(name for name in DomainStats.model_fields if name != "schema_version")


class PostgresRunSink(_UpsertSink[RunEvent]):
    application_name = "crawlstream-sink-runs"
    table = "crawl_runs"
    keys = ("run_id",)
    columns = tuple(name for name in RunEvent.model_fields if name not in ("schema_version", "event"))
    guard = "t.outcome = 'running' OR EXCLUDED.outcome <> 'running'"
