"""The Kafka client factory: every producer, consumer and admin client of every stage is built here.

Settings used: ``kafka.*`` (bootstrap servers, security, the stage's credential, ``client_config``
extras, ``max_message_bytes``, ``consumer_session_timeout_s``). One protocol for all of them:

- :func:`producer_config` / :func:`consumer_config` / :func:`admin_config`: librdkafka dicts
  (confluent-kafka) for a :data:`~crawlstream.settings.Stage`: its principal, then the stage's
  defaults (producers: ``acks=all`` and idempotence; consumers: the session timeout, fetch sizes
  that fit the largest record), then the caller's overrides.
- :func:`client_security`: the same security as one typed value, which :func:`aiokafka_security`
  (faust, the streams stage), :func:`kafka_python_config` (``offsets delete --topic``) and
  :func:`java_client_properties` (Kafka Connect, Kafka's own tools) translate. A security key of
  ``kafka.client_config`` that a non-librdkafka client cannot honour is refused by name: dropping
  it would connect in plaintext to a cluster that expects TLS.
- :func:`properties_text`: a config as a ``.properties`` file (``kcat -F``, ``--command-config``).

Nothing here logs a config: they carry passwords.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crawlstream.errors import ConfigError
from crawlstream.settings import STAGES, KafkaSettings, Settings, Stage

# librdkafka keys of kafka.client_config that carry security, and what they mean to the others.
_SECURITY_KEYS = {
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
    "ssl.endpoint.identification.algorithm",
}


@dataclass(frozen=True)
class ClientSecurity:
    """How one stage's clients connect: protocol, TLS files, SASL login (password not in repr)."""

    protocol: str = "PLAINTEXT"
    mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_location: str | None = None
    certificate_location: str | None = None
    key_location: str | None = None
    key_password: str | None = field(default=None, repr=False)
    check_hostname: bool = True

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")


def _kafka(settings: Settings | KafkaSettings) -> KafkaSettings:
    return settings.kafka if isinstance(settings, Settings) else settings


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")


def client_security(settings: Settings | KafkaSettings, stage: Stage) -> ClientSecurity:
    """The typed security settings and the stage's credential, with the security keys of
    ``kafka.client_config`` applied on top. Raises ConfigError naming the field when a SASL
    protocol has no credential for ``stage``."""
    _check_stage(stage)
    kafka = _kafka(settings)
    extra = kafka.client_config
    protocol = extra.get("security.protocol", kafka.security_protocol).upper()
    if protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        raise ConfigError(f"kafka.client_config security.protocol: unknown protocol {protocol!r}")
    credential = kafka.credential(stage)
    username = extra.get("sasl.username", credential.username if credential else None)
    password = extra.get("sasl.password", credential.password.get_secret_value() if credential else None)
    sasl = protocol.startswith("SASL_")
    if sasl and not (username and password):
        raise ConfigError(
            f"kafka.security_protocol is {protocol} but the {stage} stage has no SASL credential: set "
            f"kafka.credentials.{stage}.username and .password (CRAWLSTREAM_KAFKA__CREDENTIALS__"
            f"{stage.upper()}__USERNAME / __PASSWORD) or this process's kafka.sasl.username and "
            ".password (CRAWLSTREAM_KAFKA__SASL__USERNAME / __PASSWORD)"
        )
    identification = extra.get(
        "ssl.endpoint.identification.algorithm", "https" if kafka.ssl_check_hostname else "none"
    )

    def path(key: str, value: Path | None) -> str | None:
        return extra.get(key, str(value) if value is not None else None)

    key_password = kafka.ssl_key_password.get_secret_value() if kafka.ssl_key_password else None
    return ClientSecurity(
        protocol=protocol,
        mechanism=extra.get("sasl.mechanism", extra.get("sasl.mechanisms", kafka.sasl_mechanism))
        if sasl
        else None,
        username=username if sasl else None,
        password=password if sasl else None,
        ca_location=path("ssl.ca.location", kafka.ssl_ca_location),
        certificate_location=path("ssl.certificate.location", kafka.ssl_certificate_location),
        key_location=path("ssl.key.location", kafka.ssl_key_location),
        key_password=extra.get("ssl.key.password", key_password),
        check_hostname=identification.lower() != "none",
    )


