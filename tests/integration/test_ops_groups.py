"""``crawlstream offsets groups | describe | delete`` on the real Kafka, and reset plans exchanged
with Kafka's own ``kafka-consumer-groups`` (ConsumerGroupCommand from the kafka-tools jar of the
embedded stack's Kafka version, run with the stack's Java and jars) in both directions.

Each test owns its topics (prefix ``opsgroups-<hex>``) and groups, and deletes them.
"""

from __future__ import annotations

import csv
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from typer.testing import CliRunner

from control.ops import admin as kadmin
from control.ops.offsets_tool import GroupActiveError, execute_deletion, offsets_app
from control.stack import maven
from crawlstream.settings import Settings, load_settings
from crawlstream.topics import TopicSpec, ensure_topics

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PER_PARTITION = 10
TP = tuple[str, int]


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.1)  # polling interval of a condition with a deadline
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.chdir(REPO)  # load_settings reads .crawlstream/stack.env relative to cwd
    monkeypatch.setenv("CRAWLSTREAM_KAFKA__TOPIC_PREFIX", f"opsgroups-{uuid.uuid4().hex[:10]}")
    return load_settings()


def make_topic(settings: Settings, name: str) -> str:
    ensure_topics(settings, [TopicSpec(name, 2, "k", "ops test")])
    producer = Producer(settings.kafka.librdkafka(**{"enable.idempotence": True}))
    for partition in (0, 1):
        for _ in range(PER_PARTITION):
            producer.produce(name, value=b"v", key=b"k", partition=partition)
    assert producer.flush(30) == 0
    return name


@pytest.fixture
def topics(settings: Settings) -> Iterator[tuple[str, str]]:
    """Two 2-partition topics of 10 records per partition."""
    prefix = settings.kafka.topic_prefix
    names = (make_topic(settings, f"{prefix}.a"), make_topic(settings, f"{prefix}.b"))
    yield names
    admin = kadmin.admin_client(settings)
    for future in admin.delete_topics(list(names)).values():
        future.result(30)


@pytest.fixture
def group(settings: Settings) -> Iterator[str]:
    name = f"{settings.kafka.topic_prefix}-group"
    yield name
    admin = kadmin.admin_client(settings)
    if name in kadmin.list_groups(admin):
        kadmin.delete_group(admin, name)


def committed(settings: Settings, group: str) -> dict[TP, int]:
    return kadmin.group_offsets(kadmin.admin_client(settings), group)


