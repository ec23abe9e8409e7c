"""control.stack.maven: Java detection messages, pom version, the stamp that skips Maven."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from control.stack import maven
from crawlstream.errors import PrerequisiteError, StackError
from crawlstream.settings import Settings


def _fake_java(home: Path, version: str) -> Path:
    java = home / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text(f"#!/bin/sh\necho 'openjdk version \"{version}\" 2025-04-15' >&2\n")
    java.chmod(0o755)
    return java


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('java version "1.8.0_292"', 8),
        ('openjdk version "25" 2025-09-16', 25),
        ("garbage", None),
    ],
)
def test_java_major(output: str, major: int | None) -> None:
    assert maven.java_major(output) == major


def test_java_home_setting_wins_and_is_checked(tmp_path: Path) -> None:
    java = _fake_java(tmp_path / "jdk21", "21.0.2")
    settings = Settings(stack={"java_home": tmp_path / "jdk21"})
    assert maven.find_java(settings) == java


def test_old_java_says_what_to_install(tmp_path: Path) -> None:
    _fake_java(tmp_path / "jdk11", "11.0.2")
    with pytest.raises(PrerequisiteError) as err:
        maven.find_java(Settings(stack={"java_home": tmp_path / "jdk11"}))
    assert "Java 17+ required" in str(err.value)
    assert "is 11" in str(err.value)
    assert "apt-get install openjdk-17-jre-headless" in str(err.value)
    assert "CRAWLSTREAM_STACK__JAVA_HOME" in str(err.value)


def test_missing_java_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(
        PrerequisiteError, match=r"Java 17\+ not found: apt-get install openjdk-17-jre-headless"
    ):
        maven.find_java(Settings())


def test_java_home_env_is_used_before_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    java = _fake_java(tmp_path / "envjdk", "17.0.1")
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "envjdk"))
    assert maven.find_java(Settings()) == java


def test_missing_maven_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PrerequisiteError, match="apt-get install maven"):
        maven.find_maven()


def test_kafka_version_comes_from_the_pom(tmp_path: Path) -> None:
    assert maven.kafka_version() == "4.1.1"
    settings = Settings(stack={"cache_dir": tmp_path})
    assert maven.jvm_dir(settings) == tmp_path.resolve() / f"jvm-4.1.1-{maven.pom_hash()[:12]}"


def test_each_pom_has_its_own_jar_directory_and_resolving_one_leaves_the_others(
    tmp_path: Path, fake_mvn: Path
) -> None:
    # Stacks of checkouts with different poms share ~/.cache/crawlstream: a new pom must not wipe
    # the jars another stack runs from.
    settings = Settings(stack={"cache_dir": tmp_path / "cache"})
    old, new = tmp_path / "old.xml", tmp_path / "new.xml"
    old.write_text("<kafka.version>4.1.1</kafka.version><!-- a -->")
    new.write_text("<kafka.version>4.1.1</kafka.version><!-- b -->")
    old_dir, new_dir = maven.jvm_dir(settings, old), maven.jvm_dir(settings, new)
    assert old_dir != new_dir
    maven.resolve_jars(Path("/usr/bin/java"), old_dir, tmp_path / "maven.log", pom=old)

    maven.resolve_jars(Path("/usr/bin/java"), new_dir, tmp_path / "maven.log", pom=new)

    assert maven.jars_current(old_dir, old)
    assert maven.jars_current(new_dir, new)


@pytest.fixture
def fake_mvn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An ``mvn`` that does what the real pom does: jars into <lib>/lib, the plugin into <lib>/plugins."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "mvn-calls"
    script = bin_dir / "mvn"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {calls}\n'
        'for arg in "$@"; do case "$arg" in\n'
        '  -Dcrawlstream.lib=*) lib="${arg#-Dcrawlstream.lib=}";;\n'
        "esac; done\n"
        'mkdir -p "$lib/lib" "$lib/plugins/debezium-connector-postgres"\n'
        'touch "$lib/lib/kafka_2.13-4.1.1.jar"\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


def test_resolve_writes_stamp_and_a_changed_pom_re_resolves_from_empty(
    tmp_path: Path, fake_mvn: Path
) -> None:
    root = tmp_path / "jvm"
    pom = tmp_path / "pom.xml"
    pom.write_text("<kafka.version>4.1.1</kafka.version>")
    assert not maven.jars_current(root, pom)

    maven.resolve_jars(Path("/usr/bin/java"), root, tmp_path / "maven.log", pom=pom)
    assert maven.jars_current(root, pom)
    assert (root / "build" / "pom.xml").read_text() == pom.read_text()
    assert f"-Dcrawlstream.lib={root}" in fake_mvn.read_text()

    stale = root / "lib" / "kafka-clients-4.0.0.jar"
    stale.touch()
    pom.write_text("<kafka.version>4.1.2</kafka.version>")
    assert not maven.jars_current(root, pom)
    maven.resolve_jars(Path("/usr/bin/java"), root, tmp_path / "maven.log", pom=pom)
    assert not stale.exists(), "stale jars must not stay on the classpath"
    assert maven.jars_current(root, pom)
    assert len(fake_mvn.read_text().splitlines()) == 2


def test_failed_maven_reports_log_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mvn").write_text(
        "#!/bin/sh\necho 'Could not resolve io.debezium:debezium-connector-postgres'\nexit 1\n"
    )
    (bin_dir / "mvn").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    pom = tmp_path / "pom.xml"
    pom.write_text("<kafka.version>4.1.1</kafka.version>")
    with pytest.raises(StackError, match=r"Could not resolve io\.debezium") as err:
        maven.resolve_jars(Path("/usr/bin/java"), tmp_path / "jvm", tmp_path / "maven.log", pom=pom)
    assert "maven failed with exit code 1" in str(err.value)
    assert not maven.jars_current(tmp_path / "jvm", pom)
