"""The deploy files are found through importlib.resources: in this (editable) install they are the
repository's deploy/ folder itself, the one source of truth the wheel also ships."""

from __future__ import annotations

from pathlib import Path

from control.stack import connect, kafka, maven
from control.stack.deploy_data import deploy_dir

REPO = Path(__file__).resolve().parents[4]


def test_editable_install_reads_the_repository_deploy_folder() -> None:
    assert deploy_dir() == REPO / "deploy"
    assert maven.POM == REPO / "deploy/maven/pom.xml"
    for path in (
        maven.POM,
        kafka.BASE_PROPERTIES,
        kafka.LOG4J2,
        connect.BASE_PROPERTIES,
        connect.CONNECTOR_JSON,
    ):
        assert path.is_file(), path


def test_setup_maps_the_package_onto_deploy() -> None:
    setup = (REPO / "setup.py").read_text()
    assert 'package_dir={"crawlstream_deploy": "deploy"}' in setup
    assert 'crawlstream_deploy = ["**/*"]' in (REPO / "pyproject.toml").read_text()
