"""``crawlstream offsets reset | show`` against the real Kafka: every reset mode, dry runs,
exports read back, clamping, refusal while the group has members. (Listing, describing and
deleting groups, and plans exchanged with Kafka's own tool: test_ops_groups.py.)

Each test owns a topic (prefix ``opstest-<hex>``) and consumer group, and deletes both.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from typer.testing import CliRunner

from control.ops import admin as kadmin
from control.ops.offsets_tool import GroupActiveError, build_plan, execute_plan, offsets_app
from control.ops.reset_plan import ResetTarget
from crawlstream import offsets
from crawlstream.errors import CrawlstreamError
from crawlstream.settings import Settings, load_settings
from crawlstream.topics import TopicSpec, ensure_topics

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PER_PARTITION = 10


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
    monkeypatch.setenv("CRAWLSTREAM_KAFKA__TOPIC_PREFIX", f"opstest-{uuid.uuid4().hex[:10]}")
    return load_settings()


@pytest.fixture
def topic(settings: Settings) -> Iterator[str]:
    """A 2-partition topic; record i of each partition is stamped (10 - i) minutes ago."""
    name = f"{settings.kafka.topic_prefix}.ops"
    ensure_topics(settings, [TopicSpec(name, 2, "k", "ops test")])
    producer = Producer(settings.kafka.librdkafka(**{"enable.idempotence": True}))
    now_ms = int(time.time() * 1000)
    for partition in (0, 1):
        for i in range(PER_PARTITION):
            stamp = now_ms - (PER_PARTITION - i) * 60_000
            producer.produce(name, value=b"v", key=b"k", partition=partition, timestamp=stamp)
    assert producer.flush(30) == 0
    yield name
    admin = kadmin.admin_client(settings)
    for future in admin.delete_topics([name]).values():
        future.result(30)


@pytest.fixture
def group(settings: Settings, topic: str) -> Iterator[str]:
    """A member-less group with offsets 5 and 5 committed."""
    name = f"{settings.kafka.topic_prefix}-group"
    admin = kadmin.admin_client(settings)
    kadmin.alter_group_offsets(admin, name, {(topic, 0): 5, (topic, 1): 5})
    yield name
    for future in admin.delete_consumer_groups([name]).values():
        future.result(30)


def committed(settings: Settings, group: str) -> dict[tuple[str, int], int]:
    return kadmin.group_offsets(kadmin.admin_client(settings), group)


def reset(*args: str) -> str:
    result = CliRunner().invoke(offsets_app, ["reset", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


def iso(moment: datetime) -> str:
    return moment.isoformat()


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (["--to-earliest"], (0, 0)),
        (["--to-latest"], (10, 10)),
        (["--to-current"], (5, 5)),
        (["--to-offset", "7"], (7, 7)),
        (["--to-offset", "99"], (10, 10)),  # clamped to the end
        (["--shift-by", "-2"], (3, 3)),
        (["--shift-by", "-50"], (0, 0)),  # clamped to the start
        (["--shift-by", "3"], (8, 8)),
        # records are stamped 10..1 minutes ago: 7.5 minutes ago is just before record 3
        # (the moment is computed when the test runs, not at collection: "@-450" = 450 s ago)
        (["--to-datetime", "@-450"], (3, 3)),
        (["--by-duration", "PT5M30S"], (5, 5)),
        (["--by-duration", "PT30S"], (10, 10)),  # no record that recent: the end
    ],
)
def test_every_mode_executes(
    settings: Settings, topic: str, group: str, mode: list[str], expected: tuple[int, int]
) -> None:
    mode = [
        iso(datetime.now(UTC) - timedelta(seconds=int(arg[2:]))) if arg.startswith("@-") else arg
        for arg in mode
    ]
    out = reset("--group", group, *mode, "--execute")
    assert "applied" in out
    assert committed(settings, group) == {(topic, 0): expected[0], (topic, 1): expected[1]}


def test_dry_run_changes_nothing_and_export_reads_back(
    settings: Settings, topic: str, group: str, tmp_path: Path
) -> None:
    plan = tmp_path / "plan.csv"
    out = reset("--group", group, "--to-offset", "4", "--export", str(plan))
    assert "dry run" in out
    assert committed(settings, group) == {(topic, 0): 5, (topic, 1): 5}
    assert plan.read_text() == f"{topic},0,4\n{topic},1,4\n"  # kafka-consumer-groups' own format
    plan.write_text(plan.read_text().replace(f"{topic},1,4", f"{topic},1,1000"))  # an operator's edit
    reset("--group", group, "--from-file", str(plan), "--execute")
    assert committed(settings, group) == {(topic, 0): 4, (topic, 1): 10}  # 1000 clamped to the end


def test_topic_partitions_limit_the_reset(settings: Settings, topic: str, group: str) -> None:
    reset("--group", group, "--topic", f"{topic}:1", "--to-earliest", "--execute")
    assert committed(settings, group) == {(topic, 0): 5, (topic, 1): 0}


def test_a_new_group_needs_topics_and_then_starts_from_them(settings: Settings, topic: str) -> None:
    fresh = f"{settings.kafka.topic_prefix}-fresh"
    with pytest.raises(CrawlstreamError, match="--topic"):
        build_plan(settings, fresh, ResetTarget("to-latest"))
    try:
        reset("--group", fresh, "--topic", topic, "--shift-by", "2", "--execute")
        assert committed(settings, fresh) == {(topic, 0): 2, (topic, 1): 2}  # never committed = earliest
    finally:
        admin = kadmin.admin_client(settings)  # kept alive: a collected client never resolves its futures
        admin.delete_consumer_groups([fresh])[fresh].result(30)


def test_refuses_while_the_group_has_members(settings: Settings, topic: str, group: str) -> None:
    consumer = Consumer(settings.kafka.librdkafka(**{"group.id": group, "enable.auto.commit": False}))
    consumer.subscribe([topic])
    try:
        wait_for(lambda: consumer.poll(0.2) is not None or consumer.assignment(), 30, "an assignment")
        plan = build_plan(settings, group, ResetTarget("to-earliest"))
        with pytest.raises(GroupActiveError, match=r"1 active member.*workers down"):
            execute_plan(settings, plan, apply_to_store=False)
    finally:
        consumer.close()
    assert committed(settings, group) == {(topic, 0): 5, (topic, 1): 5}


def test_show_reports_lag(settings: Settings, topic: str, group: str) -> None:
    result = CliRunner().invoke(offsets_app, ["show", "--group", group, "--json"])
    assert result.exit_code == 0, result.output
    import json

    shown = json.loads(result.output)
    assert shown["members"] == 0
    assert [(p["partition"], p["current"], p["lag"]) for p in shown["partitions"]] == [(0, 5, 5), (1, 5, 5)]


def test_commit_start_where_absent_fills_only_partitions_without_offsets(
    settings: Settings, topic: str
) -> None:
    """What a stream worker does before faust joins: a new group gets each partition's start."""
    name = f"{settings.kafka.topic_prefix}-fresh"
    admin = kadmin.admin_client(settings)
    kadmin.alter_group_offsets(admin, name, {(topic, 1): 7})  # one partition already committed
    try:
        filled = offsets.commit_start_where_absent(settings, name, [topic, f"{topic}-not-created-yet"])
        assert filled == {(topic, 0): 0}
        assert committed(settings, name) == {(topic, 0): 0, (topic, 1): 7}
        assert offsets.commit_start_where_absent(settings, name, [topic]) == {}  # nothing left to fill
        # A group with a live member owns its offsets: nothing is committed over it.
        member = Consumer(settings.kafka.librdkafka(**{"group.id": name, "enable.auto.commit": False}))
        try:
            member.subscribe([topic])
            wait_for(lambda: member.poll(0.2) is None and member.assignment(), 30, "the member's assignment")
            other = f"{topic}-second"
            ensure_topics(settings, [TopicSpec(other, 1, "k", "ops test")])
            assert offsets.commit_start_where_absent(settings, name, [other]) == {}
            assert (other, 0) not in committed(settings, name)
        finally:
            member.close()
    finally:
        for future in admin.delete_consumer_groups([name]).values():
            future.result(30)