def librdkafka_security(security: ClientSecurity) -> dict[str, Any]:
    """librdkafka keys for ``security``; empty for PLAINTEXT (the config stays as it always was)."""
    out: dict[str, Any] = {}
    if security.protocol == "PLAINTEXT":
        return out
    out["security.protocol"] = security.protocol
    if security.sasl:
        out["sasl.mechanism"] = security.mechanism
        out["sasl.username"] = security.username
        out["sasl.password"] = security.password
    if security.tls:
        if security.ca_location:
            out["ssl.ca.location"] = security.ca_location
        if security.certificate_location:
            out["ssl.certificate.location"] = security.certificate_location
            out["ssl.key.location"] = security.key_location
        if security.key_password:
            out["ssl.key.password"] = security.key_password
        out["ssl.endpoint.identification.algorithm"] = "https" if security.check_hostname else "none"
    return out


def base_config(settings: Settings | KafkaSettings, stage: Stage) -> dict[str, Any]:
    """Bootstrap servers, ``stage``'s security, then the ``kafka.client_config`` extras."""
    kafka = _kafka(settings)
    security = librdkafka_security(client_security(kafka, stage))
    extras = {k: v for k, v in kafka.client_config.items() if k not in _SECURITY_KEYS}
    return {"bootstrap.servers": kafka.bootstrap_servers, **security, **extras}


def producer_config(settings: Settings, stage: Stage, **overrides: Any) -> dict[str, Any]:
    """A producer that loses nothing a broker acknowledged: ``acks=all`` (with the topic's
    ``min.insync.replicas``, a record is on that many replicas before it counts as written) and
    idempotence (retries neither duplicate nor reorder within a partition)."""
    return {
        **base_config(settings, stage),
        "client.id": f"crawlstream-{stage}",
        "acks": "all",
        "enable.idempotence": True,
        "message.max.bytes": settings.kafka.max_message_bytes,
        **overrides,
    }


def consumer_config(settings: Settings, stage: Stage, group: str, **overrides: Any) -> dict[str, Any]:
    """A consumer of ``group``: a killed member's partitions move after
    ``kafka.consumer_session_timeout_s`` (librdkafka's own default is 45 s), and one fetch takes
    the largest record a topic may hold. A sink worker with ``sink.instance_id`` is a static
    member of its groups (one group per topic family, so one id serves them all)."""
    static = (
        {"group.instance.id": settings.sink.instance_id}
        if stage == "sinks" and settings.sink.instance_id
        else {}
    )
    return {
        **base_config(settings, stage),
        "client.id": f"crawlstream-{stage}",
        "group.id": group,
        "session.timeout.ms": round(settings.kafka.consumer_session_timeout_s * 1000),
        "max.partition.fetch.bytes": settings.kafka.max_message_bytes,
        **static,
        **overrides,
    }


def admin_config(settings: Settings, stage: Stage = "admin", **overrides: Any) -> dict[str, Any]:
    return {**base_config(settings, stage), "client.id": f"crawlstream-{stage}", **overrides}


def _refuse_unmapped(kafka: KafkaSettings, client: str) -> None:
    unmapped = sorted(
        k
        for k in kafka.client_config
        if k.startswith(("security.", "sasl.", "ssl.")) and k not in _SECURITY_KEYS
    )
    if unmapped:
        raise ConfigError(
            f"kafka.client_config (CRAWLSTREAM_KAFKA__CLIENT_CONFIG): {', '.join(unmapped)} has no "
            f"{client} equivalent; supported security keys: {', '.join(sorted(_SECURITY_KEYS))}"
        )


