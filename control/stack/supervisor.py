"""The embedded stack supervisor: ``up``, ``down`` and ``status`` over Postgres, Kafka and Connect.

Order of ``up``: prerequisites -> jars (Maven, once) -> (secured: certificates) -> every Kafka node
that is not running launched -> Postgres started and roles bootstrapped -> each node healthy ->
(secured: SCRAM users and ACLs) -> topics ensured (crawlstream.topics) -> ``stack.env`` and the
client properties written -> ``migrate(settings)`` -> Connect started, connectors registered and
RUNNING. Each step is idempotent: a healthy service is left alone, so after a crash ``up`` starts
only what is missing (one killed node of a cluster, say). ``down`` stops workers recorded in
``run/`` first, then Connect, the Kafka nodes, Postgres. ``stack.brokers`` and ``stack.secure``
choose the shape (control/stack/kafka.py, control/stack/security.py); ``stack.env``
records it, so later commands find the same stack. Production never uses this module: point the
settings at real services instead.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from rich.console import Console

from control.stack import connect, kafka, postgres
from control.stack.maven import JvmLayout, find_java, find_maven, jars_current, jvm_dir, resolve_jars
from control.stack.processes import ProcessManager, read_cmdline, wait_until
from crawlstream.errors import CrawlstreamError, PrerequisiteError, StackError
from crawlstream.settings import KafkaSettings, Settings
from crawlstream.topics import ensure_topics

SERVICES = ("postgres", "kafka", "connect")  # start order; ``down`` goes the other way
# A cluster's nodes run as kafka-1, kafka-2, ...: services, whatever shape the settings name.
KAFKA_NODE = re.compile(r"^kafka(-[0-9]+)?$")


def is_service(name: str) -> bool:
    return name in SERVICES or bool(KAFKA_NODE.match(name))


Migrate = Callable[[Settings], None]


def _step(console: Console, message: str) -> None:
    console.print(f"[bold cyan]stack[/] {message}", highlight=False)


# A process killed a moment ago (kill -9) may hold its listening socket until its last thread
# has exited: the JVM's main thread is already a zombie while the others still tear down.
PORT_RELEASE_S = 30.0


def _require_free(service: str, port: int, setting: str, *, crashed: bool = False) -> None:
    """Fail when ``port`` is taken; after a crash of our own process, wait for its release first."""
    deadline = time.monotonic() + (PORT_RELEASE_S if crashed else 0.0)
    while kafka.port_open(port) and time.monotonic() < deadline:
        time.sleep(0.2)  # polling interval of a deadline-bounded wait
    if kafka.port_open(port):
        raise StackError(
            f"{service}: port {port} is already in use by a process this stack did not start; "
            f"stop it or set CRAWLSTREAM_STACK__{setting}"
        )


def stack_env(
    settings: Settings, passwords: dict[str, str], kafka_credentials: dict[str, str] | None = None
) -> dict[str, str]:
    values = {
        "CRAWLSTREAM_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers(settings),
        "CRAWLSTREAM_POSTGRES__URL": postgres.url(settings, settings.postgres.app_role, passwords["app"]),
        "CRAWLSTREAM_POSTGRES__OWNER_URL": postgres.url(settings, postgres.OWNER_ROLE, passwords["owner"]),
        "CRAWLSTREAM_POSTGRES__CDC_PASSWORD": passwords["cdc"],
        "CRAWLSTREAM_CONNECT__URL": connect.rest_url(settings),
    }
    if settings.stack.brokers > 1:
        values |= {
            "CRAWLSTREAM_STACK__BROKERS": str(settings.stack.brokers),
            "CRAWLSTREAM_KAFKA__REPLICATION_FACTOR": str(kafka.replication_factor(settings)),
            "CRAWLSTREAM_KAFKA__MIN_INSYNC_REPLICAS": str(kafka.min_insync_replicas(settings)),
        }
    if settings.stack.secure:
        from control.stack import security

        values["CRAWLSTREAM_STACK__SECURE"] = "true"
        values |= security.stack_env(settings, kafka_credentials or {})
    return values


def write_stack_env(state_dir: Path, values: dict[str, str]) -> Path:
    """``<state_dir>/stack.env`` (0600), read back by crawlstream.settings.load_settings()."""
    path = state_dir / "stack.env"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("# Written by `crawlstream stack up`: endpoints and secrets of the embedded stack.\n")
        fh.writelines(f"{key}='{value}'\n" for key, value in values.items())
    path.chmod(0o600)  # also when the file existed with looser bits
    return path


def with_stack_endpoints(settings: Settings, values: dict[str, str]) -> Settings:
    """``settings`` pointing at the embedded stack, as load_settings() will see it after ``up``."""
    pg = settings.postgres.model_copy(
        update={
            "url": SecretStr(values["CRAWLSTREAM_POSTGRES__URL"]),
            "owner_url": SecretStr(values["CRAWLSTREAM_POSTGRES__OWNER_URL"]),
            "cdc_password": SecretStr(values["CRAWLSTREAM_POSTGRES__CDC_PASSWORD"]),
        }
    )
    # The Kafka section as load_settings() will read it from these variables (validated).
    kafka_env = {
        tuple(key.removeprefix("CRAWLSTREAM_KAFKA__").lower().split("__")): value
        for key, value in values.items()
        if key.startswith("CRAWLSTREAM_KAFKA__")
    }
    kafka_fields = settings.kafka.model_dump()
    for path, value in kafka_env.items():
        target = kafka_fields
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = value
    return settings.model_copy(
        update={
            "postgres": pg,
            "kafka": KafkaSettings.model_validate(kafka_fields),
            "connect": settings.connect.model_copy(update={"url": values["CRAWLSTREAM_CONNECT__URL"]}),
        }
    )


def up(
    settings: Settings,
    migrate: Migrate | None = None,
    *,
    console: Console | None = None,
    timeout_s: float | None = None,
) -> Settings:
    """Start (or confirm) the whole stack; returns settings pointing at it, secrets included."""
    console = console or Console()
    timeout = timeout_s or settings.stack.start_timeout_s
    state = settings.stack.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    pm = ProcessManager(state)

    _step(console, "checking prerequisites (Java 17+, PostgreSQL server, Maven when jars are missing)")
    kafka.check_shape(settings)
    java = find_java(settings)
    layout = postgres.plan_layout(settings, postgres.find_bin_dir(settings))
    connectors = connect.connectors(settings)
    jvm = JvmLayout(java, jvm_dir(settings))
    if not jars_current(jvm.root):
        find_maven()
        _step(
            console,
            f"resolving Kafka + Debezium jars into {jvm.root} with Maven "
            "(first download may take a few minutes)",
        )
        resolve_jars(java, jvm.root, pm.log_path("maven"))

    kafka_credentials = _secure_files(settings, console) if settings.stack.secure else None
    _launch_kafka(settings, jvm, pm, console)
    passwords = _start_postgres(settings, layout, pm, console, timeout)
    for node in kafka.nodes(settings):
        wait_until(
            lambda n=node: kafka.health(settings, n),  # type: ignore[misc]
            service=node.name,
            log_path=pm.log_path(node.name),
            timeout_s=timeout,
            alive=lambda n=node: pm.running(n.name),  # type: ignore[misc]
        )
    if settings.stack.secure:
        _secure_cluster(settings, kafka_credentials or {}, console)
    values = stack_env(settings, passwords, kafka_credentials)
    ready = with_stack_endpoints(settings, values)
    created = ensure_topics(ready)
    _step(
        console,
        f"kafka healthy at {values['CRAWLSTREAM_KAFKA__BOOTSTRAP_SERVERS']} ({len(created)} topics created)",
    )
    _step(console, f"wrote {write_stack_env(state, values)} (0600)")
    from control.stack.security import clients_dir, write_client_properties

    write_client_properties(ready)
    _step(console, f"wrote each stage's Kafka client properties to {clients_dir(ready)} (0600)")

    if migrate is not None:
        _step(console, "running migrations as crawlstream_owner")
        try:
            migrate(ready)
        except CrawlstreamError:
            raise
        except Exception as exc:
            raise StackError(f"migration failed: {type(exc).__name__}: {exc}") from exc

    _start_connect(ready, jvm, pm, passwords["cdc"], console, timeout)
    if postgres.publication_exists(layout, settings):
        migrated_at = postgres.current_wal_lsn(layout)
        for name, config in connectors.items():
            if connect.moves_publication(connect.registered_config(settings, name), config):
                slot = config["slot.name"]
                _step(console, f"connector {name}: slot {slot} drains its old publication to {migrated_at}")
                wait_until(
                    partial(postgres.slot_passed, layout, slot, migrated_at),
                    service=f"connector {name}",
                    log_path=pm.log_path("connect"),
                    timeout_s=timeout,
                    alive=lambda: pm.running("connect"),
                )
            _register_connector(settings, name, config, pm, console, timeout)
    else:
        _step(
            console,
            f"[yellow]connector not registered: publication {settings.postgres.publication} "
            "does not exist yet; run the migrations, then `stack up` again[/]",
        )
    _step(console, "[green]up[/]: `crawlstream stack status` shows endpoints and health")
    return ready


def _launch_kafka(settings: Settings, jvm: JvmLayout, pm: ProcessManager, console: Console) -> None:
    """Start each Kafka node that is not running (all of them at once: a quorum needs a majority)."""
    for node in kafka.nodes(settings):
        crashed = pm.pidfile(node.name).exists()  # a pidfile left behind: it died without `stack down`
        if (pid := pm.pid(node.name)) is not None:
            _step(console, f"{node.name} already running (pid {pid})")
            continue
        _require_free(node.name, node.port, "KAFKA_PORT", crashed=crashed)
        _require_free(f"{node.name} controller", node.controller_port, "CONTROLLER_PORT", crashed=crashed)
        if node.replication_port is not None:
            _require_free(f"{node.name} replication", node.replication_port, "KAFKA_PORT", crashed=crashed)
        props = kafka.write_server_properties(settings, node)
        if not kafka.formatted(settings, node):
            _step(console, f"formatting {node.name}'s KRaft storage (first start)")
            kafka.format_storage(settings, jvm, props, pm.log_path(node.name))
            kafka.record_shape(settings)
        pid = pm.start(node.name, kafka.broker_command(jvm, props, heap=kafka.heap(settings)))
        _step(console, f"{node.name} starting (pid {pid}, {node.address}, log {pm.log_path(node.name)})")


def _secure_files(settings: Settings, console: Console) -> dict[str, str]:
    """Passwords and certificates of a secured stack (made once)."""
    from control.stack import security

    credentials = security.load_or_create_credentials(settings)
    security.ensure_certificates(settings, credentials["keystore"])
    _step(console, f"TLS: CA and node certificates in {security.tls_dir(settings)}")
    return credentials


def _secure_cluster(settings: Settings, credentials: dict[str, str], console: Console) -> None:
    """SCRAM users and ACLs, through the admin's certificate on the replication listener."""
    from confluent_kafka.admin import AdminClient

    from control.stack import security

    admin = AdminClient(security.supervisor_client_config(settings))
    created = security.ensure_users(admin, credentials)
    grants = security.ensure_acls(settings, admin)
    _step(
        console,
        f"kafka secured: SASL_SSL ({security.MECHANISM}), {len(created)} users created, {grants} ACLs "
        "(one principal per stage)",
    )


