"""Every test of the stream stage leaves no faust resources behind (warnings are errors)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.streams.harness import close_apps


@pytest.fixture(autouse=True)
def _close_faust_apps() -> Iterator[None]:
    yield
    close_apps()
