"""A frontier run waits for a stream worker that is joining its group, and fails naming the command
when none joins (crawlers/frontierrun.py ``FrontierRun._check_stream_worker``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

import crawlers.frontierrun as frontierrun
from crawlstream.errors import CrawlstreamError
from crawlstream.settings import Settings


class FakeAdmin:
    """An AdminClient whose stream group gains a member after ``empty`` descriptions."""

    def __init__(self, empty: int) -> None:
        self.empty = empty
        self.calls = 0

    def __call__(self, config: dict[str, Any]) -> FakeAdmin:
        return self

    def describe_consumer_groups(self, groups: list[str]) -> dict[str, Any]:
        self.calls += 1
        members = [] if self.calls <= self.empty else ["streams-worker-1"]
        description = SimpleNamespace(members=members)
        return {groups[0]: SimpleNamespace(result=lambda timeout: description)}


def check(monkeypatch: pytest.MonkeyPatch, admin: FakeAdmin, wait_s: float) -> None:
    clock = {"now": 0.0}
    monkeypatch.setattr(frontierrun, "AdminClient", admin)
    monkeypatch.setattr(frontierrun.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(frontierrun.time, "sleep", lambda s: clock.__setitem__("now", clock["now"] + s))
    run = SimpleNamespace(settings=Settings(_env_file=None))  # type: ignore[call-arg]
    frontierrun.FrontierRun._check_stream_worker(run, wait_s=wait_s)  # type: ignore[arg-type]


def test_a_worker_joining_within_the_wait_is_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    admin = FakeAdmin(empty=5)
    check(monkeypatch, admin, wait_s=60.0)
    assert admin.calls == 6


def test_no_worker_after_the_wait_fails_naming_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    admin = FakeAdmin(empty=1_000)
    with pytest.raises(CrawlstreamError, match="crawlstream workers up"):
        check(monkeypatch, admin, wait_s=10.0)
    assert 10 <= admin.calls <= 12  # asked about once a second for the wait, not forever