def _start_postgres(
    settings: Settings, layout: postgres.PgLayout, pm: ProcessManager, console: Console, timeout: float
) -> dict[str, str]:
    log = pm.log_path("postgres")
    crashed = pm.pidfile("postgres").exists()
    orphan = postgres.postmaster_pid(layout)
    if pm.pid("postgres") is None and orphan and str(layout.data_dir) in " ".join(read_cmdline(orphan) or []):
        pm.adopt("postgres", orphan)  # our cluster, but its pidfile was lost
    if (pid := pm.pid("postgres")) is not None:
        _step(console, f"postgres already running (pid {pid})")
    else:
        _require_free("postgres", settings.stack.postgres_port, "POSTGRES_PORT", crashed=crashed)
        if not postgres.initialised(layout):
            _step(console, f"initdb {layout.data_dir}")
            postgres.initdb(layout, log)
        elif postgres.postmaster_pid(layout) is not None:
            _step(console, "postgres was not shut down cleanly: waiting for its last processes to exit")
            wait_until(
                lambda: postgres.stale_lock_reason(layout),
                service="postgres",
                log_path=log,
                timeout_s=timeout,
            )
        postgres.write_config(layout, settings)
        postgres.run_logged(postgres.start_command(layout), log, "pg_ctl start", timeout_s=120)

        def postmaster_up() -> str | None:
            found = postgres.postmaster_pid(layout)
            return None if found and read_cmdline(found) else "no postmaster.pid yet"

        wait_until(postmaster_up, service="postgres", log_path=log, timeout_s=timeout)
        pm.adopt("postgres", postgres.postmaster_pid(layout) or 0)
        _step(console, f"postgres starting (pid {pm.pid('postgres')}, data {layout.data_dir})")
    wait_until(
        lambda: postgres.health(layout),
        service="postgres",
        log_path=log,
        timeout_s=timeout,
        alive=lambda: pm.running("postgres"),
    )
    passwords = postgres.load_or_create_secrets(settings.stack.state_dir.resolve())
    postgres.psql(layout, postgres.bootstrap_sql(settings, passwords), redact=tuple(passwords.values()))
    _step(
        console, f"postgres healthy at 127.0.0.1:{layout.port}, roles and database '{postgres.DB_NAME}' ready"
    )
    return passwords


