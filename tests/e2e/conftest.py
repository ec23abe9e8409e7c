"""Fixtures of the e2e tests that run a pipeline of their own (tests/e2e/isolated.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from crawlstream.settings import Settings, load_settings
from crawlstream.topics import ensure_topics
from tests.e2e.isolated import IsolatedPipeline, isolated_env


@pytest.fixture
def isolated(
    stack_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Settings:
    """Settings, and the environment of every child process, of a pipeline of its own."""
    name = request.node.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").replace("_", "")[:12]
    for key, value in isolated_env(name, tmp_path).items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    ensure_topics(settings)
    return settings


@pytest.fixture
def pipeline(isolated: Settings, tmp_path: Path) -> Iterator[IsolatedPipeline]:
    """The isolated pipeline's workers, not started yet (``pipeline.start(...)``); stopped after."""
    running = IsolatedPipeline(isolated, tmp_path)
    try:
        yield running
    finally:
        running.stop()
