"""deploy/compose against the Compose Specification's JSON schema (tests/data/schemas/compose), the
image (deploy/docker/Dockerfile) against what the manifests expect of it, and every
``CRAWLSTREAM_*`` name the deployments set against crawlstream/settings.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from control.ops import manifests
from crawlstream.settings import FollowSettings, MetricsSettings, StreamsSettings
from tests.unit.deploy.support import DEPLOY, REPO, SCHEMAS, by_kind, pod_specs

COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
# What a user passes (the file requires each with ${NAME:?...}).
COMPOSE_ENV = {
    "CRAWLSTREAM_IMAGE": "crawlstream:test",
    "POSTGRES_SUPERUSER_PW": "pw-super",
    "OWNER_PW": "pw-owner",
    "APP_PW": "pw-app",
    "CDC_PW": "pw-cdc",
    "GRAFANA_ADMIN_PW": "pw-grafana",
}
# CRAWLSTREAM_* names that are not Settings fields by design: the jobs file option's variable
# (crawlers/cli.py) and the connector JSON's ${env:...} placeholders (control/stack/connect.py).
OTHER_NAMES = re.compile(r"^CRAWLSTREAM_(JOBS_FILE|CDC_DB_(HOST|PORT|NAME|USER|PASSWORD))$")

_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable syntax: $$, $NAME, ${NAME}, ${NAME:-default}, ${NAME-default},
    ${NAME:?error}, ${NAME?error}."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, arg = match.group(2), match.group(3)
        have = env.get(name)
        if op and op.endswith("?") and not have:
            raise AssertionError(f"compose requires {name}: {arg}")
        if op and op.endswith("-") and (have is None or (op == ":-" and not have)):
            return arg
        return have or ""

    return _VARIABLE.sub(one, value)


def interpolated(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: interpolated(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolated(v, env) for v in node]
    return interpolate(node, env) if isinstance(node, str) else node


def compose_model() -> dict[str, Any]:
    result: dict[str, Any] = interpolated(yaml.safe_load(COMPOSE.read_text()), COMPOSE_ENV)
    return result


def compose_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / "compose" / "compose-spec.json").read_text())
    return schema


def test_interpolation_follows_compose() -> None:
    env = {"A": "x", "EMPTY": ""}
    assert interpolate("$$A ${A} $A ${B:-d} ${EMPTY:-d} ${EMPTY-d} ${B-d}", env) == "$A x x d d  d"
    with pytest.raises(AssertionError, match="compose requires B: set B"):
        interpolate("${B:?set B}", env)


def test_compose_file_is_valid_for_the_compose_specification() -> None:
    model = compose_model()
    jsonschema.Draft7Validator(compose_schema()).validate(model)
    # The schema is really applied: a misspelt service key and a wrongly typed one are refused.
    broken = json.loads(json.dumps(model))
    broken["services"]["sink"]["comand"] = ["x"]
    broken["services"]["postgres"]["restart"] = 5
    errors = list(jsonschema.Draft7Validator(compose_schema()).iter_errors(broken))
    assert len(errors) == 2


def test_compose_references_resolve() -> None:
    """What `docker compose config` checks beyond the schema: services named in depends_on and
    network_mode exist, named volumes are declared, env files exist."""
    model = compose_model()
    services, volumes = model["services"], set(model.get("volumes", {}))
    for name, service in services.items():
        assert set(service.get("depends_on", {})) <= set(services), name
        mode = service.get("network_mode", "")
        if mode.startswith("service:"):
            assert mode.removeprefix("service:") in services, name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith(("/", ".")):
                assert source in volumes, (name, source)
        for env_file in service.get("env_file", []):
            assert (COMPOSE.parent / env_file).is_file(), (name, env_file)


def test_compose_carries_the_whole_platform() -> None:
    services = compose_model()["services"]
    assert {"kafka-1", "kafka-2", "kafka-3", "postgres", "connect", "topics", "migrate"} <= set(services)
    assert {"register-connectors", "streams-0", "streams-1", "sink", "crawler", "scheduler"} <= set(services)
    assert {"follow", "exporter", "prometheus", "grafana"} <= set(services)
    voters = services["kafka-1"]["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    assert voters == "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
    # Every worker runs the image with the deployment's shared settings file.
    workers = [s for s in services.values() if s.get("image") == COMPOSE_ENV["CRAWLSTREAM_IMAGE"]]
    assert len(workers) >= 9
    for service in workers:
        assert service["env_file"] == ["../k8s/settings.env"]
        assert service["user"] == "10001:10001"
        assert service["read_only"] is True


def test_compose_uses_the_stacks_files_unchanged() -> None:
    services = compose_model()["services"]
    base = COMPOSE.parent
    mounts = {
        name: [v.split(":")[0] for v in service.get("volumes", []) if v.startswith(".")]
        for name, service in services.items()
    }
    for name, sources in mounts.items():
        for source in sources:
            assert (base / source).exists(), (name, source)
    assert "../connect" in mounts["register-connectors"]
    assert "../prometheus/prometheus.yml" in mounts["prometheus"]
    assert "../prometheus/rules" in mounts["prometheus"]
    assert "../grafana/provisioning/datasources" in mounts["grafana"]
    # deploy/prometheus/prometheus.yml reads targets/<name>.json: compose gives each one.
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    wanted = {
        f
        for job in prometheus["scrape_configs"]
        for sd in job.get("file_sd_configs", [])
        for f in sd["files"]
        if "*" not in f
    }
    given = {f"targets/{p.name}" for p in (base / "prometheus-targets").glob("*.json")}
    assert wanted == given
    # ... at the ports the processes listen on (the settings' defaults; compose overrides none).
    metrics, web = MetricsSettings(), StreamsSettings().web_port
    ports = {
        "crawler": {metrics.crawler_port},
        "streams": {metrics.streams_port},
        "streams-faust": {web},
        "sink": {metrics.sink_port},
        "follow": {FollowSettings().metrics_port},
        "scheduler": {metrics.scheduler_port},
        "exporter": {metrics.exporter_port},
    }
    for path in (base / "prometheus-targets").glob("*.json"):
        targets = [t for group in json.loads(path.read_text()) for t in group["targets"]]
        assert {int(t.rsplit(":", 1)[1]) for t in targets} == ports[path.stem], path.name
        assert {t.rsplit(":", 1)[0] for t in targets} <= set(services), path.name
    # The connector registration PUTs each JSON as crawlstream-<name>, the embedded stack's names.
    command = services["register-connectors"]["command"][0]
    assert "/connect/*.json" in command
    assert "connectors/crawlstream-$n/config" in command


def test_compose_connect_runs_the_stacks_debezium_version() -> None:
    pom = (DEPLOY / "maven" / "pom.xml").read_text()
    version = re.search(r"<debezium.version>([^<]+)</debezium.version>", pom)
    assert version
    assert compose_model()["services"]["connect"]["image"].endswith(f":{version.group(1)}")


def _compose_setting_names() -> dict[str, str]:
    names: dict[str, str] = dict(manifests.read_env_file(DEPLOY / "k8s" / "settings.env"))
    for service in compose_model()["services"].values():
        names.update(
            {k: str(v) for k, v in service.get("environment", {}).items() if k.startswith("CRAWLSTREAM")}
        )
    return names


def _k8s_setting_names(rendered: list[dict[str, Any]]) -> set[str]:
    names = {k for cm in by_kind(rendered, "ConfigMap").values() for k in cm.get("data", {})}
    for spec in pod_specs(rendered).values():
        for container in spec.get("initContainers", []) + spec["containers"]:
            names |= {e["name"] for e in container.get("env", [])}
    connect = by_kind(rendered, "KafkaConnect")["crawlstream-connect"]
    names |= {e["name"] for e in connect["spec"]["template"]["connectContainer"]["env"]}
    return {n for n in names if n.startswith("CRAWLSTREAM")}


def test_every_crawlstream_name_is_a_setting(rendered: list[dict[str, Any]]) -> None:
    names = _k8s_setting_names(rendered) | set(_compose_setting_names())
    unknown = sorted(n for n in names if manifests.settings_field(n) is None and not OTHER_NAMES.match(n))
    assert unknown == [], "not settings (crawlstream/settings.py): " + ", ".join(unknown)
    # A misspelt name is caught (pydantic-settings alone would ignore it).
    assert manifests.settings_field("CRAWLSTREAM_KAFKA__BOOTSTRAP_SERVER") is None
    assert manifests.settings_field("CRAWLSTREAM_KAFKA__BOOTSTRAP_SERVERS") == ("kafka", "bootstrap_servers")


def test_compose_settings_load(rendered: list[dict[str, Any]]) -> None:
    """The compose workers' settings are valid values of the same model, with the same topics."""
    values = {k: v for k, v in _compose_setting_names().items() if not OTHER_NAMES.match(k)}
    settings = manifests.deployment_settings(values)
    assert settings.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092,kafka-3:9092"
    k8s_topics = manifests.strimzi_topics(
        manifests.deployment_settings(manifests.read_env_file(DEPLOY / "k8s" / "settings.env"))
    )
    assert manifests.strimzi_topics(settings) == k8s_topics