def cli(*args: str) -> str:
    result = CliRunner().invoke(offsets_app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


def member(settings: Settings, group: str, topic: str, client_id: str) -> Consumer:
    """A live member of ``group`` that owns both partitions of ``topic``."""
    consumer = Consumer(
        settings.kafka.librdkafka(**{"group.id": group, "client.id": client_id, "enable.auto.commit": False})
    )
    consumer.subscribe([topic])
    wait_for(lambda: consumer.poll(0.2) is None and len(consumer.assignment()) == 2, 60, "an assignment")
    return consumer


def test_groups_and_describe_show_members_offsets_and_lag(
    settings: Settings, topics: tuple[str, str], group: str
) -> None:
    topic = topics[0]
    consumer = member(settings, group, topic, "ops-describe-client")
    try:
        consumer.commit(
            offsets=[TopicPartition(topic, 0, 3), TopicPartition(topic, 1, 4)], asynchronous=False
        )
        listed = {g["group"]: g for g in json.loads(cli("groups", "--json"))}
        assert listed[group]["state"] == "STABLE"
        shown = json.loads(cli("describe", "--group", group, "--json"))
        assert shown["state"] == "STABLE"
        assert shown["members"] == 1
        (only,) = shown["member_list"]
        assert only["client_id"] == "ops-describe-client"
        assert only["host"]  # the address the broker saw the member connect from
        assert sorted(map(tuple, only["assignment"])) == [(topic, 0), (topic, 1)]
        rows = [
            (r["topic"], r["partition"], r["committed"], r["end"], r["lag"], r["client_id"], r["member_id"])
            for r in shown["partitions"]
        ]
        assert rows == [
            (topic, 0, 3, 10, 7, "ops-describe-client", only["member_id"]),
            (topic, 1, 4, 10, 6, "ops-describe-client", only["member_id"]),
        ]
        # The table (its cells fold on the test's 80 columns; the ids were checked above).
        assert f"group {group}: state STABLE, 1 member(s)" in cli("describe", "--group", group)
    finally:
        consumer.close()
    # Left by its member: the group is empty, its offsets stay, nobody owns the partitions.
    shown = wait_for(
        lambda: (s := json.loads(cli("describe", "--group", group, "--json")))["members"] == 0 and s,
        30,
        "the member to leave",
    )
    assert shown["state"] == "EMPTY"
    assert [(r["committed"], r["member_id"]) for r in shown["partitions"]] == [(3, None), (4, None)]


def test_delete_a_topics_offsets_then_the_group(
    settings: Settings, topics: tuple[str, str], group: str
) -> None:
    a, b = topics
    admin = kadmin.admin_client(settings)
    kadmin.alter_group_offsets(admin, group, {(a, 0): 5, (a, 1): 6, (b, 0): 7, (b, 1): 8})
    out = cli("delete", "--group", group, "--topic", a)
    assert "dry run" in out
    assert committed(settings, group) == {(a, 0): 5, (a, 1): 6, (b, 0): 7, (b, 1): 8}
    out = cli("delete", "--group", group, "--topic", a, "--execute")
    assert "deleted" in out
    assert committed(settings, group) == {(b, 0): 7, (b, 1): 8}
    cli("delete", "--group", group, "--topic", f"{b}:1", "--execute")
    assert committed(settings, group) == {(b, 0): 7}
    assert "dry run" in cli("delete", "--group", group)
    assert group in kadmin.list_groups(admin)
    cli("delete", "--group", group, "--execute")
    assert group not in kadmin.list_groups(admin)
    assert committed(settings, group) == {}


def test_delete_refuses_while_the_group_has_members(
    settings: Settings, topics: tuple[str, str], group: str
) -> None:
    a, b = topics
    kadmin.alter_group_offsets(kadmin.admin_client(settings), group, {(b, 0): 2, (a, 0): 1, (a, 1): 1})
    consumer = member(settings, group, a, "ops-delete-client")
    try:
        with pytest.raises(GroupActiveError, match=r"1 active member.*workers down"):
            execute_deletion(settings, group, [(b, 0)], whole_group=False)
        with pytest.raises(GroupActiveError):
            execute_deletion(settings, group, [], whole_group=True)
    finally:
        consumer.close()
    assert committed(settings, group) == {(a, 0): 1, (a, 1): 1, (b, 0): 2}


# --- plans exchanged with kafka-consumer-groups ------------------------------------------------


@pytest.fixture(scope="module")
def kafka_consumer_groups() -> list[str]:
    """``java -cp <stack jars>:kafka-tools.jar ConsumerGroupCommand``: Kafka's own tool, same version
    as the broker. The stack's pom has no kafka-tools (the broker does not need it), so the jar
    alone is fetched once with Maven into the cache next to the stack's jars."""
    settings = load_settings()
    version = maven.kafka_version()
    tools = (settings.stack.cache_dir / f"kafka-tools-{version}").expanduser()
    jar = tools / f"kafka-tools-{version}.jar"
    if not jar.is_file():
        fetched = subprocess.run(
            [
                str(maven.find_maven()),
                "-B",
                "-q",
                "dependency:copy",
                f"-Dartifact=org.apache.kafka:kafka-tools:{version}",
                f"-DoutputDirectory={tools}",
            ],
            cwd=tools.parent,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert fetched.returncode == 0, fetched.stdout + fetched.stderr
        assert jar.is_file()
    java = maven.find_java(settings)
    classpath = f"{maven.jvm_dir(settings)}/lib/*:{jar}"
    main = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"
    return [str(java), "-cp", classpath, main, "--bootstrap-server", settings.kafka.bootstrap_servers]


def kafka_tool(command: list[str], *args: str) -> str:
    done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Error" not in done.stdout, done.stdout  # the tool prints errors and still exits 0
    return done.stdout


def test_plans_move_between_crawlstream_and_kafka_consumer_groups(
    settings: Settings,
    topics: tuple[str, str],
    group: str,
    kafka_consumer_groups: list[str],
    tmp_path: Path,
) -> None:
    topic = topics[0]
    kadmin.alter_group_offsets(kadmin.admin_client(settings), group, {(topic, 0): 5, (topic, 1): 7})

    # Both tools write the same plan for the same reset (Kafka's line order is a HashMap's).
    ours = tmp_path / "ours.csv"
    cli("reset", "--group", group, "--shift-by", "-2", "--export", str(ours))
    theirs = kafka_tool(
        kafka_consumer_groups, "--group", group, "--reset-offsets", "--all-topics", "--shift-by", "-2",
        "--dry-run", "--export",
    )  # fmt: skip
    assert (
        sorted(theirs.strip().splitlines())
        == ours.read_text().splitlines()
        == [f"{topic},0,3", f"{topic},1,5"]
    )

    # crawlstream's plan, applied by kafka-consumer-groups.
    kafka_tool(
        kafka_consumer_groups, "--group", group, "--reset-offsets", "--from-file", str(ours), "--execute"
    )
    assert committed(settings, group) == {(topic, 0): 3, (topic, 1): 5}

    # kafka-consumer-groups' plan, applied by crawlstream.
    plan = kafka_tool(
        kafka_consumer_groups, "--group", group, "--reset-offsets", "--topic", f"{topic}:0",
        "--to-offset", "9", "--dry-run", "--export",
    )  # fmt: skip
    (tmp_path / "theirs.csv").write_text(plan)
    cli("reset", "--group", group, "--from-file", str(tmp_path / "theirs.csv"), "--execute")
    assert committed(settings, group) == {(topic, 0): 9, (topic, 1): 5}

    # A multi-group export (group,topic,partition,offset) gives crawlstream the named group's rows.
    other = f"{group}-other"
    kadmin.alter_group_offsets(kadmin.admin_client(settings), other, {(topic, 0): 1, (topic, 1): 1})
    try:
        both = kafka_tool(
            kafka_consumer_groups, "--group", group, "--group", other, "--reset-offsets", "--all-topics",
            "--to-earliest", "--dry-run", "--export",
        )  # fmt: skip
        # Kafka's Jackson CSV writer quotes the group ids; csv reads them as any CSV reader does.
        assert {row[0] for row in csv.reader(both.strip().splitlines())} == {group, other}
        (tmp_path / "both.csv").write_text(both)
        cli("reset", "--group", group, "--from-file", str(tmp_path / "both.csv"), "--execute")
        assert committed(settings, group) == {(topic, 0): 0, (topic, 1): 0}
        assert committed(settings, other) == {(topic, 0): 1, (topic, 1): 1}
        # And Kafka's tool describes what crawlstream describes.
        described = kafka_tool(kafka_consumer_groups, "--describe", "--group", group)
        ours_json = json.loads(cli("describe", "--group", group, "--json"))
        for row in ours_json["partitions"]:
            assert f"{row['topic']} {row['partition']}" in " ".join(described.split())
    finally:
        kadmin.delete_group(kadmin.admin_client(settings), other)
