"""The JVM side of the embedded stack: find Java 17+, and resolve Kafka + Debezium jars with Maven.

Reads deploy/maven/pom.xml (which pins kafka.version and the Debezium versions; found through
control/stack/deploy_data.py, so an installed package works too). Jars land in
``<jvm_dir>/lib`` (broker + Connect classpath) and ``<jvm_dir>/plugins`` (Connect plugin.path),
where ``<jvm_dir>`` = ``settings.stack.cache_dir / f"jvm-{kafka_version}-{pom hash}"``: each pom
gets its own directory, so stacks of checkouts with different poms (branches, upgrades) share the
cache without wiping each other's jars while they run. A stamp file holding the pom's hash makes
later runs skip Maven entirely. Settings used: ``stack.java_home``, ``stack.cache_dir``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from control.stack.deploy_data import deploy_dir
from control.stack.processes import service_error
from crawlstream.errors import PrerequisiteError, StackError
from crawlstream.settings import Settings

DEPLOY_DIR = deploy_dir()
POM = DEPLOY_DIR / "maven" / "pom.xml"
STAMP = ".pom-sha256"
MIN_JAVA = 17
JAVA_HINT = "apt-get install openjdk-17-jre-headless (or set CRAWLSTREAM_STACK__JAVA_HOME)"


@dataclass(frozen=True)
class JvmLayout:
    java: Path
    root: Path

    @property
    def lib(self) -> Path:
        return self.root / "lib"

    @property
    def plugins(self) -> Path:
        return self.root / "plugins"

    @property
    def classpath(self) -> str:
        return f"{self.lib}/*"


def kafka_version(pom: Path = POM) -> str:
    # A regex rather than an XML parser: the pom is our own file and this is its only lookup.
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom.read_text())
    if match is None:
        raise StackError(f"{pom} has no <kafka.version> property")
    return match.group(1).strip()


def jvm_dir(settings: Settings, pom: Path = POM) -> Path:
    """Where this pom's jars live: one directory per pom (see the module docstring)."""
    name = f"jvm-{kafka_version(pom)}-{pom_hash(pom)[:12]}"
    return (settings.stack.cache_dir / name).expanduser().resolve()


def java_major(version_output: str) -> int | None:
    """Major version from ``java -version`` output ('1.8.0_292' -> 8, '17.0.15' -> 17)."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java(settings: Settings) -> Path:
    """The ``java`` to run: stack.java_home, then $JAVA_HOME, then PATH; must be 17+."""
    candidates: list[tuple[str, Path]] = []
    if settings.stack.java_home is not None:
        candidates.append(("CRAWLSTREAM_STACK__JAVA_HOME", settings.stack.java_home / "bin" / "java"))
    elif os.environ.get("JAVA_HOME"):
        candidates.append(("JAVA_HOME", Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    elif found := shutil.which("java"):
        candidates.append(("PATH", Path(found)))
    for origin, java in candidates:
        if not java.is_file():
            raise PrerequisiteError(f"Java 17+ not found: {java} (from {origin}) does not exist; {JAVA_HINT}")
        proc = subprocess.run(
            [str(java), "-version"], capture_output=True, text=True, timeout=60, check=False
        )
        major = java_major(proc.stderr + proc.stdout)
        if major is None or major < MIN_JAVA:
            raise PrerequisiteError(
                f"Java {MIN_JAVA}+ required, {java} (from {origin}) is {major or 'unrecognised'}; {JAVA_HINT}"
            )
        return java
    raise PrerequisiteError(f"Java {MIN_JAVA}+ not found: {JAVA_HINT}")


def pom_hash(pom: Path = POM) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()


def jars_current(root: Path, pom: Path = POM) -> bool:
    """True when ``root`` was filled from this exact pom and still holds jars and the plugin."""
    stamp = root / STAMP
    return (
        stamp.is_file()
        and stamp.read_text().strip() == pom_hash(pom)
        and any((root / "lib").glob("kafka_*.jar"))
        and any((root / "plugins").iterdir())
    )


def find_maven() -> Path:
    found = shutil.which("mvn")
    if found is None:
        raise PrerequisiteError(
            "Maven (mvn) not found: apt-get install maven (needed once to fetch Kafka jars)"
        )
    return Path(found)


def resolve_jars(java: Path, root: Path, log_path: Path, pom: Path = POM, timeout_s: float = 1800) -> None:
    """Run Maven to fill ``root/lib`` and ``root/plugins``, then write the stamp.

    The pom is copied into ``root/build`` so Maven's ``target/`` (and the unpack markers that
    would make it skip a deleted plugin dir) live beside the output, not in the repository.
    """
    mvn = find_maven()
    for stale in ("lib", "plugins", "build"):
        # Old jars would otherwise stay on the classpath next to the new versions.
        shutil.rmtree(root / stale, ignore_errors=True)
    (root / STAMP).unlink(missing_ok=True)
    build = root / "build"
    build.mkdir(parents=True)
    shutil.copyfile(pom, build / "pom.xml")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    java_home = java.resolve().parent.parent
    with log_path.open("ab") as out:
        proc = subprocess.run(
            [str(mvn), "-B", "-q", "-f", str(build / "pom.xml"), f"-Dcrawlstream.lib={root}", "package"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "JAVA_HOME": str(java_home)},
            timeout=timeout_s,
            check=False,
        )
    if proc.returncode != 0:
        raise service_error("maven", f"failed with exit code {proc.returncode}", log_path)
    if not any((root / "lib").glob("kafka_*.jar")) or not any((root / "plugins").glob("*")):
        raise service_error("maven", f"finished but {root}/lib or {root}/plugins is empty", log_path)
    (root / STAMP).write_text(pom_hash(pom) + "\n")
