"""Kafka Connect (standalone) of the embedded stack, running the Debezium PostgreSQL connector.

Renders deploy/stack/connect-standalone.properties plus per-machine keys into
``<state_dir>/connect/worker.properties``, runs ``ConnectStandalone`` with the CDC endpoint and
password in the child's environment only (deploy/connect/pages-cdc.json reads them through
``${env:CRAWLSTREAM_CDC_*}``), then PUTs that JSON, unchanged, to
``/connectors/<connect.connector_name>/config`` and waits for connector and task to be RUNNING.
The outbox connector (deploy/connect/outbox-cdc.json, ``connect.outbox_connector_name``) is
registered the same way; its EventRouter writes ``outbox.event.page`` (catalog: page_events).
Both configs carry Debezium heartbeats (``heartbeat.action.query`` upserts the slot's row of
``cdc_heartbeat``; records go to ``__debezium-heartbeat.<topic.prefix>``, catalog: cdc_heartbeat,
outbox_heartbeat), checked here against ``connect.heartbeat_topic_prefix`` and the slot name.
Settings used: ``stack.connect_port``, ``connect.*``, ``postgres.publication``/``slot_name``.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from control.stack.kafka import bootstrap_servers, java_command, render_properties
from control.stack.maven import DEPLOY_DIR, JvmLayout
from control.stack.postgres import DB_NAME
from crawlstream.errors import StackError
from crawlstream.kafka import java_client_properties
from crawlstream.settings import Settings

BASE_PROPERTIES = DEPLOY_DIR / "stack" / "connect-standalone.properties"
CONNECTOR_JSON = DEPLOY_DIR / "connect" / "pages-cdc.json"
OUTBOX_JSON = DEPLOY_DIR / "connect" / "outbox-cdc.json"


def connect_dir(settings: Settings) -> Path:
    return settings.stack.state_dir.resolve() / "connect"


def rest_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.stack.connect_port}"


# A secured stack: the connect principal's password, for the worker's config provider only.
KAFKA_PASSWORD_ENV = "CRAWLSTREAM_CDC_KAFKA_PASSWORD"  # noqa: S105 - a variable name


def worker_overrides(settings: Settings, jvm: JvmLayout) -> dict[str, str]:
    return {
        "bootstrap.servers": bootstrap_servers(settings),
        "listeners": rest_url(settings),
        "offset.storage.file.filename": str(connect_dir(settings) / "offsets.dat"),
        "plugin.path": str(jvm.plugins),
        **kafka_client_overrides(settings),
    }


def kafka_client_overrides(settings: Settings) -> dict[str, str]:
    """The connect principal's security for the worker and the clients of its tasks (producer.,
    consumer., admin.); the password stays in the worker's environment (${env:...})."""
    if not settings.stack.secure:
        return {}
    props = java_client_properties(settings, "connect", password_reference=f"${{env:{KAFKA_PASSWORD_ENV}}}")
    props.pop("bootstrap.servers")
    return {
        f"{prefix}{key}": value
        for prefix in ("", "producer.", "consumer.", "admin.")
        for key, value in props.items()
    }


def write_worker_properties(settings: Settings, jvm: JvmLayout) -> Path:
    path = connect_dir(settings) / "worker.properties"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render_properties(BASE_PROPERTIES.read_text(), worker_overrides(settings, jvm), BASE_PROPERTIES)
    path.write_text(text)
    return path


def worker_command(jvm: JvmLayout, props: Path) -> list[str]:
    return java_command(jvm, "org.apache.kafka.connect.cli.ConnectStandalone", str(props), heap="1g")


def worker_env(settings: Settings, cdc_password: str) -> dict[str, str]:
    """What the connector JSON's ${env:...} placeholders resolve to (the worker's env only)."""
    kafka_password = settings.kafka.credential("connect") if settings.stack.secure else None
    return {
        **({KAFKA_PASSWORD_ENV: kafka_password.password.get_secret_value()} if kafka_password else {}),
        "CRAWLSTREAM_CDC_DB_HOST": "127.0.0.1",
        "CRAWLSTREAM_CDC_DB_PORT": str(settings.stack.postgres_port),
        "CRAWLSTREAM_CDC_DB_NAME": DB_NAME,
        "CRAWLSTREAM_CDC_DB_USER": settings.postgres.cdc_user,
        "CRAWLSTREAM_CDC_DB_PASSWORD": cdc_password,
    }


def connector_config(
    settings: Settings, path: Path = CONNECTOR_JSON, expected: dict[str, str] | None = None
) -> dict[str, str]:
    """The connector JSON, checked against the settings it must agree with."""
    config: dict[str, str] = json.loads(path.read_text())
    expected = expected or {
        "topic.prefix": settings.connect.cdc_topic_prefix,
        "publication.name": settings.postgres.publication,
        "slot.name": settings.postgres.slot_name,
        "topic.heartbeat.prefix": settings.connect.heartbeat_topic_prefix,
        # The page events are logical decoding messages (pgoutput passes every message to every
        # slot): the raw connector must drop them, or it would publish them on cdc.message.
        "message.prefix.exclude.list": ".*",
    }
    wrong = [
        f"{key}={config.get(key)!r} but settings say {value!r}"
        for key, value in expected.items()
        if config.get(key) != value
    ]
    slot = config.get("slot.name", "")
    if f"'{slot}'" not in config.get("heartbeat.action.query", ""):
        wrong.append(f"heartbeat.action.query must upsert the row of its slot '{slot}' in cdc_heartbeat")
    if wrong:
        raise StackError(f"{path} disagrees with settings: {'; '.join(wrong)}")
    return config


