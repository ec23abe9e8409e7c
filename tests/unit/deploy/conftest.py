"""deploy/k8s rendered once per session (kustomize, default load restrictions)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.unit.deploy.support import DEPLOY, kustomize_build


@pytest.fixture(scope="session")
def rendered_text() -> str:
    return kustomize_build(DEPLOY / "k8s")


@pytest.fixture(scope="session")
def rendered(rendered_text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered_text) if doc]
