"""control/run/frontierjob.py's progress line asks the sink's probe for the run's rows, and shows
``?`` rather than failing when Postgres cannot be asked."""

from __future__ import annotations

from typing import Any

import pytest

import sinks.probe
from control.run.frontierjob import stored_rows
from crawlstream.errors import StackError
from crawlstream.settings import Settings


def test_stored_rows_is_none_when_postgres_cannot_be_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    timeouts: list[int] = []

    def unreachable(_settings: Settings, timeout_s: int = 10) -> Any:
        timeouts.append(timeout_s)
        raise StackError("cannot connect to Postgres (settings.postgres.url): refused")

    monkeypatch.setattr(sinks.probe, "_connect", unreachable)
    assert stored_rows(Settings(), "r1") is None
    assert timeouts == [3]  # a progress line is due every few seconds: give up soon
