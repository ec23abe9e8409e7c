"""Shared by the deployment tests: the repository's deploy/ folder, the Go tools `make install`
builds into the venv (kustomize, kubeconform), deploy/k8s rendered with kustomize."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
SCHEMAS = REPO / "tests" / "data" / "schemas"


def tool(name: str) -> str:
    """A Go tool from the venv's bin (where `make install` puts it), else from PATH. Missing is a
    failure, not a skip: CI's `make install` provides it."""
    found = Path(sys.executable).parent / name
    if found.is_file():
        return str(found)
    on_path = shutil.which(name)
    if on_path is None:
        pytest.fail(f"{name} is not installed: run `make install` (it builds it from the Go module proxy)")
    return on_path


def kustomize_build(folder: Path) -> str:
    done = subprocess.run(
        [tool("kustomize"), "build", str(folder)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def by_kind(resources: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def pod_specs(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod template of a workload (Deployment, StatefulSet, CronJob), by workload name."""
    specs = {}
    for r in resources:
        if r["kind"] in ("Deployment", "StatefulSet"):
            specs[r["metadata"]["name"]] = r["spec"]["template"]["spec"]
        elif r["kind"] == "CronJob":
            specs[r["metadata"]["name"]] = r["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return specs
