"""Every reset mode's arithmetic, clamping, option parsing and the CSV round trip (no Kafka)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from control.ops.reset_plan import (
    ResetTarget,
    compute_plan,
    parse_duration,
    parse_plan_csv,
    parse_target,
    parse_topics,
    plan_csv,
    read_plan_csv,
    write_plan_csv,
)
from crawlstream.errors import ConfigError

TPS = [("t", 0), ("t", 1)]
BOUNDS = {("t", 0): (10, 100), ("t", 1): (0, 50)}
CURRENT = {("t", 0): 40}  # partition 1 never committed: counts as its earliest


def new_offsets(target: ResetTarget, found: dict[tuple[str, int], int] | None = None) -> list[int]:
    return [r.new for r in compute_plan(target, TPS, CURRENT, BOUNDS, found)]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (ResetTarget("to-earliest"), [10, 0]),
        (ResetTarget("to-latest"), [100, 50]),
        (ResetTarget("to-current"), [40, 0]),
        (ResetTarget("to-offset", 30), [30, 30]),
        (ResetTarget("to-offset", 5), [10, 5]),  # clamped up to earliest on partition 0
        (ResetTarget("to-offset", 1000), [100, 50]),  # clamped down to latest
        (ResetTarget("shift-by", -35), [10, 0]),
        (ResetTarget("shift-by", 7), [47, 7]),
    ],
)
def test_modes_and_clamping(target: ResetTarget, expected: list[int]) -> None:
    assert new_offsets(target) == expected


def test_clamped_rows_are_marked() -> None:
    rows = compute_plan(ResetTarget("to-offset", 1000), TPS, CURRENT, BOUNDS)
    assert [r.clamped for r in rows] == [True, True]
    assert [r.current for r in rows] == [40, None]


def test_by_time_uses_found_offsets_and_the_end_when_none() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    assert new_offsets(ResetTarget("to-datetime", at), {("t", 0): 60, ("t", 1): -1}) == [60, 50]


def test_from_file_offsets_are_clamped(tmp_path: Path) -> None:
    path = tmp_path / "plan.csv"
    path.write_text("t,0,5\nt,1,20\n")  # kafka-consumer-groups' format, no header
    found = read_plan_csv(path, "g")
    assert found == {("t", 0): 5, ("t", 1): 20}
    assert new_offsets(ResetTarget("from-file", path), found) == [10, 20]


def test_export_is_kafka_consumer_groups_format_and_reads_back(tmp_path: Path) -> None:
    rows = compute_plan(ResetTarget("shift-by", 3), TPS, CURRENT, BOUNDS)
    # What ConsumerGroupCommand --export prints for one group (Jackson CSV, CsvRecordNoGroup):
    # no header, topic,partition,offset, "\n" line ends.
    assert plan_csv(rows) == "t,0,43\nt,1,3\n"
    path = tmp_path / "plan.csv"
    write_plan_csv(rows, path)
    assert path.read_bytes() == b"t,0,43\nt,1,3\n"
    assert read_plan_csv(path, "g") == {("t", 0): 43, ("t", 1): 3}


def test_multi_group_plans_give_the_named_groups_rows() -> None:
    # kafka-consumer-groups --export with several --group: group,topic,partition,offset
    text = "a,t,0,1\nb,t,0,7\nb,t,1,8\n"
    assert parse_plan_csv(text, "b") == {("t", 0): 7, ("t", 1): 8}
    with pytest.raises(ConfigError, match=r"no offsets for group c .*a, b"):
        parse_plan_csv(text, "c")


def test_windows_line_ends_and_our_former_export_are_read() -> None:
    assert parse_plan_csv("t,0,5\r\nt,1,6\r\n", "g") == {("t", 0): 5, ("t", 1): 6}
    legacy = "topic,partition,current,new\nt,0,,4\nt,1,9,5\n"
    assert parse_plan_csv(legacy, "g") == {("t", 0): 4, ("t", 1): 5}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("t,zero,1\n", "line 1"),
        ("t,0,1\nt,1\n", "line 2 .*2 fields"),
        ("t,0\n", "expected topic,partition,offset"),
        ("\n\n", "holds no offsets"),
    ],
)
def test_bad_csv_names_the_line(text: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_plan_csv(text, "g")


def test_exactly_one_mode() -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        parse_target({"to-earliest": True, "to-latest": True})
    with pytest.raises(ConfigError, match="given: none"):
        parse_target({"to-earliest": False, "to-offset": None})
    assert parse_target({"to-earliest": True, "to-offset": None}).mode == "to-earliest"
    assert parse_target({"shift-by": -3}).value == -3
    assert parse_target({"shift-by": 0}).value == 0  # zero is a value, not "unset"
    with pytest.raises(ConfigError, match="negative"):
        parse_target({"to-offset": -1})


def test_durations_and_datetimes() -> None:
    assert parse_duration("PT15M") == timedelta(minutes=15)
    assert parse_duration("P1DT2H30S") == timedelta(days=1, hours=2, seconds=30)
    assert parse_duration("P2W") == timedelta(weeks=2)
    for bad in ("15m", "P", "PT", "P1Y", "P1M"):
        with pytest.raises(ConfigError, match="ISO 8601"):
            parse_duration(bad)
    now = datetime(2026, 11, 25, 12, tzinfo=UTC)
    assert parse_target({"by-duration": "PT1H"}, now=now).value == datetime(2026, 11, 25, 11, tzinfo=UTC)
    assert parse_target({"to-datetime": "2026-11-25T10:00:00"}).value == datetime(
        2026, 11, 25, 10, tzinfo=UTC
    )
    assert parse_target({"to-datetime": "2026-11-25T10:00:00+01:00"}).value == datetime(
        2026, 11, 25, 9, tzinfo=UTC
    )
    with pytest.raises(ConfigError, match="--to-datetime"):
        parse_target({"to-datetime": "yesterday"})


def test_topic_specs() -> None:
    assert parse_topics(["a", "b:2,0"]) == {"a": None, "b": [0, 2]}
    for bad in ("b:", ":1", "b:x"):
        with pytest.raises(ConfigError, match="--topic"):
            parse_topics([bad])
