"""A secured embedded Kafka (``crawlstream stack up --secure``): TLS, SCRAM users and ACLs.

What ``stack up`` sets up, all under ``<state_dir>/kafka``:

- ``tls/``: a local CA and one certificate per node (CN = the node's process name, SAN
  127.0.0.1 and localhost) in a PKCS#12 keystore, plus a client certificate for the admin,
  made with ``openssl`` (passwords reach openssl through its environment, never its arguments).
- ``credentials.json`` (0600): the keystore password and one SCRAM-SHA-512 password per stage,
  generated once.
- Listeners of each node: ``SASL_SSL`` for clients (SCRAM-SHA-512, server certificate only),
  ``INTERNAL`` for replication and ``CONTROLLER`` for the quorum, both mutual TLS: nodes are
  the principals their certificates name (``User:kafka-1`` ...), super users with the admin.
- ``StandardAuthorizer`` with the plan of crawlstream/acls.py: every other principal may use only
  its own stage's topics and groups. Users and ACLs are created by the supervisor over the
  INTERNAL listener with the admin's certificate (SCRAM users cannot log in before they exist).

Every client gets the stage's settings through stack.env (``kafka.security_protocol``,
``kafka.ssl_ca_location``, ``kafka.credentials.<stage>``) and crawlstream/kafka.py; standard tools
get them from ``<state_dir>/kafka-clients/<stage>.properties`` (librdkafka: ``kcat -F``) and
``<stage>.java.properties`` (``kafka-console-consumer --command-config``), written for every stack.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialUpsertion,
)

from control.stack.kafka import HOST, Node, kafka_dir, nodes
from crawlstream.acls import Grant, acl_plan
from crawlstream.errors import StackError
from crawlstream.kafka import client_security, java_client_properties, librdkafka_security, properties_text
from crawlstream.settings import STAGES, Settings, Stage

MECHANISM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 8192
ADMIN = "admin"
CERT_DAYS = 3650


def tls_dir(settings: Settings) -> Path:
    return kafka_dir(settings) / "tls"


def ca_file(settings: Settings) -> Path:
    return tls_dir(settings) / "ca.pem"


def clients_dir(settings: Settings) -> Path:
    return settings.stack.state_dir.resolve() / "kafka-clients"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    path.chmod(0o600)


def load_or_create_credentials(settings: Settings) -> dict[str, str]:
    """Passwords (keystore, and one per stage), generated once and kept in credentials.json."""
    path = kafka_dir(settings) / "credentials.json"
    wanted = {"keystore", *STAGES}
    stored: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
    missing = wanted - stored.keys()
    if missing:
        stored |= {name: secrets.token_urlsafe(24) for name in sorted(missing)}
        _write_private(path, json.dumps(stored))
    return stored


def _openssl(args: list[str], env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(
        ["openssl", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        raise StackError(f"openssl {args[0]} failed: {proc.stderr.strip()[-2000:]}")


def _certificate(directory: Path, name: str, *, server: bool) -> tuple[Path, Path]:
    """A key and a certificate for ``name`` (its CN) signed by the CA in ``directory``."""
    key, csr, cert = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.pem"
    ext = directory / f"{name}.ext"
    usage = "serverAuth,clientAuth" if server else "clientAuth"
    san = f"subjectAltName=IP:{HOST},DNS:localhost\n" if server else ""
    ext.write_text(f"{san}extendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n")
    _openssl(
        [
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(csr),
            "-subj",
            f"/CN={name}",
        ]
    )
    _openssl(
        ["x509", "-req", "-in", str(csr), "-CA", str(directory / "ca.pem"),
         "-CAkey", str(directory / "ca.key"), "-CAcreateserial", "-days", str(CERT_DAYS), "-sha256",
         "-extfile", str(ext), "-out", str(cert)]
    )  # fmt: skip
    key.chmod(0o600)
    csr.unlink()
    ext.unlink()
    return key, cert


def ensure_certificates(settings: Settings, keystore_password: str) -> None:
    """The CA, each node's keystore and the admin's client certificate, those that are missing."""
    directory = tls_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    if not (directory / "ca.pem").is_file():
        _openssl(
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(CERT_DAYS), "-sha256",
             "-subj", "/CN=crawlstream local CA", "-keyout", str(directory / "ca.key"),
             "-out", str(directory / "ca.pem")]
        )  # fmt: skip
        (directory / "ca.key").chmod(0o600)
    for node in nodes(settings):
        keystore = directory / f"{node.name}.p12"
        if keystore.is_file():
            continue
        key, cert = _certificate(directory, node.name, server=True)
        _openssl(
            ["pkcs12", "-export", "-in", str(cert), "-inkey", str(key),
             "-certfile", str(directory / "ca.pem"), "-name", node.name, "-out", str(keystore),
             "-passout", "env:CRAWLSTREAM_KEYSTORE_PASSWORD"],
            env={"CRAWLSTREAM_KEYSTORE_PASSWORD": keystore_password},
        )  # fmt: skip
        keystore.chmod(0o600)
        key.unlink()
    if not (directory / f"{ADMIN}.pem").is_file():
        _certificate(directory, ADMIN, server=False)


def super_users(settings: Settings) -> list[str]:
    return [*(f"User:{node.name}" for node in nodes(settings)), f"User:{ADMIN}"]


def server_overrides(settings: Settings, node: Node) -> dict[str, str]:
    """The listeners, TLS and SASL of a secured node, and the authorizer."""
    directory = tls_dir(settings)
    password = load_or_create_credentials(settings)["keystore"]
    return {
        "listeners": f"SASL_SSL://{node.address},INTERNAL://{HOST}:{node.replication_port},"
        f"CONTROLLER://{node.controller_address}",
        "advertised.listeners": f"SASL_SSL://{node.address},INTERNAL://{HOST}:{node.replication_port}",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,INTERNAL:SSL,CONTROLLER:SSL",
        "inter.broker.listener.name": "INTERNAL",
        "sasl.enabled.mechanisms": MECHANISM,
        f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(directory / f"{node.name}.p12"),
        "ssl.keystore.password": password,
        "ssl.key.password": password,
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(directory / "ca.pem"),
        # Nodes (and the admin's certificate) authenticate by certificate; clients by SCRAM.
        "ssl.client.auth": "required",
        "listener.name.sasl_ssl.ssl.client.auth": "none",
        "ssl.principal.mapping.rules": "RULE:^CN=([A-Za-z0-9._-]+)$/$1/,DEFAULT",
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": ";".join(super_users(settings)),
        "allow.everyone.if.no.acl.found": "false",
    }


def supervisor_client_config(settings: Settings, node: Node | None = None) -> dict[str, Any]:
    """The supervisor's own admin client: mutual TLS on the INTERNAL listener(s) as ``admin``."""
    directory = tls_dir(settings)
    targets = [node] if node is not None else nodes(settings)
    return {
        "bootstrap.servers": ",".join(f"{HOST}:{n.replication_port}" for n in targets),
        "security.protocol": "SSL",
        "ssl.ca.location": str(directory / "ca.pem"),
        "ssl.certificate.location": str(directory / f"{ADMIN}.pem"),
        "ssl.key.location": str(directory / f"{ADMIN}.key"),
        "ssl.endpoint.identification.algorithm": "https",
        "log_level": 0,
    }