def _start_connect(
    settings: Settings,
    jvm: JvmLayout,
    pm: ProcessManager,
    cdc_password: str,
    console: Console,
    timeout: float,
) -> None:
    crashed = pm.pidfile("connect").exists()
    if (pid := pm.pid("connect")) is not None:
        _step(console, f"connect already running (pid {pid})")
    else:
        _require_free("connect", settings.stack.connect_port, "CONNECT_PORT", crashed=crashed)
        props = connect.write_worker_properties(settings, jvm)
        pid = pm.start(
            "connect", connect.worker_command(jvm, props), env=connect.worker_env(settings, cdc_password)
        )
        _step(console, f"connect starting (pid {pid}, log {pm.log_path('connect')})")
    wait_until(
        lambda: connect.health(settings),
        service="connect",
        log_path=pm.log_path("connect"),
        timeout_s=timeout,
        alive=lambda: pm.running("connect"),
    )


def _register_connector(
    settings: Settings,
    name: str,
    config: dict[str, str],
    pm: ProcessManager,
    console: Console,
    timeout: float,
) -> None:
    submitted = connect.register(settings, config, name)
    _step(console, f"connector {name} {'submitted' if submitted else 'already configured'}")
    log = pm.log_path("connect")
    restarted = False

    def connector_running() -> str | None:
        nonlocal restarted
        status = connect.connector_status(settings, name)
        summary, trace = connect.describe(status)
        if trace is not None:
            if not restarted:
                # A task fails for good when its database or broker was gone longer than its
                # retries (a crash of either): restart what failed, once, as an operator would.
                # A second failure is an event it cannot process: see README, Operations.
                restarted = True
                connect.restart_failed(settings, name)
                _step(console, f"connector {name} had failed ({summary}): restarted its failed parts")
                return summary
            excerpt = "\n".join(trace.splitlines()[:15])
            raise StackError(f"connector {name} FAILED ({summary}); log: {log}\n--- trace ---\n{excerpt}")
        return None if connect.running(status) else summary

    wait_until(
        connector_running,
        service=f"connector {name}",
        log_path=log,
        timeout_s=timeout,
        alive=lambda: pm.running("connect"),
    )
    _step(console, f"connector {name} RUNNING")


