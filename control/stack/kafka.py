"""Apache Kafka of the embedded stack: one node, or a cluster of 3 (or 5) on loopback ports.

Every node is a combined KRaft broker + controller. One node (the default) keeps its files in
``<state_dir>/kafka`` and runs as the managed process ``kafka``; a cluster (``stack.brokers``)
puts node i's files in ``<state_dir>/kafka/kafka-<i>`` and runs it as ``kafka-<i>``, with every
node a voter of the controller quorum (``controller.quorum.voters``). Node i (0-based) listens on
``stack.kafka_port + 10*i`` for clients and ``stack.controller_port + 10*i`` for controllers;
a secured stack (``stack.secure``, control/stack/security.py) adds a replication listener on
``stack.kafka_port + 10*i + 2`` (mutual TLS between nodes) and serves clients SASL_SSL.

Renders deploy/stack/kafka-server.properties plus per-node keys into ``<node dir>/server.properties``,
formats the storage on first start (``kafka.tools.StorageTool format``), runs ``kafka.Kafka`` and
checks health with a confluent-kafka AdminClient. The shape (nodes, secured or not) is fixed when
the storage is formatted and recorded in ``<state_dir>/kafka/shape.json``. Settings used:
``stack.kafka_port|controller_port|brokers|secure|state_dir``, ``kafka.max_message_bytes``.
Topics are then created by crawlstream.topics.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from control.stack.maven import DEPLOY_DIR, JvmLayout
from control.stack.processes import service_error
from crawlstream.errors import StackError
from crawlstream.settings import Settings

BASE_PROPERTIES = DEPLOY_DIR / "stack" / "kafka-server.properties"
LOG4J2 = DEPLOY_DIR / "stack" / "log4j2.properties"
# Record batch headers and protocol framing on top of the largest record we allow.
MESSAGE_OVERHEAD_BYTES = 64 * 1024
# Ports of node i: the configured ones + PORT_STEP * i.
PORT_STEP = 10
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Node:
    """One Kafka node (broker + controller) of the embedded stack."""

    node_id: int
    name: str  # its managed process: "kafka", or "kafka-<id>" in a cluster
    directory: Path  # server.properties and data/
    port: int  # clients
    controller_port: int
    replication_port: int | None  # a secured stack's inter-broker listener

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def controller_address(self) -> str:
        return f"{HOST}:{self.controller_port}"


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


def nodes(settings: Settings) -> list[Node]:
    stack = settings.stack
    if stack.brokers == 1:
        names = [("kafka", kafka_dir(settings))]
    else:
        names = [(f"kafka-{i}", kafka_dir(settings) / f"kafka-{i}") for i in range(1, stack.brokers + 1)]
    return [
        Node(
            node_id=i + 1,
            name=name,
            directory=directory,
            port=stack.kafka_port + PORT_STEP * i,
            controller_port=stack.controller_port + PORT_STEP * i,
            replication_port=stack.kafka_port + PORT_STEP * i + 2 if stack.secure else None,
        )
        for i, (name, directory) in enumerate(names)
    ]


def node_names(settings: Settings) -> list[str]:
    return [node.name for node in nodes(settings)]


def bootstrap_servers(settings: Settings) -> str:
    return ",".join(node.address for node in nodes(settings))


def replication_factor(settings: Settings) -> int:
    """Replicas of every topic: 3 on a cluster (any one node may fail), 1 on a single node."""
    return min(settings.stack.brokers, 3)


def min_insync_replicas(settings: Settings) -> int:
    """With acks=all, a write counts once this many replicas hold it: 2 of 3 on a cluster."""
    return max(1, replication_factor(settings) - 1)


def server_overrides(settings: Settings, node: Node | None = None) -> dict[str, str]:
    node = node or nodes(settings)[0]
    stack = settings.stack
    max_bytes = str(settings.kafka.max_message_bytes + MESSAGE_OVERHEAD_BYTES)
    out = {
        "node.id": str(node.node_id),
        "listeners": f"PLAINTEXT://{node.address},CONTROLLER://{node.controller_address}",
        "advertised.listeners": f"PLAINTEXT://{node.address}",
        "log.dirs": str(node.directory / "data"),
        "message.max.bytes": max_bytes,
        "replica.fetch.max.bytes": max_bytes,
    }
    if stack.brokers == 1:
        out["controller.quorum.bootstrap.servers"] = node.controller_address
    else:
        rf, isr = str(replication_factor(settings)), str(min_insync_replicas(settings))
        out |= {
            # A static quorum: every node a voter, known to all from the start.
            "controller.quorum.voters": ",".join(
                f"{n.node_id}@{n.controller_address}" for n in nodes(settings)
            ),
            "default.replication.factor": rf,
            "min.insync.replicas": isr,
            "offsets.topic.replication.factor": rf,
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr,
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": isr,
        }
    if stack.secure:
        from control.stack import security  # only a secured stack needs certificates

        out |= security.server_overrides(settings, node)
    return out


def write_server_properties(settings: Settings, node: Node | None = None) -> Path:
    node = node or nodes(settings)[0]
    path = node.directory / "server.properties"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render_properties(BASE_PROPERTIES.read_text(), server_overrides(settings, node), BASE_PROPERTIES)
    path.touch(mode=0o600)
    path.chmod(0o600)  # a secured node's file holds its keystore password
    path.write_text(text)
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


def formatted(settings: Settings, node: Node | None = None) -> bool:
    node = node or nodes(settings)[0]
    return (node.directory / "data" / "meta.properties").is_file()


def shape(settings: Settings) -> dict[str, Any]:
    return {"brokers": settings.stack.brokers, "secure": settings.stack.secure}


def stored_shape(settings: Settings) -> dict[str, Any] | None:
    """The shape this state dir's Kafka was formatted with; None when it has none yet. A
    single node formatted before shapes were recorded is a plaintext single node."""
    path = kafka_dir(settings) / "shape.json"
    if path.is_file():
        stored: dict[str, Any] = json.loads(path.read_text())
        return stored
    if (kafka_dir(settings) / "data" / "meta.properties").is_file():
        return {"brokers": 1, "secure": False}
    return None


def check_shape(settings: Settings) -> None:
    """Refuse to start a different shape over a formatted one: its topics, offsets and the sink's
    stored offsets belong to the cluster that exists."""
    stored = stored_shape(settings)
    if stored is None or stored == shape(settings):
        return
    raise StackError(
        f"this state dir ({settings.stack.state_dir}) holds a Kafka of {stored['brokers']} node(s)"
        f"{', secured' if stored['secure'] else ''}; asked for {settings.stack.brokers}"
        f"{', secured' if settings.stack.secure else ''}. Use `stack up` with the same shape, or another "
        "CRAWLSTREAM_STACK__STATE_DIR (a new shape needs a new stack: `crawlstream stack down`, then "
        "delete the state dir)"
    )


def record_shape(settings: Settings) -> None:
    path = kafka_dir(settings) / "shape.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(shape(settings)) + "\n")


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
    # One node: a dynamic quorum of itself (--standalone). A cluster: the static quorum that
    # controller.quorum.voters in ``props`` names, the same for every node.
    quorum = ["--standalone"] if settings.stack.brokers == 1 else []
    argv = java_command(
        jvm,
        "kafka.tools.StorageTool",
        "format",
        *quorum,
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


def broker_command(jvm: JvmLayout, props: Path, heap: str = "768m") -> list[str]:
    return java_command(jvm, "kafka.Kafka", str(props), heap=heap)


def heap(settings: Settings) -> str:
    # Three JVMs on a small machine: less each (a local cluster holds little data).
    return "768m" if settings.stack.brokers == 1 else "512m"


def port_open(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def probe_config(settings: Settings, node: Node) -> dict[str, Any]:
    """How the supervisor itself talks to ``node``: plaintext, or on a secured stack mutual TLS
    on its replication listener as the admin (SCRAM users may not exist yet)."""
    if settings.stack.secure:
        from control.stack import security

        return security.supervisor_client_config(settings, node)
    return {"bootstrap.servers": node.address, "log_level": 0}


def health(settings: Settings, node: Node | None = None, timeout_s: float = 3.0) -> str | None:
    """None when ``node`` answers a metadata request with our cluster id, else the reason."""
    node = node or nodes(settings)[0]
    if not port_open(node.port):
        return f"nothing listening on {node.address}"
    admin = AdminClient(probe_config(settings, node))
    try:
        meta = admin.list_topics(timeout=timeout_s)
    except Exception as exc:  # KafkaException while the broker is still starting
        return f"metadata request failed: {exc}"
    expected = stored_cluster_id(settings)
    if expected is not None and meta.cluster_id != expected:
        return f"cluster id {meta.cluster_id} is not this stack's {expected} (another broker on the port?)"
    if node.node_id not in meta.brokers:
        return f"node {node.node_id} is not registered with the controllers yet"
    return None


def cluster_health(settings: Settings, timeout_s: float = 3.0) -> str | None:
    """None when every node is up and registered (what a node that answers itself reports)."""
    for node in nodes(settings):
        if reason := health(settings, node, timeout_s):
            return f"{node.name}: {reason}"
    return None


def topic_count(settings: Settings, node: Node | None = None) -> int:
    admin = AdminClient(probe_config(settings, node or nodes(settings)[0]))
    return len([t for t in admin.list_topics(timeout=3).topics if not t.startswith("__")])


def active_controller(settings: Settings, alive: set[int] | None = None) -> int | None:
    """The node id of the quorum's leader (the active controller), from the quorum-state files
    the live nodes keep in their metadata log directory; None while there is none.

    KRaft's DescribeQuorum is not bound by confluent-kafka; each voter persists the leader it
    follows (and the epoch) on every election, so the highest epoch among live nodes is current.
    """
    best: tuple[int, int] | None = None
    for node in nodes(settings):
        if alive is not None and node.node_id not in alive:
            continue
        path = node.directory / "data" / "__cluster_metadata-0" / "quorum-state"
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        leader, epoch = int(state.get("leaderId", -1)), int(state.get("leaderEpoch", -1))
        if leader >= 0 and (best is None or epoch > best[1]):
            best = (leader, epoch)
    return best[0] if best else None