def stack_env(settings: Settings, credentials: dict[str, str]) -> dict[str, str]:
    """What stack.env tells every process of a secured stack (stage credentials included)."""
    values = {
        "CRAWLSTREAM_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "CRAWLSTREAM_KAFKA__SASL_MECHANISM": MECHANISM,
        "CRAWLSTREAM_KAFKA__SSL_CA_LOCATION": str(ca_file(settings)),
    }
    for stage in STAGES:
        prefix = f"CRAWLSTREAM_KAFKA__CREDENTIALS__{stage.upper()}"
        values[f"{prefix}__USERNAME"] = stage
        values[f"{prefix}__PASSWORD"] = credentials[stage]
    return values


def _result(futures: Any, what: str, timeout_s: float) -> None:
    for key, future in futures.items():
        try:
            future.result(timeout=timeout_s)
        except Exception as exc:
            raise StackError(f"kafka: {what} {key} failed: {exc}") from exc


def ensure_users(admin: AdminClient, credentials: dict[str, str], timeout_s: float = 30.0) -> list[str]:
    """Create the SCRAM user of each stage that lacks one; returns the users created."""
    described: dict[str, Any] = admin.describe_user_scram_credentials(  # type: ignore[assignment]
        list(STAGES), request_timeout=timeout_s
    )  # with users named, a future per user
    missing = []
    for user, future in described.items():
        try:
            info = future.result(timeout=timeout_s)
            has = any(
                ScramMechanism(c.mechanism).name == "SCRAM_SHA_512" for c in info.scram_credential_infos
            )
        except Exception:  # RESOURCE_NOT_FOUND: no credential for this user yet
            has = False
        if not has:
            missing.append(user)
    if missing:
        upserts: list[UserScramCredentialAlteration] = [
            UserScramCredentialUpsertion(
                user,
                ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS),
                credentials[user].encode("utf-8"),
            )
            for user in missing
        ]
        _result(
            admin.alter_user_scram_credentials(upserts, request_timeout=timeout_s), "SCRAM user", timeout_s
        )
    return missing


_RESOURCE = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP, "cluster": ResourceType.BROKER}
_PATTERN = {"literal": ResourcePatternType.LITERAL, "prefixed": ResourcePatternType.PREFIXED}


def acl_binding(grant: Grant) -> AclBinding:
    return AclBinding(
        _RESOURCE[grant.resource],
        grant.name,
        _PATTERN[grant.pattern],
        grant.principal,
        "*",
        getattr(AclOperation, grant.operation.upper()),
        AclPermissionType.ALLOW,
    )


def ensure_acls(settings: Settings, admin: AdminClient, timeout_s: float = 30.0) -> int:
    """Create every binding of the plan (creating an existing one changes nothing)."""
    bindings = [acl_binding(grant) for grant in acl_plan(settings)]
    _result(admin.create_acls(bindings, request_timeout=timeout_s), "ACL", timeout_s)
    return len(bindings)


def client_properties(settings: Settings, stage: Stage) -> tuple[dict[str, Any], dict[str, str]]:
    """(librdkafka, Java) client properties of ``stage``: bootstrap servers and its security."""
    librdkafka = {
        "bootstrap.servers": settings.kafka.bootstrap_servers,
        **librdkafka_security(client_security(settings, stage)),
    }
    return librdkafka, java_client_properties(settings, stage)


def write_client_properties(settings: Settings) -> list[Path]:
    """``<state_dir>/kafka-clients/<stage>.properties`` (kcat -F) and ``<stage>.java.properties``
    (Kafka's tools, ``--command-config``) for every stage (0600: they hold its password)."""
    written = []
    for stage in STAGES:
        librdkafka, java = client_properties(settings, stage)
        header = f"The {stage} stage's Kafka client settings, written by `crawlstream stack up`."
        for path, config, tool in (
            (clients_dir(settings) / f"{stage}.properties", librdkafka, "librdkafka: kcat -F <this file>"),
            (clients_dir(settings) / f"{stage}.java.properties", java, "Java: --command-config <this file>"),
        ):
            _write_private(path, properties_text(config, f"{header}\n{tool}"))
            written.append(path)
    return written
