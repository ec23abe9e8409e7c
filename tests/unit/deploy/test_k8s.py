"""deploy/k8s: rendered by kustomize (default load restrictions), validated by kubeconform against
the Kubernetes, Strimzi, KEDA and Prometheus Operator schemas kept in tests/data/schemas (offline),
and compared with the sources the embedded stack uses (topic catalog, connector JSON, jobs file,
settings, the Maven pom's Kafka and Debezium versions)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from control.cli import app
from control.ops import manifests
from crawlers.jobs import load_jobs
from crawlstream import acls
from crawlstream.errors import ConfigError
from crawlstream.topics import catalog
from tests.unit.deploy.support import DEPLOY, REPO, SCHEMAS, by_kind, kustomize_build, pod_specs, tool

K8S_VERSION = "1.34.2"


def deploy_settings() -> Any:
    return manifests.deployment_settings(manifests.read_env_file(DEPLOY / "k8s" / "settings.env"))


def kubeconform(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            tool("kubeconform"),
            "-strict",
            "-summary",
            "-output",
            "json",
            "-kubernetes-version",
            K8S_VERSION,
            # Offline: only these folders; a kind without a schema is an error, not a skip.
            "-schema-location",
            str(SCHEMAS / f"kubernetes-v{K8S_VERSION}" / "{{.ResourceKind}}{{.KindSuffix}}.json"),
            "-schema-location",
            str(SCHEMAS / "crds" / "{{.Group}}" / "{{.ResourceKind}}_{{.ResourceAPIVersion}}.json"),
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_kustomize_renders_without_relaxed_load_restrictions(rendered: list[dict[str, Any]]) -> None:
    kinds = {r["kind"] for r in rendered}
    assert {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaConnect", "KafkaConnector", "KafkaUser"} <= kinds
    assert {"StatefulSet", "Deployment", "CronJob", "ScaledObject", "PodMonitor", "PrometheusRule"} <= kinds
    assert all(r["metadata"].get("namespace") == "crawlstream" for r in rendered if r["kind"] != "Namespace")
    # No file outside deploy/k8s is referenced (that is what the default restriction refuses).
    text = (DEPLOY / "k8s" / "kustomization.yaml").read_text()
    assert "../" not in text
    assert "LoadRestrictionsNone" not in re.sub(r"#.*", "", text)


def test_rendered_manifests_are_valid_for_their_schemas(rendered_text: str, tmp_path: Path) -> None:
    good = tmp_path / "rendered.yaml"
    good.write_text(rendered_text)
    done = kubeconform(good)
    summary = json.loads(done.stdout)["summary"]
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    count = sum(1 for doc in yaml.safe_load_all(rendered_text) if doc)
    assert summary == {"valid": count, "invalid": 0, "errors": 0, "skipped": 0}

    # The schemas are really applied: a misspelt field, a wrong type and an unknown kind fail.
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        rendered_text.replace(
            "  serviceName: crawlstream-streams", "  serviceNme: crawlstream-streams"
        ).replace("partitions: 12\n", "partitions: twelve\n", 1)
        + "---\napiVersion: example.com/v1\nkind: Unknown\nmetadata: {name: x}\n"
    )
    broken = kubeconform(bad)
    assert broken.returncode != 0
    assert json.loads(broken.stdout)["summary"] == {
        "valid": count - 2,
        "invalid": 2,
        "errors": 1,
        "skipped": 0,
    }


def test_generated_files_are_what_the_sources_give() -> None:
    assert manifests.stale_files(DEPLOY) == [], "run `crawlstream topics export --format k8s --write`"


def test_topics_export_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy, ignore=shutil.ignore_patterns("__pycache__"))
    runner = CliRunner()
    ok = runner.invoke(app, ["topics", "export", "--format", "k8s", "--check", "--deploy-dir", str(copy)])
    assert ok.exit_code == 0, ok.output
    env = copy / "k8s" / "settings.env"
    env.write_text(env.read_text().replace("KAFKA__PARTITIONS=12", "KAFKA__PARTITIONS=6"))
    stale = runner.invoke(app, ["topics", "export", "--format", "k8s", "--check", "--deploy-dir", str(copy)])
    assert stale.exit_code == 1
    assert "kafka-topics.yaml is stale" in stale.output.replace("\n", "")
    written = runner.invoke(
        app, ["topics", "export", "--format", "k8s", "--write", "--deploy-dir", str(copy)]
    )
    assert written.exit_code == 0
    assert manifests.stale_files(copy) == []
    topics = yaml.safe_load_all((copy / "k8s" / "generated" / "kafka-topics.yaml").read_text())
    assert {t["spec"]["topicName"]: t["spec"]["partitions"] for t in topics}["crawlstream.pages.raw"] == 6


def test_topics_export_strimzi_prints_the_catalog() -> None:
    result = CliRunner().invoke(app, ["topics", "export", "--format", "strimzi", "--deploy-dir", str(DEPLOY)])
    assert result.exit_code == 0, result.output
    assert list(yaml.safe_load_all(result.output)) == manifests.strimzi_topics(deploy_settings())


def test_kafka_topics_are_the_catalog(rendered: list[dict[str, Any]]) -> None:
    settings = deploy_settings()
    topics = {t["spec"]["topicName"]: t for t in by_kind(rendered, "KafkaTopic").values()}
    specs = {spec.name: spec for spec in catalog(settings).all()}
    assert set(topics) == set(specs)
    for name, spec in specs.items():
        resource = topics[name]
        assert resource["metadata"]["labels"]["strimzi.io/cluster"] == "crawlstream"
        assert resource["spec"]["partitions"] == spec.partitions
        assert resource["spec"]["replicas"] == settings.kafka.replication_factor == 3
        assert resource["spec"]["config"] == spec.config
    # A Debezium heartbeat topic starts with '_': its resource name is a valid DNS name.
    assert topics["__debezium-heartbeat.cdc"]["metadata"]["name"] == "debezium-heartbeat.cdc"


def test_deployment_settings_ignore_this_shell_and_refuse_unknown_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CRAWLSTREAM_KAFKA__PARTITIONS", "99")
    assert deploy_settings().kafka.partitions == 12
    with pytest.raises(ConfigError, match="CRAWLSTREAM_KAFKA__PARTITONS is not a crawlstream setting"):
        manifests.deployment_settings({"CRAWLSTREAM_KAFKA__PARTITONS": "3"})
    with pytest.raises(ConfigError, match=r"kafka\.partitions \(CRAWLSTREAM_KAFKA__PARTITIONS\)"):
        manifests.deployment_settings({"CRAWLSTREAM_KAFKA__PARTITIONS": "0"})


def test_connectors_are_the_connect_json_unchanged(rendered: list[dict[str, Any]]) -> None:
    connectors = by_kind(rendered, "KafkaConnector")
    files = sorted((DEPLOY / "connect").glob("*.json"))
    assert set(connectors) == {f"crawlstream-{f.stem}" for f in files}
    for path in files:
        config = json.loads(path.read_text())
        spec = connectors[f"crawlstream-{path.stem}"]["spec"]
        assert connectors[f"crawlstream-{path.stem}"]["metadata"]["labels"]["strimzi.io/cluster"] == (
            "crawlstream-connect"
        )
        assert {
            "connector.class": spec["class"],
            "tasks.max": str(spec["tasksMax"]),
            **spec["config"],
        } == config
    connect = by_kind(rendered, "KafkaConnect")["crawlstream-connect"]
    assert connect["metadata"]["annotations"]["strimzi.io/use-connector-resources"] == "true"
    # The env config provider the JSON's ${env:CRAWLSTREAM_CDC_*} placeholders need, and the variables.
    assert connect["spec"]["config"]["config.providers.env.class"].endswith("EnvVarConfigProvider")
    placeholders = {
        m for path in files for m in re.findall(r"\$\{env:([A-Z_]+)\}", path.read_text(encoding="utf-8"))
    }
    env = {e["name"] for e in connect["spec"]["template"]["connectContainer"]["env"]}
    assert placeholders
    assert placeholders <= env


def test_kafka_and_debezium_versions_are_the_embedded_stacks(rendered: list[dict[str, Any]]) -> None:
    pom = ET.parse(DEPLOY / "maven" / "pom.xml").getroot()
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    kafka_version = pom.findtext("m:properties/m:kafka.version", namespaces=ns)
    debezium_version = pom.findtext("m:properties/m:debezium.version", namespaces=ns)
    assert kafka_version
    assert debezium_version
    assert by_kind(rendered, "Kafka")["crawlstream"]["spec"]["kafka"]["version"] == kafka_version
    connect = by_kind(rendered, "KafkaConnect")["crawlstream-connect"]
    assert connect["spec"]["version"] == kafka_version
    (plugin,) = connect["spec"]["build"]["plugins"]
    (artifact,) = plugin["artifacts"]
    assert artifact["url"].endswith(
        f"/{debezium_version}/debezium-connector-postgres-{debezium_version}-plugin.tar.gz"
    )
    assert re.fullmatch(r"[0-9a-f]{128}", artifact["sha512sum"])


def test_kraft_cluster_survives_one_node(rendered: list[dict[str, Any]]) -> None:
    pools = by_kind(rendered, "KafkaNodePool")
    roles = {name: (p["spec"]["roles"], p["spec"]["replicas"]) for name, p in pools.items()}
    assert roles == {"controllers": (["controller"], 3), "brokers": (["broker"], 3)}
    config = by_kind(rendered, "Kafka")["crawlstream"]["spec"]["kafka"]["config"]
    assert config["min.insync.replicas"] == 2
    assert config["default.replication.factor"] == 3
    assert config["auto.create.topics.enable"] is False
    settings = deploy_settings()
    assert config["message.max.bytes"] >= max(s.max_message_bytes for s in catalog(settings).all())


def test_cronjobs_are_the_scheduled_jobs(rendered: list[dict[str, Any]]) -> None:
    jobs = load_jobs(DEPLOY / "jobs.toml")  # the same validation `crawlstream jobs validate` does
    scheduled = {name: job.schedule for name, job in jobs.items() if job.schedule}
    cronjobs = by_kind(rendered, "CronJob")
    assert scheduled
    assert len(cronjobs) == len(scheduled)
    for cron in cronjobs.values():
        name = cron["metadata"]["labels"]["crawlstream.io/job"]
        assert cron["spec"]["schedule"] == scheduled[name]
        assert cron["spec"]["timeZone"] == "Etc/UTC"
        assert cron["spec"]["concurrencyPolicy"] == "Forbid"
        (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        assert container["command"][:4] == ["crawlstream", "jobs", "run", name]
    jobs_map = by_kind(rendered, "ConfigMap")["crawlstream-jobs"]
    assert tomllib.loads(jobs_map["data"]["jobs.toml"]) == tomllib.loads((DEPLOY / "jobs.toml").read_text())


def test_scaled_objects_follow_lag_up_to_the_partition_count(rendered: list[dict[str, Any]]) -> None:
    settings = deploy_settings()
    partitions = {spec.name: spec.partitions for spec in catalog(settings).all()}
    deployments = by_kind(rendered, "Deployment")
    scaled = by_kind(rendered, "ScaledObject")
    assert set(scaled) == {"crawlstream-sink", "crawlstream-crawler"}
    for name, obj in scaled.items():
        (trigger,) = obj["spec"]["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert trigger["authenticationRef"]["name"] == "crawlstream-kafka"
        assert obj["spec"]["maxReplicaCount"] == partitions[meta["topic"]], name
        assert meta["allowIdleConsumers"] == "false"
        target = deployments[obj["spec"]["scaleTargetRef"]["name"]]
        assert "replicas" not in target["spec"]  # KEDA owns the count
        (container,) = target["spec"]["template"]["spec"]["containers"]
        command = container["command"]
        group = (
            command[command.index("--group-id") + 1] if "--group-id" in command else settings.sink.group_id
        )
        assert meta["consumerGroup"] == group, name
    assert (
        scaled["crawlstream-sink"]["spec"]["triggers"][0]["metadata"]["topic"]
        == catalog(settings).unique_pages.name
    )
    assert (
        scaled["crawlstream-crawler"]["spec"]["triggers"][0]["metadata"]["topic"]
        == catalog(settings).requests.name
    )


def test_stream_workers_keep_names_state_and_routes(rendered: list[dict[str, Any]]) -> None:
    settings = deploy_settings()
    (sts,) = by_kind(rendered, "StatefulSet").values()
    assert sts["spec"]["replicas"] <= catalog(settings).raw_pages.partitions
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert settings.streams.data_dir.is_relative_to(mounts[claim["metadata"]["name"]])
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["CRAWLSTREAM_STREAMS__INSTANCE_ID"]["value"] == "$(POD_NAME)"
    assert env["CRAWLSTREAM_STREAMS__WEB_BIND"]["value"] == "$(POD_IP)"
    service = by_kind(rendered, "Service")[sts["spec"]["serviceName"]]
    assert service["spec"]["clusterIP"] == "None"
    assert env["CRAWLSTREAM_STREAMS__CANONICAL_URL"]["value"].startswith(
        f"http://$(POD_NAME).{service['metadata']['name']}.$(POD_NAMESPACE).svc:"
    )


def test_pods_meet_the_restricted_pod_security_standard(rendered: list[dict[str, Any]]) -> None:
    namespace = by_kind(rendered, "Namespace")["crawlstream"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    specs = pod_specs(rendered)
    assert len(specs) >= 8
    for name, spec in specs.items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["runAsUser"] != 0, name
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec.get("initContainers", []) + spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, name
            assert ctx["capabilities"]["drop"] == ["ALL"], name
            assert ctx["readOnlyRootFilesystem"] is True, name
            assert container["resources"]["requests"], name
            assert container["resources"]["limits"]["memory"], name


def test_long_running_workers_have_probes_and_podmonitors_scrape_them(rendered: list[dict[str, Any]]) -> None:
    specs = pod_specs(rendered)
    workloads = {**by_kind(rendered, "Deployment"), **by_kind(rendered, "StatefulSet")}
    monitor = by_kind(rendered, "PodMonitor")["crawlstream-workers"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    # The job label is the job name deploy/prometheus/prometheus.yml gives the same process, which
    # the alert rules match on.
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in prometheus["scrape_configs"]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    for name in workloads:
        (container,) = specs[name]["containers"]
        assert container["livenessProbe"]["httpGet"]["port"] == "metrics", name
        assert container["readinessProbe"], name
        assert endpoint["port"] in {p["name"] for p in container["ports"]}, name
        labels = workloads[name]["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), name
        assert labels[monitor["spec"]["jobLabel"]] in jobs, name


def test_alert_rules_are_the_stacks(rendered: list[dict[str, Any]]) -> None:
    (rule,) = by_kind(rendered, "PrometheusRule").values()
    stack = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "crawlstream.yml").read_text())
    assert rule["spec"]["groups"] == stack["groups"]


def test_secrets_are_referenced_never_written(rendered: list[dict[str, Any]]) -> None:
    secret_like = re.compile(r"PASSWORD|SECRET|_URL$|__URL$")
    for name, spec in pod_specs(rendered).items():
        for container in spec.get("initContainers", []) + spec["containers"]:
            for env in container.get("env", []):
                if secret_like.search(env["name"]) and not env["name"].endswith("CANONICAL_URL"):
                    assert "valueFrom" in env, (name, env["name"])
                    assert "value" not in env, (name, env["name"])
    # The one Secret in the output holds a user name only (KEDA reads it from a Secret).
    (secret,) = by_kind(rendered, "Secret").values()
    assert set(secret.get("data", {})) | set(secret.get("stringData", {})) == {"username"}
    for config_map in by_kind(rendered, "ConfigMap").values():
        assert not any(
            secret_like.search(k) and "://" in v and "@" in v for k, v in config_map["data"].items()
        )


def test_every_kafka_client_logs_in_as_its_own_user(rendered: list[dict[str, Any]]) -> None:
    users = set(by_kind(rendered, "KafkaUser"))
    for name, spec in pod_specs(rendered).items():
        (container,) = spec["containers"]
        env = {e["name"]: e for e in container["env"]}
        user = env["CRAWLSTREAM_KAFKA__SASL__USERNAME"]["value"]
        assert user in users, name
        assert env["CRAWLSTREAM_KAFKA__SASL__PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == user, name
        assert any(m["mountPath"] == "/etc/kafka-ca" for m in container["volumeMounts"]), name


def test_each_stage_user_has_exactly_the_acl_plan_of_its_stage(rendered: list[dict[str, Any]]) -> None:
    """The KafkaUsers are the plan ``stack up --secure`` applies (crawlstream/acls.py), so the two
    cannot drift; the connect user also has its KafkaConnect cluster's group and storage topics."""
    settings = deploy_settings()
    plan = acls.acl_plan(settings)
    users = by_kind(rendered, "KafkaUser")
    strimzi_pattern = {"literal": "literal", "prefixed": "prefix"}

    def granted(user: dict[str, Any]) -> set[tuple[str, str | None, str | None, str]]:
        return {
            (a["resource"]["type"], a["resource"].get("name"), a["resource"].get("patternType"), op)
            for a in user["spec"]["authorization"]["acls"]
            for op in a["operations"]
        }

    def expected(grants: list[acls.Grant]) -> set[tuple[str, str | None, str | None, str]]:
        return {
            (
                g.resource,
                None if g.resource == "cluster" else g.name,
                None if g.resource == "cluster" else strimzi_pattern[g.pattern],
                g.operation.replace("_", " ").title().replace(" ", ""),
            )
            for g in grants
        }

    connect_spec = by_kind(rendered, "KafkaConnect")["crawlstream-connect"]["spec"]
    storage = [connect_spec[k] for k in ("configStorageTopic", "offsetStorageTopic", "statusStorageTopic")]
    for stage in ("crawler", "streams", "sinks", "connect", "follow"):
        who = acls.principal(settings, stage)
        grants = [g for g in plan if g.principal == who]
        if stage == "connect":
            grants += acls.connect_cluster_grants(settings, connect_spec["groupId"], storage)
        assert granted(users[f"crawlstream-{stage}"]) == expected(grants), stage
    # The frontier's topics and groups are in it (frontier jobs run as the crawler).
    crawler = granted(users["crawlstream-crawler"])
    assert ("topic", catalog(settings).frontier_progress.name, "literal", "Read") in crawler
    assert ("group", f"{settings.kafka.topic_prefix}-frontier-", "prefix", "Read") in crawler
    assert "authorization" not in users["crawlstream-admin"]["spec"]  # a super user