def down(settings: Settings, *, console: Console | None = None, timeout_s: float = 60.0) -> list[str]:
    """Stop every process ``up`` (or a worker launcher) recorded in ``run/``: workers first,
    then Connect, Kafka, Postgres. Returns the names stopped."""
    console = console or Console()
    state = settings.stack.state_dir.resolve()
    pm = ProcessManager(state)
    workers = [name for name in pm.names() if not is_service(name)]
    nodes = [name for name in pm.names() if KAFKA_NODE.match(name)]
    stopped = []
    for name in [*workers, "connect"]:
        if pm.stop(name, timeout_s=timeout_s):
            stopped.append(name)
            _step(console, f"stopped {name}")
    # Every Kafka node at once: stopped one after another, the last waited for the quorum the
    # others took with them until it was killed (60 s on a 3-node stack).
    for name in pm.stop_together(nodes, timeout_s=timeout_s):
        stopped.append(name)
        _step(console, f"stopped {name}")
    if pm.stop("postgres", timeout_s=timeout_s, graceful=_postgres_fast_shutdown(settings)):
        stopped.append("postgres")
        _step(console, "stopped postgres")
    if not stopped:
        _step(console, "nothing was running")
    return stopped


def _postgres_fast_shutdown(settings: Settings) -> Callable[[int], None]:
    def shutdown(pid: int) -> None:
        try:
            layout = postgres.plan_layout(settings, postgres.find_bin_dir(settings))
            proc = subprocess.run(
                postgres.stop_command(layout), capture_output=True, cwd="/", check=False, timeout=30
            )
            if proc.returncode == 0:
                return
        except PrerequisiteError:
            pass
        os.kill(pid, signal.SIGINT)  # what `pg_ctl stop -m fast` sends

    return shutdown


