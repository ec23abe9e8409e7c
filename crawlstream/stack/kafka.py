"""Apache Kafka of the embedded stack: one combined KRaft broker+controller.

Renders deploy/stack/kafka-server.properties plus per-machine keys into
``<state_dir>/kafka/server.properties``, formats the storage on first start
(``kafka.tools.StorageTool format --standalone``), runs ``kafka.Kafka`` and checks health with a
confluent-kafka AdminClient. Settings used: ``stack.kafka_port``, ``stack.controller_port``,
``stack.state_dir``, ``kafka.max_message_bytes``. Topics are then created by crawlstream.topics.
"""

from __future__ import annotations

import base64
import socket
import subprocess
import uuid
from pathlib import Path

from confluent_kafka.admin import AdminClient

from crawlstream.settings import Settings
from crawlstream.stack.maven import DEPLOY_DIR, JvmLayout
from crawlstream.stack.processes import service_error

BASE_PROPERTIES = DEPLOY_DIR / "stack" / "kafka-server.properties"
LOG4J2 = DEPLOY_DIR / "stack" / "log4j2.properties"
# Record batch headers and protocol framing on top of the largest record we allow.
MESSAGE_OVERHEAD_BYTES = 64 * 1024


def render_properties(base: str, overrides: dict[str, str], source: Path) -> str:
    """``base`` with each key of ``overrides`` replaced in place or appended (order kept)."""
    pending = dict(overrides)
    out = [f"# Rendered by `crawlstream stack up` from {source}; edit that file, not this one."]
    for line in base.splitlines():
        key = line.split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith(("#", "!")) and key in pending:
            out.append(f"{key}={pending.pop(key)}")
        else:
            out.append(line)
    if pending:
        out.append("")
        out.append("# Per-machine settings of this state dir.")
        out.extend(f"{key}={value}" for key, value in pending.items())
    return "\n".join(out) + "\n"


def kafka_dir(settings: Settings) -> Path:
    return settings.stack.state_dir.resolve() / "kafka"


def bootstrap_servers(settings: Settings) -> str:
    return f"127.0.0.1:{settings.stack.kafka_port}"


def server_overrides(settings: Settings) -> dict[str, str]:
    stack = settings.stack
    max_bytes = str(settings.kafka.max_message_bytes + MESSAGE_OVERHEAD_BYTES)
    return {
        "listeners": f"PLAINTEXT://127.0.0.1:{stack.kafka_port},CONTROLLER://127.0.0.1:{stack.controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{stack.kafka_port}",
        "controller.quorum.bootstrap.servers": f"127.0.0.1:{stack.controller_port}",
        "log.dirs": str(kafka_dir(settings) / "data"),
        "message.max.bytes": max_bytes,
        "replica.fetch.max.bytes": max_bytes,
    }


def write_server_properties(settings: Settings) -> Path:
    path = kafka_dir(settings) / "server.properties"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        render_properties(BASE_PROPERTIES.read_text(), server_overrides(settings), BASE_PROPERTIES)
    )
    return path


def new_cluster_id() -> str:
    # Kafka's Uuid.toString: URL-safe base64 of 16 random bytes, unpadded; Kafka rejects a leading '-'.
    while True:
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not value.startswith("-"):
            return value


def cluster_id(settings: Settings) -> str:
    path = kafka_dir(settings) / "cluster.id"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(new_cluster_id() + "\n")
    return path.read_text().strip()


def stored_cluster_id(settings: Settings) -> str | None:
    path = kafka_dir(settings) / "cluster.id"
    return path.read_text().strip() if path.is_file() else None


def formatted(settings: Settings) -> bool:
    return (kafka_dir(settings) / "data" / "meta.properties").is_file()


def java_command(jvm: JvmLayout, main: str, *args: str, heap: str = "768m") -> list[str]:
    return [
        str(jvm.java),
        f"-Xmx{heap}",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J2}",
        "-cp",
        jvm.classpath,
        main,
        *args,
    ]


def format_storage(settings: Settings, jvm: JvmLayout, props: Path, log_path: Path) -> None:
    argv = java_command(
        jvm,
        "kafka.tools.StorageTool",
        "format",
        "--standalone",
        "-t",
        cluster_id(settings),
        "-c",
        str(props),
        heap="256m",
    )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        proc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, check=False, timeout=300
        )
    if proc.returncode != 0:
        raise service_error("kafka", f"storage format failed (exit {proc.returncode})", log_path)


def broker_command(jvm: JvmLayout, props: Path) -> list[str]:
    return java_command(jvm, "kafka.Kafka", str(props))


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def health(settings: Settings, timeout_s: float = 3.0) -> str | None:
    """None when the broker answers a metadata request with our cluster id, else the reason."""
    if not port_open(settings.stack.kafka_port):
        return f"nothing listening on 127.0.0.1:{settings.stack.kafka_port}"
    admin = AdminClient({"bootstrap.servers": bootstrap_servers(settings), "log_level": 0})
    try:
        meta = admin.list_topics(timeout=timeout_s)
    except Exception as exc:  # KafkaException while the broker is still starting
        return f"metadata request failed: {exc}"
    expected = stored_cluster_id(settings)
    if expected is not None and meta.cluster_id != expected:
        return f"cluster id {meta.cluster_id} is not this stack's {expected} (another broker on the port?)"
    return None


def topic_count(settings: Settings) -> int:
    admin = AdminClient({"bootstrap.servers": bootstrap_servers(settings), "log_level": 0})
    return len([t for t in admin.list_topics(timeout=3).topics if not t.startswith("__")])