def _dockerfile_stages() -> list[list[tuple[str, str]]]:
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    logical = re.sub(r"\\\n", " ", text)
    stages: list[list[tuple[str, str]]] = []
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), rest.strip()))
    return stages


def test_image_is_multi_stage_non_root_and_installs_the_wheel(rendered: list[dict[str, Any]]) -> None:
    stages = _dockerfile_stages()
    assert len(stages) >= 2
    build, runtime = stages[0], stages[-1]
    assert any(i == "RUN" and "pip wheel" in r for i, r in build)
    assert any(i == "RUN" and "pip install --no-index" in r and "crawlstream" in r for i, r in runtime)
    assert not any(i == "COPY" for i, r in runtime)  # no source tree in the runtime image
    users = [r for i, r in runtime if i == "USER"]
    assert users
    assert users[-1] == "10001:10001"
    uids = {spec["securityContext"]["runAsUser"] for spec in pod_specs(rendered).values()}
    assert uids == {10001}
    # Every COPY source exists (a renamed package would silently leave the wheel without it).
    for instruction, rest in build:
        if instruction == "COPY" and not rest.startswith("--"):
            for source in rest.split()[:-1]:
                assert (REPO / source).exists(), source
    # The ports it declares are the settings' defaults the manifests probe and scrape.
    exposed = {int(p) for i, r in runtime if i == "EXPOSE" for p in r.split()}
    metrics = MetricsSettings()
    defaults = {metrics.crawler_port, metrics.streams_port, metrics.sink_port, metrics.exporter_port}
    assert defaults | {StreamsSettings().web_port} <= exposed
    # The jobs file it points at is where the wheel puts deploy/jobs.toml for its Python.
    env = " ".join(r for i, r in runtime if i == "ENV")
    python = re.search(r"python:(3\.\d+)", stages[0][0][1] + (DEPLOY / "docker" / "Dockerfile").read_text())
    assert python
    assert f"/python{python.group(1)}/site-packages/crawlstream_deploy/jobs.toml" in env


def test_image_build_context_keeps_out_local_state() -> None:
    ignored = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".crawlstream", ".git", "tests"} <= set(ignored)


def test_settings_env_is_read_by_every_deployment() -> None:
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    (settings_map,) = [g for g in kustomization["configMapGenerator"] if g["name"] == "crawlstream-settings"]
    assert settings_map["envs"] == ["settings.env"]
    assert Path("../k8s/settings.env") == Path(
        yaml.safe_load(COMPOSE.read_text())["x-crawlstream-worker"]["env_file"][0]
    )
