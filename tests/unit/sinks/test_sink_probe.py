"""sinks/probe.py's SinkProbe against a fake DB-API connection (the real SQL runs in the e2e tests:
tests/e2e/test_demo_pipeline.py reconciles through it)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from crawlstream.offsets import Offsets
from crawlstream.settings import KafkaSettings, Settings, SinkSettings
from sinks.probe import ROWS_SINCE, RUN_ROWS, STORED_OFFSETS, SinkProbe

SETTINGS = Settings(kafka=KafkaSettings(topic_prefix="t"), sink=SinkSettings(group_id="sink-g"))
START = datetime(2026, 12, 3, tzinfo=UTC)


class FakeConnection:
    """A DB-API connection whose cursor answers each statement with the rows given for it."""

    def __init__(self, answers: dict[str, list[tuple[Any, ...]]], fail: bool = False) -> None:
        self.answers = answers
        self.fail = fail
        self.executed: list[tuple[str, tuple[Any, ...]]] = []
        self.closed = 0

    def cursor(self) -> FakeConnection:
        return self

    def __enter__(self) -> FakeConnection:
        return self

    def __exit__(self, *_exc: object) -> None:
        return None

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        if self.fail:
            raise RuntimeError("connection lost")
        self.executed.append((sql, params))
        self.last = sql

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.answers[self.last]

    def close(self) -> None:
        self.closed += 1


def probe(conn: FakeConnection, end: Offsets | None = None) -> SinkProbe:
    return SinkProbe(SETTINGS, connect=lambda: conn, end_offsets=lambda _s, _t: end or {})


def test_stored_offsets_are_the_page_sinks_group_on_the_unique_topic() -> None:
    conn = FakeConnection({STORED_OFFSETS: [(0, 5), (1, 7)]})
    assert probe(conn).stored() == {0: 5, 1: 7}
    assert conn.executed == [(STORED_OFFSETS, ("sink-g", "t.pages.unique"))]
    assert conn.closed == 1


def test_the_sink_lag_is_the_unique_topics_end_past_the_stored_offsets() -> None:
    conn = FakeConnection({STORED_OFFSETS: [(0, 5), (1, 7)]})
    assert probe(conn, end={0: 9, 1: 7, 2: 2}).lag() == 4 + 0 + 2  # partition 2 never stored


def test_rows_of_splits_the_urls_by_first_seen_and_asks_each_url_once() -> None:
    a, b, c = "http://x/a", "http://x/b", "http://x/c"
    conn = FakeConnection({ROWS_SINCE: [(a, True), (b, False)]})  # c has no row
    assert probe(conn).rows_of([c, b, a, b], START) == ({a}, {b})
    assert conn.executed == [(ROWS_SINCE, (START, [a, b, c]))]


def test_no_urls_ask_nothing() -> None:
    conn = FakeConnection({})
    assert probe(conn).rows_of([], START) == (frozenset(), frozenset())
    assert conn.executed == []
    assert conn.closed == 0


def test_the_connection_is_closed_when_a_query_fails() -> None:
    conn = FakeConnection({}, fail=True)
    with pytest.raises(RuntimeError):
        probe(conn).stored()
    assert conn.closed == 1


def test_the_sql_looks_rows_up_by_the_hash_the_sink_keys_them_by() -> None:
    # An index lookup per URL (url_hash = sha256 of its UTF-8), not a scan on url.
    assert "url_hash = ANY" in ROWS_SINCE
    assert "sha256(convert_to(u, 'UTF8'))" in ROWS_SINCE
    assert "first_seen < %s" in ROWS_SINCE
    now = datetime(2026, 1, 1, tzinfo=UTC)
    conn = FakeConnection({"SELECT now()": [(now,)]})
    assert probe(conn).now() == now


def test_run_rows_counts_the_rows_a_run_wrote_last() -> None:
    conn = FakeConnection({RUN_ROWS: [(12,)]})
    assert probe(conn).run_rows("r1") == 12
    assert conn.executed == [(RUN_ROWS, ("r1",))]