def status(settings: Settings) -> dict[str, Any]:
    """Endpoints and per-service health; the Postgres URL carries no password."""
    pm = ProcessManager(settings.stack.state_dir.resolve())
    services: dict[str, dict[str, Any]] = {}

    def record(name: str, endpoint: str, check: Callable[[], tuple[bool, str]]) -> None:
        pid = pm.pid(name)
        try:
            healthy, detail = check()
        except Exception as exc:  # a status command reports problems, it does not crash on them
            healthy, detail = False, f"{type(exc).__name__}: {exc}"
        services[name] = {
            "endpoint": endpoint,
            "pid": pid,
            "healthy": healthy,
            "detail": detail if pid is not None or healthy else f"not started by stack ({detail})",
        }

    def pg_check() -> tuple[bool, str]:
        reason = postgres.health(postgres.plan_layout(settings, postgres.find_bin_dir(settings)))
        return reason is None, reason or "accepting connections"

    def kafka_check(node: kafka.Node) -> Callable[[], tuple[bool, str]]:
        def check() -> tuple[bool, str]:
            reason = kafka.health(settings, node)
            return (False, reason) if reason else (True, f"{kafka.topic_count(settings, node)} topics")

        return check

    def connect_check() -> tuple[bool, str]:
        if reason := connect.health(settings):
            return False, reason
        summaries = [
            f"{name}: {connect.describe(connect.connector_status(settings, name))[0]}"
            for name in (settings.connect.connector_name, settings.connect.outbox_connector_name)
        ]
        return True, "; ".join(summaries)

    record("postgres", f"127.0.0.1:{settings.stack.postgres_port}", pg_check)
    for node in kafka.nodes(settings):
        record(node.name, node.address, kafka_check(node))
    record("connect", connect.rest_url(settings), connect_check)

    def worker_check(name: str) -> Callable[[], tuple[bool, str]]:
        return lambda: (True, "process alive") if pm.running(name) else (False, "not running")

    for name in pm.names():
        if not is_service(name):
            record(name, "-", worker_check(name))
    alive = {node.node_id for node in kafka.nodes(settings) if services[node.name]["healthy"]}
    leader = kafka.active_controller(settings, alive)
    brokers = [
        {
            "node_id": node.node_id,
            "name": node.name,
            "pid": services[node.name]["pid"],
            "address": node.address,
            "controller_address": node.controller_address,
            # Every node is a voter of the controller quorum; one of them is the active controller.
            "controller": True,
            "active_controller": node.node_id == leader,
            "healthy": services[node.name]["healthy"],
        }
        for node in kafka.nodes(settings)
    ]
    return {
        "kafka_bootstrap": kafka.bootstrap_servers(settings),
        "kafka_security": "SASL_SSL (SCRAM-SHA-512), ACLs" if settings.stack.secure else "PLAINTEXT",
        "postgres_url": postgres.url(settings, settings.postgres.app_role, None),
        "connect_url": connect.rest_url(settings),
        "services": services,
        "brokers": brokers,
    }