def test_kustomize_refuses_a_file_outside_the_folder(tmp_path: Path) -> None:
    """The restriction the old manifests needed relaxing is on: these must stay inside deploy/k8s."""
    (tmp_path / "k8s").mkdir()
    (tmp_path / "outside.json").write_text("{}")
    (tmp_path / "k8s" / "kustomization.yaml").write_text(
        "configMapGenerator:\n  - name: x\n    files: [../outside.json]\n"
    )
    done = subprocess.run(
        [tool("kustomize"), "build", str(tmp_path / "k8s")], capture_output=True, text=True, check=False
    )
    assert done.returncode != 0
    assert "security" in done.stderr
    assert kustomize_build(DEPLOY / "k8s")  # and ours builds under the same restriction


def test_schema_data_names_its_source_and_licence() -> None:
    readme = (SCHEMAS / "README.md").read_text()
    for folder in ("kubernetes-v1.34.2", "crds", "compose"):
        assert (SCHEMAS / folder / "LICENSE").is_file(), folder
        assert folder in readme
    assert (REPO / "tests" / "data" / "schemas" / "build_kubernetes_schemas.py").is_file()


def test_topics_export_json_and_unknown_formats() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["topics", "export", "--format", "json"])  # the installed deploy/
    assert result.exit_code == 0, result.output
    exported = {t["name"]: t["partitions"] for t in json.loads(result.output)}
    assert exported == {spec.name: spec.partitions for spec in catalog(deploy_settings()).all()}
    wrong = runner.invoke(app, ["topics", "export", "--format", "helm"])
    assert wrong.exit_code == 2
    assert "unknown format 'helm'" in wrong.output


def test_table_views_are_open_to_stream_workers_only(rendered: list[dict[str, Any]]) -> None:
    (policy,) = by_kind(rendered, "NetworkPolicy").values()
    workers = {"app.kubernetes.io/name": "crawlstream-streams"}
    assert policy["spec"]["podSelector"]["matchLabels"] == workers
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = {tuple(p["port"] for p in rule["ports"]): rule.get("from") for rule in policy["spec"]["ingress"]}
    assert rules[("web",)] == [{"podSelector": {"matchLabels": workers}}]
    assert rules[("metrics",)] is None  # Prometheus, wherever it runs