def ssl_context(security: ClientSecurity) -> ssl.SSLContext:
    """A client TLS context that verifies the brokers (against ``ca_location`` or the system's
    CAs) and presents the client certificate when one is configured."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=security.ca_location)
    context.check_hostname = security.check_hostname
    if security.certificate_location:
        context.load_cert_chain(security.certificate_location, security.key_location, security.key_password)
    return context


def aiokafka_security(settings: Settings, stage: Stage) -> dict[str, Any]:
    """aiokafka's keyword arguments for ``stage``'s security (faust takes the same through
    ``broker_credentials``: see streams/app.py)."""
    kafka = settings.kafka
    _refuse_unmapped(kafka, "aiokafka")
    security = client_security(kafka, stage)
    out: dict[str, Any] = {"security_protocol": security.protocol}
    if security.tls:
        out["ssl_context"] = ssl_context(security)
    if security.sasl:
        out["sasl_mechanism"] = security.mechanism
        out["sasl_plain_username"] = security.username
        out["sasl_plain_password"] = security.password
    return out


def kafka_python_config(settings: Settings, stage: Stage = "admin") -> dict[str, Any]:
    """kafka-python's arguments: bootstrap servers and ``stage``'s security."""
    kafka = settings.kafka
    _refuse_unmapped(kafka, "kafka-python")
    security = client_security(kafka, stage)
    config: dict[str, Any] = {"bootstrap_servers": kafka.bootstrap_servers.split(",")}
    if "client.id" in kafka.client_config:
        config["client_id"] = kafka.client_config["client.id"]
    if security.protocol != "PLAINTEXT":
        config["security_protocol"] = security.protocol
    if security.sasl:
        config["sasl_mechanism"] = security.mechanism
        config["sasl_plain_username"] = security.username
        config["sasl_plain_password"] = security.password
    if security.tls:
        optional = {
            "ssl_cafile": security.ca_location,
            "ssl_certfile": security.certificate_location,
            "ssl_keyfile": security.key_location,
            "ssl_password": security.key_password,
        }
        config.update({k: v for k, v in optional.items() if v})
        if not security.check_hostname:
            config["ssl_check_hostname"] = False
    return config


def _jaas_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def java_client_properties(
    settings: Settings, stage: Stage, *, password_reference: str | None = None
) -> dict[str, str]:
    """Java client properties (Kafka Connect, kafka-console-consumer ``--command-config``) for
    ``stage``: bootstrap servers and security. ``password_reference`` replaces the password in
    ``sasl.jaas.config`` (e.g. ``${env:VAR}``, resolved by a config provider), so that the file
    holds no secret."""
    kafka = settings.kafka
    _refuse_unmapped(kafka, "Java client")
    security = client_security(kafka, stage)
    props = {"bootstrap.servers": kafka.bootstrap_servers}
    if security.protocol == "PLAINTEXT":
        return props
    props["security.protocol"] = security.protocol
    if security.sasl:
        module = {
            "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
        }.get(security.mechanism or "", "org.apache.kafka.common.security.scram.ScramLoginModule")
        password = f'"{password_reference}"' if password_reference else _jaas_quote(security.password or "")
        props["sasl.mechanism"] = security.mechanism or ""
        props["sasl.jaas.config"] = (
            f"{module} required username={_jaas_quote(security.username or '')} password={password};"
        )
    if security.tls:
        if security.ca_location:
            props["ssl.truststore.type"] = "PEM"
            props["ssl.truststore.location"] = security.ca_location
        if security.certificate_location:
            raise ConfigError(
                "kafka.ssl_certificate_location: TLS client certificates are not mapped to Java "
                "clients (Kafka Connect) yet; use SASL_SSL"
            )
        props["ssl.endpoint.identification.algorithm"] = "https" if security.check_hostname else ""
    return props


def properties_text(config: dict[str, Any], header: str = "") -> str:
    """``key=value`` lines, as kcat -F and Java's Properties both read them (booleans in lower
    case; kcat takes a value verbatim, so a value may hold neither a line break nor a backslash)."""

    def text(key: str, value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if any(c in str(value) for c in "\\\r\n"):
            raise ConfigError(
                f"{key}: a value with a backslash or line break cannot be written to a properties file"
            )
        return str(value)

    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{key}={text(key, value)}" for key, value in config.items()]
    return "\n".join(lines) + "\n"
