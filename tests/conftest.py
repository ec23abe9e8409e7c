"""Shared fixtures. Integration and e2e tests run against the embedded stack that
`crawlstream stack up` starts (the same supervisor users run); `make test` starts it first."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def stack_settings() -> object:
    """Settings of the running embedded stack, with the schema migrated and the workers running."""
    from control.cli import migrate
    from control.stack.supervisor import up
    from control.workers import start_workers
    from crawlstream.settings import load_settings

    settings = load_settings()
    up(settings, migrate=migrate)
    settings = load_settings()
    start_workers(settings)
    return settings