def outbox_connector_config(settings: Settings, path: Path = OUTBOX_JSON) -> dict[str, str]:
    """The outbox connector's JSON: the page events are logical decoding messages with the
    prefix the page sink emits (settings.postgres.event_message_prefix), decoded and routed by
    Debezium's SMTs; its publication holds no table but cdc_heartbeat (migration 0007)."""
    expected = {
        "topic.prefix": settings.connect.outbox_topic_prefix,
        "publication.name": settings.postgres.events_publication,
        "slot.name": settings.connect.outbox_slot_name,
        "table.exclude.list": ".*",
        "topic.heartbeat.prefix": settings.connect.heartbeat_topic_prefix,
    }
    config = connector_config(settings, path, expected)
    prefixes = config.get("message.prefix.include.list", "")
    prefix = settings.postgres.event_message_prefix
    if not any(re.fullmatch(p.strip(), prefix) for p in prefixes.split(",") if p.strip()):
        raise StackError(
            f"{path} disagrees with settings: message.prefix.include.list={prefixes!r} does not "
            f"match the page events' prefix {prefix!r} (postgres.event_message_prefix)"
        )
    return config


def connectors(settings: Settings) -> dict[str, dict[str, str]]:
    """Every connector the stack registers: name -> checked config."""
    return {
        settings.connect.connector_name: connector_config(settings),
        settings.connect.outbox_connector_name: outbox_connector_config(settings),
    }


def _request(method: str, url: str, body: dict[str, str] | None = None, timeout_s: float = 10) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    # Only ever called with rest_url(): http://127.0.0.1:<port>, never a user-supplied scheme.
    req = urllib.request.Request(  # noqa: S310
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310
        raw = resp.read()
    return json.loads(raw) if raw else None


def health(settings: Settings) -> str | None:
    """None when the REST API answers, else the reason."""
    try:
        info = _request("GET", rest_url(settings) + "/", timeout_s=3)
    except (OSError, ValueError) as exc:
        return f"REST API not answering: {exc}"
    return None if isinstance(info, dict) and "version" in info else f"unexpected REST answer {info!r}"


def registered_config(settings: Settings, name: str | None = None) -> dict[str, str] | None:
    """The config Connect holds for the connector (without ``name``), None if not registered."""
    url = f"{rest_url(settings)}/connectors/{name or settings.connect.connector_name}/config"
    try:
        current = _request("GET", url)
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise StackError(f"connect: GET {url} failed: {exc.code} {exc.reason}") from exc
        return None
    return {k: str(v) for k, v in current.items() if k != "name"} if isinstance(current, dict) else None


def moves_publication(current: dict[str, str] | None, config: dict[str, str]) -> bool:
    """True when ``config`` reads another publication than the registered ``current`` through the
    same slot. pgoutput looks publications up as of the WAL it decodes, so the slot must first
    have passed the publication's creation (migration 0007), or decoding stops with "publication
    ... does not exist": the old config drains up to there first (see the supervisor)."""
    return (
        current is not None
        and current.get("slot.name") == config.get("slot.name")
        and current.get("publication.name") != config.get("publication.name")
    )


def register(settings: Settings, config: dict[str, str], name: str | None = None) -> bool:
    """PUT the config unless Connect already holds exactly it; True when it was (re)submitted."""
    url = f"{rest_url(settings)}/connectors/{name or settings.connect.connector_name}/config"
    if registered_config(settings, name) == config:
        return False
    try:
        _request("PUT", url, config, timeout_s=60)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:2000]
        raise StackError(f"connect: PUT {url} failed: {exc.code} {detail}") from exc
    return True


def restart_failed(settings: Settings, name: str) -> None:
    """Restart a connector's failed instance and failed tasks (Connect 3.0+, KIP-745)."""
    url = f"{rest_url(settings)}/connectors/{name}/restart?includeTasks=true&onlyFailed=true"
    try:
        _request("POST", url, timeout_s=30)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:2000]
        raise StackError(f"connect: POST {url} failed: {exc.code} {detail}") from exc


def connector_status(settings: Settings, name: str | None = None) -> dict[str, Any] | None:
    """The REST status document, or None when the connector is not registered."""
    url = f"{rest_url(settings)}/connectors/{name or settings.connect.connector_name}/status"
    try:
        status: dict[str, Any] = _request("GET", url, timeout_s=5)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
    return status


def describe(status: dict[str, Any] | None) -> tuple[str, str | None]:
    """(summary, failure trace) of a status document: 'RUNNING', 'UNASSIGNED, task 0 FAILED', ..."""
    if status is None:
        return "not registered", None
    connector = status.get("connector", {})
    tasks = status.get("tasks", [])
    parts = [f"connector {connector.get('state', '?')}"]
    parts += [f"task {t.get('id')} {t.get('state')}" for t in tasks] or ["no task yet"]
    traces = [s["trace"] for s in (connector, *tasks) if s.get("state") == "FAILED" and s.get("trace")]
    return ", ".join(parts), (traces[0] if traces else None)


def running(status: dict[str, Any] | None) -> bool:
    if status is None or status.get("connector", {}).get("state") != "RUNNING":
        return False
    tasks = status.get("tasks", [])
    return bool(tasks) and all(t.get("state") == "RUNNING" for t in tasks)
